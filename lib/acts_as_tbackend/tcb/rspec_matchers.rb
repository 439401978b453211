# frozen_string_literal: true

require_relative "testing"

module TCB
  # `expect { ... }.to have_published(Orders::OrderPlaced)` and
  # `expect { condition }.to poll_match(within: 2.0)`. Included in every example group
  # when loaded through `require "tcb/rspec_helpers"`.
  module RSpecMatchers
    # Block matcher: the block publishes every expected event.
    class HavePublished
      def initialize(expected, within)
        @expected = expected
        @within = within
      end

      def supports_block_expectations?
        true
      end

      def matches?(block)
        @missing, @seen = Testing.capture_published(@expected, within: @within, &block)
        @missing.empty?
      end

      # Waits `within` on an async bus (a sync bus has delivered when the block returns) and
      # passes when none of the expected events was published.
      def does_not_match?(block)
        within = TCB.config.event_bus.sync? ? 0 : @within
        @missing, @seen = Testing.capture_published(@expected, within: within, &block)
        @missing.size == @expected.size
      end

      def failure_message
        "expected #{Testing.describe(@missing)} to be published within #{@within}s; " \
          "published: #{@seen.empty? ? 'nothing' : Testing.describe(@seen)}"
      end

      def failure_message_when_negated
        "expected #{Testing.describe(@expected - @missing)} not to be published; published: #{Testing.describe(@seen)}"
      end

      def description
        "publish #{Testing.describe(@expected)}"
      end
    end

    # Block matcher: the block becomes truthy within the time.
    class PollMatch
      def initialize(within, interval)
        @within = within
        @interval = interval
      end

      def supports_block_expectations?
        true
      end

      def matches?(block)
        Testing.poll(within: @within, interval: @interval) { block.call }
      end

      def failure_message
        "expected the block to return truthy within #{@within}s"
      end

      def description
        "become truthy within #{@within}s"
      end
    end

    def have_published(*expected, within: 1.0) # rubocop:disable Naming/PredicateName -- the tcb API name
      HavePublished.new(expected, within)
    end

    def poll_match(within: 1.0, interval: 0.001)
      PollMatch.new(within, interval)
    end
  end

  # What tcb 0.6.2's apps include (`config.include TCB::RSpecHelpers`): the same matchers.
  module RSpecHelpers
    include RSpecMatchers
  end
end
