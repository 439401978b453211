# frozen_string_literal: true

module ActsAsTbackend
  # ActiveSupport::Notifications events, named "<event>.acts_as_tbackend":
  #
  # | event                  | payload                                                       |
  # |------------------------|---------------------------------------------------------------|
  # | write_fact_once        | store, fact_id, durability, status, ok                        |
  # | write_fact_once_safe   | same, plus attempt_count                                      |
  # | write_facts_once       | count, durability, statuses (status => count), ok (all ok)    |
  # | latest_for, facts_for  | store, status, ok                                             |
  # | latest_for_many        | store, count, statuses (status => count), ok (all ok)         |
  # | facts_by_seq, ping     | store (not for ping), status, ok                              |
  # | retry                  | store, fact_id, attempt_count, statuses (one per attempt)     |
  # | breaker_open           | host, port, consecutive_failures, opens                       |
  # | breaker_closed         | host, port                                                    |
  # | mirror                 | store, event_type, fact_id, async, status, ok                 |
  # | enqueue                | store, fact_id, status, ok (async writer)                     |
  # | spool_flush            | timeout, settled, the writer's counters (delivered, dead, …)  |
  # | dead_letter            | fact_id, store, attempts, status, via, kept: MirrorRetryJob   |
  # |                        | (via "active_job") and the async writer (via "async_writer",  |
  # |                        | plus reason; kept: the dead-letter file, nil without a spool) |
  # | writer_paused          | host, port, status, error, queued: the async writer stopped   |
  # |                        | sending, the daemon unreachable (waits spend no attempts)     |
  # | writer_resumed         | host, port, paused_for (seconds), queued                      |
  # | spool_error            | spool_path, operation (write, fsync, sync, ack, adopt,        |
  # |                        | dead_letter, close), error, count (repeats folded into one)   |
  # | spool_adopt            | spool_path, segment, facts: a dead process's segment taken    |
  # |                        | over by the async writer                                      |
  # | events_dropped         | count: async writer events lost (over 1024 undrained)         |
  # | verify                 | model, store, checked, missing, stale, orphaned (counts),     |
  # |                        | complete, in_sync, repaired (written/replayed/failed or nil)  |
  #
  # Payloads never carry fact values or the token: subscribers (log shippers, APM agents)
  # often forward whole payloads. Without ActiveSupport, or with no subscriber for an
  # event, instrumenting costs one hash lookup and the block runs bare.
  module Instrumentation
    NAMESPACE = "acts_as_tbackend"

    # "mirror" => "mirror.acts_as_tbackend", built once per event: the request path asks
    # whether anyone listens on every write, and must not allocate a String to ask.
    NAMES = Hash.new { |names, event| names[event] = "#{event}.#{NAMESPACE}".freeze }

    module_function

    def event_name(event)
      NAMES[event]
    end

    # Runs the block inside a notification when someone listens for the event, filling
    # `status`/`ok` from the block's soft result. Returns the block's value.
    def instrument(event, payload = {})
      notifier = self.notifier
      name = event_name(event)
      return yield(payload) unless notifier&.listening?(name)

      ActiveSupport::Notifications.instrument(name, payload) do
        result = yield(payload)
        describe_result(payload, result)
        result
      end
    end

    # A notification with nothing to time (state changes).
    def publish(event, payload = {})
      name = event_name(event)
      ActiveSupport::Notifications.instrument(name, payload) if notifier&.listening?(name)
      nil
    end

    def listening?(event)
      notifier&.listening?(event_name(event)) ? true : false
    end

    # The notifier is asked for on every call (an app or a test may swap it); the module
    # is looked up until it is there (it may be loaded after this gem) and then kept, so a
    # write does not look it up again.
    def notifier
      @notifications ||= (ActiveSupport::Notifications if defined?(ActiveSupport::Notifications))
      @notifications&.notifier
    end

    def describe_result(payload, result)
      case result
      when Hash
        payload[:status] = result[:status]
        payload[:ok] = result[:ok]
        payload[:attempt_count] = result[:attempt_count] if result.key?(:attempt_count)
      when Array
        payload[:statuses] = result.each_with_object(Hash.new(0)) { |one, tally| tally[one[:status]] += 1 }
        payload[:ok] = result.all? { |one| one[:ok] }
      end
    end
  end
end
