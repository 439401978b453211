# frozen_string_literal: true

module ActsAsTbackend
  module Instrumentation
    # Tells Instrumentation.watch when ActiveSupport's notifier class (Fanout) changes a
    # subscriber list: every change goes through `subscribe` or `unsubscribe`, the same on
    # Rails 6.1 to 7.2. Until one does, a verdict is kept without asking Fanout for its
    # list, which was half of what a watch cost.
    module SubscriptionCount
      @changes = 0

      class << self
        attr_reader :changes

        # Fanout, once this module is in it; nil until ActiveSupport is loaded.
        attr_reader :fanout

        # `notifications` (ActiveSupport::Notifications), its Fanout counted from now on.
        def counting(notifications)
          unless @fanout
            @fanout = notifications::Fanout
            @fanout.prepend(self)
          end
          notifications
        end

        # Counted before the verdicts are dropped: see Instrumentation.listeners_of.
        def changed
          @changes += 1
          VERDICTS.clear
        end
      end

      def subscribe(...)
        super
      ensure
        SubscriptionCount.changed
      end

      def unsubscribe(...)
        super
      ensure
        SubscriptionCount.changed
      end
    end
  end
end
