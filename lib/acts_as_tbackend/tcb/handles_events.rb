# frozen_string_literal: true

module TCB
  # Reactions and persistence rules declared in a domain module's body:
  #
  #   on OrderPlaced, react_with(ReserveStock, Notify)      # through the bus
  #   on OrderPlaced, ensure_reaction(ChargeCard)           # through the outbox
  #   persist events(OrderPlaced, OrderShipped, stream_id_from_event: :order_id)
  #
  # Nothing is wired here; `TCB.configure` reads the registrations and wires them.
  module HandlesEvents
    Reactions = Struct.new(:handlers, :kind)
    PersistSpec = Struct.new(:event_classes, :stream_id_from_event)
    # One `on` line with `react_with`: handlers run on the bus.
    EventHandlerRegistration = Struct.new(:event_class, :handlers, keyword_init: true)
    # One event class a module persists, and the event reader giving its aggregate id.
    PersistRegistration = Struct.new(:event_class, :stream_id_from_event, :domain_module, keyword_init: true)
    # One `ensure_reaction` handler: delivered through the module's outbox. The copies in
    # TCB.config.outbox_registrations carry that outbox store (tcb 0.6.2's relay jobs and
    # tests reach it as `outbox_registrations.first.outbox_store`); a module's own have none.
    OutboxRegistration = Struct.new(:event_class, :handler_class, :domain_module, :outbox_store, keyword_init: true) do
      alias_method :handler, :handler_class # tcb 0.6.2's name
    end

    def self.included(base)
      base.extend(ClassMethods)
    end

    def self.extended(base)
      base.extend(ClassMethods)
    end

    # The DSL, as module methods of the including module.
    module ClassMethods
      def react_with(*handlers)
        Reactions.new(validate_handlers!(handlers, "react_with"), :bus)
      end

      def ensure_reaction(*handlers)
        Reactions.new(validate_handlers!(handlers, "ensure_reaction"), :outbox)
      end

      def on(event_class, reactions)
        raise ArgumentError, "on #{event_class.inspect}: the event must be a class" unless event_class.is_a?(Class)
        raise ArgumentError, "on #{event_class}: use react_with(...) or ensure_reaction(...)" unless reactions.is_a?(Reactions)

        reactions.handlers.each { |handler| add_reaction(event_class, handler, reactions.kind) }
        self
      end

      def events(*event_classes, stream_id_from_event:)
        raise ArgumentError, "events(...) needs at least one event class" if event_classes.empty?

        bad = event_classes.reject { |klass| klass.is_a?(Class) }
        raise ArgumentError, "events(...) takes classes, got #{bad.map(&:inspect).join(', ')}" unless bad.empty?

        PersistSpec.new(event_classes, stream_id_from_event.to_sym)
      end

      def persist(spec)
        raise ArgumentError, "persist takes events(..., stream_id_from_event: :attr)" unless spec.is_a?(PersistSpec)

        spec.event_classes.each do |event_class|
          if persist_registrations.any? { |registration| registration.event_class == event_class }
            raise ConfigurationError, "#{name}: #{event_class} is already persisted"
          end

          persist_registrations << PersistRegistration.new(event_class: event_class, domain_module: self,
                                                           stream_id_from_event: spec.stream_id_from_event)
        end
        self
      end

      def event_handler_registrations
        @event_handler_registrations ||= []
      end

      def persist_registrations
        @persist_registrations ||= []
      end

      def outbox_registrations
        @outbox_registrations ||= []
      end

      private

      def validate_handlers!(handlers, verb)
        raise ArgumentError, "#{verb} needs at least one handler class" if handlers.empty?

        handlers.each do |handler|
          next if handler.is_a?(Class) && handler.method_defined?(:call)

          raise ConfigurationError, "#{verb}(#{handler.inspect}): a handler must be a class with an instance method #call"
        end
        handlers
      end

      # A handler listed twice for one event would run twice per event; tcb 0.6.2 kept
      # such duplicates silently.
      def add_reaction(event_class, handler, kind)
        if reaction_registered?(event_class, handler)
          raise ConfigurationError, "#{name}: #{handler} already reacts to #{event_class}"
        end

        if kind == :outbox
          outbox_registrations << OutboxRegistration.new(event_class: event_class, handler_class: handler, domain_module: self)
        else
          registration = event_handler_registrations.find { |r| r.event_class == event_class }
          registration ||= EventHandlerRegistration.new(event_class: event_class, handlers: []).tap do |r|
            event_handler_registrations << r
          end
          registration.handlers << handler
        end
      end

      def reaction_registered?(event_class, handler)
        event_handler_registrations.any? { |r| r.event_class == event_class && r.handlers.include?(handler) } ||
          outbox_registrations.any? { |r| r.event_class == event_class && r.handler_class == handler }
      end
    end
  end

  # `handle PlaceOrder, with(PlaceOrderHandler)`: one command, one handler.
  module HandlesCommands
    CommandHandler = Struct.new(:handler)
    CommandRegistration = Struct.new(:command_class, :handler_class, :domain_module, keyword_init: true) do
      alias_method :handler, :handler_class # tcb 0.6.2's name
    end

    def self.included(base)
      base.extend(ClassMethods)
    end

    def self.extended(base)
      base.extend(ClassMethods)
    end

    # The DSL, as module methods of the including module.
    module ClassMethods
      def with(handler)
        unless handler.is_a?(Class) && handler.method_defined?(:call)
          raise ConfigurationError, "with(#{handler.inspect}): a command handler must be a class with an instance method #call"
        end

        CommandHandler.new(handler)
      end

      def handle(command_class, handler)
        raise ArgumentError, "handle #{command_class.inspect}: the command must be a class" unless command_class.is_a?(Class)
        raise ArgumentError, "handle #{command_class}: use with(HandlerClass)" unless handler.is_a?(CommandHandler)

        existing = command_handler_registrations.find { |r| r.command_class == command_class }
        if existing
          raise ConfigurationError, "#{name}: #{command_class} already handled by #{existing.handler_class} " \
                                    "(a command has exactly one handler)"
        end

        command_handler_registrations << CommandRegistration.new(command_class: command_class, handler_class: handler.handler,
                                                                 domain_module: self)
        self
      end

      def command_handler_registrations
        @command_handler_registrations ||= []
      end
    end
  end

  # Reactions, persistence and commands in one module.
  module Domain
    def self.included(base)
      base.include(HandlesEvents)
      base.include(HandlesCommands)
    end

    def self.extended(base)
      base.extend(HandlesEvents)
      base.extend(HandlesCommands)
    end
  end

  # For aggregates: `record(event)` while deciding, `TCB.record(events_from: [agg])` persists.
  module RecordsEvents
    def record(event)
      tcb_recorded_events << event
      event
    end

    def recorded_events
      tcb_recorded_events.dup
    end

    def pull_recorded_events
      events = tcb_recorded_events.dup
      tcb_recorded_events.clear
      events
    end

    private

    def tcb_recorded_events
      @tcb_recorded_events ||= []
    end
  end
end
