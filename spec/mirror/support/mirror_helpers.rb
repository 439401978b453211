# frozen_string_literal: true

require "stringio"

module TbackendSpec
  # Shared by the mirror and ActiveRecord specs: ENV and $stderr swapped for one block, and
  # a plain record (anything with `id` and `attributes` is one).
  module MirrorHelpers
    PlainRecord = Struct.new(:id, :attributes)
    TimedRecord = Struct.new(:id, :attributes, :updated_at)
    ValidTimeRecord = Struct.new(:id, :attributes, :updated_at, :valid_time)

    def plain_record(id, attributes)
      PlainRecord.new(id, attributes)
    end

    def timed_record(id, attributes, updated_at)
      TimedRecord.new(id, attributes, updated_at)
    end

    def valid_time_record(id, attributes, updated_at, valid_time)
      ValidTimeRecord.new(id, attributes, updated_at, valid_time)
    end

    # Sets (or, for nil, deletes) ENV variables for the block and restores them.
    def with_env(changes)
      saved = changes.to_h { |name, _| [name, ENV.fetch(name, nil)] }
      changes.each { |name, value| value.nil? ? ENV.delete(name) : ENV.store(name, value) }
      yield
    ensure
      saved&.each { |name, value| value.nil? ? ENV.delete(name) : ENV.store(name, value) }
    end

    # What the block wrote to $stderr.
    def captured_stderr
      saved = $stderr
      $stderr = StringIO.new
      yield
      $stderr.string
    ensure
      $stderr = saved
    end
  end
end
