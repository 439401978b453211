# frozen_string_literal: true

require "active_job"

module ActsAsTbackend
  # `failure_policy: "enqueue_retry"` with `retry_backend: "active_job"`: a retryable mirror
  # failure becomes this job, so Sidekiq, SolidQueue or any ActiveJob backend carries the
  # retry. Each attempt writes the same fact (same id: a repeat is a replay); a retryable
  # outcome schedules the next attempt with exponential backoff and full jitter
  # (`retry_base_backoff` … `retry_max_backoff`), up to `retry_attempts`; what exhausts its
  # attempts, or fails for good, is logged once as a dead letter (ids and statuses only).
  #
  # The fact travels as one JSON string: every backend carries it unchanged (no ActiveJob
  # Hash markers, no Sidekiq JSON coercion), and `log_arguments` is off so the values in it
  # never reach a job log.
  class MirrorRetryJob < ActiveJob::Base
    queue_as :default
    self.log_arguments = false

    # Schedules the first retry of `fact` (a fact Hash).
    def self.enqueue_fact(fact, durability: nil)
      perform_later(JSON.generate(fact), durability&.to_s, 1)
    end

    def perform(fact_json, durability = nil, attempt = 1)
      fact = fact_json.is_a?(String) ? JSON.parse(fact_json) : fact_json
      result = ActsAsTbackend.client.write_fact_once(fact, durability: durability)
      return result[:status] if result[:ok] || result[:status] == "disabled"

      if retry?(result) && attempt < config.retry_attempts
        self.class.set(wait: self.class.backoff(attempt, config)).perform_later(fact_json, durability, attempt + 1)
      else
        dead_letter(fact, result, attempt)
      end
      result[:status]
    end

    # Seconds before attempt `attempt + 1`.
    def self.backoff(attempt, config = ActsAsTbackend.config)
      ceiling = [config.retry_base_backoff * (2**(attempt - 1)), config.retry_max_backoff].min
      rand * ceiling
    end

    private

    def config
      ActsAsTbackend.config
    end

    def retry?(result)
      Client::RETRY_SAFE_STATUSES.include?(result[:status]) || result[:retryable] == true
    end

    def dead_letter(fact, result, attempt)
      line = "[ActsAsTbackend] dead letter: fact_id=#{fact['id']} store=#{fact['store']} attempts=#{attempt} " \
             "status=#{result[:status]}"
      (logger || Logger.new($stderr)).error(line)
      Instrumentation.publish(:dead_letter, fact_id: fact["id"], store: fact["store"], attempts: attempt,
                                            status: result[:status], via: "active_job")
    end
  end
end
