# frozen_string_literal: true

module TCB
  # What the Minitest assertions and the RSpec matchers share.
  module Testing
    module_function

    # Subscribes to the expected events' classes on TCB's bus, runs the block, and waits up
    # to `within` seconds until every expectation matched one published event (a class
    # matches any instance of it, an instance needs ==; each published event satisfies
    # one expectation). Returns [unmatched expectations, events published].
    def capture_published(expected, within:)
      raise ArgumentError, "name at least one expected event (a class or an instance)" if expected.empty?

      bus = TCB.config.event_bus
      published = Queue.new
      classes = expected.map { |item| item.is_a?(Class) ? item : item.class }.uniq
      subscriptions = classes.map { |klass| bus.subscribe(klass) { |envelope| published << envelope.event } }
      begin
        yield
        seen = []
        missing = nil
        poll(within: within, interval: 0.001) do
          seen << published.pop until published.empty?
          (missing = unmatched(expected, seen)).empty?
        end
        [missing, seen]
      ensure
        subscriptions.each { |subscription| bus.unsubscribe(subscription) unless bus.shutdown? }
      end
    end

    def unmatched(expected, seen)
      remaining = seen.dup
      expected.reject do |item|
        index = remaining.index { |event| item.is_a?(Class) ? event.instance_of?(item) : event == item }
        remaining.delete_at(index) if index
      end
    end

    # True as soon as the block returns truthy, false when `within` seconds pass first.
    def poll(within:, interval:)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + within
      loop do
        return true if yield
        return false if Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline

        sleep(interval)
      end
    end

    def describe(items)
      items.map { |item| item.is_a?(Class) ? item.name : item.inspect }.join(", ")
    end
  end
end
