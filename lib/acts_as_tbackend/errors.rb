# frozen_string_literal: true

# Every error class of ActsAsTbackend (the TCB runtime keeps its own contract root,
# TCB::Error, in tcb/errors.rb). The native binding looks these up once when it loads
# and refuses to load if one is missing, so rename them only together with src/errors.rs.
module ActsAsTbackend
  # Root of every error this gem raises on purpose: `rescue ActsAsTbackend::Error` catches
  # them all. A module, as in trilogy, so InvalidFact and ConfigurationError can stay
  # ArgumentErrors too. `retryable?` tells a caller whether sending the same request again
  # may succeed (the fact id makes a retry safe).
  module Error
    def retryable?
      false
    end
  end

  # The class every ActsAsTbackend::Error that is not an ArgumentError derives from.
  # `result` is the soft result the error stands for, when there is one.
  class BaseError < StandardError
    include Error

    attr_reader :result

    def initialize(message = nil, result: nil)
      super(message)
      @result = result
    end
  end

  # A value that can never become a valid fact: a store name the daemon rejects or would
  # silently fail to persist, an unparseable time, NaN, invalid UTF-8, a cyclic or
  # oversized value. An ArgumentError, because the caller passed it.
  class InvalidFact < ArgumentError
    include Error
  end

  # The configuration cannot work (bad ENV value, unknown option). An ArgumentError for
  # compatibility with the 0.2 gem, which raised ArgumentError for a bad failure_policy.
  class ConfigurationError < ArgumentError
    include Error
  end

  # A bug in this gem (a native panic, caught before it could take the process down).
  class InternalError < BaseError; end

  # One object used by two threads (or fibers) at once where that cannot work: a second
  # poll of a Tail while another is in progress. Nothing was sent; the object is intact.
  class ConcurrentUseError < BaseError; end

  # A request that got no daemon answer. Raised only in strict mode; otherwise the same
  # failure is a soft result with the matching status.
  class TransportError < BaseError
    # The request can be sent again: fact ids make a repeated write a replay.
    def retryable?
      true
    end
  end

  # Nothing was sent: refused, unresolvable, connect timeout (status `unavailable`).
  class ConnectionError < TransportError; end

  # Sent, but no valid answer in time (status `timeout_unknown`): the write may or may
  # not have happened; retrying the same fact id settles it.
  class TimeoutError < TransportError; end

  # The circuit breaker is open (status `circuit_open`): nothing was sent.
  class CircuitOpenError < TransportError; end

  # Raised by AsyncWriter#enqueue when the queue is full and `queue_full_policy` is
  # "raise". Nothing was queued; enqueueing the same fact later is safe (its id makes a
  # second delivery a replay).
  class QueueFull < BaseError
    def retryable?
      true
    end
  end

  # Raised by the `raise_in_test` policy, in test environments only, when a mirror write
  # soft-failed. `result` is the soft result that failed.
  class MirrorFailure < BaseError
    def retryable?
      result.is_a?(Hash) && result[:retryable] ? true : false
    end
  end
end

module ActsAsTbackend
  # A backfill checkpoint written for other rows (another database, table or store, or a
  # last id past the table's highest): resuming from it would skip rows silently.
  class CheckpointMismatch < BaseError; end
end
