# frozen_string_literal: true

require "spec_helper"

RSpec.describe ActsAsTbackend::Config do
  def config(env)
    described_class.from_env(env)
  end

  it "has the 0.2 gem's defaults, but one lane instead of five sockets" do
    c = config({})
    expect([c.enabled, c.host, c.port, c.token, c.connect_timeout, c.request_timeout, c.pool_size,
            c.pool_checkout_timeout, c.durability_default, c.strict, c.breaker_threshold, c.breaker_cooldown,
            c.producer, c.failure_policy])
      .to eq([true, "127.0.0.1", 7401, nil, 1.0, 2.0, 1, 1.0, "accepted", false, 5, 5.0, "acts-as-tbackend", "ignore"])
    expect(c.id_format).to eq("legacy")
    expect(c).to be_valid
  end

  it "reads ports as decimal (0.2 read 07401 as octal)" do
    expect(config("TBACKEND_PORT" => "07401").port).to eq(7401)
  end

  it "understands every common spelling of a boolean" do
    %w[0 false no off FALSE Off].each { |word| expect(config("TBACKEND_ENABLED" => word).enabled).to be(false) }
    %w[1 true yes on TRUE].each { |word| expect(config("TBACKEND_STRICT" => word).strict).to be(true) }
  end

  it "records a malformed ENV value as a config error instead of raising, keeping the default" do
    c = config("TBACKEND_PORT" => "seventy", "TBACKEND_ENABLED" => "maybe", "TBACKEND_REQUEST_TIMEOUT" => "-1")
    expect(c).not_to be_valid
    expect(c.errors.join("\n")).to include("TBACKEND_PORT", "TBACKEND_ENABLED", "TBACKEND_REQUEST_TIMEOUT")
    expect(c.port).to eq(7401)
  end

  it "treats an empty token as none and reads TBACKEND_TOKEN_FILE" do
    expect(config("TBACKEND_TOKEN" => "").token).to be_nil
    Dir.mktmpdir do |dir|
      path = File.join(dir, "token")
      File.write(path, "s3cret-from-file\n")
      expect(config("TBACKEND_TOKEN_FILE" => path).token).to eq("s3cret-from-file")
      expect(config("TBACKEND_TOKEN_FILE" => File.join(dir, "missing")).errors.first).to include("TBACKEND_TOKEN_FILE")
    end
  end

  it "never shows the token in inspect or to_s" do
    c = config("TBACKEND_TOKEN" => "s3cret-token-value")
    expect(c.inspect).not_to include("s3cret-token-value")
    expect(c.to_s).to include("[REDACTED]")
  end

  it "accepts symbols and rejects unknown failure policies and id formats with ArgumentError" do
    c = config({})
    c.failure_policy = :warn
    expect(c.failure_policy).to eq("warn")
    expect { c.failure_policy = "explode" }.to raise_error(ArgumentError, /failure_policy/)
    c.id_format = :digest
    expect(c.id_format).to eq("digest")
    expect { c.id_format = "md5" }.to raise_error(ActsAsTbackend::ConfigurationError)
  end

  it "bounds the exit flush by shutdown_timeout: 0 allowed, none given means 0 with a spool and 5 s without" do
    expect(config({}).exit_flush_timeout).to eq(5.0)
    expect(config("TBACKEND_SPOOL_PATH" => "/tmp/spool").exit_flush_timeout).to eq(0.0)
    expect(config("TBACKEND_SPOOL_PATH" => "/tmp/spool", "TBACKEND_SHUTDOWN_TIMEOUT" => "2").exit_flush_timeout).to eq(2.0)
    expect(config("TBACKEND_SHUTDOWN_TIMEOUT" => "0").exit_flush_timeout).to eq(0.0)
    expect(config("TBACKEND_SHUTDOWN_TIMEOUT" => "").shutdown_timeout).to be_nil
    bad = config("TBACKEND_SHUTDOWN_TIMEOUT" => "-1")
    expect(bad.errors.join).to include("TBACKEND_SHUTDOWN_TIMEOUT", "seconds >= 0")
    expect(bad.exit_flush_timeout).to eq(5.0)
  end

  describe "ActsAsTbackend.configure" do
    it "yields the same config each time, so settings accumulate, and returns it" do
      ActsAsTbackend.configure { |c| c.host = "10.0.0.9" }
      returned = ActsAsTbackend.configure { |c| c.port = 7500 }
      expect(returned).to be(ActsAsTbackend.config)
      expect([returned.host, returned.port]).to eq(["10.0.0.9", 7500])
    end

    it "reads the kill switch live" do
      ActsAsTbackend.configure { |c| c.enabled = false }
      expect(ActsAsTbackend.enabled?).to be(false)
      ActsAsTbackend.config.enabled = true
      expect(ActsAsTbackend.enabled?).to be(true)
    end
  end
end
