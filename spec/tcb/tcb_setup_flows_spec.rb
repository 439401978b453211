# frozen_string_literal: true

require_relative "tcb_helper"
require "tmpdir"

# The setup flows the tcb 0.6.2 README teaches, written as a tcb app writes them: modules
# declared once in a plain initializer, `TCB.reset!` + `TCB.configure` (without modules) in
# `to_prepare` and in test teardowns, `TCB.domain_modules =` after `configure`, and unit
# tests of aggregates that record before anything is configured.
RSpec.describe "tcb 0.6.2's setup flows" do
  let(:calls) { Queue.new }

  before do
    stub_const("CALLS", calls)
    stub_const("Sales::OrderPlaced", Struct.new(:order_id))
    stub_const("Sales::PlaceOrder", Struct.new(:order_id) { def validate! = nil })
    stub_const("Sales::PlaceOrderHandler", Class.new do
      def call(command) = TCB.publish(*TCB.record(events: [Sales::OrderPlaced.new(command.order_id)]))
    end)
    stub_const("Sales::Order", Class.new do
      include TCB::RecordsEvents

      def place(id) = record(Sales::OrderPlaced.new(id))
    end)
    stub_const("Warehouse::Reserve", Class.new { def call(event) = CALLS << [:reserve, event.order_id] })
    Sales.include(TCB::Domain)
    Sales.persist(Sales.events(Sales::OrderPlaced, stream_id_from_event: :order_id))
    Sales.handle(Sales::PlaceOrder, Sales.with(Sales::PlaceOrderHandler))
    Warehouse.include(TCB::HandlesEvents)
    Warehouse.on(Sales::OrderPlaced, Warehouse.react_with(Warehouse::Reserve))
  end

  def drained
    Array.new(calls.size) { calls.pop }
  end

  # The infrastructure block of tcb's README (config/environments/*.rb), without modules.
  def configure_infrastructure(store = TCB::EventStore::InMemory.new)
    TCB.configure do |c|
      c.event_bus = TCB::EventBus.new(sync: true)
      c.event_store = store
    end
  end

  describe "domain modules persist across resets" do
    it "wires the modules a plain initializer declared, at boot and after every to_prepare reset" do
      TCB.domain_modules = [Sales, Warehouse] # config/initializers/tcb.rb
      3.times do |run|                        # to_prepare: boot, then two reloads
        TCB.reset!
        configure_infrastructure
        TCB.dispatch(Sales::PlaceOrder.new(run))
        expect(drained).to eq([[:reserve, run]])
      end
      expect(TCB.domain_modules).to eq([Sales, Warehouse])
      expect(log_io.string).not_to include("no domain modules")
    end

    it "survives the README's test teardown (reset!, then configure without modules) with fresh stores" do
      TCB.domain_modules = [Sales, Warehouse]
      configure_infrastructure
      TCB.dispatch(Sales::PlaceOrder.new(1))
      expect(TCB.read(Sales).stream(1).to_a.size).to eq(1)

      TCB.reset! # teardown
      configure_infrastructure
      expect(TCB.read(Sales).stream(1).to_a).to eq([])
      TCB.dispatch(Sales::PlaceOrder.new(2))
      expect(drained).to eq([[:reserve, 1], [:reserve, 2]])
    end

    it "looks each module up by its name at configure, so a code reload wires the fresh classes" do
      stale = Sales
      TCB.domain_modules = [Sales, Warehouse]
      configure_infrastructure

      # What a Zeitwerk reload does: the constant now holds a new module with new classes.
      fresh = Module.new
      stub_const("Sales", fresh)
      stub_const("Sales::OrderPlaced", Struct.new(:order_id))
      stub_const("Sales::PlaceOrder", Struct.new(:order_id) { def validate! = nil })
      stub_const("Sales::PlaceOrderHandler", Class.new { def call(command) = CALLS << [:fresh, command.order_id] })
      Sales.include(TCB::Domain)
      Sales.handle(Sales::PlaceOrder, Sales.with(Sales::PlaceOrderHandler))

      TCB.reset!
      configure_infrastructure
      expect(TCB.domain_modules.first).to be(fresh).and(satisfy { |mod| !mod.equal?(stale) })
      TCB.dispatch(Sales::PlaceOrder.new(7))
      expect(drained).to eq([[:fresh, 7]])
      expect { TCB.dispatch(stale::PlaceOrder.new(8)) }.to raise_error(TCB::CommandHandlerNotFound)
    end

    it "says which module a reload removed" do
      stub_const("Gone", Module.new)
      TCB.domain_modules = [Gone]
      hide_const("Gone")
      expect { configure_infrastructure }.to raise_error(TCB::ConfigurationError, /Gone is no longer defined/)
      expect(TCB.configured?).to be(false)
    end
  end

  describe "TCB.domain_modules = after configure" do
    it "wires the new modules at once, on the same bus and store, and unwires the dropped ones" do
      store = TCB::EventStore::InMemory.new
      configure_tcb(store: store)
      bus = TCB.config.event_bus
      TCB.domain_modules = [Sales, Warehouse] # an initializer's to_prepare, after configure

      expect(TCB.config.event_bus).to be(bus)
      expect(TCB.config.event_store).to be(store)
      expect(TCB.config).to be_frozen
      TCB.dispatch(Sales::PlaceOrder.new(1))
      expect(drained).to eq([[:reserve, 1]])

      TCB.domain_modules = [Sales]
      TCB.dispatch(Sales::PlaceOrder.new(2))
      expect(drained).to eq([])
      expect(bus.registry.handlers_for(Sales::OrderPlaced)).to eq([])
      expect(TCB.read(Sales).stream(1).to_a.size).to eq(1) # the store was kept

      TCB.domain_modules = [Sales, Warehouse]
      TCB.dispatch(Sales::PlaceOrder.new(3))
      expect(drained).to eq([[:reserve, 3]]) # once, not once per wiring
    end

    it "keeps in-memory outbox rows of the modules that stay" do
      stub_const("Billing::Charge", Class.new { def call(_event) = nil })
      Billing.include(TCB::HandlesEvents)
      Billing.on(Sales::OrderPlaced, Billing.ensure_reaction(Billing::Charge))
      configure_tcb(Sales, Billing)
      TCB.dispatch(Sales::PlaceOrder.new(1))
      outbox = TCB.config.outbox_store_for(Billing)

      TCB.domain_modules = [Sales, Billing, Warehouse]
      expect(TCB.config.outbox_store_for(Billing)).to be(outbox)
      expect(outbox.all.size).to eq(1)
    end

    it "keeps the old wiring when the new modules do not wire" do
      stub_const("Shipping", Module.new)
      Shipping.include(TCB::HandlesCommands)
      Shipping.handle(Sales::PlaceOrder, Shipping.with(Sales::PlaceOrderHandler))
      configure_tcb(Sales, Warehouse)
      old = TCB.config

      expect { TCB.domain_modules = [Sales, Warehouse, Shipping] }.to raise_error(TCB::ConfigurationError, /handled twice/)
      expect(TCB.config).to be(old)
      expect(TCB.domain_modules).to eq([Sales, Warehouse])
      TCB.dispatch(Sales::PlaceOrder.new(4))
      expect(drained).to eq([[:reserve, 4]])
    end
  end

  describe "TCB.record before any configure (unit tests of aggregates)" do
    it "returns envelopes without storing anything, as tcb does" do
      order = Sales::Order.new
      envelopes = TCB.record(events_from: [order]) { order.place(1) }
      expect(envelopes.map(&:event)).to eq([Sales::OrderPlaced.new(1)])
      expect(envelopes.first).to be_a(TCB::Envelope).and(have_attributes(stream_id: nil, version: nil,
                                                                         correlation_id: nil, causation_id: nil))
      expect(order.recorded_events).to eq([])
      expect(TCB.configured?).to be(false)
    end

    it "raises when a declared domain module persists the event: it would be lost silently" do
      TCB.domain_modules = [Sales]
      order = Sales::Order.new
      expect { TCB.record(events_from: [order]) { order.place(1) } }
        .to raise_error(TCB::ConfigurationError, /Sales::OrderPlaced \(persisted by Sales\).*TCB.configure/)
      stub_const("Sales::Noted", Struct.new(:text))
      expect(TCB.record(events: [Sales::Noted.new("x")]).map(&:event)).to eq([Sales::Noted.new("x")])
    end
  end

  describe "anonymous modules and a second configure" do
    it "accepts an anonymous module that persists nothing and uses no outbox" do
      anonymous = Module.new
      anonymous.include(TCB::Domain)
      anonymous.handle(Sales::PlaceOrder, anonymous.with(Sales::PlaceOrderHandler))
      anonymous.on(Sales::OrderPlaced, anonymous.react_with(Warehouse::Reserve))
      configure_tcb(anonymous)
      TCB.dispatch(Sales::PlaceOrder.new(5))
      expect(drained).to eq([[:reserve, 5]])

      TCB.reset!
      persisting = Module.new
      persisting.include(TCB::HandlesEvents)
      persisting.persist(persisting.events(Sales::OrderPlaced, stream_id_from_event: :order_id))
      expect { configure_tcb(persisting) }.to raise_error(TCB::ConfigurationError, /anonymous.*constant name/)
    end

    it "raises a FrozenError with tcb's message on a second configure without reset!" do
      configure_tcb(Sales)
      expect { configure_infrastructure }
        .to raise_error(FrozenError, /\Acan't modify frozen TCB::Configuration/) { |e| expect(e).to be_a(TCB::AlreadyConfigured) }
      expect(TCB.configured?).to be(true) # the running configuration is untouched
    end
  end

  it "explains that point-in-time reads need the TBackend store" do
    configure_tcb(Sales)
    expect { TCB.read(Sales).stream(1).as_of(Time.now) }
      .to raise_error(ArgumentError, /TCB::EventStore::InMemory: point-in-time reads \(as_of\) need the TBackend store/)
    require "acts_as_tbackend/tcb/event_store/active_record"
    query = TCB::EventQuery.new(TCB::EventStore::ActiveRecord.new, Sales)
    expect { query.stream(1).as_of(Time.now) }
      .to raise_error(ArgumentError, /TCB::EventStore::ActiveRecord: point-in-time reads \(as_of\) need the TBackend store/)
  end
end

# configure checks that every module with ensure_reaction has its ActiveRecord outbox table
# (the README once put the reaction in Sales while the job and `tcb:outbox billing` used
# Billing's: the first dispatch failed with `relation "sales_outbox" does not exist`). Each
# case runs in its own Ruby: whether a generator is loaded is part of what is checked.
RSpec.describe "configure's outbox table check" do
  # Configures Sales and Billing (Billing reacts through the outbox) with the ActiveRecord
  # outbox store; prints how configure ended and what it logged about the outbox.
  let(:script) do
    <<~'RUBY'
      require "active_record"
      require "logger"
      require "rails/generators" if ENV["LOAD_GENERATORS"] == "1"
      require "acts_as_tbackend/tcb"
      ActiveRecord::Base.establish_connection(Marshal.load([ENV.fetch("DB_CONFIG")].pack("H*")))
      module TcbSetupCheck
        module Sales
          include TCB::Domain
          OrderPlaced = Struct.new(:order_id)
          persist events(OrderPlaced, stream_id_from_event: :order_id)
        end
        module Billing
          include TCB::HandlesEvents
          class Charge
            def call(_event) = nil
          end
          on Sales::OrderPlaced, ensure_reaction(Charge)
        end
      end
      connection = ActiveRecord::Base.connection
      connection.drop_table("tcb_setup_check__billing_outbox", if_exists: true)
      TCB::OutboxStore::ActiveRecord.create_table(TcbSetupCheck::Billing) if ENV["CREATE_TABLE"] == "1"
      TCB.domain_modules = [TcbSetupCheck::Sales, TcbSetupCheck::Billing]
      log = StringIO.new
      begin
        TCB.configure do |c|
          c.event_bus = TCB::EventBus.new(sync: true)
          c.outbox_store_class = TCB::OutboxStore::ActiveRecord
          c.logger = Logger.new(log)
        end
        puts "configured=#{TCB.configured?} #{log.string.lines.grep(/outbox/).join.strip}"
      rescue TCB::ConfigurationError => e
        puts "raised: #{e.message}"
      ensure
        TCB.reset!
        connection.drop_table("tcb_setup_check__billing_outbox", if_exists: true)
      end
    RUBY
  end

  def check(adapter, create_table: false, pending_migration: false, generators: false)
    Dir.mktmpdir("tcb-outbox-check") do |migrations|
      File.write(File.join(migrations, "20260101000000_create_billing_outbox.rb"), "") if pending_migration
      config = TbackendSpec::Database.config_for(adapter).merge(migrations_paths: migrations)
      env = { "DB_CONFIG" => Marshal.dump(config).unpack1("H*"), "CREATE_TABLE" => create_table ? "1" : "0",
              "LOAD_GENERATORS" => generators ? "1" : "0" }
      Open3.popen2e(env, RbConfig.ruby, "-I", TCBSpec::LIB, "-e", script) do |stdin, out, wait|
        stdin.close
        [out.read, wait.value]
      end
    end
  end

  %i[sqlite postgresql].each do |adapter|
    context "on #{adapter}" do
      it "raises naming the module, the missing table and the generator to run" do
        out, status = check(adapter)
        expect(status).to be_success, out
        expect(out.lines.last.chomp).to eq(
          "raised: TcbSetupCheck::Billing declares ensure_reaction, but its outbox table tcb_setup_check__billing_outbox " \
          "does not exist: run `bin/rails generate tcb:outbox tcb_setup_check/billing` and `bin/rails db:migrate`"
        )
      end

      it "passes when the table exists" do
        out, status = check(adapter, create_table: true)
        expect(status).to be_success, out
        expect(out.lines.last.strip).to eq("configured=true")
      end

      it "only warns while migrations are pending or a generator runs (both boot the app)" do
        [{ pending_migration: true }, { generators: true }].zip(["migrations are pending", "a Rails generator is running"])
                                                           .each do |options, reason|
          out, status = check(adapter, **options)
          expect(status).to be_success, out
          expect(out.lines.last).to start_with("configured=true").and include("WARN")
            .and include("tcb_setup_check__billing_outbox does not exist (not raised: #{reason})")
        end
      end
    end
  end
end

# docs/tcb.md's test setup, taken from the doc itself and run in an RSpec suite of its own:
# nothing recorded in one example (events, outbox rows) is left in the next.
RSpec.describe "The documented test setup" do
  let(:support_file) do
    doc = File.read(File.expand_path("../../docs/tcb.md", __dir__))
    doc[%r{^```ruby\n(# spec/support/tcb\.rb.*?)^```$}m, 1] || raise("docs/tcb.md has no spec/support/tcb.rb block")
  end

  let(:suite) do
    <<~'RUBY'
      require "acts_as_tbackend/tcb"
      module Sales
        include TCB::Domain
        OrderPlaced = Struct.new(:order_id)
        persist events(OrderPlaced, stream_id_from_event: :order_id)
      end
      module Billing
        include TCB::HandlesEvents
        class Charge
          def call(_event) = nil
        end
        on Sales::OrderPlaced, ensure_reaction(Charge)
      end
      # What the generated initializer does at boot in the test environment.
      TCB.domain_modules = [Sales, Billing]
      TCB.configure do |c|
        c.event_bus = TCB::EventBus.new(sync: true)
        c.event_store = TCB::EventStore::InMemory.new
        c.outbox_store_class = TCB::OutboxStore::InMemory
      end
      require_relative "support/tcb"

      RSpec.describe "two examples in a row", order: :defined do
        2.times do |n|
          it "starts empty and records (#{n})" do
            expect(TCB.read(Sales).stream(1).to_a).to eq([])
            expect(TCB.config.outbox_store_for(Billing).all).to eq([])
            TCB.record(events: [Sales::OrderPlaced.new(1)])
            expect(TCB.read(Sales).stream(1).to_a.size).to eq(1)
            expect(TCB.config.outbox_store_for(Billing).all.size).to eq(1)
          end
        end
      end
    RUBY
  end

  it "clears the in-memory events and outbox rows between examples" do
    Dir.mktmpdir("tcb-test-setup") do |dir|
      FileUtils.mkdir_p(File.join(dir, "support"))
      File.write(File.join(dir, "support", "tcb.rb"), support_file)
      File.write(File.join(dir, "orders_spec.rb"), suite)
      out, status = run_ruby(<<~RUBY, timeout: 60)
        require "rspec/core"
        exit RSpec::Core::Runner.run([#{File.join(dir, 'orders_spec.rb').inspect}, "--no-color"])
      RUBY
      expect(status).to be_success, out
      expect(out).to include("2 examples, 0 failures")
    end
  end
end
