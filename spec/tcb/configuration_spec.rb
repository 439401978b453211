# frozen_string_literal: true

require_relative "tcb_helper"

RSpec.describe "TCB.configure and TCB.reset!" do
  let(:calls) { Queue.new }

  before do
    stub_const("Sales::OrderPlaced", Struct.new(:order_id))
    stub_const("Sales::PlaceOrder", Struct.new(:order_id) { def validate! = nil })
    stub_const("Sales::PlaceOrderHandler", Class.new do
                                             def call(command) = TCB.publish(Sales::OrderPlaced.new(command.order_id))
                                           end)
    stub_const("CALLS", calls)
    stub_const("Warehouse::Reserve", Class.new { def call(event) = CALLS << [:reserve, event.order_id] })
    Sales.include(TCB::Domain)
    Sales.persist(Sales.events(Sales::OrderPlaced, stream_id_from_event: :order_id))
    Sales.handle(Sales::PlaceOrder, Sales.with(Sales::PlaceOrderHandler))
    Warehouse.include(TCB::HandlesEvents)
    Warehouse.on(Sales::OrderPlaced, Warehouse.react_with(Warehouse::Reserve))
  end

  it "wires every module's reactions and commands, freezes the configuration and reports configured?" do
    expect(TCB.configured?).to be(false)
    config = configure_tcb(Sales, Warehouse)
    expect(config).to be(TCB.config).and be_frozen
    expect(TCB.configured?).to be(true)
    expect(config.domain_modules).to eq([Sales, Warehouse])
    expect(config.command_handler(Sales::PlaceOrder)).to eq(Sales::PlaceOrderHandler)
    expect(config.event_bus.registry.handlers_for(Sales::OrderPlaced)).to eq([Warehouse::Reserve])
    expect(config.persisting_modules).to eq([Sales])
    expect(config.persist_registrations.keys).to eq([Sales::OrderPlaced])
    TCB.dispatch(Sales::PlaceOrder.new(1))
    expect(calls.pop).to eq([:reserve, 1])
  end

  it "computes the permitted serialization classes" do
    stub_const("Money", Class.new)
    TCB.domain_modules = [Sales]
    TCB.configure do |c|
      c.event_bus = TCB::EventBus.new(sync: true)
      c.extra_serialization_classes = [Money]
    end
    expect(TCB.config.permitted_serialization_classes).to contain_exactly(Symbol, Time, Date, BigDecimal, Sales::OrderPlaced,
                                                                          Money)
  end

  it "raises on a second configure without reset!" do
    configure_tcb(Sales)
    expect { TCB.configure { |c| c.event_bus = TCB::EventBus.new(sync: true) } }.to raise_error(TCB::AlreadyConfigured, /reset!/)
  end

  it "explains a missing event bus" do
    expect { TCB.config.event_bus }.to raise_error(TCB::ConfigurationError, /c.event_bus = TCB::EventBus.new/)
    expect { TCB.publish(Sales::OrderPlaced.new(1)) }.to raise_error(TCB::ConfigurationError)
  end

  it "leaves nothing half-built when configure raises: unconfigured, the new bus stopped, a retry works" do
    bus = TCB::EventBus.new
    TCB.domain_modules = [Sales, Warehouse]
    expect do
      TCB.configure do |c|
        c.event_bus = bus
        raise "boom in the block"
      end
    end.to raise_error(RuntimeError, "boom in the block")
    expect(TCB.configured?).to be(false)
    expect(TCB.config).not_to be_frozen
    expect(bus).to be_shutdown
    expect(bus.dispatcher).to be_nil # nothing was published: no thread was ever started
    expect { TCB.dispatch(Sales::PlaceOrder.new(1)) }.to raise_error(TCB::ConfigurationError)

    configure_tcb(Sales, Warehouse)
    TCB.dispatch(Sales::PlaceOrder.new(2))
    expect(calls.pop).to eq([:reserve, 2])
  end

  it "leaves nothing half-built when wiring fails after reactions were subscribed" do
    stub_const("Audit", Module.new)
    Audit.include(TCB::HandlesEvents)
    Audit.persist(Audit.events(Sales::OrderPlaced, stream_id_from_event: :order_id)) # Sales persists it too
    bus = TCB::EventBus.new(sync: true)
    TCB.domain_modules = [Warehouse, Sales, Audit]
    expect do
      TCB.configure do |c|
        c.event_bus = bus
      end
    end.to raise_error(TCB::ConfigurationError, /persisted by both Sales and Audit/)
    expect(TCB.configured?).to be(false)
    expect(bus).to be_shutdown
  end

  it "warns when configure wires no domain modules" do
    configure_tcb(Sales)
    TCB.reset!
    configure_tcb
    expect(log_io.string).to include("WARN").and include("no domain modules")
    expect(TCB.config.event_bus.registry.handlers_for(Sales::OrderPlaced)).to eq([])
  end

  describe "reset!" do
    it "resets the infrastructure: bus stopped, config dropped, in-memory stores emptied; the domain modules stay" do
      store = TCB::EventStore::InMemory.new
      config = configure_tcb(Sales, Warehouse, bus: TCB::EventBus.new, store: store)
      TCB.record(events: [Sales::OrderPlaced.new(1)])
      TCB.reset!
      expect(config.event_bus).to be_shutdown
      expect(TCB.configured?).to be(false)
      expect(TCB.domain_modules).to eq([Sales, Warehouse])
      expect(store.read("sales|1")).to eq([])
      expect { TCB.config.event_bus }.to raise_error(TCB::ConfigurationError)
    end

    it "drains the old bus when given a graceful shutdown time" do
      bus = TCB::EventBus.new
      configure_tcb(Warehouse, bus: bus)
      gate = Queue.new
      bus.subscribe(Sales::OrderPlaced) { gate.pop }
      3.times { |i| TCB.publish(Sales::OrderPlaced.new(i)) }
      shutdowns = []
      bus.subscribe(TCB::EventBusShutdown) { |envelope| shutdowns << envelope.event }
      3.times { gate << :go }
      TCB.reset!(graceful_shutdown_time: 5)
      expect(calls.size).to eq(3)
      expect(shutdowns.last.status).to eq(:completed)
    end
  end

  describe "duplicate registrations raise ConfigurationError" do
    it "for a command handled in two modules" do
      stub_const("Billing", Module.new)
      Billing.include(TCB::HandlesCommands)
      Billing.handle(Sales::PlaceOrder, Billing.with(Sales::PlaceOrderHandler))
      expect { configure_tcb(Sales, Billing) }.to raise_error(TCB::ConfigurationError, /PlaceOrder is handled twice/)
    end

    it "for a command handled twice in one module" do
      expect { Sales.handle(Sales::PlaceOrder, Sales.with(Sales::PlaceOrderHandler)) }
        .to raise_error(TCB::ConfigurationError, /already handled/)
    end

    it "for an event persisted twice in one module" do
      expect { Sales.persist(Sales.events(Sales::OrderPlaced, stream_id_from_event: :order_id)) }
        .to raise_error(TCB::ConfigurationError, /already persisted/)
    end

    it "for the same reaction declared twice, in one module or in two" do
      expect { Warehouse.on(Sales::OrderPlaced, Warehouse.react_with(Warehouse::Reserve)) }
        .to raise_error(TCB::ConfigurationError, /already reacts/)
      stub_const("Shipping", Module.new)
      Shipping.include(TCB::HandlesEvents)
      Shipping.on(Sales::OrderPlaced, Shipping.react_with(Warehouse::Reserve))
      expect { configure_tcb(Warehouse, Shipping) }.to raise_error(TCB::ConfigurationError, /in both Warehouse and Shipping/)
    end
  end

  it "refuses handlers that are not classes with #call, at declaration" do
    expect { Warehouse.react_with(Object.new) }.to raise_error(TCB::ConfigurationError, /instance method #call/)
    expect { Sales.with(Class.new) }.to raise_error(TCB::ConfigurationError, /instance method #call/)
  end

  describe "outbox wiring" do
    before do
      stub_const("Billing::Charge", Class.new { def call(_event) = nil })
      Billing.include(TCB::HandlesEvents)
      Billing.on(Sales::OrderPlaced, Billing.ensure_reaction(Billing::Charge))
    end

    it "builds one outbox store per module with ensure_reaction, from outbox_store_class" do
      configure_tcb(Sales, Billing)
      store = TCB.config.outbox_store_for(Billing)
      expect(store).to be_a(TCB::OutboxStore::InMemory)
      expect(store.domain_module).to eq(Billing)
      expect(TCB.config.outbox_registrations.map(&:handler_class)).to eq([Billing::Charge])
      expect { TCB.config.outbox_store_for(Sales) }.to raise_error(TCB::ConfigurationError, /no outbox/)
      expect(TCB.config.event_bus.registry.handlers_for(Sales::OrderPlaced)).to eq([]) # not on the bus
    end

    it "requires outbox_store_class" do
      expect do
        configure_tcb(Sales, Billing, outbox_store_class: nil)
      end.to raise_error(TCB::ConfigurationError, /outbox_store_class/)
    end

    it "requires the event to be persisted (the outbox refers to it by event_id)" do
      expect { configure_tcb(Billing) }.to raise_error(TCB::ConfigurationError, /needs persisted events/)
    end
  end

  it "tells the event store about every module that persists (register_domain)" do
    registered = []
    store = TCB::EventStore::InMemory.new
    store.define_singleton_method(:register_domain) { |mod| registered << mod }
    configure_tcb(Sales, Warehouse, store: store)
    expect(registered).to eq([Sales])
  end

  it "uses the configured logger, else Rails.logger, else standard error" do
    expect(TCB::Configuration.new.logger).to be(TCB.default_logger)
    rails_logger = Logger.new(StringIO.new)
    stub_const("Rails", Module.new)
    Rails.define_singleton_method(:logger) { rails_logger }
    expect(TCB::Configuration.new.logger).to be(rails_logger)
    mine = test_logger
    TCB.config.logger = mine
    expect(TCB.config.logger).to be(mine)
  end
end
