# frozen_string_literal: true

require "json"
require_relative "acts_as_tbackend/version"
require_relative "acts_as_tbackend/errors"
require_relative "acts_as_tbackend/config"
require_relative "acts_as_tbackend/native_build"
ActsAsTbackend::NativeBuild.load!
require_relative "acts_as_tbackend/fact"
require_relative "acts_as_tbackend/client/client"
require_relative "acts_as_tbackend/client/connection"
require_relative "acts_as_tbackend/client/health"
require_relative "acts_as_tbackend/client/tail"
require_relative "acts_as_tbackend/fork_safety"

# Connects Rails apps to TBackend, a temporal-ledger daemon, through a native core.
module ActsAsTbackend
  # The Rails-facing layer loads on first use, so a plain `require "acts_as_tbackend"`
  # (scripts, Sidekiq without Rails) stays small.
  autoload :Sanitizer, "acts_as_tbackend/mirror/sanitizer"
  autoload :Mirror, "acts_as_tbackend/mirror/mirror"
  autoload :FailurePolicy, "acts_as_tbackend/mirror/failure_policy"
  autoload :OutboxIntent, "acts_as_tbackend/mirror/outbox_intent"
  autoload :OutboxFlusher, "acts_as_tbackend/mirror/outbox_flusher"
  autoload :AsyncWriter, "acts_as_tbackend/async/async_writer"
  autoload :Instrumentation, "acts_as_tbackend/instrumentation"
  autoload :MirrorRetryJob, "acts_as_tbackend/rails/mirror_retry_job"
  autoload :DeadLetters, "acts_as_tbackend/rails/dead_letters"

  @config_lock = Mutex.new
  @client_lock = Mutex.new
  @async_writer_lock = Mutex.new
  # In a forked child: every native client and async writer the parent built lets go of
  # the parent's connections, queue and spool segment (the child builds its own).
  ForkSafety.register(Native)
  ForkSafety.register(self)

  class << self
    # The one Config, built from ENV on first use.
    def config
      @config || @config_lock.synchronize { @config ||= Config.from_env }
    end

    # Yields the same config on every call (settings accumulate), then resets the client
    # so the next call uses them. Returns the config.
    def configure
      yield config
      reset!
      config
    end

    # The kill switch, read live on every call.
    def enabled?
      config.enabled?
    end

    # The memoised client, kept in `@client` (test helpers swap that ivar). Shared by
    # every thread; after a fork it drops the parent's connections (ForkSafety).
    def client
      @client || @client_lock.synchronize { @client ||= Client.new(config) }
    end

    # @api private: in a forked child (ForkSafety), the memoised async writer is the
    # parent's (reset on its own as a registered object): the child builds its own.
    def after_fork
      @async_writer = nil
    end

    # The memoised AsyncWriter for the current config: one per process. A forked child
    # gets a fresh one; the parent's queue and spool segment stay the parent's. A writer
    # built for a config that is no longer current is shut down (bounded flush) first.
    def async_writer
      current = config
      writer = @async_writer
      return writer if writer&.config.equal?(current)

      stale = @async_writer_lock.synchronize do
        take_async_writer if @async_writer && !@async_writer.config.equal?(current)
      end
      stale&.shutdown(timeout: stale.config.exit_flush_timeout)
      @async_writer_lock.synchronize { @async_writer ||= AsyncWriter.new(current) }
    end

    # `client.health`: never raises, never shows the token.
    def health
      client.health
    end

    # Compares a model's rows with the ledger, and repairs the drift with `repair: true`
    # (Mirror::Verify); returns its Report.
    #
    #   ActsAsTbackend.verify(Order, scope: Order.all, repair: false, batch_size: 1_000)
    def verify(model, **options)
      require "acts_as_tbackend/mirror/verify"
      Mirror::Verify.new(model, **options).call
    end

    # Drops the memoised client and shuts the old one down; the next call builds a new
    # one. Calls still running on the old client get soft results, never exceptions.
    def reset!
      shutdown_async_writer
      old = @client_lock.synchronize do
        previous = @client
        @client = nil
        previous
      end
      old.shutdown if old.respond_to?(:shutdown)
      nil
    end

    # Drops the memoised AsyncWriter after a flush bounded by `timeout`, or by its
    # config's exit_flush_timeout (`shutdown_timeout`; 0 with a spool, whose facts the
    # next writer delivers). Run by reset! and at exit.
    def shutdown_async_writer(timeout: nil)
      old = @async_writer_lock.synchronize { take_async_writer }
      old&.shutdown(timeout: timeout || old.config.exit_flush_timeout)
      nil
    end

    private

    def take_async_writer
      previous = @async_writer
      @async_writer = nil
      previous
    end
  end
end

require_relative "acts_as_tbackend/rails/railtie" if defined?(Rails::Railtie)

# Whatever the async writer still holds gets a bounded chance (`shutdown_timeout`) to reach
# the daemon; with a spool it is safe on disk already and the process exits at once.
at_exit { ActsAsTbackend.shutdown_async_writer }
