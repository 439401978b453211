# frozen_string_literal: true

require "bigdecimal"
require "date"
require "logger"

module TCB
  # The infrastructure the domain modules run on. Built and yielded by `TCB.configure`,
  # wired (`wire!`), then frozen: a running app never sees a half-configured runtime.
  class Configuration
    BASE_SERIALIZATION_CLASSES = [Symbol, Time, Date, BigDecimal].freeze

    attr_writer :event_bus, :logger
    attr_accessor :event_store, :outbox_store_class, :extra_serialization_classes
    attr_reader :domain_modules, :persist_registrations, :outbox_registrations, :permitted_serialization_classes

    def initialize
      @domain_modules = []
      @extra_serialization_classes = []
      @persist_registrations = {}
      @outbox_registrations = []
      @command_handlers = {}
      @outbox_stores = {}
      @permitted_serialization_classes = BASE_SERIALIZATION_CLASSES
    end

    # Modules, named or not: an anonymous one may react and handle commands, but cannot
    # persist or use an outbox (streams and tables are named after the module; see wire!).
    def self.check_domain_modules(modules)
      modules = Array(modules)
      bad = modules.reject { |mod| mod.is_a?(Module) }
      raise ConfigurationError, "domain modules must be modules, got #{bad.map(&:inspect).join(', ')}" unless bad.empty?

      modules.uniq
    end

    def domain_modules=(modules)
      @domain_modules = self.class.check_domain_modules(modules)
    end

    def event_bus
      @event_bus || raise(ConfigurationError, "no event bus configured: TCB.configure { |c| c.event_bus = TCB::EventBus.new }")
    end

    def event_bus?
      !@event_bus.nil?
    end

    # The logger for handler and outbox failures: the configured one, else Rails.logger,
    # else standard error. Read at each failure, so a Rails logger set later is used.
    def logger
      @logger || (defined?(::Rails) && ::Rails.respond_to?(:logger) && ::Rails.logger) || TCB.default_logger
    end

    def command_handler(command_class)
      @command_handlers.fetch(command_class) do
        raise CommandHandlerNotFound, "no handler registered for #{command_class} " \
                                      "(declare `handle #{command_class}, with(Handler)` in one of TCB.domain_modules)"
      end
    end

    # Domain modules with at least one `persist` rule: the default `across:` of read_correlation.
    def persisting_modules
      domain_modules.select { |mod| @persist_registrations.each_value.any? { |r| r.domain_module == mod } }
    end

    def persist_registration_for(event_class)
      @persist_registrations[event_class]
    end

    def outbox_registrations_for(event_class)
      @outbox_registrations.select { |registration| registration.event_class == event_class }
    end

    # The outbox store of a module with `ensure_reaction`s, built once at configure time.
    def outbox_store_for(domain_module)
      @outbox_stores.fetch(domain_module) do
        raise ConfigurationError, "#{domain_module.inspect} has no outbox: it declares no ensure_reaction"
      end
    end

    def outbox_stores
      @outbox_stores.dup
    end

    # The domain module whose context string is `context` ("payments/charges"), or nil.
    def domain_module_for_context(context)
      domain_modules.find { |mod| DomainContext.from_module(mod).to_s == context.to_s }
    end

    # Reads every registration of every domain module and subscribes the reactions. Raises
    # ConfigurationError on the first inconsistency; the caller discards this
    # configuration then (and shuts its bus down), so nothing half-wired stays live.
    def wire!
      prepare!
      subscribe_planned_reactions
      self
    end

    # Everything wire! does but subscribing: checks and collects the registrations, builds
    # the outbox stores (reusing `outbox_stores` of a previous wiring for the same module,
    # so in-memory outboxes keep their rows) and plans the subscriptions.
    def prepare!(outbox_stores: {})
      check_anonymous_modules
      collect_registrations
      build_outbox_stores(outbox_stores)
      OutboxTableCheck.call(@outbox_stores, logger)
      domain_modules_with_persistence.each do |mod|
        event_store&.register_domain(mod) if event_store.respond_to?(:register_domain)
      end
      @planned_reactions = plan_reactions
      @permitted_serialization_classes = (BASE_SERIALIZATION_CLASSES + @persist_registrations.keys +
                                          Array(extra_serialization_classes)).uniq.freeze
      freeze_registrations
      self
    end

    def subscribe_planned_reactions
      @subscriptions = @planned_reactions.map { |event_class, handler| event_bus.subscribe(event_class, handler) }.freeze
    end

    # Takes this wiring's reactions off the bus (a rewire replaces them).
    def release_reactions
      Array(@subscriptions).each { |subscription| event_bus.unsubscribe(subscription) }
    end

    # An unwired copy with the same infrastructure and other modules, prepared (checked)
    # but not yet subscribed: see TCB.domain_modules=.
    def rewired(modules)
      copy = self.class.new
      copy.event_bus = @event_bus
      copy.event_store = event_store
      copy.outbox_store_class = outbox_store_class
      copy.extra_serialization_classes = extra_serialization_classes
      copy.logger = @logger
      copy.domain_modules = modules
      copy.prepare!(outbox_stores: @outbox_stores)
    end

    private

    # Stream ids, table names and handler strings come from the module's name.
    def check_anonymous_modules
      domain_modules.each do |mod|
        next if mod.name
        next if registrations(mod, :persist_registrations).empty? && registrations(mod, :outbox_registrations).empty?

        raise ConfigurationError, "#{mod.inspect} is anonymous but persists events or declares ensure_reaction: " \
                                  "streams and tables are named after the module, so give it a constant name"
      end
    end

    def collect_registrations
      domain_modules.each do |mod|
        registrations(mod, :command_handler_registrations).each { |r| add_command_handler(r) }
        registrations(mod, :persist_registrations).each { |r| add_persist_registration(r) }
        @outbox_registrations.concat(registrations(mod, :outbox_registrations))
      end
      unpersisted = @outbox_registrations.reject { |r| @persist_registrations.key?(r.event_class) }
      return if unpersisted.empty?

      names = unpersisted.map { |r| "#{r.domain_module}: #{r.event_class} → #{r.handler_class}" }
      raise ConfigurationError,
            "ensure_reaction needs persisted events (the outbox refers to them by event_id): #{names.join('; ')}"
    end

    def registrations(mod, reader)
      mod.respond_to?(reader) ? mod.public_send(reader) : []
    end

    def add_command_handler(registration)
      if (existing = @command_handlers[registration.command_class])
        raise ConfigurationError, "#{registration.command_class} is handled twice: by #{existing} and by " \
                                  "#{registration.handler_class} (#{registration.domain_module})"
      end

      @command_handlers[registration.command_class] = registration.handler_class
    end

    def add_persist_registration(registration)
      if (existing = @persist_registrations[registration.event_class])
        raise ConfigurationError, "#{registration.event_class} is persisted by both #{existing.domain_module} " \
                                  "and #{registration.domain_module}"
      end

      @persist_registrations[registration.event_class] = registration
    end

    def domain_modules_with_persistence
      @persist_registrations.each_value.map(&:domain_module).uniq
    end

    def build_outbox_stores(previous)
      modules = @outbox_registrations.map(&:domain_module).uniq
      return if modules.empty?

      unless outbox_store_class
        raise ConfigurationError, "#{modules.join(', ')} declare ensure_reaction: set c.outbox_store_class " \
                                  "(e.g. TCB::OutboxStore::InMemory)"
      end

      modules.each do |mod|
        _, kept = previous.find { |old, store| old.name == mod.name && store.instance_of?(outbox_store_class) }
        @outbox_stores[mod] = kept || outbox_store_class.new(mod)
      end
      @outbox_registrations = @outbox_registrations.map do |registration|
        registration.dup.tap { |copy| copy.outbox_store = @outbox_stores.fetch(registration.domain_module) }
      end
    end

    # [[event_class, handler], ...] in declaration order.
    def plan_reactions
      seen = {}
      domain_modules.each do |mod|
        registrations(mod, :event_handler_registrations).each do |registration|
          registration.handlers.each do |handler|
            key = [registration.event_class, handler]
            if seen[key]
              raise ConfigurationError,
                    "#{handler} reacts to #{registration.event_class} in both #{seen[key]} and #{mod}"
            end

            seen[key] = mod
          end
        end
      end
      seen.keys.freeze
    end

    def freeze_registrations
      @domain_modules.freeze
      @persist_registrations.freeze
      @outbox_registrations.freeze
      @command_handlers.freeze
      @outbox_stores.freeze
    end
  end
end
