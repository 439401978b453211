# frozen_string_literal: true

require_relative "event_bus/events"
require_relative "event_bus/registry"
require_relative "event_bus/signals"
require_relative "event_bus/lifecycle"
require_relative "../fork_safety"

module TCB
  # Pub/sub for events, routed by exact class.
  #
  # Async (default): one dispatcher thread delivers in publish order; handlers of one event
  # run in registration order. The thread starts on the first publish, not at configure
  # time: an app preloaded by a forking server (Puma's preload_app!) boots with no thread
  # of ours, and each forked worker starts its own when it first publishes.
  #
  # With `max_queue_size`, publish blocks while the queue is full, except when the
  # dispatcher itself publishes (a handler's events, failure events): the only thread that
  # could make room must never wait for room.
  #
  # Shutdown never kills a handler: a forced or timed-out shutdown drops the queued events
  # and returns; the handler running at that moment finishes, then the thread ends.
  class EventBus
    include Signals
    include Lifecycle

    # subscribe, unsubscribe or publish on a bus that was shut down.
    class ShutdownError < TCB::Error; end

    # Serializes a forked child's first use of each bus. (A Mutex some parent thread held
    # at the fork is free in the child: Ruby abandons a dead thread's locks.)
    FORK_LOCK = Mutex.new

    attr_reader :registry, :max_queue_size, :high_water_mark, :shutdown_timeout

    def initialize(sync: false, max_queue_size: nil, high_water_mark: nil, handle_signals: false, shutdown_timeout: 30.0,
                   shutdown_signals: %i[TERM INT], on_signal: nil)
      validate_sizes!(max_queue_size, high_water_mark)
      @sync = sync
      @max_queue_size = max_queue_size
      @high_water_mark = high_water_mark
      @shutdown_timeout = shutdown_timeout
      @registry = Registry.new
      @state = :running
      @mutex = Mutex.new
      prepare_queue unless sync
      install_signal_handlers(shutdown_signals, on_signal) if handle_signals
      @pid = ActsAsTbackend::ForkSafety.pid
    end

    # The dispatcher thread: nil in sync mode and until the first publish (in a forked
    # child, until the child's first publish).
    def dispatcher
      return nil if @sync

      own_process!
      @dispatcher
    end

    def sync?
      @sync
    end

    # `subscribe(EventClass) { |envelope| }` or `subscribe(EventClass, HandlerClass)` (an
    # instance per event, `call(event)`). Returns the subscription.
    def subscribe(event_class, handler = nil, &block)
      own_process!
      raise ShutdownError, "cannot subscribe: the event bus is shut down" if shutdown?
      raise ArgumentError, "subscribe takes a handler class or a block, not both" if handler && block
      raise ArgumentError, "subscribe needs a handler class or a block" unless handler || block

      if handler && !(handler.is_a?(Class) && handler.method_defined?(:call))
        raise ArgumentError, "#{handler.inspect} is not a class with an instance method #call"
      end

      @registry.add(event_class, handler || block, handler ? :class : :block)
    end

    # Idempotent: unsubscribing twice is fine.
    def unsubscribe(subscription)
      own_process!
      raise ShutdownError, "cannot unsubscribe: the event bus is shut down" if shutdown?

      @registry.remove(subscription)
      nil
    end

    # Returns `event` (an event or an Envelope).
    def publish(event)
      envelope = Envelope.wrap(event)
      if @sync
        raise ShutdownError, "cannot publish #{envelope.event.class}: the event bus is shut down" if shutdown?

        deliver(envelope)
      else
        own_process!
        enqueue(envelope, from_dispatcher: Thread.current.equal?(@dispatcher))
      end
      event
    end

    def shutdown?
      @state == :shutdown
    end

    # Stops accepting events, delivers the queued ones (`drain: true`) for at most
    # `timeout` seconds, then drops what is left. Returns the final EventBusShutdown.
    def shutdown(drain: true, timeout: 5.0)
      timeout ||= @shutdown_timeout || 30.0 # never wait forever
      own_process!
      return drop_queue if !drain && @state == :draining # a force while draining
      return nil unless claim_shutdown(drain)

      notify_lifecycle(EventBusShutdown.new(status: :initiated, drain_requested: drain, timeout_seconds: timeout,
                                            events_drained: 0, occurred_at: Time.now.utc))
      completed = @sync || wait_for_dispatcher(timeout)
      restore_signal_handlers
      finish(drain, timeout, completed)
    end

    # Drops every queued event and returns at once; the handler running now (if any)
    # finishes, it is never killed (a killed handler can leave a transaction half done).
    def force_shutdown
      shutdown(drain: false, timeout: 0)
    end

    private

    # In a forked child, on the bus's first use there: the child inherits the queue but
    # not the thread, so it gets an empty queue, and its own dispatcher on its first
    # publish (the parent still delivers what it had queued). Checked on use, not reset
    # by a fork hook: that would need a registry of every bus, held weakly.
    def own_process!
      return if @sync || @pid == ActsAsTbackend::ForkSafety.pid

      FORK_LOCK.synchronize do
        next if @pid == ActsAsTbackend::ForkSafety.pid

        prepare_queue unless shutdown?
        @pid = ActsAsTbackend::ForkSafety.pid
      end
    end

    # A high-water mark without a bound is accepted and inert, as in tcb 0.6.2: pressure is
    # only measured against max_queue_size.
    def validate_sizes!(max_queue_size, high_water_mark)
      { max_queue_size: max_queue_size, high_water_mark: high_water_mark }.each do |name, value|
        next if value.nil? || (value.is_a?(Integer) && value.positive?)

        raise ArgumentError, "#{name} must be a positive Integer, got #{value.inspect}"
      end
    end

    def prepare_queue
      @mutex = Mutex.new
      @not_empty = ConditionVariable.new
      @not_full = ConditionVariable.new
      @queue = []
      @above_mark = false
      @drained = 0
      @dispatcher = nil
    end

    # Called with the lock held, after a push: the first event starts the thread, once.
    def start_dispatcher
      return if @dispatcher

      # Named by its creator, not from inside: a thread not yet scheduled would otherwise be
      # nameless to anyone listing threads (Puma's boot check, a fork's census).
      @dispatcher = Thread.new { dispatch_loop }
      @dispatcher.name = "tcb-event-bus"
    end

    def enqueue(envelope, from_dispatcher:)
      pressure = @mutex.synchronize do
        @not_full.wait(@mutex) while !from_dispatcher && full? && @state == :running
        accepting = @state == :running || (@state == :draining && from_dispatcher)
        raise ShutdownError, "cannot publish #{envelope.event.class}: the event bus is shut down" unless accepting

        @queue << envelope
        start_dispatcher
        @not_empty.signal
        pressure_crossed?
      end
      publish_pressure(pressure) if pressure
    end

    def full?
      @max_queue_size && @queue.size >= @max_queue_size
    end

    # Called with the lock held, right after a push; returns the size at the crossing.
    def pressure_crossed?
      return nil if @high_water_mark.nil? || @max_queue_size.nil? || @above_mark || @queue.size < @high_water_mark

      @above_mark = true
      @queue.size
    end

    # The pressure event skips the bound: the publisher that crossed the mark may be the
    # one that filled the queue.
    def publish_pressure(size)
      event = EventBusQueuePressure.new(queue_size: size, max_queue_size: @max_queue_size,
                                        occupancy: size.fdiv(@max_queue_size), occurred_at: Time.now.utc)
      @mutex.synchronize do
        next unless @state == :running

        @queue << Envelope.wrap(event)
        @not_empty.signal
      end
    end

    def dispatch_loop
      while (envelope = next_envelope)
        deliver(envelope)
      end
    rescue Exception => e # rubocop:disable Lint/RescueException -- a dying dispatcher must be visible
      Instrumentation.failure("dispatcher_died.tcb", "event bus dispatcher died: #{Instrumentation.error_message(e)}",
                              error: e)
      raise
    end

    def next_envelope
      @mutex.synchronize do
        @not_empty.wait(@mutex) while @queue.empty? && @state == :running
        next nil if @queue.empty? || @state == :shutdown

        envelope = @queue.shift
        @drained += 1 if @state == :draining
        @above_mark = false if @high_water_mark && @queue.size < @high_water_mark
        @not_full.signal
        envelope
      end
    end

    def deliver(envelope)
      @registry.subscriptions_for(envelope.event.class).each { |subscription| invoke(subscription, envelope) }
    end

    def invoke(subscription, envelope)
      Context.for_reaction(envelope) do
        subscription.block? ? subscription.handler.call(envelope) : subscription.handler.new.call(envelope.event)
      end
    rescue StandardError, ScriptError => e
      report_failure(subscription, envelope, e)
    end

    def report_failure(subscription, envelope, error)
      failure = SubscriberInvocationFailed.new(
        original_event: envelope.event, subscriber_type: subscription.type, subscriber_class: subscription.subscriber_class,
        subscriber_location: subscription.location, subscriber_source: subscription.source,
        error_class: error.class.name, error_message: error.message, error_backtrace: error.backtrace || [],
        occurred_at: Time.now.utc
      )
      Instrumentation.failure(
        "handler_failed.tcb",
        "#{subscription.source} failed on #{envelope.event.class} (event_id #{envelope.event_id}): " \
        "#{Instrumentation.error_message(error)}",
        failure: failure, envelope: envelope, error: error
      )
      # A failing failure handler is logged, not republished: that would loop.
      publish_failure(failure) unless envelope.event.is_a?(SubscriberInvocationFailed)
    end

    def publish_failure(failure)
      if @sync
        deliver(Envelope.wrap(failure))
      else
        enqueue(Envelope.wrap(failure), from_dispatcher: true)
      end
    rescue ShutdownError
      nil # the bus was force-stopped meanwhile; the failure is already logged
    end
  end
end
