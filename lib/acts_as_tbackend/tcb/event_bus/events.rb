# frozen_string_literal: true

module TCB
  # Published on the bus when a subscriber raised; the other subscribers still ran.
  SubscriberInvocationFailed = Struct.new(
    :original_event, :subscriber_type, :subscriber_class, :subscriber_location, :subscriber_source,
    :error_class, :error_message, :error_backtrace, :occurred_at,
    keyword_init: true
  )

  # Delivered to its subscribers when shutdown starts (status :initiated) and when it ends
  # (:completed, or :timeout_exceeded when the drain did not finish in time).
  EventBusShutdown = Struct.new(:status, :drain_requested, :timeout_seconds, :events_drained, :occurred_at,
                                keyword_init: true)

  # Published once each time the queue rises to the high-water mark.
  EventBusQueuePressure = Struct.new(:queue_size, :max_queue_size, :occupancy, :occurred_at, keyword_init: true)
end
