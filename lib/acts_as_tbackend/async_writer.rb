# frozen_string_literal: true

module ActsAsTbackend
  # Writes facts off the request path. `enqueue` hands the fact to a bounded queue in the
  # native core and returns in microseconds; a native thread (no Ruby, no GVL) delivers the
  # queue through a connection of its own, pipelined, with retries, exponential backoff
  # and jitter, one fact at a time per store and key so their order holds. With
  # `spool_path` the queue is a crash-safe file spool: what a daemon outage, a restart or
  # a `kill -9` leaves undelivered is delivered by the next writer to start. See
  # docs/async.md.
  #
  # Use the memoised `ActsAsTbackend.async_writer`: one per process, rebuilt in a forked
  # child, shut down by `reset!` and at exit.
  class AsyncWriter
    STATS_KEYS = %i[queued spooled spool_bytes enqueued delivered replays conflicts failed dead retries dropped
                    spool_errors adopted].freeze
    # Least seconds between two "dropped" warnings; each names how many were dropped.
    DROP_WARNING_INTERVAL = 10.0

    attr_reader :config, :pid

    def initialize(config = ActsAsTbackend.config)
      @config = config
      @pid = ForkSafety.pid
      # The soft-result wrapper of a synchronous write (config_error, invalid facts, token
      # redaction) so an enqueue fails exactly as a write would; it never connects.
      @client = Client.new(config)
      @drop_lock = Mutex.new
      @dropped_unreported = 0
      @last_drop_warning = nil
      @native, @open_error = open_native(config)
      ForkSafety.register(self) if @native
    end

    # Queues one fact (a Hash, as Fact.build makes it). Returns a soft result:
    # `enqueued` (ok), `queue_full` after waiting `queue_block_timeout` ("block"),
    # `dropped` ("drop", with a rate-limited warning), `disabled`, `config_error`, or the
    # non-retryable `error` a synchronous write gives an invalid fact. Raises QueueFull
    # under the "raise" policy.
    def enqueue(fact, durability: nil)
      return Client::DISABLED.dup unless config.enabled?
      return @client.native_call { enqueue_native(fact, durability) } unless Instrumentation.listening?(:enqueue)

      payload = { store: fact["store"] || fact[:store], fact_id: fact["id"] || fact[:id] } if fact.respond_to?(:[])
      Instrumentation.instrument(:enqueue, payload || {}) { @client.native_call { enqueue_native(fact, durability) } }
    end

    # true once every fact enqueued before the call has a terminal result (delivered,
    # conflict, failed or dead); false after `timeout` seconds. Instrumented as
    # `spool_flush.acts_as_tbackend` with `settled` and the writer's counters afterwards.
    def flush(timeout: 5.0)
      return true unless @native
      return @native.flush(Float(timeout)) unless Instrumentation.listening?(:spool_flush)

      Instrumentation.instrument(:spool_flush, timeout: timeout) do |payload|
        @native.flush(Float(timeout)).tap { |settled| payload.merge!(settled: settled, **stats) }
      end
    end

    # Counters (since this writer started) and gauges: queued (in memory, not yet
    # settled), spooled (facts in the spool not yet settled), spool_bytes, enqueued,
    # delivered (committed or replayed), replays, conflicts, failed, dead (exhausted
    # retry_attempts), retries, dropped, spool_errors, adopted (facts taken over from
    # the spool segments of dead processes).
    def stats
      native = @native&.stats || {}
      STATS_KEYS.to_h { |key| [key, native.fetch(key, 0)] }
    end

    # Refuses later enqueues, flushes for at most `timeout` seconds and stops the native
    # thread. Returns true when nothing was left; otherwise warns once with the count (kept
    # in the spool for the next writer, or lost without one).
    def shutdown(timeout: 5.0)
      return true unless @native
      return @drained unless @drained.nil?

      @drained = @native.shutdown(Float(timeout))
      warn_undelivered unless @drained
      @drained
    end

    # In a forked child (ForkSafety): gives up the parent's writer without running it
    # (its queue is the parent's to deliver, its spool segment the parent's to hold);
    # every later call answers as if shut down.
    def after_fork
      @native&.after_fork
      nil
    end

    # @api private: this writer's spool segment files (specs check adoption with it).
    def spool_segments
      @native ? @native.spool_segments : []
    end

    def inspect
      "#<#{self.class.name} #{config.host}:#{config.port} queue_size=#{config.queue_size} " \
        "policy=#{config.queue_full_policy} spool=#{config.spool_path.inspect}>"
    end
    alias to_s inspect

    private

    def open_native(config)
      return [nil, nil] unless config.valid?

      [Native::Writer.new(@client.native_options, writer_options(config)), nil]
    rescue ConfigurationError => e
      # An unusable spool directory must not break the commit that first enqueues: every
      # enqueue answers config_error instead, naming the problem.
      [nil, "#{e.class.name}: #{e.message}"]
    end

    def writer_options(config)
      {
        queue_size: config.queue_size, retry_attempts: config.retry_attempts,
        retry_base_backoff: config.retry_base_backoff, retry_max_backoff: config.retry_max_backoff,
        spool_path: config.spool_path, spool_fsync: config.spool_fsync
      }
    end

    def enqueue_native(fact, durability)
      return Client.result("config_error", error: @open_error) unless @native

      wait = config.queue_full_policy == "block" ? config.queue_block_timeout : nil
      status, error = @native.enqueue(@client.wire_fact(fact), (durability || config.durability_default).to_s, wait)
      case status
      when "enqueued" then Client.result("enqueued", error: error)
      when "full" then queue_full(wait)
      else Client.result("unavailable", error: "ActsAsTbackend::ConnectionError: async writer is shut down")
      end
    end

    def queue_full(waited)
      message = "async queue full (#{config.queue_size} facts)"
      case config.queue_full_policy
      when "raise" then raise QueueFull, message
      when "drop"
        @native.count_dropped
        warn_dropped
        Client.result("dropped", error: "ActsAsTbackend::QueueFull: #{message}: fact dropped")
      else
        Client.result("queue_full", error: "ActsAsTbackend::QueueFull: #{message} for #{waited}s")
      end
    end

    # One line per DROP_WARNING_INTERVAL, counting every drop since the last line.
    def warn_dropped
      line = @drop_lock.synchronize do
        @dropped_unreported += 1
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        next if @last_drop_warning && now - @last_drop_warning < DROP_WARNING_INTERVAL

        @last_drop_warning = now
        count = @dropped_unreported
        @dropped_unreported = 0
        "acts_as_tbackend: async queue full (#{config.queue_size} facts): dropped #{count} fact(s) " \
          "(queue_full_policy \"drop\")"
      end
      warn(line) if line
    end

    def warn_undelivered
      left = @native.stats[:queued].to_i
      return if left.zero?

      where = config.spool_path ? "kept in the spool #{config.spool_path} for the next writer" : "lost (no spool_path)"
      warn("acts_as_tbackend: async writer shut down with #{left} fact(s) undelivered: #{where}")
    end
  end
end
