# frozen_string_literal: true

require "acts_as_tbackend"

module ActsAsTbackend
  # Opt-in helpers for app test suites (`require "acts_as_tbackend/test_helpers"`): a fake
  # client that answers from a queue and records every call, a way to swap it in, and an
  # assertion for facts. Use them as module functions or `include` them.
  module TestHelpers
    # Raised by assert_tbackend_fact; the message lists every mismatch, joined by "; ".
    class AssertionFailed < StandardError; end

    # Stands in for ActsAsTbackend.client. Each call takes the next queued result (an
    # empty queue answers status `ok`); thread-safe, so it serves threaded code too.
    class FakeClient
      # status => [ok, committed, retryable], as the status table (ActsAsTbackend::STATUSES)
      # fixes them.
      DEFAULTS = STATUSES.transform_values { |row| row.values_at(:ok, :committed, :retryable).freeze }.freeze
      # A status the table does not know: a failure nobody can retry.
      UNKNOWN_STATUS = [false, nil, false].freeze
      # One recorded call, as acts-as-tbackend 0.2 recorded it. `kwargs` holds only the
      # keywords the caller passed, so a test can compare it with exactly what it sent.
      Call = Struct.new(:method, :args, :kwargs) # rubocop:disable Lint/StructNewOverride -- 0.2 named it `method`
      # The default of every optional keyword below: tells "not passed" from "passed nil".
      NOT_PASSED = Object.new.freeze

      attr_reader :config

      def initialize(config = ActsAsTbackend.config)
        @config = config
        @lock = Mutex.new
        @queue = []
        @calls = []
      end

      # Queues the answer for a later call; chainable. Extra keywords override or add
      # result fields (`seq_id: 7`).
      def queue_result(status:, response: nil, error: nil, **overrides)
        result = if STATUSES.key?(status.to_s)
                   Client.result(status.to_s, response: response, error: error)
                 else
                   ok, committed, retryable = UNKNOWN_STATUS
                   { ok: ok, status: status.to_s, committed: committed, retryable: retryable,
                     response: response, error: error, error_kind: STATUSES["error"][:error_kind] }
                 end.merge(overrides)
        @lock.synchronize { @queue << result }
        self
      end

      # Every call so far, oldest first, each a Call (`method`, `args`, `kwargs`).
      def calls
        @lock.synchronize { @calls.dup }
      end

      def queued_count
        @lock.synchronize { @queue.size }
      end
      alias remaining queued_count # acts-as-tbackend 0.2's name

      def write_fact_once(fact, durability: NOT_PASSED, timeout: NOT_PASSED)
        answer(:write_fact_once, [fact], durability: durability, timeout: timeout)
      end

      def write_fact_once_safe(fact, durability: NOT_PASSED, timeout: NOT_PASSED, attempts: NOT_PASSED,
                               backoff: NOT_PASSED)
        result = answer(:write_fact_once_safe, [fact], durability: durability, timeout: timeout,
                                                       attempts: attempts, backoff: backoff)
        summary = result.slice(:ok, :status, :committed, :retryable)
        result.merge(attempt_count: result.fetch(:attempt_count, 1), attempts: result.fetch(:attempts, [summary]))
      end

      # One queued result per fact, recorded as one call.
      def write_facts_once(facts, durability: NOT_PASSED, timeout: NOT_PASSED)
        facts = facts.to_a
        @lock.synchronize do
          record(:write_facts_once, [facts], durability: durability, timeout: timeout)
          facts.map { next_result }
        end
      end

      def latest_for(store:, key:, as_of: NOT_PASSED, timeout: NOT_PASSED)
        answer(:latest_for, [], store: store, key: key, as_of: as_of, timeout: timeout)
      end

      # One queued result per key, recorded as one call.
      def latest_for_many(store:, keys:, as_of: NOT_PASSED, timeout: NOT_PASSED)
        keys = keys.to_a
        @lock.synchronize do
          record(:latest_for_many, [], store: store, keys: keys, as_of: as_of, timeout: timeout)
          keys.map { next_result }
        end
      end

      def facts_for(store:, key: NOT_PASSED, since: NOT_PASSED, as_of: NOT_PASSED, timeout: NOT_PASSED)
        answer(:facts_for, [], store: store, key: key, since: since, as_of: as_of, timeout: timeout)
      end

      def facts_by_seq(store:, after_seq: NOT_PASSED, until_seq: NOT_PASSED, timeout: NOT_PASSED)
        answer(:facts_by_seq, [], store: store, after_seq: after_seq, until_seq: until_seq, timeout: timeout)
      end

      def ping(timeout: NOT_PASSED)
        answer(:ping, [], timeout: timeout)
      end

      # Reports a healthy daemon (or `disabled`), without taking a queued result.
      def health
        @lock.synchronize { record(:health, []) }
        enabled = config.enabled?
        { enabled: enabled, host: config.host, port: config.port, durability_default: config.durability_default,
          strict: config.strict, failure_policy: config.failure_policy,
          ok: true, status: enabled ? "ok" : "disabled", error: nil }
      end

      def shutdown
        @lock.synchronize { record(:shutdown, []) }
        nil
      end

      # No lanes, no breaker.
      def stats
        {}
      end

      def inspect
        "#<#{self.class.name} queued=#{queued_count} calls=#{calls.size}>"
      end

      private

      def answer(method, args, **kwargs)
        @lock.synchronize do
          record(method, args, **kwargs)
          next_result
        end
      end

      def record(method, args, **kwargs)
        @calls << Call.new(method, args, kwargs.reject { |_, value| value.equal?(NOT_PASSED) })
      end

      def next_result
        @queue.shift || Client.result("ok")
      end
    end

    # Public both as `TestHelpers.stub_client` and, once included, as `stub_client`.
    extend self

    def fake_client
      FakeClient.new
    end

    # Makes `client` (a new FakeClient by default) the module client for the block and
    # restores the previous one afterwards, whatever happens. Returns the block's value.
    def stub_client(client = fake_client)
      previous = ActsAsTbackend.instance_variable_get(:@client)
      ActsAsTbackend.instance_variable_set(:@client, client)
      yield client
    ensure
      ActsAsTbackend.instance_variable_set(:@client, previous)
    end

    # Mirrors `record` as the mirror would (same fact, same failure policy) and returns
    # `{fact:, result:}`.
    def capture_mirror_result(record:, store:, event_type:, durability: nil, **build_options)
      fact = Mirror.build_fact(record: record, store: store, event_type: event_type, **build_options)
      { fact: fact, result: Mirror.deliver(fact, store: store, event_type: event_type, durability: durability) }
    end

    # Checks a fact (String- or Symbol-keyed) and raises AssertionFailed naming every
    # mismatch in acts-as-tbackend 0.2's words, joined by "; ". Returns true.
    def assert_tbackend_fact(fact, store: nil, key: nil, value_includes: nil)
      mismatches = []
      { store: store, key: key }.each do |name, expected|
        next unless expected

        actual = field(fact, name)
        mismatches << "expected #{name} #{expected.inspect}, got #{actual.inspect}" unless actual.to_s == expected.to_s
      end
      mismatches.concat(value_mismatches(field(fact, :value), value_includes)) if value_includes
      raise AssertionFailed, mismatches.join("; ") unless mismatches.empty?

      true
    end

    private

    # A value that is not a Hash includes nothing: every expected entry reads as nil.
    def value_mismatches(value, expected)
      expected.filter_map do |name, want|
        actual = field(value, name)
        "expected value[#{name.inspect}] to be #{want.inspect}, got #{actual.inspect}" unless actual == want
      end
    end

    def field(hash, name)
      return nil unless hash.is_a?(Hash)

      hash.fetch(name.to_s) { hash[name.to_s.to_sym] }
    end
  end
end
