# frozen_string_literal: true

require "json"
require "fileutils"

module ActsAsTbackend
  # A JSONL dead-letter file (DeadLetters), written by several processes and by the native
  # async writer (spool.rs, `Spool::dead_letter`). Every writer holds `<file>.lock`
  # (flock): an append is one write; a removal rewrites the file through a renamed
  # temporary file, so an append made meanwhile is never lost and a crash leaves the old
  # file or the new one, never half of one.
  module DeadLetterFile
    # `<file><LOCK_SUFFIX>`, the lock the native writer takes too.
    LOCK_SUFFIX = Native::DEAD_LETTER_LOCK_SUFFIX

    module_function

    def append(file, rec)
      FileUtils.mkdir_p(File.dirname(file))
      locked(file) do
        File.open(file, File::WRONLY | File::APPEND | File::CREAT, 0o600) do |io|
          io.write("#{JSON.generate(rec)}\n")
          io.fsync
        end
      end
    end

    # [line, record] pairs in file order. A torn or foreign line is never listed, replayed
    # or removed.
    def records(file)
      return [] unless File.file?(file)

      File.readlines(file, chomp: true).filter_map do |line|
        rec = parse(line)
        [line, rec] if rec
      end
    end

    # Drops one line per entry of `lines` (what was appended meanwhile stays).
    def remove(file, lines)
      locked(file) do
        left = File.readlines(file, chomp: true)
        lines.each do |line|
          index = left.index(line)
          left.delete_at(index) if index
        end
        temporary = "#{file}.#{Process.pid}.tmp"
        File.open(temporary, File::WRONLY | File::CREAT | File::TRUNC, 0o600) do |io|
          io.write(left.map { |line| "#{line}\n" }.join)
          io.fsync
        end
        File.rename(temporary, file)
      end
    end

    def parse(line)
      rec = JSON.parse(line)
      rec.is_a?(Hash) ? rec : nil
    rescue JSON::ParserError
      nil
    end

    def locked(file)
      File.open("#{file}#{LOCK_SUFFIX}", File::RDWR | File::CREAT, 0o600) do |lock|
        lock.flock(File::LOCK_EX)
        yield
      end
    end
  end
end
