# frozen_string_literal: true

require_relative "tcb_helper"

RSpec.describe "TCB.dispatch, TCB.record and TCB.publish" do
  let(:seen) { Queue.new }

  # The README's chain: Sales → Warehouse → Notifications, with aggregates, direct events,
  # a reaction that dispatches a command, and records made after nested reactions ran.
  before do
    stub_const("SEEN", seen)
    stub_const("Sales::OrderPlaced", Struct.new(:order_id, :customer))
    stub_const("Sales::OrderConfirmed", Struct.new(:order_id))
    stub_const("Sales::PlaceOrder", Struct.new(:order_id, :customer) do
      def validate!
        raise ArgumentError, "customer required" if customer.nil?
      end
    end)
    stub_const("Sales::Order", Class.new do
      include TCB::RecordsEvents
      attr_reader :id

      def initialize(id) = @id = id
      def place(customer) = record(Sales::OrderPlaced.new(id, customer))
    end)
    stub_const("Sales::PlaceOrderHandler", Class.new do
      def call(command)
        SEEN << [:handler_thread, Thread.current]
        order = Sales::Order.new(command.order_id)
        TCB.publish(*TCB.record(events_from: [order]) { order.place(command.customer) })
        # Runs after the whole synchronous reaction chain: its ids must be the dispatch's.
        TCB.record(events: [Sales::OrderConfirmed.new(command.order_id)])
      end
    end)
    stub_const("Warehouse::StockReserved", Struct.new(:order_id))
    stub_const("Warehouse::Pick", Struct.new(:order_id) { def validate! = nil })
    stub_const("Warehouse::PickHandler", Class.new do
      def call(command) = TCB.record(events: [Warehouse::Picked.new(command.order_id)])
    end)
    stub_const("Warehouse::Picked", Struct.new(:order_id))
    stub_const("Warehouse::ReserveStock", Class.new do
      def call(event)
        TCB.dispatch(Warehouse::Pick.new(event.order_id))
        TCB.publish(*TCB.record(events: [Warehouse::StockReserved.new(event.order_id)]))
      end
    end)
    stub_const("Notifications::CustomerNotified", Struct.new(:order_id))
    stub_const("Notifications::NotifyCustomer", Class.new do
      def call(event)
        TCB.record(events: [Notifications::CustomerNotified.new(event.order_id)]).each { |e| SEEN << e }
      end
    end)

    Sales.include(TCB::Domain)
    Sales.persist(Sales.events(Sales::OrderPlaced, Sales::OrderConfirmed, stream_id_from_event: :order_id))
    Sales.handle(Sales::PlaceOrder, Sales.with(Sales::PlaceOrderHandler))
    Warehouse.include(TCB::Domain)
    Warehouse.persist(Warehouse.events(Warehouse::StockReserved, Warehouse::Picked, stream_id_from_event: :order_id))
    Warehouse.handle(Warehouse::Pick, Warehouse.with(Warehouse::PickHandler))
    Warehouse.on(Sales::OrderPlaced, Warehouse.react_with(Warehouse::ReserveStock))
    Notifications.include(TCB::HandlesEvents)
    Notifications.persist(Notifications.events(Notifications::CustomerNotified, stream_id_from_event: :order_id))
    Notifications.on(Warehouse::StockReserved, Notifications.react_with(Notifications::NotifyCustomer))
  end

  def stream(mod, id)
    TCB.read(mod).stream(id).to_a
  end

  describe "dispatch" do
    before { configure_tcb(Sales, Warehouse, Notifications) }

    it "validates, runs the one handler in the caller's thread and returns the correlation id" do
      expect(TCB.dispatch(Sales::PlaceOrder.new(1, "Alice"), correlation_id: "req-1")).to eq("req-1")
      expect(seen.pop).to eq([:handler_thread, Thread.current])
      expect(TCB.dispatch(Sales::PlaceOrder.new(2, "Bob"))).to match(/\A\h{8}-/)
    end

    it "raises the validation error and runs no handler" do
      expect { TCB.dispatch(Sales::PlaceOrder.new(1, nil)) }.to raise_error(ArgumentError, "customer required")
      expect(seen).to be_empty
    end

    it "requires validate! on the command, raising NotImplementedError as tcb 0.6.2 does" do
      stub_const("Sales::Unvalidated", Struct.new(:x))
      expect { TCB.dispatch(Sales::Unvalidated.new(1)) }
        .to raise_error(NotImplementedError, "Sales::Unvalidated must implement validate!")
    end

    it "routes by exact class: a subclass has no handler" do
      stub_const("Sales::PlaceRushOrder", Class.new(Sales::PlaceOrder))
      expect { TCB.dispatch(Sales::PlaceRushOrder.new(1, "A")) }
        .to raise_error(TCB::CommandHandlerNotFound, /Sales::PlaceRushOrder/)
    end

    it "refuses to run before configure" do
      TCB.reset!
      expect { TCB.dispatch(Sales::PlaceOrder.new(1, "A")) }.to raise_error(TCB::ConfigurationError, /not configured/)
    end
  end

  describe "correlation and causation" do
    it "survive nested synchronous reactions and dispatches, down the whole chain and after it" do
      configure_tcb(Sales, Warehouse, Notifications)
      TCB.dispatch(Sales::PlaceOrder.new(42, "Alice"), correlation_id: "req-abc")

      placed, confirmed = stream(Sales, 42)
      picked, reserved = stream(Warehouse, 42)
      notified, = stream(Notifications, 42)
      expect([placed, confirmed, picked, reserved, notified].map(&:correlation_id)).to all(eq("req-abc"))
      expect(placed.causation_id).to be_nil
      expect(confirmed.causation_id).to be_nil # tcb 0.6.2: the nested chain wiped both ids
      expect(picked.causation_id).to eq(placed.event_id) # a dispatch inside a reaction keeps the cause
      expect(reserved.causation_id).to eq(placed.event_id) # ...and so does what the reaction records after it
      expect(notified.causation_id).to eq(reserved.event_id)
      expect(TCB::Context.current.correlation_id).to be_nil
    end

    it "follow the envelopes through an async bus" do
      configure_tcb(Sales, Warehouse, Notifications, bus: TCB::EventBus.new)
      correlation_id = TCB.dispatch(Sales::PlaceOrder.new(7, "Alice"))
      seen.pop # handler thread
      notified = seen.pop
      reserved, = TCB.read(Warehouse).stream(7).to_a.select { |e| e.event.is_a?(Warehouse::StockReserved) }
      expect([notified.correlation_id, notified.causation_id]).to eq([correlation_id, reserved.event_id])
    end

    it "are nil outside any dispatch" do
      configure_tcb(Sales, Warehouse, Notifications)
      envelope, = TCB.record(events: [Sales::OrderConfirmed.new(1)])
      expect([envelope.correlation_id, envelope.causation_id]).to eq([nil, nil])
    end
  end

  describe "record" do
    before { configure_tcb(Sales, Warehouse, Notifications, bus: TCB::EventBus.new(sync: true)) }

    it "persists aggregate events in events_from order, then direct events, and returns their envelopes" do
      first = Sales::Order.new(1)
      second = Sales::Order.new(2)
      envelopes = TCB.record(events_from: [second, first], events: [Sales::OrderConfirmed.new(1)]) do
        first.place("A")
        second.place("B")
      end
      expect(envelopes.map(&:event)).to eq([Sales::OrderPlaced.new(2, "B"), Sales::OrderPlaced.new(1, "A"),
                                            Sales::OrderConfirmed.new(1)])
      expect(envelopes.map(&:stream_id)).to eq(["sales|2", "sales|1", "sales|1"])
      expect(envelopes.map(&:version)).to eq([1, 1, 2])
      expect(stream(Sales, 1)).to eq(envelopes.values_at(1, 2))
      expect(first.recorded_events).to eq([])
    end

    it "gives two equal events two envelopes" do
      twice = [Sales::OrderConfirmed.new(1), Sales::OrderConfirmed.new(1)]
      envelopes = TCB.record(events: twice)
      expect(envelopes.map(&:version)).to eq([1, 2])
      expect(envelopes.map(&:event_id).uniq.size).to eq(2)
      expect(stream(Sales, 1)).to eq(envelopes)
    end

    it "persists nothing and clears the aggregates when the block raises" do
      order = Sales::Order.new(1)
      expect do
        TCB.record(events_from: [order], events: [Sales::OrderConfirmed.new(1)]) do
          order.place("A")
          raise "decided otherwise"
        end
      end.to raise_error("decided otherwise")
      expect(stream(Sales, 1)).to eq([])
      expect(order.recorded_events).to eq([])
    end

    it "persists nothing when a later stream's append fails (one unit of work across streams)" do
      TCB.record(events: [Sales::OrderConfirmed.new(2)])
      store = TCB.config.event_store
      store.define_singleton_method(:append) do |**args|
        raise IOError, "disk full" if args[:stream_id] == "sales|2"

        super(**args)
      end
      expect { TCB.record(events: [Sales::OrderConfirmed.new(1), Sales::OrderConfirmed.new(2)]) }.to raise_error(IOError)
      expect(stream(Sales, 1)).to eq([])
    end

    it "raises ArgumentError with nothing to record" do
      expect { TCB.record }.to raise_error(ArgumentError, /events_from/)
    end

    it "returns envelopes with the chain's ids for events no module persists, without storing them" do
      stub_const("Sales::Ephemeral", Struct.new(:x))
      envelope = nil
      TCB::Context.with(correlation_id: "c", causation_id: "k") { envelope, = TCB.record(events: [Sales::Ephemeral.new(1)]) }
      expect([envelope.stream_id, envelope.version, envelope.correlation_id, envelope.causation_id]).to eq([nil, nil, "c", "k"])
    end

    it "persists inside within.transaction" do
      TbackendSpec::Database.connect(:sqlite)
      open_during_append = nil
      store = TCB.config.event_store
      store.define_singleton_method(:append) do |**args|
        open_during_append = ActiveRecord::Base.connection.transaction_open?
        super(**args)
      end
      TCB.record(events: [Sales::OrderConfirmed.new(1)], within: ActiveRecord::Base)
      expect(open_during_append).to be(true)
      TCB.record(events: [Sales::OrderConfirmed.new(1)])
      expect(open_during_append).to be(false)
    end

    describe "expected_version:" do
      it "appends when the stream is at the expected version (:none or 0 for a new stream)" do
        TCB.record(events: [Sales::OrderConfirmed.new(1)], expected_version: :none)
        TCB.record(events: [Sales::OrderConfirmed.new(2)], expected_version: 0)
        envelopes = TCB.record(events: [Sales::OrderConfirmed.new(1)], expected_version: 1)
        expect(envelopes.map(&:version)).to eq([2])
      end

      it "raises WrongExpectedVersion naming stream, expected and actual version, and persists nothing" do
        order = Sales::Order.new(1)
        TCB.record(events: [Sales::OrderConfirmed.new(1)])
        error = nil
        begin
          TCB.record(events_from: [order], expected_version: :none) { order.place("A") }
        rescue TCB::WrongExpectedVersion => e
          error = e
        end
        expect(error).to be_a(TCB::Error)
        expect([error.stream_id, error.expected_version, error.actual_version]).to eq(["sales|1", :none, 1])
        expect(error.message).to eq("stream sales|1 expected at version :none, but it is at version 1")
        expect(stream(Sales, 1).size).to eq(1)
        expect(order.recorded_events).to eq([])
      end

      it "refuses to guess which of several streams it guards" do
        expect { TCB.record(events: [Sales::OrderConfirmed.new(1), Sales::OrderConfirmed.new(2)], expected_version: 0) }
          .to raise_error(ArgumentError, /exactly one stream/)
        expect(stream(Sales, 1)).to eq([])
      end
    end
  end

  describe "publish" do
    it "wraps events in envelopes, keeps envelopes as they are, and returns its arguments" do
      configure_tcb(Sales)
      received = []
      TCB.config.event_bus.subscribe(Sales::OrderConfirmed) { |envelope| received << envelope }
      envelope = TCB::Envelope.wrap(Sales::OrderConfirmed.new(2))
      event = Sales::OrderConfirmed.new(1)
      expect(TCB.publish(event, envelope)).to eq([event, envelope])
      expect(received.map(&:event)).to eq([event, envelope.event])
      expect(received.last).to be(envelope)
    end
  end
end
