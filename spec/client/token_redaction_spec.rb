# frozen_string_literal: true

require "spec_helper"
require "tempfile"

# Issue 3, "never leak": the token never appears in an error, a raised exception, a
# result, `inspect`/`to_s` of the config or a client, stats or health.
RSpec.describe "The token never appears" do
  include_context "client spec"

  let(:token) { "tok-#{SecureRandom.hex(12)}" }

  def rescued
    yield
  rescue ActsAsTbackend::Error => e
    e
  end

  def shown(*objects)
    objects.map { |o| [o.inspect, o.to_s] }.flatten.join("\n")
  end

  it "in inspect/to_s of a config, a client, a dedicated Connection and their stats" do
    config = config_with(token: token, port: closed_port)
    client = ActsAsTbackend::Client.new(config)
    connection = ActsAsTbackend::Connection.new(host: "127.0.0.1", port: config.port, token: token)
    client.ping
    connection.ping
    from_env = ActsAsTbackend::Config.from_env({ "TBACKEND_TOKEN" => token })
    text = shown(config, client, connection, client.stats, connection.stats, from_env)
    expect(text).not_to include(token)
    expect(config.inspect).to include("token=[REDACTED]")
    client.shutdown
    connection.close
  end

  it "in errors and health when the daemon refuses the token (auth daemon, wrong token)" do
    TbackendSpec::TestDaemon.with(auth: true) do |d|
      client = client_for(d, token: token)
      results = [
        client.ping, client.write_fact_once(fact(unique)), client.write_fact_once_safe(fact(unique)),
        client.latest_for(store: "specs", key: "k"), client.facts_by_seq(store: "specs"),
        *client.write_facts_once([fact(unique)])
      ]
      results.each do |r|
        expect(r).to include(ok: false, status: "error")
        expect(r[:error]).to match(/Authentication failed/)
      end
      tail = client.tail(store: "specs")
      tail.poll
      report = ActsAsTbackend.health
      expect(report[:status]).to eq("auth_error")
      expect(shown(results, report, tail.last_result, client, ActsAsTbackend.config)).not_to include(token)
    end
  end

  it "in transport errors, soft or raised in strict mode" do
    TbackendSpec::TestDaemon.with(auth: true) do |d|
      client = client_for(d, token: token, strict: true, request_timeout: 0.3, breaker_threshold: 2)
      d.control({ "op" => "set", "stall" => true })
      timeout = rescued { client.ping }
      d.control({ "op" => "clear" })
      d.control({ "op" => "set", "refuse_connections" => true })
      d.control({ "op" => "drop_connections" })
      refused = rescued { client.write_fact_once(fact(unique)) }
      open = rescued { client.write_fact_once(fact(unique)) }
      expect([timeout, refused, open].map(&:class)).to eq(
        [ActsAsTbackend::TimeoutError, ActsAsTbackend::ConnectionError, ActsAsTbackend::CircuitOpenError]
      )
      report = ActsAsTbackend.health
      expect(report[:status]).to eq("circuit_open")
      errors = [timeout, refused, open]
      expect(shown(*errors, *errors.map(&:message), *errors.map(&:result), *errors.map(&:full_message), report))
        .not_to include(token)
    end
  end

  it "in the soft error of a value that echoes the token (replaced by [REDACTED])" do
    client = ActsAsTbackend::Client.new(config_with(token: token, port: closed_port))
    bad_store = fact(unique).merge("store" => "#{token}!")
    bad_value = fact(unique, value: { token => Float::NAN })
    results = [client.write_fact_once(bad_store), client.write_fact_once(bad_value),
               *client.write_facts_once([bad_store, bad_value])]
    results.each do |r|
      expect(r).to include(status: "error", retryable: false)
      expect(r[:error]).to include("[REDACTED]")
    end
    expect(shown(results)).not_to include(token)
    client.shutdown
  end

  it "in a token read from TBACKEND_TOKEN_FILE" do
    Tempfile.create("token") do |file|
      file.write("#{token}\n")
      file.flush
      config = ActsAsTbackend::Config.from_env({ "TBACKEND_TOKEN_FILE" => file.path })
      expect(config.token).to eq(token)
      expect(shown(config)).not_to include(token)
      TbackendSpec::TestDaemon.with(auth: true) do |d|
        config.port = d.port
        client = ActsAsTbackend::Client.new(config)
        expect(client.ping[:error]).to match(/Authentication failed/)
        expect(shown(client, client.health)).not_to include(token)
        client.shutdown
      end
    end
  end
end
