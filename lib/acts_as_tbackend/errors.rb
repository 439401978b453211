# frozen_string_literal: true

module ActsAsTbackend
  # Root of every error this gem raises on purpose. `retryable?` tells a caller whether
  # sending the same request again may succeed (the fact id makes a retry safe).
  class Error < StandardError
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
