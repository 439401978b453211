# frozen_string_literal: true

require "time"

module TCB
  # Delivers outbox entries to their `ensure_reaction` handlers: at least once, each
  # entry claimed atomically by one relay, failures retried with backoff up to
  # `max_attempts`, then dead-lettered (status :dead). Run it from a job or a loop:
  #
  #   TCB::OutboxRelay.new(outbox_store: TCB.config.outbox_store_for(Billing),
  #                        event_store: TCB.config.event_store, lock_timeout: 300).run
  #
  # `outbox_store:` may also be the module's outbox model, as tcb 0.6.2's README and
  # generated jobs pass it (`outbox_store: Billing::OutboxRecord`).
  class OutboxRelay
    # Seconds before attempt n + 1 after n failures: 2, 4, 8 … capped at one hour.
    DEFAULT_BACKOFF = ->(attempts) { [2**attempts, 3600].min }

    Result = Struct.new(:delivered, :failed, :dead, :skipped, keyword_init: true)

    def initialize(outbox_store:, event_store:, lock_timeout:, max_attempts: 10, backoff: DEFAULT_BACKOFF, clock: lambda {
                                                                                                                    Time.now.utc
                                                                                                                  })
      raise ArgumentError, "max_attempts must be a positive Integer" unless max_attempts.is_a?(Integer) && max_attempts.positive?

      unless event_store.respond_to?(:read_by_event_ids)
        raise ArgumentError,
              "event_store must answer read_by_event_ids (got #{event_store.inspect})"
      end

      @outbox_store = self.class.store_for(outbox_store)
      @event_store = event_store
      @lock_timeout = lock_timeout
      @max_attempts = max_attempts
      @backoff = backoff
      @clock = clock
    end

    # The configured store whose model `outbox` is, else a store over that model; any
    # other object is taken to be a store.
    def self.store_for(outbox)
      return outbox unless defined?(::ActiveRecord::Base) && outbox.is_a?(Class) && outbox < ::ActiveRecord::Base

      configured = TCB.config.outbox_stores.each_value.find { |store| store.respond_to?(:model) && store.model == outbox }
      configured || OutboxStore::ActiveRecord.new(outbox)
    end

    # One pass over the due entries. Returns counts of what happened.
    def run
      result = Result.new(delivered: 0, failed: 0, dead: 0, skipped: 0)
      @outbox_store.recover_stale_locks(older_than: now - @lock_timeout)
      due = @outbox_store.pending(now: now)
      envelopes = @event_store.read_by_event_ids(due.map(&:event_id).uniq)
      due.each { |entry| relay(entry, envelopes[entry.event_id], result) }
      result
    end

    private

    def now
      @clock.call
    end

    def relay(entry, envelope, result)
      locked = @outbox_store.lock(entry, locked_at: now)
      return result.skipped += 1 unless locked

      begin
        deliver(locked, envelope)
      rescue StandardError, ScriptError => e
        return fail_entry(locked, e, result)
      end
      @outbox_store.mark_delivered(locked, delivered_at: now)
      result.delivered += 1
    end

    # The handler runs in the chain of the event it reacts to, as a bus reaction would.
    def deliver(entry, envelope)
      raise Error, "event #{entry.event_id} is not in the event store" unless envelope

      handler = Object.const_get(entry.handler_class)
      Context.for_reaction(envelope) { handler.new.call(envelope.event) }
    end

    # A store without mark_dead (tcb 0.6.2's API) keeps the entry retryable.
    def record_failure(entry, message, retry_at)
      if retry_at || !@outbox_store.respond_to?(:mark_dead)
        @outbox_store.mark_failed(entry, error: message, retry_at: retry_at)
      else
        @outbox_store.mark_dead(entry, error: message)
      end
    end

    # What the store did decides the outcome: a table without backoff columns (tcb 0.6.2's)
    # keeps no next attempt time, and a store without mark_dead keeps the entry retryable.
    def fail_entry(entry, error, result)
      attempts = entry.attempts.to_i + 1
      retry_at = attempts < @max_attempts ? now + @backoff.call(attempts) : nil
      stored = record_failure(entry, error.message, retry_at)
      dead = stored ? stored.status == :dead : retry_at.nil?
      retry_at = stored.next_attempt_at if stored && !dead
      dead ? result.dead += 1 : result.failed += 1
      Instrumentation.failure(
        dead ? "outbox_dead_letter.tcb" : "outbox_delivery_failed.tcb",
        "outbox entry #{entry.id} (#{entry.handler_class}, event #{entry.event_id}) failed attempt " \
        "#{attempts}/#{@max_attempts}: #{Instrumentation.error_message(error)}#{outcome(dead, retry_at)}",
        entry: entry, error: error, attempts: attempts, retry_at: retry_at
      )
    end

    def outcome(dead, retry_at)
      return "; dead-lettered" if dead

      retry_at ? ", retrying at #{retry_at.iso8601}" : ", retrying on the next run"
    end
  end
end
