# frozen_string_literal: true

module TCB
  class EventBus
    # `handle_signals: true`: the first signal drains the bus within `shutdown_timeout`,
    # then the signal is re-raised to the process under its previous handler (so the
    # process still ends the way it would have); a second signal forces.
    module Signals
      private

      def install_signal_handlers(signals, on_signal)
        @on_signal = on_signal
        @signal_received = false
        @previous_traps = {}
        signals.each do |signal|
          name = signal.to_s.delete_prefix("SIG")
          @previous_traps[name] = Signal.trap(name) { trapped(name) }
        end
      end

      # Runs in trap context, where locks are forbidden: the work happens in a thread.
      def trapped(signal)
        if @signal_received
          Thread.new do
            force_shutdown
            reraise(signal)
          end
        else
          @signal_received = true
          Thread.new do
            safely_notify(signal)
            shutdown(drain: true, timeout: @shutdown_timeout)
            reraise(signal)
          end
        end
      end

      def safely_notify(signal)
        @on_signal&.call(signal)
      rescue StandardError => e
        Instrumentation.failure("signal_callback_failed.tcb", "on_signal raised #{Instrumentation.error_message(e)}", error: e)
      end

      def reraise(signal)
        restore_signal_handlers
        Process.kill(signal, Process.pid)
      end

      def restore_signal_handlers
        traps = @previous_traps
        @previous_traps = nil
        traps&.each { |name, previous| Signal.trap(name, previous || "DEFAULT") }
      end
    end
  end
end
