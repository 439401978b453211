# frozen_string_literal: true

require "rails/generators"
require "acts_as_tbackend"

module ActsAsTbackend
  module Generators
    # `bin/rails generate acts_as_tbackend:install`: config/initializers/tbackend.rb with
    # every setting, its default and its ENV variable, commented out — built from
    # Config::SETTINGS, so the list cannot drift from what the gem reads.
    class InstallGenerator < Rails::Generators::Base
      source_root File.expand_path("templates", __dir__)

      # What each setting means, for the initializer. The install generator's spec fails
      # when a setting has no entry here.
      DESCRIPTIONS = {
        enabled: "The kill switch: false turns every mirror and client call into a `disabled` result.",
        host: "The TBackend daemon.",
        port: "The daemon's port (decimal).",
        token: "API token; prefer TBACKEND_TOKEN or TBACKEND_TOKEN_FILE to a literal here.",
        connect_timeout: "Seconds to wait for a connection before answering `unavailable`.",
        request_timeout: "Seconds per request before `timeout_unknown` (per-call `timeout:` overrides).",
        pool_size: "Lanes: pipelined connections shared by all threads (0.2: sockets, one per thread).",
        pool_checkout_timeout: "Kept for 0.2 compatibility; lanes never need a checkout.",
        max_in_flight: "Requests in flight per lane before callers wait (GVL released).",
        idle_reconnect: "Reconnect a lane idle this long (the daemon cuts idle connections at 30 s).",
        durability_default: "\"accepted\" (acked in the OS page cache) or \"durable\" (acked after fdatasync, ~5 ms).",
        strict: "true: transport failures raise ActsAsTbackend::TransportError subclasses.",
        breaker_threshold: "Consecutive transport failures that open the circuit breaker (0: never).",
        breaker_cooldown: "Seconds the breaker stays open before one probe is let through.",
        producer: "Recorded as `producer` on every mirrored fact.",
        failure_policy: "What a failed mirror does: ignore, warn, raise_in_test or enqueue_retry.",
        id_format: "Fact ids: \"legacy\" (0.2's plain join, byte for byte) or \"digest\" (tbf1-<sha256>).",
        async: "Mirror through the native background queue: commits never wait for TBackend.",
        queue_size: "Facts the async queue holds before queue_full_policy applies.",
        queue_full_policy: "A full queue: block (up to queue_block_timeout), drop (with a warning) or raise.",
        queue_block_timeout: "Seconds an enqueue may block on a full queue.",
        spool_path: "A directory: the async queue becomes a crash-safe file spool, replayed on restart.",
        spool_fsync: "always (every enqueue), batch (every few ms, by the flusher) or never.",
        retry_attempts: "Delivery attempts for a queued fact before it is dead-lettered.",
        retry_base_backoff: "First retry delay in seconds (exponential, full jitter).",
        retry_max_backoff: "Longest retry delay in seconds.",
        linger: "Seconds the async writer waits for more facts before it sends a partial round " \
                "(0: at once; flush and shutdown never wait).",
        retry_backend: "Where enqueue_retry sends failed mirrors: spool (native) or active_job (MirrorRetryJob).",
        dead_letter_path: "The JSONL file keeping facts given up for good when there is no tbackend_dead_letters " \
                          "table; nil: dead-letter.jsonl beside the spool, else tmp/tbackend/.",
        store_prefix: "Prepended to every store name sent or read (keeps environments apart); nil: none, " \
                      "\"test_\" in the Rails test environment; \"\": none, explicitly.",
        shutdown_timeout: "Seconds an exiting process lets the async writer flush; nil: 0 with a spool " \
                          "(its facts are on disk for the next writer), 5.0 without."
      }.freeze

      def create_initializer
        template "tbackend.rb.tt", "config/initializers/tbackend.rb"
      end

      private

      def settings
        Config::SETTINGS.map do |name, (default, env, _type)|
          { name: name, default: default, env: env, description: DESCRIPTIONS.fetch(name) }
        end
      end
    end
  end
end
