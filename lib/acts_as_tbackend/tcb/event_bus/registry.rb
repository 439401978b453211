# frozen_string_literal: true

module TCB
  class EventBus
    # One handler (a block, or a class instantiated per event) for one event class.
    Subscription = Struct.new(:event_class, :handler, :type) do
      def block?
        type == :block
      end

      def subscriber_class
        block? ? "Proc" : handler.name
      end

      def location
        location = block? ? handler.source_location : handler.instance_method(:call).source_location
        location&.join(":")
      end

      def source
        block? ? handler.inspect : "#{handler.name}#call"
      end
    end

    # Subscriptions by exact event class, in registration order.
    class Registry
      def initialize
        @lock = Mutex.new
        @subscriptions = {}
      end

      # The same handler subscribed twice for a class is one subscription.
      def add(event_class, handler, type)
        @lock.synchronize do
          list = (@subscriptions[event_class] ||= [])
          list.find { |subscription| subscription.handler.equal?(handler) } ||
            Subscription.new(event_class, handler, type).freeze.tap { |subscription| list << subscription }
        end
      end

      def remove(subscription)
        @lock.synchronize do
          list = @subscriptions[subscription.event_class]
          next false unless list&.delete(subscription)

          @subscriptions.delete(subscription.event_class) if list.empty?
          true
        end
      end

      def subscriptions_for(event_class)
        @lock.synchronize { @subscriptions.fetch(event_class, []).dup }
      end

      def handlers_for(event_class)
        subscriptions_for(event_class).map(&:handler)
      end
    end
  end
end
