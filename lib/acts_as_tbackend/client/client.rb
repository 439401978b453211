# frozen_string_literal: true

module ActsAsTbackend
  # The app-facing client: one per process and endpoint, shared by every thread. The work
  # (request encoding, pipelined lanes, deadlines, breaker, retries, answer
  # classification) happens in the native core with the GVL released; this class turns
  # configuration into native options and keeps the 0.2 gem's promises: non-strict,
  # nothing raises; strict, transport failures raise an ActsAsTbackend::TransportError.
  class Client
    # Every list below is read from the status table, ActsAsTbackend::STATUSES.
    # status => the TransportError subclass strict mode raises for it.
    TRANSPORT_ERRORS = Native::STRICT_ERRORS
    # A request that got no daemon answer (strict mode raises these).
    TRANSPORT_STATUSES = STATUSES.select { |_, row| row[:transport] }.keys.freeze
    # Nothing was stored, or it is not known whether it was: sending the same fact again
    # is safe (its id makes a repeat a replay) and may succeed.
    RETRY_SAFE_STATUSES = STATUSES.select { |_, row| row[:retry_safe] }.keys.freeze

    # The soft result for `status` as its row in the table fixes it. Only a failure has an
    # `error_kind`: a success keeps the 0.2 gem's six keys, as the native results do.
    def self.result(status, response: nil, error: nil)
      row = STATUSES.fetch(status)
      result = { ok: row[:ok], status: status, committed: row[:committed], retryable: row[:retryable],
                 response: response, error: error }
      result[:error_kind] = row[:error_kind] if row[:error_kind]
      result
    end

    # What a call answers for a config that is not valid.
    def self.config_error_message(config)
      "ActsAsTbackend::ConfigurationError: #{config.errors.join('; ')}"
    end

    # What the mirror paths answer while the connector is disabled.
    DISABLED = result("disabled").freeze

    # The soft result for an exception that stands for a failed call (an invalid value, a
    # bug of ours, a strict-mode TransportError caught by a caller that must not raise);
    # retryable when the exception says so. The token never shows.
    def self.error_result(exception, token = ActsAsTbackend.config.token)
      message = Redact.call("#{exception.class.name}: #{exception.message}", token)
      retryable = (exception.respond_to?(:retryable?) && exception.retryable?) == true
      result("error", error: message).merge(committed: false, retryable: retryable, error_kind: error_kind(exception))
    end

    # The error kind an exception stands for (see ErrorKind in tbackend-core).
    def self.error_kind(exception)
      case exception
      when ConfigurationError then STATUSES["config_error"][:error_kind]
      when TransportError
        exception.result&.dig(:error_kind) || STATUSES.dig(TRANSPORT_ERRORS.key(exception.class), :error_kind) ||
          STATUSES["timeout_unknown"][:error_kind]
      when InternalError then STATUSES["error"][:error_kind]
      else "client_bug" # what the caller passed is wrong, as for a refused request
      end
    end

    attr_reader :config

    def initialize(config = ActsAsTbackend.config)
      @config = config
      @native = (Native::Client.new(native_options(config)) if config.valid?)
    end

    def write_fact_once(fact, durability: nil, timeout: nil)
      durability = durability(durability)
      instrumented(:write_fact_once, fact, durability: durability) do
        call { |n| n.write_fact_once(wire_fact(fact), durability, timeout) }
      end
    end

    # Retries unavailable, timeout_unknown and rejected_before_commit with exponential
    # backoff and full jitter, inside one overall deadline, never holding a lane while it
    # sleeps. The last result carries `attempt_count:` and `attempts:`.
    def write_fact_once_safe(fact, durability: nil, timeout: nil, attempts: 2, backoff: 0.05)
      durability = durability(durability)
      result = instrumented(:write_fact_once_safe, fact, durability: durability) do
        call { |n| n.write_fact_once_safe(wire_fact(fact), durability, timeout, Integer(attempts), Float(backoff)) }
      end
      publish_retry(fact, result) if result[:attempt_count].to_i > 1
      result
    end

    # One soft result per fact, in order, pipelined across lanes: the way to backfill at
    # full daemon speed from one thread.
    def write_facts_once(facts, durability: nil, timeout: nil)
      facts = facts.to_a
      facts = facts.map { |fact| wire_fact(fact) } if prefixed?
      durability = durability(durability)
      instrumented(:write_facts_once, nil, count: facts.size, durability: durability) do
        call(count: facts.size) { |n| n.write_facts_once(facts, durability, timeout) }
      end
    end

    def latest_for(store:, key:, as_of: nil, timeout: nil)
      instrumented(:latest_for, nil, store: store) { call { |n| n.latest_for(wire_store(store), key, as_of, timeout) } }
    end

    # The latest fact of each key of one store: one soft result per key, in order
    # (`result[:response][:fact]`, nil for a key without facts), pipelined across lanes
    # like write_facts_once. The way to read a million keys (ActsAsTbackend.verify).
    def latest_for_many(store:, keys:, as_of: nil, timeout: nil)
      keys = keys.to_a
      instrumented(:latest_for_many, nil, store: store, count: keys.size) do
        call(count: keys.size) { |n| n.latest_for_many(wire_store(store), keys, as_of, timeout) }
      end
    end

    def facts_for(store:, key: nil, since: nil, as_of: nil, timeout: nil)
      instrumented(:facts_for, nil, store: store) { call { |n| n.facts_for(wire_store(store), key, since, as_of, timeout) } }
    end

    def facts_by_seq(store:, after_seq: 0, until_seq: nil, timeout: nil)
      instrumented(:facts_by_seq, nil, store: store) do
        call { |n| n.facts_by_seq(wire_store(store), after_seq, until_seq, timeout) }
      end
    end

    def ping(timeout: nil)
      instrumented(:ping) { call { |n| n.ping(timeout) } }
    end

    # A gap-safe tail over facts_by_seq (see Tail).
    def tail(store:, after_seq: 0, **options)
      Tail.new(self, store: store, after_seq: after_seq, **options)
    end

    def health
      Health.new(self).call
    end

    # Lanes and breaker as the native core sees them.
    def stats
      @native ? @native.stats : {}
    end

    def shutdown
      @native&.shutdown
      nil
    end

    def inspect
      "#<#{self.class.name} #{config.host}:#{config.port} lanes=#{config.pool_size}>"
    end
    alias to_s inspect

    # The one place `store_prefix` is applied: every store name the gem sends or reads
    # (writes, reads, the tail, the async writer, and so the mirror, the read helpers,
    # backfill and the TCB TBackend store) passes here. Facts and names in the app keep
    # their own store; answers carry the daemon's (prefixed) one.
    def wire_store(store)
      prefixed? && !store.nil? ? "#{config.store_prefix}#{store}" : store
    end

    # `fact` as sent: a copy with its store prefixed (String or Symbol key), or `fact`
    # itself without a prefix.
    def wire_fact(fact)
      return fact unless prefixed? && fact.is_a?(Hash)

      key = fact.key?("store") ? "store" : :store
      fact.key?(key) ? fact.merge(key => wire_store(fact[key])) : fact
    end

    # @api private: the options Native::Client.new and Native::Writer.new take.
    def native_options(config = self.config)
      {
        host: config.host, port: config.port, token: config.token,
        connect_timeout: config.connect_timeout, request_timeout: config.request_timeout,
        lanes: config.pool_size, max_in_flight: config.max_in_flight,
        breaker_threshold: config.breaker_threshold, breaker_cooldown: config.breaker_cooldown,
        idle_reconnect: config.idle_reconnect
      }
    end

    # @api private: for Health and Tail, which must never raise.
    def native_call(&block)
      call(strict: false, &block)
    end

    private

    def prefixed?
      prefix = config.store_prefix
      !(prefix.nil? || prefix.empty?)
    end

    def durability(value)
      (value || config.durability_default).to_s
    end

    # What a call turns into a soft result instead of raising: an invalid value or
    # argument, or a bug of ours. Anything else — above all an exception raised into the
    # waiting thread (Thread#raise, Timeout, Rack::Timeout) — passes through untouched.
    SOFT_ERRORS = [InvalidFact, ConfigurationError, InternalError, TypeError, RangeError, EncodingError].freeze

    def call(count: nil, strict: config.strict)
      return config_error(count) unless @native

      result = yield @native
      track_breaker(count ? result.last : result)
      redact_errors!(result, count) unless config.token.nil?
      raise_transport!(result, count) if strict
      result
    rescue *SOFT_ERRORS => e
      soft_error(e, count)
    end

    # Only names and ids reach subscribers, never a value or the token. Explicit keywords,
    # not **options: an unobserved call allocates no payload Hash.
    def instrumented(event, fact = nil, store: nil, durability: nil, count: nil, &block)
      Instrumentation.observe(event, self, :call_payload, fact, store, durability, count, &block)
    end

    def call_payload(fact, store, durability, count)
      payload = { store: store, durability: durability, count: count }.compact
      if fact.respond_to?(:[])
        payload[:store] ||= fact["store"] || fact[:store]
        payload[:fact_id] = fact["id"] || fact[:id]
      end
      payload
    end

    def publish_retry(fact, result)
      return unless Instrumentation.listening?(:retry)

      Instrumentation.publish(
        :retry,
        store: fact["store"] || fact[:store], fact_id: fact["id"] || fact[:id],
        attempt_count: result[:attempt_count], statuses: Array(result[:attempts]).map { |one| one[:status] }
      )
    end

    # Breaker transitions become notifications. The native state is read only when a
    # result may mean a transition, and only when someone listens.
    def track_breaker(result)
      return unless breaker_may_move?(result)
      return unless Instrumentation.listening?(:breaker_open) || Instrumentation.listening?(:breaker_closed)

      breaker = @native.stats[:breaker] || {}
      open = breaker[:state] != "closed"
      return if open == (@breaker_open || false)

      @breaker_open = open
      event = open ? :breaker_open : :breaker_closed
      details = open ? breaker.slice(:consecutive_failures, :opens) : {}
      Instrumentation.publish(event, host: config.host, port: config.port, **details)
    end

    # A failure while the breaker was last seen closed, or anything but `circuit_open` while
    # it was last seen open. A success while it was closed (nearly every call) costs no
    # string compare (no transport status is ever ok); calls refused by an open breaker
    # cost one.
    def breaker_may_move?(result)
      hash = result.is_a?(Hash)
      return false if hash && !@breaker_open && result[:ok]

      status = hash ? result[:status] : nil
      @breaker_open ? status != "circuit_open" : TRANSPORT_STATUSES.include?(status)
    end

    def redact_errors!(result, count)
      (count ? result : [result]).each { |one| one[:error] = Redact.call(one[:error], config.token) if one[:error] }
    end

    def raise_transport!(result, count)
      (count ? result : [result]).each do |one|
        error = TRANSPORT_ERRORS[one[:status]]
        raise error.new(one[:error], result: one) if error
      end
    end

    def config_error(count)
      one = self.class.result("config_error", error: self.class.config_error_message(config))
      count ? Array.new(count) { one.dup } : one
    end

    def soft_error(exception, count)
      one = self.class.error_result(exception, config.token)
      count ? Array.new(count) { one.dup } : one
    end
  end

  # Removes a token from any text before it is shown.
  module Redact
    def self.call(text, token)
      return text if token.nil? || token.empty?

      text.to_s.gsub(token, "[REDACTED]")
    end
  end
end
