# frozen_string_literal: true

# The runtime's entry points: configuration, dispatch, record, publish, reads.
module TCB
  @lock = Monitor.new
  @config = nil

  class << self
    # The memoised configuration. Before `configure` it is an unfrozen one that only
    # collects domain modules; `configure` replaces it with a wired, frozen one.
    def config
      @config || @lock.synchronize { @config ||= Configuration.new }
    end

    def configured?
      !@config.nil? && @config.frozen? && @config.event_bus?
    end

    def domain_modules
      config.domain_modules
    end

    # Set before `configure` (or inside it as `c.domain_modules =`). Setting them on a
    # configured runtime raises: the wiring is done, and silently not wiring the new
    # modules is exactly how handlers go missing.
    def domain_modules=(modules)
      @lock.synchronize do
        raise ConfigurationError, "TCB is already configured: call TCB.reset! before setting domain_modules" if config.frozen?

        config.domain_modules = modules
      end
    end

    # Yields the configuration, wires every domain module into it and freezes it. When the
    # block or the wiring raises, the half-built configuration is dropped (its bus shut
    # down) and TCB stays unconfigured.
    def configure
      @lock.synchronize do
        raise ConfigurationError, "TCB is already configured: call TCB.reset! before configuring again" if config.frozen?

        candidate = config
        begin
          yield candidate if block_given?
          warn_without_modules(candidate)
          candidate.wire!
          candidate.freeze
        rescue Exception # rubocop:disable Lint/RescueException -- an interrupt mid-configure must not leave it live either
          discard(candidate)
          raise
        end
        candidate
      end
    end

    # Stops the bus (draining for `graceful_shutdown_time` seconds when given, otherwise
    # at once), then forgets the whole configuration, domain modules included.
    def reset!(graceful_shutdown_time: nil)
      old = @lock.synchronize do
        previous = @config
        @config = nil
        previous
      end
      shut_down(old, graceful_shutdown_time) if old
      nil
    end

    def default_logger
      @default_logger ||= Logger.new($stderr, progname: "tcb")
    end

    private

    # reset! forgets the domain modules; a setup that set them once (the tcb README's)
    # would otherwise configure a runtime without a single handler, silently.
    def warn_without_modules(candidate)
      return unless candidate.domain_modules.empty?

      candidate.logger.warn("[TCB] configure: no domain modules, so no handler is wired. TCB.reset! forgets them: " \
                            "set TCB.domain_modules = [...] before each TCB.configure (see docs/tcb.md)")
    end

    def discard(candidate)
      @config = nil
      candidate.event_bus.force_shutdown if candidate.event_bus? && candidate.event_bus.respond_to?(:force_shutdown)
    rescue StandardError => e
      default_logger.error("TCB: shutting down the bus of a failed configure raised #{e.class}: #{e.message}")
    end

    # In-memory stores are emptied too, after the drain (tests rely on a clean slate);
    # persistent stores are never touched: production calls reset! on every code reload.
    def shut_down(config, graceful_shutdown_time)
      if config.event_bus?
        bus = config.event_bus
        graceful_shutdown_time ? bus.shutdown(drain: true, timeout: graceful_shutdown_time) : bus.force_shutdown
      end
      config.event_store.reset! if config.event_store.is_a?(EventStore::InMemory)
      config.outbox_stores.each_value { |store| store.reset! if store.is_a?(OutboxStore::InMemory) }
    end
  end
end

# Dispatch, record, publish and the reads.
module TCB
  class << self
    # Validates the command and runs its one handler in the caller's thread. The chain
    # keeps the correlation id (a dispatch inside a reaction joins the running chain unless
    # one is given) and the current cause. Returns the correlation id.
    def dispatch(command, correlation_id: nil)
      correlation_id ||= Context.correlation_id || SecureRandom.uuid
      raise NotImplementedError, "#{command.class} must implement validate!" unless command.respond_to?(:validate!)

      command.validate!
      handler = configured_config!.command_handler(command.class)
      Context.with(correlation_id: correlation_id, causation_id: Context.causation_id) do
        handler.new.call(command)
      end
      correlation_id
    end

    # Runs the block, collects the aggregates' recorded events (in `events_from` order)
    # then `events`, and persists them in one unit of work (inside `within.transaction`
    # when given), with their outbox rows. On any exception nothing is persisted and the
    # aggregates' pending events are dropped. Returns one Envelope per event, in order.
    # `expected_version:` (nil, :none or an Integer) guards the one stream written.
    def record(events_from: [], events: [], within: nil, expected_version: nil)
      events_from = Array(events_from)
      events = Array(events)
      raise ArgumentError, "TCB.record needs events_from: [aggregates] or events: [events]" if events_from.empty? && events.empty?

      current = configured_config!
      collected = collect_events(events_from, events) { yield if block_given? }
      Recorder.new(current, within: within, expected_version: expected_version).call(collected)
    end

    # Publishes each event (wrapped in an Envelope unless it is one) on the bus. Returns
    # the arguments.
    def publish(*events_or_envelopes)
      bus = config.event_bus
      events_or_envelopes.each { |item| bus.publish(Envelope.wrap(item)) }
      events_or_envelopes
    end

    def read(domain_module)
      EventQuery.new(event_store!, domain_module)
    end

    def read_correlation(correlation_id, across: nil)
      CorrelationQuery.new(event_store!, correlation_id, across || config.persisting_modules)
    end

    private

    # Dispatch and record need the wiring that only `configure` does.
    def configured_config!
      current = config
      return current if current.frozen?

      raise ConfigurationError, "TCB is not configured: set TCB.domain_modules, then call TCB.configure"
    end

    def event_store!
      config.event_store || raise(ConfigurationError, "no event store configured: TCB.configure { |c| c.event_store = ... }")
    end

    def collect_events(aggregates, events)
      yield
      aggregates.flat_map(&:pull_recorded_events) + events
    rescue Exception # rubocop:disable Lint/RescueException -- whatever aborts the block, nothing may be persisted later
      aggregates.each { |aggregate| aggregate.pull_recorded_events if aggregate.respond_to?(:pull_recorded_events) }
      raise
    end
  end
end
