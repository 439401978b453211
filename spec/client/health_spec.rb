# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# `health` reports every status, never raises — strict or not —
# and never reports a false "down" for a lane that merely sat idle (as 0.2's did).
RSpec.describe "ActsAsTbackend.health" do
  include_context "client spec"

  def health
    report = nil
    expect { report = ActsAsTbackend.health }.not_to raise_error
    expect(report.keys).to include(:enabled, :host, :port, :durability_default, :strict, :failure_policy, :ok, :status, :error)
    expect(report.keys).not_to include(:token)
    report
  end

  it "is ok with lanes, breaker and the daemon's data_dir when the daemon answers (strict too)" do
    Dir.mktmpdir("tbackend-health") do |dir|
      TbackendSpec::TestDaemon.with(data_dir: dir) do |d|
        client_for(d, strict: true)
        report = health
        expect(report).to include(enabled: true, host: "127.0.0.1", port: d.port, durability_default: "accepted",
                                  strict: true, failure_policy: "ignore", ok: true, status: "ok", error: nil)
        expect(report[:lanes]).to contain_exactly(include(connected: true))
        expect(report[:breaker]).to include(state: "closed", consecutive_failures: 0)
        expect(report[:daemon]).to include(data_dir: dir, pool_size: 16, port: d.port)
      end
    end
  end

  it "names an ephemeral daemon's data_dir \"ephemeral\"" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d)
      expect(health[:daemon]).to include(data_dir: "ephemeral")
    end
  end

  it "is down, not raising, when nothing listens (strict)" do
    ActsAsTbackend.configure do |c|
      c.port = closed_port
      c.strict = true
    end
    report = health
    expect(report).to include(ok: false, status: "down", strict: true)
    expect(report[:error]).to start_with("ActsAsTbackend::ConnectionError: ")
    expect(report).not_to have_key(:daemon)
  end

  it "is down within the request timeout when the daemon stalls (strict)" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d, strict: true, request_timeout: 0.3)
      expect(health[:status]).to eq("ok")
      d.control({ "op" => "set", "stall" => true })
      elapsed, report = timed { health }
      expect(report).to include(ok: false, status: "down")
      expect(elapsed).to be < 1.0
    end
  end

  it "is circuit_open when the breaker is open (strict)" do
    ActsAsTbackend.configure do |c|
      c.port = closed_port
      c.strict = true
      c.breaker_threshold = 1
      c.breaker_cooldown = 30
    end
    expect { ActsAsTbackend.client.ping }.to raise_error(ActsAsTbackend::ConnectionError)
    report = health
    expect(report).to include(ok: false, status: "circuit_open")
    expect(report[:error]).to include("TBackend circuit breaker open for 127.0.0.1:")
    expect(report[:breaker]).to include(state: "open")
  end

  it "is auth_error for a token the daemon refuses (strict), without showing it" do
    token = "wrong-token-#{SecureRandom.hex(8)}"
    TbackendSpec::TestDaemon.with(auth: true) do |d|
      client_for(d, strict: true, token: token)
      report = health
      expect(report).to include(ok: false, status: "auth_error")
      expect(report[:error]).to match(/Authentication failed/)
      expect(report.inspect).not_to include(token)

      client_for(d, strict: true, token: "ephemeral_dev_admin")
      expect(health).to include(ok: true, status: "ok")
    end
  end

  it "is config_error for an unusable configuration (strict)" do
    ActsAsTbackend.instance_variable_set(:@config, ActsAsTbackend::Config.from_env({ "TBACKEND_PORT" => "07401x" }))
    ActsAsTbackend.config.strict = true
    report = health
    expect(report).to include(ok: false, status: "config_error")
    expect(report[:error]).to include("TBACKEND_PORT")
  end

  it "is error for any other failure, such as an overloaded daemon" do
    TbackendSpec::TestDaemon.with(max_inflight: 1) do |d|
      client_for(d, strict: true)
      expect(health[:status]).to eq("ok")
      d.control({ "op" => "set", "exec_delay_ms" => 400 })
      holder = Thread.new { d.request({ "op" => "ping" }) }
      sleep 0.1
      report = health
      holder.join
      expect(report).to include(ok: false, status: "error")
      expect(report[:error]).to include("overloaded")
    end
  end

  it "is disabled when the connector is disabled, and sends no ping" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d, strict: true, enabled: false)
      before = daemon_status(d)
      report = health
      expect(report).to include(enabled: false, ok: true, status: "disabled", error: nil)
      after = daemon_status(d)
      expect(after.values_at("connections_accepted", "requests_received"))
        .to eq(before.values_at("connections_accepted", "requests_received"))
    end
  end

  context "when the lane sat idle past the daemon's idle cut" do
    with_daemon(idle_timeout: 0.3)

    it "stays ok and calls succeed (0.2 reported a false \"down\"), with the default settings" do
      client = client_for(daemon)
      expect(health[:status]).to eq("ok")
      sleep 0.8
      report = health
      expect(report).to include(ok: true, status: "ok"), report.inspect
      id = unique
      expect(client.write_fact_once(fact(id))[:status]).to eq("committed_acked")
      sleep 0.8
      expect(client.latest_for(store: "specs", key: "key:#{id}")[:status]).to eq("ok")
    end

    it "stays ok after an idle time past one second" do
      client = client_for(daemon)
      expect(client.ping[:status]).to eq("ok")
      sleep 1.3
      expect(health).to include(ok: true, status: "ok")
      expect(client.write_fact_once(fact(unique))[:status]).to eq("committed_acked")
    end

    it "stays ok when idle_reconnect is below the cut (as the default 20 s is below the daemon's 30 s)" do
      client = client_for(daemon, idle_reconnect: 0.2)
      expect(client.ping[:status]).to eq("ok")
      sleep 0.8
      expect(health).to include(ok: true, status: "ok")
      expect(client.write_fact_once(fact(unique))[:status]).to eq("committed_acked")
    end
  end
end
