# frozen_string_literal: true

require "acts_as_tbackend/testing"

module ActsAsTbackend
  # Minitest assertions (`require "acts_as_tbackend/minitest"`, then
  # `include ActsAsTbackend::Minitest::Assertions` in a test case, or in
  # ActiveSupport::TestCase):
  #
  #   assert_mirrored(store: "orders", value: { status: "accepted" }) { order.save! }
  #   refute_mirrored(store: "orders") { Order.transaction { order.save!; raise ActiveRecord::Rollback } }
  #   with_tbackend_down { assert order.save }   # the request path survives an outage
  module Minitest
    # The assertions; they return what was mirrored.
    module Assertions
      include Testing::Helpers

      def assert_mirrored(store: nil, key: nil, event_type: nil, value: nil, count: nil, &block)
        mirrored = Testing.capture_mirrors(&block)
        matching = Testing.select(mirrored, store: store, key: key, event_type: event_type, value: value)
        wanted = { store: store, key: key, event_type: event_type, value: value }.compact
        ok = count ? matching.size == count : matching.any?
        assert(ok, "expected #{count || 'a'} fact(s) mirrored to TBackend matching #{wanted.inspect}, " \
                   "but #{Testing.describe(mirrored)}")
        matching
      end

      def refute_mirrored(store: nil, key: nil, event_type: nil, value: nil, &block)
        mirrored = Testing.capture_mirrors(&block)
        matching = Testing.select(mirrored, store: store, key: key, event_type: event_type, value: value)
        wanted = { store: store, key: key, event_type: event_type, value: value }.compact
        assert(matching.empty?, "expected nothing mirrored to TBackend matching #{wanted.inspect}, " \
                                "but #{Testing.describe(matching)}")
        mirrored
      end
    end
  end
end
