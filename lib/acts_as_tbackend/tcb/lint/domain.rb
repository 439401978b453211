# frozen_string_literal: true

require "bigdecimal"
require "date"

module TCB
  # The domain the store lint writes: two contexts whose names share a prefix
  # ("tcb/lint/orders" and "tcb/lint/orders_archive"), and events of every shape a store
  # must carry back into the app's classes.
  module Lint
    # Orders, with an event of each shape.
    module Orders
      include TCB::HandlesEvents

      # A keyword Struct, with values JSON has no type for.
      Placed = Struct.new(:order_id, :total, :placed_at, :due_on, :channel, :lines, keyword_init: true)
      # A positional Struct.
      Shipped = Struct.new(:order_id, :carrier)

      # A plain class with a keyword initializer.
      class Noted
        attr_reader :order_id, :text

        def initialize(order_id:, text:)
          @order_id = order_id
          @text = text
        end

        def to_h
          { order_id: order_id, text: text }
        end

        def ==(other)
          other.class == self.class && other.to_h == to_h
        end
      end

      persist events(Placed, Shipped, Noted, stream_id_from_event: :order_id)
    end

    # A context whose name starts like Orders': correlation reads must not mix them.
    module OrdersArchive
      include TCB::HandlesEvents

      Archived = Struct.new(:order_id, keyword_init: true)

      persist events(Archived, stream_id_from_event: :order_id)
    end

    DOMAIN_MODULES = [Orders, OrdersArchive].freeze

    # Handlers the outbox lint names (never called: the lint tests stores, not the relay).
    class NotifyWarehouse
      def call(event); end
    end

    # A second handler, so entries of one event can differ by handler.
    class NotifyBilling
      def call(event); end
    end
  end
end
