# frozen_string_literal: true

module ActsAsTbackend
  # What happens, beyond the soft result itself, when a mirror write fails. Success is
  # `ok == true` or status `disabled`; every policy returns the result it was given.
  #
  # - ignore (default): nothing.
  # - warn: one line on $stderr.
  # - raise_in_test: raises MirrorFailure, but only under RAILS_ENV/RACK_ENV=test or
  #   TBACKEND_FORCE_TEST_MODE=1, so it is safe to leave in a shared configuration.
  # - enqueue_retry: a retryable failure (OutboxFlusher's `retryable`/`unknown`) hands
  #   `fact` to the async writer, whose native thread retries it with backoff (and keeps
  #   it in the spool when one is set), or to MirrorRetryJob when `retry_backend` is
  #   "active_job". 0.2 accepted the name and did nothing.
  module FailurePolicy
    POLICIES = Config::FAILURE_POLICIES
    RETRY_LATER = %w[retryable unknown].freeze

    module_function

    # `fact` and `durability` are what enqueue_retry sends again; without a fact (it could
    # not be built) there is nothing to retry.
    def apply(result, policy: ActsAsTbackend.config.failure_policy, context: {}, fact: nil, durability: nil)
      name = policy_name(policy)
      return result if success?(result)

      case name
      when "warn" then write_line(describe(result, context))
      when "raise_in_test" then raise MirrorFailure.new(describe(result, context), result: result) if test_env?
      when "enqueue_retry" then enqueue_retry(result, fact, durability, context) if fact
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
    def describe(result, context, what = "mirror failure")
      fields = context.map { |name, value| "#{name}=#{value}" }.join(", ")
      status, error = result.is_a?(Hash) ? [result[:status], result[:error]] : [nil, result.inspect]
      "[ActsAsTbackend] #{what} (#{fields}): status=#{status} error=#{error.inspect}"
    end

    # The enqueue's own failure (a full queue under "raise", a job backend that is down)
    # is one line on $stderr: the policy must not turn a soft failure into an exception.
    def enqueue_retry(result, fact, durability, context)
      return unless RETRY_LATER.include?(OutboxFlusher.flush_status(result))

      if ActsAsTbackend.config.retry_backend == "active_job"
        MirrorRetryJob.enqueue_fact(fact, durability: durability)
      else
        queued = ActsAsTbackend.async_writer.enqueue(fact, durability: durability)
        write_line(describe(queued, context, "enqueue_retry failed")) unless success?(queued)
      end
    rescue StandardError => e
      write_line(describe(Client.error_result(e), context, "enqueue_retry failed"))
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
    private_class_method :enqueue_retry, :write_line, :policy_name
  end
end
