# frozen_string_literal: true

require "spec_helper"

# Every status of the soft-result table (README, "The client"), with its flags, as the
# 0.2 gem's callers read them.
RSpec.describe "ActsAsTbackend::Client soft results" do
  include_context "client spec"

  def flags(result)
    result.values_at(:ok, :committed, :retryable)
  end

  context "with a daemon answering" do
    with_daemon

    let(:client) { client_for(daemon, request_timeout: 0.5) }

    it "answers a ping ok (ok true, committed nil, retryable false)" do
      result = client.ping
      expect(result).to eq(ok: true, status: "ok", committed: nil, retryable: false,
                           response: { ok: true, pong: true }, error: nil)
    end

    it "writes committed_acked, then replays the same fact as idempotent_replay with the same seq" do
      f = fact(unique)
      first = client.write_fact_once(f)
      expect(first[:status]).to eq("committed_acked")
      expect(flags(first)).to eq([true, true, false])
      expect(first[:error]).to be_nil
      expect(first[:response]).to include(ok: true, committed: true, idempotent_replay: false, seq_id: Integer)

      again = client.write_fact_once(f.merge("transaction_time" => f["transaction_time"] + 5))
      expect(again[:status]).to eq("idempotent_replay")
      expect(flags(again)).to eq([true, true, false])
      expect(again.dig(:response, :seq_id)).to eq(first.dig(:response, :seq_id))
    end

    it "answers duplicate_fact_id_conflict for the same id with another value (ok false, committed false, retryable false)" do
      id = unique
      client.write_fact_once(fact(id, value: { "status" => "open" }))
      conflict = client.write_fact_once(fact(id, value: { "status" => "closed" }))
      expect(conflict[:status]).to eq("duplicate_fact_id_conflict")
      expect(flags(conflict)).to eq([false, false, false])
      expect(conflict[:error]).to eq("Duplicate fact id conflict")
      expect(conflict[:response]).to include(error_code: "duplicate_fact_id_conflict", existing_key: "key:#{id}")
    end

    it "keeps 10 and 10.0 apart: the same id with 10.0 after 10 is a conflict" do
      id = unique
      expect(client.write_fact_once(fact(id, value: { "total" => 10 }))[:status]).to eq("committed_acked")
      expect(client.write_fact_once(fact(id, value: { "total" => 10.0 }))[:status]).to eq("duplicate_fact_id_conflict")
      expect(client.write_fact_once(fact(id, value: { "total" => 10 }))[:status]).to eq("idempotent_replay")
    end

    it "returns reads with the daemon's answer in response[:fact] / response[:facts], Symbol keys at every depth" do
      id = unique
      client.write_fact_once(fact(id, key: "orders:42", value: { "status" => "open", "lines" => [{ "sku" => "a" }] }))

      latest = client.latest_for(store: "specs", key: "orders:42")
      expect(latest).to include(ok: true, status: "ok", committed: nil, retryable: false, error: nil)
      expect(latest[:response][:fact]).to include(id: id, key: "orders:42", store: "specs",
                                                  value: { status: "open", lines: [{ sku: "a" }] })

      facts = client.facts_for(store: "specs", key: "orders:42")
      expect(facts[:status]).to eq("ok")
      expect(facts[:response][:facts].map { |f| f[:id] }).to eq([id])

      by_seq = client.facts_by_seq(store: "specs", after_seq: 0)
      expect(by_seq[:response][:facts].first.keys).to all(be_a(Symbol))
      expect(by_seq[:response][:facts].map { |f| f[:id] }).to eq([id])

      missing = client.latest_for(store: "specs", key: "nothing-here")
      expect(missing).to include(ok: true, status: "ok")
      expect(missing[:response]).to eq(ok: true, fact: nil)
    end

    it "answers a sent request that gets no answer in time as timeout_unknown (false, nil, nil), " \
       "error text \"ActsAsTbackend::TimeoutError: …\"" do
      client.ping
      daemon.control({ "op" => "set", "stall" => true })
      elapsed, result = timed { client.write_fact_once(fact(unique), timeout: 0.3) }
      expect(result[:status]).to eq("timeout_unknown")
      expect(flags(result)).to eq([false, nil, nil])
      expect(result[:response]).to be_nil
      expect(result[:error]).to start_with("ActsAsTbackend::TimeoutError: ")
      expect(result[:error]).to include("127.0.0.1:#{daemon.port}")
      expect(elapsed).to be_between(0.25, 1.0)
    end
  end

  describe "overload" do
    with_daemon(max_inflight: 1)

    it "answers the daemon's overloaded rejection as rejected_before_commit (false, false, true), for writes and reads" do
      client = client_for(daemon)
      expect(client.ping[:status]).to eq("ok")
      # Another connection holds the daemon's only in-flight slot for 400 ms.
      daemon.control({ "op" => "set", "exec_delay_ms" => 400 })
      holder = Thread.new { daemon.request({ "op" => "ping" }) }
      sleep 0.1
      id = unique
      write = client.write_fact_once(fact(id))
      read = client.latest_for(store: "specs", key: "key:#{id}")
      holder.join
      daemon.control({ "op" => "clear" })

      [write, read].each do |result|
        expect(result[:status]).to eq("rejected_before_commit")
        expect(flags(result)).to eq([false, false, true])
        expect(result[:error]).to eq("TBackend overloaded: max in-flight request limit reached")
        expect(result[:response]).to include(error_code: "overloaded")
      end
      # Not applied: the same fact is a fresh insert afterwards.
      expect(client.write_fact_once(fact(id))[:status]).to eq("committed_acked")
    end
  end

  describe "no daemon" do
    it "answers a refused connect as unavailable (false, nil, true), fast, " \
       "error text \"ActsAsTbackend::ConnectionError: …\"" do
      port = closed_port
      ActsAsTbackend.configure do |c|
        c.port = port
        c.connect_timeout = 2.0
        c.request_timeout = 2.0
      end
      elapsed, result = timed { ActsAsTbackend.client.write_fact_once(fact(unique)) }
      expect(elapsed).to be < 0.5
      expect(result[:status]).to eq("unavailable")
      expect(flags(result)).to eq([false, nil, true])
      expect(result[:response]).to be_nil
      expect(result[:error]).to start_with("ActsAsTbackend::ConnectionError: ")
      expect(result[:error]).to include("127.0.0.1:#{port}")
      elapsed, read = timed { ActsAsTbackend.client.facts_by_seq(store: "specs") }
      expect(elapsed).to be < 0.5
      expect(read[:status]).to eq("unavailable")
    end

    it "answers a refused connect as unavailable through a dedicated Connection too, never raising" do
      connection = ActsAsTbackend::Connection.new(host: "127.0.0.1", port: closed_port)
      results = Array.new(8) { connection.ping }
      expect(results.map { |r| r[:status] }.uniq).to eq(["unavailable"]) # no breaker on a Connection
      connection.close
    end

    it "opens the breaker after breaker_threshold failures: circuit_open (false, nil, true), " \
       "error \"…CircuitOpenError: TBackend circuit breaker open for host:port\"" do
      port = closed_port
      ActsAsTbackend.configure do |c|
        c.port = port
        c.breaker_threshold = 2
        c.breaker_cooldown = 30
      end
      client = ActsAsTbackend.client
      expect(Array.new(2) { client.ping[:status] }).to eq(%w[unavailable unavailable])
      elapsed, open = timed { client.write_fact_once(fact(unique)) }
      expect(open[:status]).to eq("circuit_open")
      expect(flags(open)).to eq([false, nil, true])
      expect(open[:response]).to be_nil
      expect(open[:error]).to eq("ActsAsTbackend::CircuitOpenError: TBackend circuit breaker open for 127.0.0.1:#{port}")
      expect(elapsed).to be < 0.05
      expect(client.stats[:breaker]).to include(state: "open", opens: 1)
    end
  end
end
