# frozen_string_literal: true

require_relative "testing"

module TCB
  # include TCB::MinitestHelpers in a Minitest::Test.
  module MinitestHelpers
    def assert_published(*expected, within: 1.0, &block)
      missing, seen = Testing.capture_published(expected, within: within, &block)
      assert(missing.empty?, "expected #{Testing.describe(missing)} to be published within #{within}s; " \
                             "published: #{seen.empty? ? 'nothing' : Testing.describe(seen)}")
    end

    def poll_assert(message = nil, within: 1.0, interval: 0.001, &block)
      assert(Testing.poll(within: within, interval: interval, &block),
             "#{message || 'condition'} did not become true within #{within}s")
    end
  end
end
