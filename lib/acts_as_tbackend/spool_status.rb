# frozen_string_literal: true

module ActsAsTbackend
  # `rake tbackend:spool:status`: what the spool directory holds, read without starting a
  # writer (a writer would adopt orphaned segments and start delivering them). A segment
  # whose flock is free belongs to no live process: the next writer to start — or
  # `rake tbackend:spool:flush` — adopts and delivers it.
  class SpoolStatus
    SEGMENT_GLOB = "seg-*.spool"
    DEAD_LETTERS = DeadLetters::FILE_NAME

    def initialize(config)
      @config = config
    end

    def call
      dir = @config.spool_path
      return { spool_path: nil, enabled: false } if dir.nil?
      return { spool_path: dir, exists: false } unless File.directory?(dir)

      segments = Dir[File.join(dir, SEGMENT_GLOB)].map { |path| segment(path) }
      {
        spool_path: dir, fsync: @config.spool_fsync, segments: segments,
        held: segments.count { |s| s[:held] }, orphaned: segments.count { |s| !s[:held] },
        bytes: segments.sum { |s| s[:bytes] }, dead_letters: dead_letters(dir)
      }
    end

    private

    def segment(path)
      { file: File.basename(path), bytes: File.size(path), held: held?(path) }
    rescue Errno::ENOENT
      { file: File.basename(path), bytes: 0, held: false, gone: true }
    end

    # Probes the writer's exclusive flock without keeping it: a free lock is released at once.
    def held?(path)
      File.open(path, File::RDONLY) do |file|
        locked = file.flock(File::LOCK_EX | File::LOCK_NB)
        file.flock(File::LOCK_UN) if locked
        !locked
      end
    end

    def dead_letters(dir)
      path = File.join(dir, DEAD_LETTERS)
      File.file?(path) ? File.foreach(path).count : 0
    end
  end
end
