# frozen_string_literal: true

module ActsAsTbackend
  # Root of every error this gem raises on purpose. `retryable?` tells a caller whether
  # sending the same request again may succeed (the fact id makes a retry safe).
  # `result` is the soft result the error stands for, when there is one.
  class Error < StandardError
    attr_reader :result

    def initialize(message = nil, result: nil)
      super(message)
      @result = result
    end

    def retryable?
      false
    end
  end

  # A value that can never become a valid fact: a store name the daemon rejects or would
  # silently fail to persist, an unparseable time, NaN, invalid UTF-8, a cyclic or
  # oversized value. An ArgumentError, because the caller passed it.
  class InvalidFact < ArgumentError; end

  # The configuration cannot work (bad ENV value, unknown option). An ArgumentError for
  # compatibility with the 0.2 gem, which raised ArgumentError for a bad failure_policy.
  class ConfigurationError < ArgumentError; end
end

module ActsAsTbackend
  # A bug in this gem (a native panic, caught before it could take the process down).
  class InternalError < Error; end

  # One object used by two threads (or fibers) at once where that cannot work: a second
  # poll of a Tail while another is in progress. Nothing was sent; the object is intact.
  class ConcurrentUseError < Error; end

  # A request that got no daemon answer. Raised only in strict mode; otherwise the same
  # failure is a soft result with the matching status.
  class TransportError < Error
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
end
