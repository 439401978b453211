# frozen_string_literal: true

module TCB
  class EventBus
    # The shutdown half of the bus: state changes under the queue lock, so a shutdown, a
    # force and a signal can race without a hang or a double stop.
    module Lifecycle
      private

      # Shutdown events go straight to their subscribers in the caller's thread: the queue is
      # closing (or already dropped) when they happen.
      def notify_lifecycle(event)
        deliver(Envelope.wrap(event))
      end

      # Moves a running bus to :draining or :shutdown; false when another call got there first.
      def claim_shutdown(drain)
        @mutex.synchronize do
          next false unless @state == :running

          @state = @sync || !drain ? :shutdown : :draining
          @queue&.clear unless drain
          @not_empty&.broadcast
          @not_full&.broadcast
          true
        end
      end

      # A bus that never got an event has no thread to wait for. No thread can start now:
      # only a push onto a running bus (or from the dispatcher itself) starts one.
      def wait_for_dispatcher(timeout)
        thread = @dispatcher
        completed = thread.nil? || Thread.current.equal?(thread) || !thread.join(timeout).nil?
        drop_queue
        completed
      end

      # Stops the dispatcher after its current handler, drops the queue, and wakes every
      # publisher waiting for room (they get ShutdownError).
      def drop_queue
        @mutex.synchronize do
          @state = :shutdown
          @queue&.clear
          @not_empty&.broadcast
          @not_full&.broadcast
        end
        nil
      end

      def finish(drain, timeout, completed)
        event = EventBusShutdown.new(status: completed ? :completed : :timeout_exceeded, drain_requested: drain,
                                     timeout_seconds: timeout, events_drained: @drained || 0, occurred_at: Time.now.utc)
        notify_lifecycle(event)
        event
      end
    end
  end
end
