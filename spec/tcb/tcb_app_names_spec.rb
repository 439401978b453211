# frozen_string_literal: true

require_relative "tcb_helper"
require "tmpdir"

# A domain written the way tcb 0.6.2's README and its own test suite write one (Structs
# stand in for Data.define, which Ruby 3.1 lacks).
module TcbAppNamesSpec
  DELIVERED = Queue.new

  module Orders
    include TCB::Domain

    OrderPlaced = Struct.new(:order_id, :customer, keyword_init: true)

    PlaceOrder = Struct.new(:order_id, :customer, keyword_init: true) do
      def validate!
        raise ArgumentError, "customer required" if customer.nil?
      end
    end
    CommandWithoutValidate = Struct.new(:id, keyword_init: true)

    class PlaceOrderHandler
      def call(command)
        TCB.publish(*TCB.record(events: [OrderPlaced.new(order_id: command.order_id, customer: command.customer)]))
      end
    end

    class NotifyCustomer
      def call(event) = event
    end

    persist events(OrderPlaced, stream_id_from_event: :order_id)
    handle PlaceOrder, with(PlaceOrderHandler)
    on OrderPlaced, react_with(NotifyCustomer)
  end

  module Invoicing
    include TCB::HandlesEvents

    class SendInvoice
      def call(event)
        TcbAppNamesSpec::DELIVERED << [:invoice, event]
      end
    end

    class NotifyAccounting
      def call(event)
        TcbAppNamesSpec::DELIVERED << [:accounting, event]
      end
    end

    on Orders::OrderPlaced, ensure_reaction(SendInvoice, NotifyAccounting)
  end

  module Payments
    module Charges
    end
  end
end

# The names tcb 0.6.2 apps and their test suites use, called as they call them.
RSpec.describe "Names from tcb 0.6.2" do
  before { TcbAppNamesSpec::DELIVERED.clear }

  def configure_app
    TCB.domain_modules = [TcbAppNamesSpec::Orders, TcbAppNamesSpec::Invoicing]
    TCB.configure do |c|
      c.event_bus = TCB::EventBus.new(sync: true)
      c.event_store = TCB::EventStore::InMemory.new
      c.outbox_store_class = TCB::OutboxStore::InMemory
      c.logger = test_logger
    end
  end

  describe "registrations" do
    it "answer handler, as well as handler_class" do
      registration = TcbAppNamesSpec::Orders.command_handler_registrations.first
      expect(registration.command_class).to eq(TcbAppNamesSpec::Orders::PlaceOrder)
      expect(registration.handler).to eq(TcbAppNamesSpec::Orders::PlaceOrderHandler)
      expect(registration.handler_class).to eq(registration.handler)

      expect(TcbAppNamesSpec::Invoicing.outbox_registrations.map(&:handler))
        .to eq([TcbAppNamesSpec::Invoicing::SendInvoice, TcbAppNamesSpec::Invoicing::NotifyAccounting])
      expect(TcbAppNamesSpec::Orders.event_handler_registrations.first.handlers).to eq([TcbAppNamesSpec::Orders::NotifyCustomer])
    end

    # tcb 0.6.2's own outbox tests reach the store this way.
    it "outbox_registrations.first.outbox_store is the module's outbox store, which TCB.record fills and a relay drains" do
      configure_app
      outbox_store = TCB.config.outbox_registrations.first.outbox_store
      expect(outbox_store).to be(TCB.config.outbox_store_for(TcbAppNamesSpec::Invoicing))
      expect(TCB.config.outbox_registrations.map(&:outbox_store).uniq).to eq([outbox_store])
      expect(TcbAppNamesSpec::Invoicing.outbox_registrations.map(&:outbox_store)).to eq([nil, nil]) # the module's own

      envelopes = TCB.record(events: [TcbAppNamesSpec::Orders::OrderPlaced.new(order_id: 1, customer: "Alice")])
      expect(outbox_store.all.map(&:handler_class)).to contain_exactly("TcbAppNamesSpec::Invoicing::SendInvoice",
                                                                       "TcbAppNamesSpec::Invoicing::NotifyAccounting")
      expect(outbox_store.all.map(&:event_id).uniq).to eq([envelopes.first.event_id])

      TCB::OutboxRelay.new(outbox_store: outbox_store, event_store: TCB.config.event_store, lock_timeout: 300).run
      expect(outbox_store.all.map(&:status)).to eq(%i[delivered delivered])
      expect(Array.new(TcbAppNamesSpec::DELIVERED.size) { TcbAppNamesSpec::DELIVERED.pop }.map(&:first))
        .to contain_exactly(:invoice, :accounting)
    end
  end

  describe TCB::DomainContext do
    it "answers table_name and outbox_table_name" do
      context = TCB::DomainContext.from_module(TcbAppNamesSpec::Payments::Charges)
      expect(context.to_s).to eq("tcb_app_names_spec/payments/charges")
      expect(context.table_name).to eq("tcb_app_names_spec__payments__charges_events")
      expect(context.outbox_table_name).to eq("tcb_app_names_spec__payments__charges_outbox")
    end
  end

  describe TCB::StreamId do
    it "build lowercases a String context and stringifies the id" do
      stream_id = TCB::StreamId.build("Orders", 42)
      expect(stream_id.context).to eq("orders")
      expect(stream_id.id).to eq("42")
      expect(TCB::StreamId.build("day_recap/segment_builder", "abc123").to_s).to eq("day_recap/segment_builder|abc123")
      expect(TCB::StreamId.build("Orders", 42)).to eq(TCB::StreamId.parse("orders|42"))
    end

    it "context_from_module gives a module's context string" do
      expect(TCB::StreamId.context_from_module(TcbAppNamesSpec::Orders)).to eq("tcb_app_names_spec/orders")
      expect(TCB::StreamId.context_from_module(TcbAppNamesSpec::Payments::Charges)).to eq("tcb_app_names_spec/payments/charges")
    end
  end

  describe "TCB.dispatch" do
    it "raises NotImplementedError for a command without validate!, before any handler runs" do
      configure_app
      expect { TCB.dispatch(TcbAppNamesSpec::Orders::CommandWithoutValidate.new(id: 1)) }
        .to raise_error(NotImplementedError, /CommandWithoutValidate must implement validate!/)
      expect { TCB.dispatch(TcbAppNamesSpec::Orders::PlaceOrder.new(order_id: 1, customer: nil)) }
        .to raise_error(ArgumentError, "customer required")
      expect(TCB.read(TcbAppNamesSpec::Orders).stream(1).to_a).to eq([])
    end
  end

  describe "TCB.read without .stream(id)" do
    it "reads nothing: to_a and last are [], in_batches yields no batch" do
      configure_app
      TCB.dispatch(TcbAppNamesSpec::Orders::PlaceOrder.new(order_id: 42, customer: "Alice"))
      query = TCB.read(TcbAppNamesSpec::Orders)

      expect(query.to_a).to eq([])
      expect(query.from_version(1).to_a).to eq([])
      expect(query.last(10)).to eq([])
      batches = []
      query.in_batches(of: 100) { |batch| batches << batch }
      expect(batches).to eq([])
      expect(query.in_batches(of: 100).to_a).to eq([])
      expect(query.stream(42).to_a.map(&:version)).to eq([1])
    end
  end

  describe "TCB::RSpecHelpers" do
    it "is the module tcb's apps include, giving have_published and poll_match" do
      helpers = Class.new { include TCB::RSpecHelpers }.new
      expect(helpers).to respond_to(:have_published, :poll_match)
      expect(TCB::RSpecHelpers.name).to eq("TCB::RSpecHelpers")
    end

    # A suite set up as tcb's README and generated apps do, run in a fresh Ruby: one with
    # `require "tcb/rspec_helpers"`, one naming the module only after loading the runtime.
    ["require \"tcb/rspec_helpers\"\n", ""].each do |extra_require|
      it "works with config.include TCB::RSpecHelpers#{' after require "tcb/rspec_helpers"' unless extra_require.empty?}" do
        Dir.mktmpdir("tcb-rspec-helpers") do |dir|
          File.write(File.join(dir, "orders_spec.rb"), <<~RUBY)
            require "acts_as_tbackend/tcb"
            #{extra_require}
            OrderPlaced = Struct.new(:order_id, keyword_init: true)

            RSpec.configure do |config|
              config.include TCB::RSpecHelpers
              config.after(:each) { TCB.reset! }
            end

            RSpec.describe "orders" do
              before do
                TCB.configure { |c| c.event_bus = TCB::EventBus.new(sync: true) }
              end

              it("publishes") { expect { TCB.publish(OrderPlaced.new(order_id: 42)) }.to have_published(OrderPlaced) }
              it("polls") { expect { true }.to poll_match(within: 0.5) }
            end
          RUBY
          out, status = run_ruby(<<~RUBY)
            $stderr.reopen($stdout)
            require "rspec/core"
            exit RSpec::Core::Runner.run([#{File.join(dir, 'orders_spec.rb').inspect}])
          RUBY
          expect(status).to be_success, out
          expect(out).to include("2 examples, 0 failures")
        end
      end
    end
  end
end
