# frozen_string_literal: true

module TCB
  # Root of every error the runtime raises on purpose.
  class Error < StandardError; end

  # The configuration cannot work: a missing event bus, a duplicate registration, a
  # handler that is not a class with #call, a missing outbox table.
  class ConfigurationError < Error; end

  # A second `TCB.configure` without `TCB.reset!`. tcb 0.6.2 yielded its frozen
  # configuration again, so the block's first write raised FrozenError with this message;
  # code rescuing that keeps working.
  class AlreadyConfigured < FrozenError
    def initialize(config = nil)
      super("can't modify frozen TCB::Configuration: TCB is already configured; call TCB.reset! before TCB.configure",
            receiver: config)
    end
  end

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
