# frozen_string_literal: true

require "spec_helper"

# The async writer's settings: defaults, ENV names, validation.
RSpec.describe ActsAsTbackend::Config, "async writer settings" do
  def config(env)
    described_class.from_env(env)
  end

  it "has the documented defaults" do
    c = config({})
    expect([c.async, c.queue_size, c.queue_full_policy, c.queue_block_timeout, c.spool_path, c.spool_fsync,
            c.retry_attempts, c.retry_base_backoff, c.retry_max_backoff, c.linger])
      .to eq([false, 10_000, "block", 1.0, nil, "batch", 10, 0.05, 30.0, 0.005])
  end

  it "reads every setting from its ENV variable" do
    c = config("TBACKEND_ASYNC" => "on", "TBACKEND_QUEUE_SIZE" => "500", "TBACKEND_QUEUE_FULL_POLICY" => "drop",
               "TBACKEND_QUEUE_BLOCK_TIMEOUT" => "0.25", "TBACKEND_SPOOL_PATH" => "/var/spool/tbackend",
               "TBACKEND_SPOOL_FSYNC" => "always", "TBACKEND_RETRY_ATTEMPTS" => "3",
               "TBACKEND_RETRY_BASE_BACKOFF" => "0.1", "TBACKEND_RETRY_MAX_BACKOFF" => "5", "TBACKEND_LINGER" => "0.002")
    expect(c).to be_valid
    expect([c.async, c.queue_size, c.queue_full_policy, c.queue_block_timeout, c.spool_path, c.spool_fsync,
            c.retry_attempts, c.retry_base_backoff, c.retry_max_backoff, c.linger])
      .to eq([true, 500, "drop", 0.25, "/var/spool/tbackend", "always", 3, 0.1, 5.0, 0.002])
  end

  it "records malformed values as config errors and keeps the defaults" do
    c = config("TBACKEND_QUEUE_SIZE" => "0", "TBACKEND_QUEUE_FULL_POLICY" => "wait", "TBACKEND_SPOOL_FSYNC" => "sometimes",
               "TBACKEND_RETRY_ATTEMPTS" => "-1", "TBACKEND_RETRY_MAX_BACKOFF" => "soon", "TBACKEND_ASYNC" => "perhaps")
    expect(c).not_to be_valid
    expect(c.errors.join("\n")).to include("TBACKEND_QUEUE_SIZE", "TBACKEND_QUEUE_FULL_POLICY", "TBACKEND_SPOOL_FSYNC",
                                           "TBACKEND_RETRY_ATTEMPTS", "TBACKEND_RETRY_MAX_BACKOFF", "TBACKEND_ASYNC")
    expect([c.queue_size, c.queue_full_policy, c.spool_fsync, c.async]).to eq([10_000, "block", "batch", false])
  end

  it "takes a linger of 0 (no wait) and refuses a negative or malformed one" do
    expect(config("TBACKEND_LINGER" => "0").linger).to eq(0.0)
    %w[-0.001 soon].each do |bad|
      c = config("TBACKEND_LINGER" => bad)
      expect([c.valid?, c.linger]).to eq([false, 0.005])
      expect(c.errors.join).to include("TBACKEND_LINGER")
    end
    c = config({})
    c.linger = 0
    expect(c.linger).to eq(0.0)
    expect { c.linger = -1 }.to raise_error(ActsAsTbackend::ConfigurationError, /seconds >= 0/)
  end

  it "accepts symbols, rejects unknown policies with ConfigurationError, and treats an empty spool path as none" do
    c = config({})
    c.queue_full_policy = :raise
    c.spool_fsync = :never
    expect([c.queue_full_policy, c.spool_fsync]).to eq(%w[raise never])
    expect { c.queue_full_policy = "explode" }.to raise_error(ActsAsTbackend::ConfigurationError, /queue_full_policy/)
    expect { c.spool_fsync = "weekly" }.to raise_error(ActsAsTbackend::ConfigurationError, /spool_fsync/)
    expect { c.queue_block_timeout = 0 }.to raise_error(ActsAsTbackend::ConfigurationError)
    c.spool_path = ""
    expect(c.spool_path).to be_nil
    expect(config("TBACKEND_SPOOL_PATH" => "  ").spool_path).to be_nil
  end
end
