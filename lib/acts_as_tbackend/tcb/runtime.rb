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

    def discard(candidate)
      @config = nil
      bus = candidate.instance_variable_get(:@event_bus)
      bus.force_shutdown if bus.respond_to?(:force_shutdown)
    rescue StandardError => e
      default_logger.error("TCB: shutting down the bus of a failed configure raised #{e.class}: #{e.message}")
    end

    # In-memory stores are emptied too (tests rely on a clean slate); persistent stores
    # are never touched: production calls reset! on every code reload.
    def shut_down(config, graceful_shutdown_time)
      config.event_store.reset! if config.event_store.is_a?(EventStore::InMemory)
      config.outbox_stores.each_value { |store| store.reset! if store.is_a?(OutboxStore::InMemory) }
      return unless config.event_bus?

      bus = config.event_bus
      if graceful_shutdown_time
        bus.shutdown(drain: true, timeout: graceful_shutdown_time)
      else
        bus.force_shutdown
      end
    end
  end
end
