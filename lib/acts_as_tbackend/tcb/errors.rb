# frozen_string_literal: true

module TCB
  # Root of every error the runtime raises on purpose.
  class Error < StandardError; end

  # The configuration cannot work: a missing event bus, a duplicate registration, a
  # handler that is not a class with #call, a second `configure` without `reset!`.
  class ConfigurationError < Error; end

  # `TCB.dispatch` found no handler registered for the command's exact class.
  class CommandHandlerNotFound < Error; end

  # `TCB.record(..., expected_version:)` found the stream at another version: someone
  # else appended first. Nothing was persisted; reload the aggregate and decide again.
  class WrongExpectedVersion < Error
    attr_reader :stream_id, :expected_version, :actual_version

    def initialize(stream_id:, expected_version:, actual_version:)
      @stream_id = stream_id.to_s
      @expected_version = expected_version
      @actual_version = actual_version
      super("stream #{@stream_id} expected at version #{expected_version.inspect}, but it is at version #{actual_version}")
    end
  end
end
