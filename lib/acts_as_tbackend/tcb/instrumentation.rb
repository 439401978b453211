# frozen_string_literal: true

module TCB
  # Failures nobody awaits (a bus handler, an outbox delivery) are logged and instrumented
  # by default: tcb 0.6.2 only published an event that nothing listened to.
  module Instrumentation
    module_function

    # Instruments `name` ("handler_failed.tcb") through ActiveSupport::Notifications when it
    # is loaded, and logs `message` at error level on TCB.config.logger. Never raises: a
    # broken logger must not take the bus down with it.
    def failure(name, message, payload)
      ::ActiveSupport::Notifications.instrument(name, payload) if defined?(::ActiveSupport::Notifications)
      TCB.config.logger.error("[TCB] #{message}")
      nil
    rescue StandardError => e
      warn("[TCB] reporting #{name} failed (#{e.class}: #{e.message}); original: #{message}")
      nil
    end

    def error_message(error)
      "#{error.class}: #{error.message}"
    end
  end
end
