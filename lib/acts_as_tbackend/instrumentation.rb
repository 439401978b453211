# frozen_string_literal: true

require_relative "instrumentation/subscription_count"

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
  # event, instrumenting costs a few lookups and the block runs bare.
  #
  # The gem's own LogSubscriber (the Railtie attaches it) writes a call's line at debug
  # and a failed call's at warn. When it is a call event's only subscriber and its logger
  # is above debug (production), an event per call would be built only to be dropped:
  # about 55 µs per mirrored save on Rails 6.1, for its two events (mirror, and the
  # enqueue or the write). Then the call runs bare, and only a failure is handed to the
  # LogSubscriber, with its payload and its duration, after the call (see #watch).
  module Instrumentation
    NAMESPACE = "acts_as_tbackend"

    # "mirror" => "mirror.acts_as_tbackend", built once per event: the request path asks
    # whether anyone listens on every write, and must not allocate a String to ask.
    NAMES = Hash.new { |names, event| names[event] = "#{event}.#{NAMESPACE}".freeze }

    # event => [ActiveSupport's notifier, who listens (#listeners_of)], kept until a
    # subscription changes (SubscriptionCount); for another notifier, [its listener list
    # for the event, who listens], kept while the list is the same object.
    VERDICTS = {} # rubocop:disable Style/MutableConstant -- a cache; a race only computes twice
    # The listener list of a notifier that cannot tell: one unknown listener.
    OTHERS = [nil].freeze

    module_function

    # What a call of `event` must do, asked before each call (#observe):
    # - nil: nobody would see it, run it bare;
    # - :all: instrument it (#instrument);
    # - :failures: only the gem's LogSubscriber listens, and its logger shows warnings but
    #   not debug lines: run it bare, then #report_failure.
    # Every save of a mirrored model asks twice: the common answers call few methods.
    def watch(event)
      notifier = self.notifier
      return nil unless notifier

      kept = VERDICTS[event]
      verdict = kept && kept[0].equal?(notifier) ? kept[1] : listeners_of(notifier, event)
      case verdict
      when Array then LogSubscriber.watch(verdict.first.logger)
      when :others then notifier.listening?(NAMES[event]) ? :all : nil
      when :all then :all
      end
    end

    # Runs the block (a call returning a soft result, or an Array of them) as `event`,
    # as #watch says. The event's payload is `source.send(builder, a, b, c, d)` (a private
    # method of the caller is fine), made only when an event is: a call nobody sees, or a
    # successful one under :failures, allocates nothing (no closure, no rest Array).
    def observe(event, source, builder, a = nil, b = nil, c = nil, d = nil, &block) # rubocop:disable Metrics/ParameterLists,Naming/MethodParameterName
      watch = watch(event)
      return yield unless watch
      return instrument(event, source.send(builder, a, b, c, d), &block) if watch == :all

      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      result = yield
      # Not a failure (LogSubscriber.failure? needs `ok: false`): nothing to report.
      return result if result.is_a?(Hash) && result[:ok] != false

      report_failure(event, result, started) { source.send(builder, a, b, c, d) }
    end

    # Hands a failed call's event, as #instrument would have made it, to the gem's
    # LogSubscribers, its only listeners; the block makes the payload. Returns `result`.
    def report_failure(event, result, started)
      outcome = result.is_a?(Hash) ? result : describe_result({}, result)
      return result unless LogSubscriber.failure?(outcome)

      subscribers = notifier && listeners_of(notifier, event)
      return result unless subscribers.is_a?(Array)

      payload = describe_result(yield, result)
      finished = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      notification = ActiveSupport::Notifications::Event.new(NAMES[event], started, finished, nil, payload)
      subscribers.each { |subscriber| subscriber.public_send(event, notification) }
      result
    rescue StandardError
      result # a log line that could not be written never turns a soft result into an exception
    end

    # Who listens for `event`: :none; the gem's LogSubscribers (an Array) when they are
    # all the listeners of a call event, or :all for another event; else :others.
    def listeners_of(notifier, event)
      changes = SubscriptionCount.changes
      fanout = notifier.instance_of?(SubscriptionCount.fanout)
      name = NAMES[event]
      list = listener_list(notifier, name)
      kept = VERDICTS[event]
      return kept[1] if !fanout && kept && kept[0].equal?(list)

      verdict = verdict(name, list)
      VERDICTS[event] = [fanout ? notifier : list, verdict].freeze
      # A change counted meanwhile may have come before or after the list was read: the
      # verdict is dropped again, unless that change's own clearing came later.
      VERDICTS.delete(event) unless SubscriptionCount.changes == changes
      verdict
    end

    def verdict(name, list)
      return :none if list.empty?

      subscribers = list.map { |listener| listener.instance_variable_get(:@delegate) }
      return :others unless defined?(ActsAsTbackend::LogSubscriber) && subscribers.all?(ActsAsTbackend::LogSubscriber)

      LogSubscriber::CALLS.any? { |event| NAMES[event] == name } ? subscribers : :all
    end

    # Fanout's cached list of every subscriber of `name` (silenced ones too, on Rails
    # 7.1+); a notifier without one counts as "others listen".
    def listener_list(notifier, name)
      unless @lister&.first.equal?(notifier)
        @lister = [notifier, %i[all_listeners_for listeners_for].find { |method| notifier.respond_to?(method) }]
      end
      @lister.last ? notifier.public_send(@lister.last, name) : OTHERS
    end

    # Runs the block inside a notification when someone listens for the event, filling
    # `status`/`ok` from the block's soft result. Returns the block's value.
    def instrument(event, payload = {})
      notifier = self.notifier
      name = NAMES[event]
      return yield(payload) unless notifier&.listening?(name)

      ActiveSupport::Notifications.instrument(name, payload) do
        result = yield(payload)
        describe_result(payload, result)
        result
      end
    end

    # A notification with nothing to time (state changes).
    def publish(event, payload = {})
      name = NAMES[event]
      ActiveSupport::Notifications.instrument(name, payload) if notifier&.listening?(name)
      nil
    end

    def listening?(event)
      notifier&.listening?(NAMES[event]) ? true : false
    end

    # The notifier is asked for on every call (an app or a test may swap it); the module
    # is looked up until it is there (it may be loaded after this gem) and then kept, so a
    # write does not look it up again.
    def notifier
      @notifications ||= (SubscriptionCount.counting(ActiveSupport::Notifications) if defined?(ActiveSupport::Notifications))
      @notifications&.notifier
    end

    # Fills a payload's outcome fields from a soft result (or an Array of them).
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
      payload
    end
  end
end
