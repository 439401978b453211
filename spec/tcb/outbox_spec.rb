# frozen_string_literal: true

require_relative "tcb_helper"
require "active_support/notifications"

RSpec.describe "The outbox" do
  let(:deliveries) { Queue.new }
  let(:t0) { Time.utc(2026, 1, 1, 12) }
  let(:now) { [t0] }

  before do
    stub_const("DELIVERIES", deliveries)
    stub_const("FAILURES", Hash.new(0))
    stub_const("Sales::OrderPlaced", Struct.new(:order_id))
    stub_const("Sales::Place", Struct.new(:order_id) { def validate! = nil })
    stub_const("Sales::PlaceHandler", Class.new do
      def call(command) = TCB.record(events: [Sales::OrderPlaced.new(command.order_id)])
    end)
    # Fails the first FAILURES[:times] deliveries.
    stub_const("Billing::Charge", Class.new do
      def call(event)
        FAILURES[:seen] += 1
        raise IOError, "gateway down" if FAILURES[:seen] <= FAILURES[:times]

        DELIVERIES << [event, TCB::Context.correlation_id, TCB::Context.causation_id]
      end
    end)
    Sales.include(TCB::Domain)
    Sales.persist(Sales.events(Sales::OrderPlaced, stream_id_from_event: :order_id))
    Sales.handle(Sales::Place, Sales.with(Sales::PlaceHandler))
    Billing.include(TCB::HandlesEvents)
    Billing.on(Sales::OrderPlaced, Billing.ensure_reaction(Billing::Charge))
    configure_tcb(Sales, Billing)
  end

  let(:outbox) { TCB.config.outbox_store_for(Billing) }

  def relay(**options)
    TCB::OutboxRelay.new(outbox_store: outbox, event_store: TCB.config.event_store, lock_timeout: 60,
                         clock: -> { now.first }, **options)
  end

  def at(time)
    now[0] = time
    self
  end

  it "records an entry per ensure_reaction in the same unit of work as the events" do
    envelope, = TCB.record(events: [Sales::OrderPlaced.new(1)])
    entry, = outbox.all
    expect(entry.to_h).to include(event_id: envelope.event_id, stream_id: "sales|1", version: 1,
                                  handler_class: "Billing::Charge", status: :pending, attempts: 0)
    expect(deliveries).to be_empty # not on the bus

    expect { TCB.record(events: [Sales::OrderPlaced.new(2)]) { raise "abort" } }.to raise_error("abort")
    expect { TCB.record(events: [Sales::OrderPlaced.new(1)], expected_version: 0) }.to raise_error(TCB::WrongExpectedVersion)
    expect(outbox.all.size).to eq(1)
  end

  it "delivers through the relay, in the dispatch's correlation, caused by the event" do
    correlation_id = TCB.dispatch(Sales::Place.new(1))
    envelope, = TCB.read(Sales).stream(1).to_a
    result = relay.run
    expect(result.to_h).to eq(delivered: 1, failed: 0, dead: 0, skipped: 0)
    expect(deliveries.pop).to eq([Sales::OrderPlaced.new(1), correlation_id, envelope.event_id])
    expect(outbox.all.first.to_h).to include(status: :delivered, delivered_at: t0)
    expect(relay.run.delivered).to eq(0)
  end

  it "retries a failed entry with backoff, then delivers it" do
    FAILURES[:times] = 2
    TCB.record(events: [Sales::OrderPlaced.new(1)])
    expect(relay.run.failed).to eq(1)
    entry = outbox.all.first
    expect(entry.to_h).to include(status: :failed, attempts: 1, next_attempt_at: t0 + 2, error: "gateway down")
    expect(at(t0 + 1).relay.run.to_h.values.sum).to eq(0) # not due yet
    expect(at(t0 + 2).relay.run.failed).to eq(1)
    expect(outbox.all.first.next_attempt_at).to eq(t0 + 2 + 4)
    expect(at(t0 + 6).relay.run.delivered).to eq(1)
    expect(deliveries.size).to eq(1)
    expect(outbox.all.first.to_h).to include(status: :delivered, attempts: 2, error: nil)
  end

  it "dead-letters an entry after max_attempts, logging and instrumenting it" do
    FAILURES[:times] = 100
    notifications = []
    subscriber = ActiveSupport::Notifications.subscribe(/outbox_.*\.tcb/) do |name, *, payload|
      notifications << [name, payload[:attempts]]
    end
    TCB.record(events: [Sales::OrderPlaced.new(1)])
    3.times { |i| at(t0 + (3600 * i)).relay(max_attempts: 3).run }
    expect(outbox.all.first.to_h).to include(status: :dead, attempts: 3, next_attempt_at: nil)
    expect(at(t0 + 99_999).relay(max_attempts: 3).run.to_h.values.sum).to eq(0)
    expect(FAILURES[:seen]).to eq(3)
    expect(notifications).to eq([["outbox_delivery_failed.tcb", 1], ["outbox_delivery_failed.tcb", 2],
                                 ["outbox_dead_letter.tcb", 3]])
    expect(log_io.string).to include("dead-lettered").and include("IOError: gateway down")
  ensure
    ActiveSupport::Notifications.unsubscribe(subscriber)
  end

  it "recovers entries locked by a relay that died, after lock_timeout" do
    TCB.record(events: [Sales::OrderPlaced.new(1)])
    outbox.lock(outbox.all.first, locked_at: t0)
    expect(at(t0 + 30).relay.run.delivered).to eq(0)
    expect(at(t0 + 61).relay.run.delivered).to eq(1)
  end

  it "fails (and retries) an entry whose event is missing from the store" do
    entry = outbox.insert(event_id: "nope", stream_id: "sales|9", version: 1, handler_class: "Billing::Charge")
    expect(relay.run.failed).to eq(1)
    expect(outbox.all.find { |e| e.id == entry.id }.error).to include("not in the event store")
  end

  describe "claiming" do
    it "skips an entry another relay claimed since it was listed" do
      TCB.record(events: [Sales::OrderPlaced.new(1)])
      stale = outbox.pending(now: t0)
      relay.run
      expect(outbox.lock(stale.first, locked_at: t0)).to be_nil
      expect(deliveries.size).to eq(1)
    end

    it "gives every entry to exactly one of many concurrent relays" do
      200.times { |i| TCB.record(events: [Sales::OrderPlaced.new(i)]) }
      relays = Array.new(6) { Thread.new { relay.run } }
      results = join_all(relays, 20)
      expect(results.sum(&:delivered)).to eq(200)
      expect(Array.new(deliveries.size) { deliveries.pop.first.order_id }.sort).to eq((0...200).to_a)
    end

    it "lets exactly one of many threads lock the same entry" do
      entry = outbox.insert(event_id: "e", stream_id: "sales|1", version: 1, handler_class: "Billing::Charge")
      winners = Array.new(16) { Thread.new { outbox.lock(entry, locked_at: t0) } }.map(&:value).compact
      expect(winners.size).to eq(1)
      expect(winners.first.status).to eq(:locked)
    end
  end

  it "refuses an event store that cannot look events up by id" do
    expect { TCB::OutboxRelay.new(outbox_store: outbox, event_store: Object.new, lock_timeout: 1) }
      .to raise_error(ArgumentError, /read_by_event_ids/)
  end
end
