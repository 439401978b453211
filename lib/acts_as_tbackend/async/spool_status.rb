# frozen_string_literal: true

require "time"

module ActsAsTbackend
  # `rake tbackend:spool:status`: what the spool directory holds, as facts. The segments are
  # read natively (Native.spool_status: the spool's format, file names and locks have one
  # home, tbackend-client's spool module) without starting a writer, which would adopt
  # orphaned segments and start delivering them. A segment no live process holds
  # (`held: false`) is orphaned: the next writer to start — or `rake tbackend:spool:flush`
  # — adopts and delivers its pending facts.
  #
  # `pending` facts wait for delivery; `delivered` and `dead` (given up) count what the
  # segments on disk acknowledge (a segment with nothing pending is deleted once it is not
  # a live writer's active one); `dead_letters` counts the dead-letter file beside the
  # segments, which keeps every fact given up until `rake tbackend:dead_letters:replay`.
  class SpoolStatus
    COUNTS = %i[pending delivered dead].freeze

    def initialize(config, now: Time.now)
      @config = config
      @now = now
    end

    def call
      dir = @config.spool_path
      return { spool_path: nil, enabled: false } if dir.nil?
      return { spool_path: dir, exists: false } unless File.directory?(dir)

      native = Native.spool_status(dir)
      segments = native[:segments].map { |segment| segment.merge(since(segment[:oldest_pending_at])) }
      {
        spool_path: dir, fsync: @config.spool_fsync,
        **COUNTS.to_h { |count| [count, segments.sum { |s| s[count] }] },
        **since(native[:segments].filter_map { |s| s[:oldest_pending_at] }.min),
        held: segments.count { |s| s[:held] }, orphaned: segments.count { |s| !s[:held] },
        bytes: segments.sum { |s| s[:bytes] }, dead_letters: native[:dead_letters], segments: segments
      }
    end

    private

    # When the oldest pending fact was first spooled (`epoch`: seconds, adoption keeps it)
    # and its age in seconds, never negative (another host's clock may be ahead).
    def since(epoch)
      return { oldest_pending_at: nil, oldest_pending_age: nil } unless epoch

      { oldest_pending_at: Time.at(epoch).utc.iso8601(3), oldest_pending_age: [@now.to_f - epoch, 0.0].max.round(3) }
    end
  end
end
