# frozen_string_literal: true

require "monitor"

module ActsAsTbackend
  # Writes facts off the request path. `enqueue` hands the fact to a bounded queue in the
  # native core and returns in microseconds; a native thread (no Ruby, no GVL) delivers the
  # queue through a connection of its own, pipelined, with retries, exponential backoff
  # and jitter, one fact at a time per store and key so their order holds. With
  # `spool_path` the queue is a crash-safe file spool: what a daemon outage, a restart or
  # a `kill -9` leaves undelivered is delivered by the next writer to start. See
  # docs/async.md.
  #
  # What the native thread has to say (a fact dead-lettered, a pause while the daemon is
  # unreachable, a spool error, a dead process's segment adopted) is published as
  # ActiveSupport notifications (see Instrumentation) by one Ruby thread per writer,
  # which sleeps without the GVL until there is something; `flush` and `shutdown`
  # publish what is pending before they return. An event nobody subscribes to that
  # always reached stderr (a dead letter) still does, rate-limited, as does every such
  # event once that thread is gone.
  #
  # Use the memoised `ActsAsTbackend.async_writer`: one per process, rebuilt in a forked
  # child, shut down by `reset!` and at exit.
  class AsyncWriter
    STATS_KEYS = %i[queued spooled spool_bytes enqueued delivered replays conflicts failed dead retries dropped
                    spool_errors adopted batches].freeze
    # Least seconds between two "dropped" warnings; each names how many were dropped.
    DROP_WARNING_INTERVAL = 10.0
    # The name of the thread that publishes the native writer's events.
    EVENTS_THREAD = "acts_as_tbackend async writer events"
    # Longest wait at shutdown for that thread to publish the last events (a subscriber
    # that hangs must not hang the exit).
    EVENTS_JOIN_TIMEOUT = 5.0
    # What every event of this writer carries besides what the native side reports.
    EVENT_CONTEXT = {
      "dead_letter" => ->(_config) { { via: "async_writer" } },
      "writer_paused" => ->(config) { { host: config.host, port: config.port } },
      "writer_resumed" => ->(config) { { host: config.host, port: config.port } },
      "spool_error" => ->(config) { { spool_path: config.spool_path } },
      "spool_adopt" => ->(config) { { spool_path: config.spool_path } }
    }.freeze

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
      @events_lock = Monitor.new
      @native, @open_error = open_native(config)
      @events_thread = start_events_thread if @native
    end

    # Queues one fact (a Hash, as Fact.build makes it). Returns a soft result:
    # `enqueued` (ok), `queue_full` after waiting `queue_block_timeout` ("block"),
    # `dropped` ("drop", with a rate-limited warning), `disabled`, `config_error`, or the
    # non-retryable `error` a synchronous write gives an invalid fact. Raises QueueFull
    # under the "raise" policy.
    def enqueue(fact, durability: nil)
      return Client::DISABLED.dup unless config.enabled?

      Instrumentation.observe(:enqueue, self, :enqueue_payload, fact) { enqueue_native(fact, durability) }
    end

    # true once every fact enqueued before the call has a terminal result (delivered,
    # conflict, failed or dead); false after `timeout` seconds. Instrumented as
    # `spool_flush.acts_as_tbackend` with `settled` and the writer's counters afterwards.
    def flush(timeout: 5.0)
      return true unless @native
      return native_flush(timeout) unless Instrumentation.listening?(:spool_flush)

      Instrumentation.instrument(:spool_flush, timeout: timeout) do |payload|
        native_flush(timeout).tap { |settled| payload.merge!(settled: settled, **stats) }
      end
    end

    # Counters (since this writer started) and gauges: queued (in memory, not yet
    # settled), spooled (facts in the spool not yet settled), spool_bytes, enqueued,
    # delivered (committed or replayed), replays, conflicts, failed, dead (exhausted
    # retry_attempts), retries, dropped, spool_errors, adopted (facts taken over from
    # the spool segments of dead processes), batches (rounds sent to the daemon; see
    # the linger setting).
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
      stop_events_thread
      warn_undelivered unless @drained
      @drained
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
        events: true, queue_size: config.queue_size, retry_attempts: config.retry_attempts,
        retry_base_backoff: config.retry_base_backoff, retry_max_backoff: config.retry_max_backoff,
        spool_path: config.spool_path, spool_fsync: config.spool_fsync, linger: config.linger
      }
    end

    def native_flush(timeout)
      @native.flush(Float(timeout)).tap { publish_events }
    end

    def start_events_thread
      thread = Thread.new { run_events_thread }
      thread.name = EVENTS_THREAD
      # A forked child neither needs nor gets it (its writer is a new one, with a thread
      # of its own): Puma's preload check and Rails skip fork-safe threads.
      thread.thread_variable_set(:fork_safe, true)
      thread
    end

    def run_events_thread
      loop do
        @native.wait_events
        break if publish_events
      end
    ensure
      # Killed or done: whatever comes later goes to stderr.
      @native.release_events
    end

    # The shutdown closed the native events: the thread publishes what is left and ends.
    def stop_events_thread
      thread = @events_thread
      return if thread.nil? || thread == Thread.current

      thread.kill unless thread.join(EVENTS_JOIN_TIMEOUT)
    end

    # Publishes the events the native writer queued, one drainer at a time (so a flush
    # returns after the events it waited for are out); true once the writer is shut
    # down and nothing follows. An event nobody listens to leaves its stderr line, if
    # it has one, to the native rate limiter.
    def publish_events
      @events_lock.synchronize do
        events, dropped, closed = @native.take_events
        if dropped.positive?
          events << ["events_dropped", { count: dropped },
                     "acts_as_tbackend: #{dropped} async writer event(s) dropped (the event queue was full)"]
        end
        unheard = events.filter_map { |name, payload, line| line unless publish_event(name, payload) }
        @native.write_stderr(unheard) unless unheard.empty?
        closed
      end
    end

    # false when nobody listens.
    def publish_event(name, payload)
      return false unless Instrumentation.listening?(name)

      context = EVENT_CONTEXT[name]
      Instrumentation.publish(name, context ? payload.merge!(context.call(config)) : payload)
      true
    rescue StandardError => e
      # A subscriber that raises must not end the thread that publishes the others.
      @native.write_stderr(["acts_as_tbackend: a #{name}.acts_as_tbackend subscriber raised #{e.class}: #{e.message}"])
      true
    end

    # The enqueue event's payload (Instrumentation.observe passes four arguments).
    def enqueue_payload(fact, *)
      fact.respond_to?(:[]) ? { store: fact["store"] || fact[:store], fact_id: fact["id"] || fact[:id] } : {}
    end

    # The soft result a synchronous write of the fact would give for what cannot be sent
    # (an invalid fact, a bad config, a bug of ours), else the queue's answer. Not
    # through Client#native_call: an enqueue never reaches the daemon, so it has no
    # breaker to track, and this is every async save's path (issue 13).
    def enqueue_native(fact, durability)
      return unusable unless @native

      wait = config.queue_full_policy == "block" ? config.queue_block_timeout : nil
      status, error = @native.enqueue(@client.wire_fact(fact), (durability || config.durability_default).to_s, wait)
      case status
      when "enqueued" then error ? Client.result("enqueued", error: Redact.call(error, config.token)) : ENQUEUED.dup
      when "full" then queue_full(wait)
      else Client.result("unavailable", error: "ActsAsTbackend::ConnectionError: async writer is shut down")
      end
    rescue *Client::SOFT_ERRORS => e
      Client.error_result(e, config.token)
    end

    ENQUEUED = Client.result("enqueued").freeze
    private_constant :ENQUEUED

    # An invalid config, or an unusable spool directory, named.
    def unusable
      Client.result("config_error", error: @open_error || Client.config_error_message(config))
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
