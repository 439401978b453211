# frozen_string_literal: true

require "active_job"

module ActsAsTbackend
  # `failure_policy: "enqueue_retry"` with `retry_backend: "active_job"`: a retryable mirror
  # failure becomes this job, so Sidekiq, SolidQueue or any ActiveJob backend carries the
  # retry. Each attempt writes the same fact (same id: a repeat is a replay). The schedule,
  # as the native async writer's, except that a timeout is an outage here too (a job holds
  # up no other fact while it waits):
  #
  # - An outage (a transport status: unavailable, timeout_unknown, circuit_open — the
  #   daemon gave no answer) never spends an attempt: the job comes back after a backoff
  #   that doubles per consecutive outage run from `retry_base_backoff` up to
  #   `retry_max_backoff`, with full jitter (uniform in 0..that), for as long as the
  #   outage lasts.
  # - Any other retryable outcome (rejected_before_commit, a retryable error) is an
  #   attempt: the next one after the same backoff by attempt number, up to
  #   `retry_attempts`.
  # - What exhausts its attempts, or fails for good (duplicate_fact_id_conflict, a
  #   non-retryable error), is a dead letter: kept with its content by DeadLetters (the
  #   app's dead-letter table, else the dead-letter file), where `rake tbackend:dead_letters`
  #   lists it and `rake tbackend:dead_letters:replay` sends it again; logged (ids and status
  #   only) and published as `dead_letter.acts_as_tbackend`.
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

    # `attempt`: the attempt this run is (outages do not advance it); `outage`: how many
    # runs in a row found the daemon unreachable (jobs enqueued before 0.3 lack it).
    def perform(fact_json, durability = nil, attempt = 1, outage = 0)
      fact = fact_json.is_a?(String) ? JSON.parse(fact_json) : fact_json
      result = ActsAsTbackend.client.write_fact_once(fact, durability: durability)
      status = result[:status]
      return status if result[:ok] || status == "disabled"

      if Client::TRANSPORT_STATUSES.include?(status)
        again(fact_json, durability, attempt, outage + 1, wait: self.class.backoff(outage + 1))
      elsif retry?(result) && attempt < config.retry_attempts
        again(fact_json, durability, attempt + 1, 0, wait: self.class.backoff(attempt))
      else
        dead_letter(fact, result, attempt, durability)
      end
      status
    end

    # Seconds before the next run, the `nth` of its kind (attempt or outage run).
    def self.backoff(nth, config = ActsAsTbackend.config)
      ceiling = [config.retry_base_backoff * (2**[nth - 1, 62].min), config.retry_max_backoff].min
      rand * ceiling
    end

    private

    def config
      ActsAsTbackend.config
    end

    def again(fact_json, durability, attempt, outage, wait:)
      self.class.set(wait: wait).perform_later(fact_json, durability, attempt, outage)
    end

    def retry?(result)
      Client::RETRY_SAFE_STATUSES.include?(result[:status]) || result[:retryable] == true
    end

    def reason(result)
      return "exhausted" if retry?(result)

      result[:status] == "duplicate_fact_id_conflict" ? "conflict" : "error"
    end

    # Kept before it is logged: if it cannot be kept at all, the job fails and its backend
    # keeps it instead.
    def dead_letter(fact, result, attempt, durability)
      sent = ActsAsTbackend.client.wire_fact(fact)
      kept = DeadLetters.record(sent, status: result[:status], error: result[:error], attempts: attempt,
                                      reason: reason(result), durability: durability, via: "active_job")
      line = "[ActsAsTbackend] dead letter: fact_id=#{fact['id']} store=#{fact['store']} attempts=#{attempt} " \
             "status=#{result[:status]} (kept in #{kept}; rake tbackend:dead_letters)"
      (logger || Logger.new($stderr)).error(line)
      Instrumentation.publish(:dead_letter, fact_id: fact["id"], store: fact["store"], attempts: attempt,
                                            status: result[:status], via: "active_job", kept: kept)
    end
  end
end
