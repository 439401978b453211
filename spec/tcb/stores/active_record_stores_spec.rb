# frozen_string_literal: true

require_relative "store_helpers"

module TcbStoresSpec
  # An acronym context: tcb 0.6.2 camelized "http_gateway" back to "HttpGateway" and failed.
  module HTTPGateway
    include TCB::HandlesEvents

    Pinged = Struct.new(:host, keyword_init: true)

    persist events(Pinged, stream_id_from_event: :host)
  end

  # Handlers the relay calls by name; each delivery is remembered for the assertions.
  class RecordingHandler
    DELIVERED = Queue.new

    def call(event)
      DELIVERED << event.order_id
    end
  end

  class FailingHandler
    def call(event)
      raise ArgumentError, "warehouse down for #{event.order_id}"
    end
  end

  # A module persisting through the AR event store with a reaction through the AR outbox.
  module Billing
    include TCB::Domain

    Invoiced = Struct.new(:order_id, :amount, keyword_init: true)

    persist events(Invoiced, stream_id_from_event: :order_id)
    on Invoiced, ensure_reaction(RecordingHandler)
  end

  # The connection of forked relays.
  class ChildRecord < ActiveRecord::Base
    self.abstract_class = true
  end

  # The AR outbox store on the PostgreSQL spec database, as `outbox_store_class` needs it.
  class PgOutboxStore < TCB::OutboxStore::ActiveRecord
    def initialize(domain_module)
      super(domain_module, base_class: PgRecord)
    end
  end

  def self.drain(queue)
    Array.new(queue.size) { queue.pop }
  end
end

RSpec.describe "ActiveRecord stores" do
  let(:event_store) { TCB::EventStore::ActiveRecord.new(base_class: base_class) }
  let(:orders_context) { TCB::DomainContext.from_module(TCB::Lint::Orders).to_s }

  before { TcbStoresSpec.drain(TcbStoresSpec::RecordingHandler::DELIVERED) }

  def placed(order_id)
    TCB::Lint::Orders::Placed.new(order_id: order_id, total: BigDecimal("3.5"), placed_at: Time.utc(2026, 1, 1),
                                  due_on: Date.new(2026, 1, 2), channel: :shop, lines: [])
  end

  describe "event store on SQLite" do
    let(:base_class) { TcbStoresSpec::SqliteRecord }

    before do
      TcbStoresSpec.create_tables(base_class, [TCB::Lint::Orders, TcbStoresSpec::HTTPGateway], outbox: false)
      event_store.register_domain(TCB::Lint::Orders)
    end

    it "finds the table of an acronym context from the context string and names its model EventRecord" do
      model = event_store.register_domain(TcbStoresSpec::HTTPGateway)

      expect(TcbStoresSpec::HTTPGateway::EventRecord).to equal(model)
      expect(model.table_name).to eq("tcb_stores_spec__http_gateway_events")
      event_store.append(stream_id: "tcb_stores_spec/http_gateway|example.org",
                         events: [TcbStoresSpec::HTTPGateway::Pinged.new(host: "example.org")])
      expect(event_store.read("tcb_stores_spec/http_gateway|example.org").map(&:event))
        .to eq([TcbStoresSpec::HTTPGateway::Pinged.new(host: "example.org")])
      expect(model.count).to eq(1)
    end

    it "replaces the EventRecord of an earlier configuration instead of warning about a redefined constant" do
      first = event_store.register_domain(TcbStoresSpec::HTTPGateway)
      second = TCB::EventStore::ActiveRecord.new(base_class: base_class).register_domain(TcbStoresSpec::HTTPGateway)

      expect(TcbStoresSpec::HTTPGateway::EventRecord).to equal(second)
      expect(second).not_to equal(first)
    end

    it "stores the payload as JSON with the type and schema version in their columns, never YAML" do
      envelope = event_store.append(stream_id: "#{orders_context}|42", events: [placed("42")]).first

      row = base_class.connection.select_one("SELECT * FROM tcb__lint__orders_events WHERE event_id = '#{envelope.event_id}'")
      expect(row["event_type"]).to eq("TCB::Lint::Orders::Placed")
      expect(row["schema_version"]).to eq(1)
      expect(JSON.parse(row["payload"])).to include("order_id" => "42", "total" => { "$tcb" => "decimal", "v" => "3.5" },
                                                    "channel" => { "$tcb" => "sym", "v" => "shop" })
      expect(row["payload"]).not_to include("!ruby")
    end

    it "raises a clear error for a stored type no registered class answers to" do
      envelope = event_store.append(stream_id: "#{orders_context}|43", events: [placed("43")]).first
      base_class.connection.execute("UPDATE tcb__lint__orders_events SET event_type = 'Gone::Event' " \
                                    "WHERE event_id = '#{envelope.event_id}'")

      expect { event_store.read("#{orders_context}|43") }
        .to raise_error(TCB::EventStore::JsonCodec::UnknownType, /"Gone::Event" is not registered/)
    end

    it "raises a clear error when appending an event class nobody registered" do
      unregistered = Struct.new(:order_id)
      stub_const("TcbStoresSpec::Unregistered", unregistered)

      expect { event_store.append(stream_id: "#{orders_context}|44", events: [unregistered.new("44")]) }
        .to raise_error(TCB::EventStore::JsonCodec::UnknownType, /TcbStoresSpec::Unregistered.*not a registered event class/)
      expect(event_store.read("#{orders_context}|44")).to eq([])
    end

    it "keeps correlation reads to the exact context even when two contexts map to one table" do
      # "shared_ctx/orders" and "shared_ctx__orders" both live in shared_ctx__orders_events.
      stub_const("SharedCtx::Orders", Module.new)
      stub_const("SharedCtx__orders", Module.new)
      contexts = [SharedCtx::Orders, SharedCtx__orders].map { |mod| TCB::DomainContext.from_module(mod).to_s }
      expect(contexts).to eq(%w[shared_ctx/orders shared_ctx__orders])
      base_class.connection.drop_table("shared_ctx__orders_events", if_exists: true)
      TCB::EventStore::ActiveRecord.create_table(SharedCtx::Orders, connection: base_class.connection)
      contexts.each do |context|
        event_store.append(stream_id: "#{context}|1", events: [placed("for #{context}")], correlation_id: "shared")
      end

      expect(contexts.map { |context| event_store.read_by_correlation("shared", context: context).map { |e| e.event.order_id } })
        .to eq(contexts.map { |context| ["for #{context}"] })
    end

    context "with ActiveRecord writing local times in another zone" do
      # ActiveRecord 7.0 moved the setting from ActiveRecord::Base to ActiveRecord (7.1 removed the old one).
      let(:timezone_owner) { ActiveRecord.respond_to?(:default_timezone=) ? ActiveRecord : ActiveRecord::Base }

      around do |example|
        zone = ENV.fetch("TZ", nil)
        default = timezone_owner.default_timezone
        ENV["TZ"] = "America/New_York"
        timezone_owner.default_timezone = :local
        example.run
      ensure
        ENV["TZ"] = zone
        timezone_owner.default_timezone = default
      end

      it "reads occurred_at back as the same instant, in UTC, and bounds correlation reads by instants" do
        at = Time.utc(2026, 6, 1, 22, 30, 0, 500_000)
        envelope = event_store.append(stream_id: "#{orders_context}|45", events: [placed("45")],
                                      occurred_at: at.getlocal("+09:00"), correlation_id: "zone-check").first

        read = event_store.read("#{orders_context}|45").first
        expect(read.occurred_at).to eq(at)
        expect(read.occurred_at).to be_utc
        expect(envelope.occurred_at).to eq(at)
        chain = ->(**bounds) { event_store.read_by_correlation("zone-check", context: orders_context, **bounds).size }
        expect(chain.call(occurred_after: at.getlocal("-05:00") - 1, occurred_before: at.getlocal("+02:00") + 1)).to eq(1)
        expect(chain.call(occurred_after: at.getlocal("+02:00"))).to eq(0)
      end
    end
  end

  describe "event store on PostgreSQL" do
    let(:base_class) { TcbStoresSpec::PgRecord }

    before do
      TcbStoresSpec.create_tables(base_class, [TCB::Lint::Orders], outbox: false)
      event_store.register_domain(TCB::Lint::Orders)
    end

    it "turns a concurrent append of the same version on another connection into WrongExpectedVersion" do
      stream = "#{orders_context}|race"
      first_inserted = Queue.new
      release = Queue.new
      holder = Thread.new do
        base_class.transaction do
          event_store.append(stream_id: stream, events: [placed("a")], expected_version: :none)
          first_inserted << true
          release.pop
        end
      end
      first_inserted.pop
      # The second writer blocks on the unique index until the first commits, then loses.
      loser = Thread.new do
        event_store.append(stream_id: stream, events: [placed("b")], expected_version: :none)
      rescue TCB::WrongExpectedVersion => e
        e
      end
      expect(loser.join(0.3)).to be_nil
      release << true
      expect(holder.join(10)).to be_truthy

      error = loser.value
      expect(error).to be_a(TCB::WrongExpectedVersion)
      expect([error.stream_id, error.expected_version, error.actual_version]).to eq([stream, :none, 1])
      expect(event_store.read(stream).map { |e| e.event.order_id }).to eq(["a"])
    end

    it "leaves an enclosing transaction usable after a lost race (the append runs in a savepoint)" do
      stream = "#{orders_context}|savepoint"
      first_inserted = Queue.new
      release = Queue.new
      holder = Thread.new do
        base_class.transaction do
          event_store.append(stream_id: stream, events: [placed("a")], expected_version: :none)
          first_inserted << true
          release.pop
        end
      end
      first_inserted.pop
      loser = Thread.new do
        base_class.transaction do
          # Reads version 0, then its insert waits for the holder and fails on the unique index.
          event_store.append(stream_id: stream, events: [placed("b")], expected_version: :none)
        rescue TCB::WrongExpectedVersion
          event_store.append(stream_id: stream, events: [placed("c")], expected_version: 1)
        end
      end
      expect(loser.join(0.3)).to be_nil
      release << true
      [holder, loser].each { |thread| expect(thread.join(10)).to be_truthy }

      expect(event_store.read(stream).map { |e| e.event.order_id }).to eq(%w[a c])
    end
  end

  describe "outbox relay with the ActiveRecord stores on PostgreSQL" do
    let(:base_class) { TcbStoresSpec::PgRecord }
    let(:outbox_store) { TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: base_class) }
    let(:clock) { [Time.utc(2026, 5, 1, 12)] }

    before do
      TcbStoresSpec.create_tables(base_class, [TCB::Lint::Orders])
      event_store.register_domain(TCB::Lint::Orders)
    end

    def relay(**options)
      TCB::OutboxRelay.new(outbox_store: outbox_store, event_store: event_store, lock_timeout: 300,
                           clock: -> { clock.first }, **options)
    end

    def enqueue(order_id, handler)
      envelope = event_store.append(stream_id: "#{orders_context}|#{order_id}", events: [placed(order_id)]).first
      outbox_store.insert(event_id: envelope.event_id, stream_id: envelope.stream_id, version: envelope.version,
                          handler_class: handler)
    end

    it "delivers each entry to its handler once, reading the events through read_by_event_ids" do
      %w[o1 o2 o3].each { |id| enqueue(id, TcbStoresSpec::RecordingHandler) }

      expect(relay.run.to_h).to include(delivered: 3, failed: 0)
      expect(relay.run.to_h).to include(delivered: 0)
      expect(TcbStoresSpec.drain(TcbStoresSpec::RecordingHandler::DELIVERED)).to match_array(%w[o1 o2 o3])
      expect(outbox_store.all.map(&:status)).to all(eq(:delivered))
    end

    it "retries a failing entry with backoff, then dead-letters it" do
      entry = enqueue("o9", TcbStoresSpec::FailingHandler)
      relay = relay(max_attempts: 3, backoff: ->(attempts) { 10 * attempts })

      expect { expect(relay.run.to_h).to include(failed: 1) }
        .to output(%r{failed attempt 1/3: ArgumentError: warehouse down for o9, retrying at}).to_stderr_from_any_process
      stored = outbox_store.all.first
      expect([stored.status, stored.attempts, stored.next_attempt_at]).to eq([:failed, 1, clock.first + 10])
      expect(stored.error).to eq("warehouse down for o9")

      clock[0] += 9
      expect(relay.run.to_h).to include(failed: 0, dead: 0, delivered: 0)
      clock[0] += 1
      expect { expect(relay.run.to_h).to include(failed: 1) }.to output(%r{attempt 2/3}).to_stderr_from_any_process
      expect(outbox_store.all.first.next_attempt_at).to eq(clock.first + 20)

      clock[0] += 20
      expect { expect(relay.run.to_h).to include(dead: 1) }.to output(/dead-lettered/).to_stderr_from_any_process
      dead = outbox_store.all.first
      expect([dead.id, dead.status, dead.attempts, dead.next_attempt_at]).to eq([entry.id, :dead, 3, nil])
      clock[0] += 86_400
      expect(relay.run.to_h).to include(failed: 0, dead: 0, delivered: 0)
    end

    it "lets racing relays on separate connections deliver every entry exactly once" do
      ids = Array.new(40) { |n| "r#{n}" }
      ids.each { |id| enqueue(id, TcbStoresSpec::RecordingHandler) }
      start = Queue.new
      relays = Array.new(4) do
        Thread.new do
          start.pop
          TCB::OutboxRelay.new(outbox_store: outbox_store, event_store: event_store, lock_timeout: 300).run
        end
      end
      4.times { start << true }
      results = relays.map { |thread| thread.join(60) && thread.value }

      delivered = TcbStoresSpec.drain(TcbStoresSpec::RecordingHandler::DELIVERED)
      expect(delivered.tally.values.uniq).to eq([1])
      expect(delivered).to match_array(ids)
      expect(results.sum(&:delivered)).to eq(40)
      expect(outbox_store.all.map(&:status)).to all(eq(:delivered))
    end
  end

  describe "outbox relays as separate processes on a SQLite file (conditional UPDATE claims)" do
    let(:base_class) { TcbStoresSpec::SqliteFileRecord }
    let(:outbox_store) { TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: base_class) }

    before do
      TcbStoresSpec.create_tables(base_class, [TCB::Lint::Orders])
      event_store.register_domain(TCB::Lint::Orders)
    end

    it "delivers every entry exactly once across forked relays" do
      ids = Array.new(30) { |n| "p#{n}" }
      ids.each do |id|
        envelope = event_store.append(stream_id: "#{orders_context}|#{id}", events: [placed(id)]).first
        outbox_store.insert(event_id: envelope.event_id, stream_id: envelope.stream_id, version: envelope.version,
                            handler_class: TcbStoresSpec::RecordingHandler)
      end
      config = base_class.connection_db_config.configuration_hash
      reader, writer = IO.pipe
      pids = Array.new(3) do
        fork do
          reader.close
          # Connections of its own; the parent's inherited ones are left alone.
          TcbStoresSpec::ChildRecord.establish_connection(config)
          child_events = TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::ChildRecord)
          child_events.register_domain(TCB::Lint::Orders)
          child_outbox = TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: TcbStoresSpec::ChildRecord)
          TCB::OutboxRelay.new(outbox_store: child_outbox, event_store: child_events, lock_timeout: 300).run
          writer.puts(JSON.generate(TcbStoresSpec.drain(TcbStoresSpec::RecordingHandler::DELIVERED)))
          writer.close
          exit!(0)
        rescue Exception => e # rubocop:disable Lint/RescueException -- the child must never run RSpec's at_exit
          warn "relay child failed: #{e.class}: #{e.message}"
          exit!(1)
        end
      end
      writer.close
      statuses = pids.map { |pid| Process.wait2(pid).last }
      delivered = reader.each_line.flat_map { |line| JSON.parse(line) }
      reader.close

      expect(statuses).to all(be_success)
      expect(delivered.tally.values.uniq).to eq([1])
      expect(delivered).to match_array(ids)
      expect(outbox_store.all.map(&:status)).to all(eq(:delivered))
    end
  end

  describe "TCB.record with the ActiveRecord event store and outbox (PostgreSQL)" do
    let(:base_class) { TcbStoresSpec::PgRecord }

    before do
      TcbStoresSpec.create_tables(base_class, [TcbStoresSpec::Billing])
      TCB.reset!
      TCB.domain_modules = [TcbStoresSpec::Billing]
      store = event_store
      TCB.configure do |c|
        c.event_bus = TCB::EventBus.new(sync: true)
        c.event_store = store
        c.outbox_store_class = TcbStoresSpec::PgOutboxStore
      end
    end

    after { TCB.reset! }

    it "writes the events and their outbox rows in one transaction, which the relay then delivers" do
      envelopes = TCB.record(events: [TcbStoresSpec::Billing::Invoiced.new(order_id: "b1", amount: 5)], within: base_class)
      outbox = TCB.config.outbox_store_for(TcbStoresSpec::Billing)

      expect(outbox.all.map { |e| [e.event_id, e.stream_id, e.version, e.handler_class, e.status] })
        .to eq([[envelopes.first.event_id, "tcb_stores_spec/billing|b1", 1, "TcbStoresSpec::RecordingHandler", :pending]])
      expect(TCB.read(TcbStoresSpec::Billing).stream("b1").to_a).to eq(envelopes)

      TCB::OutboxRelay.new(outbox_store: outbox, event_store: TCB.config.event_store, lock_timeout: 300).run
      expect(TcbStoresSpec.drain(TcbStoresSpec::RecordingHandler::DELIVERED)).to eq(["b1"])
    end

    it "keeps neither events nor outbox rows when the block raises" do
      expect do
        TCB.record(events: [TcbStoresSpec::Billing::Invoiced.new(order_id: "b2", amount: 5)], within: base_class) do
          raise ArgumentError, "declined"
        end
      end.to raise_error(ArgumentError, "declined")

      expect(TCB.read(TcbStoresSpec::Billing).stream("b2").to_a).to eq([])
      expect(TCB.config.outbox_store_for(TcbStoresSpec::Billing).all).to eq([])
    end
  end
end

# The README's handler form, `TCB.record(events_from: [order], within: ApplicationRecord) { ... }`,
# with each transactional store. Rails 7.1+ yields the transaction object to the block of
# `transaction`, which broke a lambda handed over as that block (ArgumentError on Rails 7.2).
RSpec.describe "TCB.record(events_from:, within: an ApplicationRecord-style class)" do
  let(:application_record) { TcbStoresSpec::PgRecord }
  let(:order_class) do
    Class.new do
      include TCB::RecordsEvents

      def initialize(id) = @id = id
      def invoice(amount) = record(TcbStoresSpec::Billing::Invoiced.new(order_id: @id, amount: amount))
    end
  end

  {
    "in-memory" => [-> { TCB::EventStore::InMemory.new }, TCB::OutboxStore::InMemory],
    "ActiveRecord" => [-> { TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::PgRecord) },
                       TcbStoresSpec::PgOutboxStore]
  }.each do |name, (event_store, outbox_store_class)|
    context "with the #{name} stores" do
      before do
        TcbStoresSpec.create_tables(application_record, [TcbStoresSpec::Billing])
        TCB.reset!
        TCB.domain_modules = [TcbStoresSpec::Billing]
        TCB.configure do |c|
          c.event_bus = TCB::EventBus.new(sync: true)
          c.event_store = event_store.call
          c.outbox_store_class = outbox_store_class
        end
      end

      after { TCB.reset! }

      it "records the aggregate's events and their outbox rows inside the class's transaction" do
        order = order_class.new("r1")
        open_during_append = nil
        connection = application_record.connection
        TCB.config.event_store.define_singleton_method(:append) do |**args|
          open_during_append = connection.transaction_open?
          super(**args)
        end
        envelopes = TCB.record(events_from: [order], within: application_record) { order.invoice(7) }

        expect(open_during_append).to be(true)
        expect(envelopes.map { |e| [e.stream_id, e.version, e.event.amount] }).to eq([["tcb_stores_spec/billing|r1", 1, 7]])
        expect(TCB.read(TcbStoresSpec::Billing).stream("r1").to_a).to eq(envelopes)
        expect(TCB.config.outbox_store_for(TcbStoresSpec::Billing).all.map(&:event_id)).to eq([envelopes.first.event_id])
      end

      it "keeps nothing when the block raises" do
        order = order_class.new("r2")
        expect do
          TCB.record(events_from: [order], within: application_record) do
            order.invoice(7)
            raise ArgumentError, "declined"
          end
        end.to raise_error(ArgumentError, "declined")

        expect(TCB.read(TcbStoresSpec::Billing).stream("r2").to_a).to eq([])
        expect(TCB.config.outbox_store_for(TcbStoresSpec::Billing).all).to eq([])
      end
    end
  end
end
