# frozen_string_literal: true

require "acts_as_tbackend/test_helpers"

module ActsAsTbackend
  # What the app-facing matchers (acts_as_tbackend/rspec) and assertions
  # (acts_as_tbackend/minitest) stand on: a recorder of the facts the mirror hands over
  # (synchronously or to the async queue) while a block runs, and clients that play a
  # daemon that is down or slow.
  module Testing
    # One mirrored fact: what was sent, and the result the mirror got.
    Mirrored = Struct.new(:fact, :result, :event_type, keyword_init: true) do
      def store = fact["store"]
      def key = fact["key"]
      def value = fact["value"]
    end

    @recorders = []
    @lock = Mutex.new

    class << self
      # The facts mirrored (by any thread) while the block runs, in order.
      def capture_mirrors
        recorded = []
        @lock.synchronize { @recorders += [recorded] }
        yield
        recorded
      ensure
        @lock.synchronize { @recorders -= [recorded] }
      end

      # @api private: called by Mirror for every fact it writes or enqueues. A frozen-array
      # read when nobody records.
      def record(fact, result, event_type)
        recorders = @recorders
        return if recorders.empty?

        entry = Mirrored.new(fact: fact, result: result, event_type: event_type.to_s)
        @lock.synchronize { recorders.each { |list| list << entry } }
      end

      # Facts in `mirrored` matching every given criterion; `value:` matches when the fact's
      # value includes those pairs (keys compared as strings).
      def select(mirrored, store: nil, key: nil, event_type: nil, value: nil)
        mirrored.select do |one|
          (store.nil? || one.store == store.to_s) &&
            (key.nil? || one.key == key.to_s) &&
            (event_type.nil? || one.event_type == event_type.to_s) &&
            (value.nil? || value_includes?(one.value, value))
        end
      end

      def value_includes?(actual, expected)
        return false unless actual.is_a?(Hash)

        expected.all? { |k, v| actual.key?(k.to_s) && actual[k.to_s] == (v.is_a?(Symbol) ? v.to_s : v) }
      end

      def describe(mirrored)
        return "nothing was mirrored" if mirrored.empty?

        "mirrored: #{mirrored.map { |m| "#{m.store} #{m.key} #{m.event_type} #{m.value.inspect}" }.join('; ')}"
      end
    end

    # A FakeClient that answers every call with one status, optionally after a delay:
    # the daemon as the app sees it when it is down (`unavailable`), stalled
    # (`timeout_unknown` after request_timeout) or just slow.
    class OutageClient < TestHelpers::FakeClient
      def initialize(status:, delay: 0, **overrides)
        super()
        @status = status.to_s
        @delay = delay
        @overrides = overrides
      end

      private

      def answer(method, args, **kwargs)
        sleep(@delay) if @delay.positive?
        queue_result(status: @status, **@overrides)
        super
      end
    end

    # Included by the RSpec and minitest integrations.
    module Helpers
      # Runs the block with the daemon "down": every call answers `unavailable` at once.
      def with_tbackend_down(&block)
        TestHelpers.stub_client(OutageClient.new(status: "unavailable"), &block)
      end

      # Runs the block with a slow daemon: every call takes `delay` seconds, then answers
      # `status` (default: committed, as a slow daemon eventually does).
      def with_tbackend_slow(delay: 0.5, status: "committed_acked", &block)
        TestHelpers.stub_client(OutageClient.new(status: status, delay: delay), &block)
      end
    end
  end
end
