# frozen_string_literal: true

# The runtime's entry points: configuration, dispatch, record, publish, reads.
module TCB
  @lock = Monitor.new
  @config = nil
  @domain_modules = [].freeze

  class << self
    # The memoised configuration. Before `configure` it is an unfrozen one holding the
    # declared domain modules; `configure` wires and freezes it.
    def config
      @config || @lock.synchronize { @config ||= Configuration.new.tap { |c| c.domain_modules = @domain_modules } }
    end

    def configured?
      !@config.nil? && @config.frozen? && @config.event_bus?
    end

    # The wired modules once configured, else the declared ones.
    def domain_modules
      configured? ? config.domain_modules : @domain_modules
    end

    # Declares the app's bounded contexts. They outlive `reset!` (tcb's README sets them
    # once, in a plain initializer, and resets in `to_prepare` and between tests); each is
    # looked up again by its constant name at every `configure`, so a code reload wires the
    # fresh classes. On a configured runtime the modules are wired at once: the same
    # infrastructure is configured again with the new modules.
    def domain_modules=(modules)
      @lock.synchronize do
        modules = Configuration.check_domain_modules(modules)
        if configured?
          rewire(modules)
        else
          @domain_modules = modules.freeze
          config.domain_modules = modules
        end
      end
    end

    # Yields the configuration, wires every domain module into it and freezes it. When the
    # block or the wiring raises, the half-built configuration is dropped (its bus shut
    # down) and TCB stays unconfigured.
    def configure
      @lock.synchronize do
        raise AlreadyConfigured, @config if @config&.frozen?

        candidate = config
        begin
          yield candidate if block_given?
          candidate.domain_modules = resolve(candidate.domain_modules)
          warn_without_modules(candidate)
          candidate.wire!
          candidate.freeze
        rescue Exception # rubocop:disable Lint/RescueException -- an interrupt mid-configure must not leave it live either
          discard(candidate)
          raise
        end
        @domain_modules = candidate.domain_modules
        candidate
      end
    end

    # Stops the bus (draining for `graceful_shutdown_time` seconds when given, otherwise
    # at once) and forgets the configuration. The domain modules stay declared.
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

    # Each named module is looked up by its name: after a code reload the constant holds a
    # new module and the old one must not stay wired (its handlers are the stale classes).
    def resolve(modules)
      modules.map do |mod|
        next mod unless mod.name

        current = Object.const_get(mod.name)
        next current if current.is_a?(Module)

        raise ConfigurationError, "domain module #{mod.name} is now #{current.inspect}, not a module"
      rescue NameError => e
        raise unless e.name.to_s == mod.name.split("::").last || e.message.include?(mod.name)

        raise ConfigurationError, "domain module #{mod.name} is no longer defined (removed by a code reload?): " \
                                  "update TCB.domain_modules"
      end
    end

    # The current infrastructure wired again with other modules. The old reactions leave
    # the bus only once the new wiring has been checked, so a failure keeps the old one.
    def rewire(modules)
      current = @config
      candidate = current.rewired(resolve(modules))
      current.release_reactions
      candidate.subscribe_planned_reactions
      candidate.freeze
      @domain_modules = candidate.domain_modules
      @config = candidate
    end

    def warn_without_modules(candidate)
      return unless candidate.domain_modules.empty?

      candidate.logger.warn("[TCB] configure: no domain modules, so no handler is wired: " \
                            "set TCB.domain_modules = [...] (see docs/tcb.md)")
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

      current = config
      collected = collect_events(events_from, events) { yield if block_given? }
      return unconfigured_envelopes(collected) unless current.frozen?

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

    # Before `configure` (unit tests of aggregates) events are wrapped, not stored, as in
    # tcb 0.6.2. An event a declared module persists would be lost silently: that raises.
    def unconfigured_envelopes(events)
      persisted = events.map(&:class).uniq.filter_map do |klass|
        owner = @domain_modules.find do |mod|
          mod.respond_to?(:persist_registrations) && mod.persist_registrations.any? { |r| r.event_class == klass }
        end
        "#{klass} (persisted by #{owner})" if owner
      end
      unless persisted.empty?
        raise ConfigurationError, "TCB is not configured, so #{persisted.join(', ')} would not be stored: " \
                                  "call TCB.configure before TCB.record"
      end

      context = Context.current
      events.map { |event| Envelope.wrap(event, correlation_id: context.correlation_id, causation_id: context.causation_id) }
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
