# frozen_string_literal: true

require "rspec/expectations"
require "acts_as_tbackend/testing"

module ActsAsTbackend
  # RSpec matchers that read like sentences (`require "acts_as_tbackend/rspec"`):
  #
  #   expect { order.save! }.to mirror_to_tbackend(store: "orders").with_value(status: "accepted")
  #   expect { order.destroy! }.to mirror_to_tbackend(store: "orders", event_type: "destroy")
  #   expect { Order.transaction { order.save!; raise ActiveRecord::Rollback } }.not_to mirror_to_tbackend
  #   expect { 3.times { Order.create! } }.to mirror_to_tbackend(store: "orders").times(3)
  #
  # `with_tbackend_down { }` / `with_tbackend_slow(delay: 1) { }` run a block against a
  # daemon that is down or slow.
  module RSpec
    # The matcher behind `mirror_to_tbackend`.
    class MirrorMatcher
      include ::RSpec::Matchers::Composable

      def initialize(store: nil, key: nil, event_type: nil)
        @criteria = { store: store, key: key, event_type: event_type }
        @count = nil
      end

      def with_value(value = nil, **pairs)
        @criteria[:value] = (value || {}).merge(pairs)
        self
      end

      def times(count)
        @count = count
        self
      end

      def supports_block_expectations? = true

      def matches?(block)
        @mirrored = Testing.capture_mirrors(&block)
        matching = Testing.select(@mirrored, **@criteria)
        @count ? matching.size == @count : matching.any?
      end

      def does_not_match?(block)
        @mirrored = Testing.capture_mirrors(&block)
        Testing.select(@mirrored, **@criteria).empty?
      end

      def description
        wanted = @criteria.compact.map { |k, v| "#{k}: #{v.inspect}" }.join(", ")
        "mirror to TBackend#{" (#{wanted})" unless wanted.empty?}#{" #{@count} times" if @count}"
      end

      def failure_message
        "expected the block to #{description}, but #{Testing.describe(@mirrored)}"
      end

      def failure_message_when_negated
        "expected the block not to #{description}, but #{Testing.describe(@mirrored)}"
      end
    end

    # Matchers and helpers, included into every example group.
    module Matchers
      include Testing::Helpers

      def mirror_to_tbackend(store: nil, key: nil, event_type: nil)
        MirrorMatcher.new(store: store, key: key, event_type: event_type)
      end
    end
  end
end

RSpec.configure { |config| config.include ActsAsTbackend::RSpec::Matchers } if defined?(RSpec.configure)
