# frozen_string_literal: true

require "json"
require_relative "acts_as_tbackend/version"
require_relative "acts_as_tbackend/errors"
require_relative "acts_as_tbackend/config"
require "acts_as_tbackend/acts_as_tbackend_native"
require_relative "acts_as_tbackend/fact"

# Connects Rails apps to TBackend, a temporal-ledger daemon, through a native core.
module ActsAsTbackend
  @config_lock = Mutex.new

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

    # Drops the memoised client; the next call builds a fresh one.
    def reset!
      old = @client
      @client = nil
      old.shutdown if old.respond_to?(:shutdown)
      nil
    end
  end
end
