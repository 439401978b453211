# frozen_string_literal: true

require "acts_as_tbackend/tcb"

module Demo
  # A small TCB domain whose events live in TBackend: a command goes to its handler, the
  # aggregate records an event, TCB.record persists it in the ledger, a bus reaction and
  # an outbox reaction (delivered by the relay) record events of their own in other
  # domains — and the whole correlation chain is read back from TBackend.
  module Domain
    OrderPlaced = Struct.new(:order_id, :customer, :total_cents, keyword_init: true)
    ConfirmationSent = Struct.new(:order_id, :to, keyword_init: true)
    PaymentCaptured = Struct.new(:order_id, :amount_cents, keyword_init: true)

    PlaceOrder = Struct.new(:order_id, :customer, :total_cents, keyword_init: true) do
      def validate!
        raise ArgumentError, "total_cents must be positive" unless total_cents.to_i.positive?
      end
    end

    # The aggregate.
    class Order
      include TCB::RecordsEvents

      def initialize(id) = @id = id

      def place(customer:, total_cents:)
        record(OrderPlaced.new(order_id: @id, customer: customer, total_cents: total_cents))
      end
    end

    # Sales: takes the command, persists OrderPlaced, publishes it.
    module Sales
      include TCB::Domain

      # Places the order on a fresh aggregate.
      class PlaceOrderHandler
        def call(command)
          order = Order.new(command.order_id)
          events = TCB.record(events_from: [order]) do
            order.place(customer: command.customer, total_cents: command.total_cents)
          end
          TCB.publish(*events)
        end
      end

      persist events(OrderPlaced, stream_id_from_event: :order_id)
      handle PlaceOrder, with(PlaceOrderHandler)
    end

    # Notifications: a bus reaction, in the dispatch's correlation chain.
    module Notifications
      include TCB::Domain

      # Records that the confirmation went out.
      class SendConfirmation
        def call(event)
          TCB.record(events: [ConfirmationSent.new(order_id: event.order_id, to: event.customer)])
        end
      end

      persist events(ConfirmationSent, stream_id_from_event: :order_id)
      on OrderPlaced, react_with(SendConfirmation)
    end

    # Billing: a reaction that must not be lost, delivered through the outbox.
    module Billing
      include TCB::Domain

      # Records the captured payment.
      class CaptureCharge
        def call(event)
          TCB.record(events: [PaymentCaptured.new(order_id: event.order_id, amount_cents: event.total_cents)])
        end
      end

      persist events(PaymentCaptured, stream_id_from_event: :order_id)
      on OrderPlaced, ensure_reaction(CaptureCharge)
    end

    module_function

    def run(say:)
      say.call("TCB: a command, an aggregate, events persisted in TBackend, two reactions (one via the outbox)")
      configure
      correlation_id = TCB.dispatch(PlaceOrder.new(order_id: "order-#{Process.pid}", customer: "ada@example.com",
                                                   total_cents: 4200))
      relay = TCB::OutboxRelay.new(outbox_store: TCB.config.outbox_store_for(Billing), event_store: TCB.config.event_store,
                                   lock_timeout: 30).run
      puts "  dispatched PlaceOrder (correlation #{correlation_id}); outbox relay: #{relay.to_h.inspect}"
      chain = TCB.read_correlation(correlation_id).to_a
      print_chain(chain)
      chain.map { |e| e.event.class } == [OrderPlaced, ConfirmationSent, PaymentCaptured] &&
        chain.all? { |e| e.correlation_id == correlation_id } && relay.delivered == 1
    ensure
      TCB.reset!
    end

    def configure
      TCB.reset!
      TCB.domain_modules = [Sales, Notifications, Billing]
      TCB.configure do |c|
        c.event_bus = TCB::EventBus.new(sync: true)
        c.event_store = TCB::EventStore::TBackend.new(client: ActsAsTbackend.client, store_prefix: "demo#{Process.pid}")
        c.outbox_store_class = TCB::OutboxStore::InMemory
      end
    end

    def print_chain(chain)
      puts "  correlation chain read back from TBackend:"
      chain.each do |envelope|
        cause = chain.find { |other| other.event_id == envelope.causation_id }
        puts "    #{envelope.stream_id.ljust(38)} v#{envelope.version} #{short_name(envelope).ljust(17)} " \
             "caused by #{cause ? short_name(cause) : 'the command'}"
      end
    end

    def short_name(envelope)
      envelope.event.class.name.split("::").last
    end
  end
end
