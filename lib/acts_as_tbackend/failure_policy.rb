# frozen_string_literal: true

module ActsAsTbackend
  # Raised by the `raise_in_test` policy, in test environments only, when a mirror write
  # soft-failed. `result` is the soft result that failed.
  class MirrorFailure < Error
    attr_reader :result

    def initialize(message = nil, result: nil)
      super(message)
      @result = result
    end

    def retryable?
      result.is_a?(Hash) && result[:retryable] ? true : false
    end
  end

  # What happens, beyond the soft result itself, when a mirror write fails. Success is
  # `ok == true` or status `disabled`; every policy returns the result it was given.
  #
  # - ignore (default): nothing.
  # - warn: one line on $stderr.
  # - raise_in_test: raises MirrorFailure, but only under RAILS_ENV/RACK_ENV=test or
  #   TBACKEND_FORCE_TEST_MODE=1, so it is safe to leave in a shared configuration.
  # - enqueue_retry: accepted, behaves like ignore (as in 0.2); see docs/mirror.md.
  module FailurePolicy
    POLICIES = Config::FAILURE_POLICIES

    module_function

    def apply(result, policy: ActsAsTbackend.config.failure_policy, context: {})
      name = policy_name(policy)
      return result if success?(result)

      case name
      when "warn" then write_line(describe(result, context))
      when "raise_in_test" then raise MirrorFailure.new(describe(result, context), result: result) if test_env?
      end
      result
    end

    def success?(result)
      result.is_a?(Hash) && (result[:ok] == true || result[:status] == "disabled")
    end

    # Read on every failure, so a test suite that sets the variable late still gets it.
    def test_env?
      ENV["RAILS_ENV"] == "test" || ENV["RACK_ENV"] == "test" || ENV["TBACKEND_FORCE_TEST_MODE"] == "1"
    end

    # `[ActsAsTbackend] mirror failure (store=orders, event_type=create): status=unavailable error="boom"`
    def describe(result, context)
      fields = context.map { |name, value| "#{name}=#{value}" }.join(", ")
      status, error = result.is_a?(Hash) ? [result[:status], result[:error]] : [nil, result.inspect]
      "[ActsAsTbackend] mirror failure (#{fields}): status=#{status} error=#{error.inspect}"
    end

    # One write, so lines from concurrent threads never interleave; not Kernel#warn, which
    # says nothing under `ruby -W0`.
    def write_line(line)
      $stderr.write("#{line}\n")
    end

    def policy_name(policy)
      name = policy.to_s
      return name if POLICIES.include?(name)

      raise ConfigurationError, "failure_policy must be one of #{POLICIES.join(', ')}, got #{policy.inspect}"
    end
    private_class_method :write_line, :policy_name
  end
end
