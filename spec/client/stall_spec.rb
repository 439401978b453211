# frozen_string_literal: true

require "spec_helper"
require "socket"

# Issue 3, deadlines without Timeout.timeout: a stalled daemon and a daemon whose
# workers are all taken (docs/protocol.md §2: extra connections are accepted but never read)
# cost a caller its deadline, never more.
RSpec.describe "ActsAsTbackend::Client deadlines" do
  include_context "client spec"

  def slack = 0.25

  context "with a stalled daemon" do
    with_daemon

    it "returns every call within its deadline, from many threads, reads and writes alike" do
      client = client_for(daemon, request_timeout: 0.4, breaker_threshold: 0)
      expect(client.ping[:status]).to eq("ok")
      daemon.control({ "op" => "set", "stall" => true })
      calls = Array.new(8) do |t|
        Thread.new do
          timed do
            case t % 4
            when 0 then client.write_fact_once(fact(unique))
            when 1 then client.latest_for(store: "specs", key: "k")
            when 2 then client.facts_by_seq(store: "specs")
            else client.ping
            end
          end
        end
      end
      join_all(calls, 5).each do |elapsed, result|
        expect(result).to include(status: "timeout_unknown")
        expect(elapsed).to be < 0.4 + slack
      end
    end

    it "honours a per-call timeout shorter and longer than request_timeout" do
      client = client_for(daemon, request_timeout: 0.3, breaker_threshold: 0)
      client.ping
      daemon.control({ "op" => "set", "stall" => "after_exec" })
      long, result = timed { client.ping(timeout: 0.7) }
      expect(result[:status]).to eq("timeout_unknown")
      expect(long).to be_between(0.65, 0.7 + slack)
      short, result = timed { client.write_fact_once(fact(unique), timeout: 0.1) }
      expect(result[:status]).to eq("timeout_unknown")
      expect(short).to be_between(0.08, 0.1 + slack)
    end

    it "serves again once the stall is cleared (late answers never reach a later caller)" do
      client = client_for(daemon, request_timeout: 0.2, breaker_threshold: 0)
      client.ping
      daemon.control({ "op" => "set", "stall" => "after_exec" })
      stalled = Array.new(3) { |i| client.write_fact_once(fact("stalled-#{i}")) }
      expect(stalled.map { |r| r[:status] }.uniq).to eq(["timeout_unknown"])
      daemon.control({ "op" => "clear" })
      id = unique
      result = eventually(3) { (r = client.write_fact_once(fact(id)))[:ok] && r }
      expect(result).to include(status: "committed_acked")
      read = client.latest_for(store: "specs", key: "key:#{id}")
      expect(read.dig(:response, :fact, :id)).to eq(id)
    end
  end

  context "with every daemon worker taken (pool_size 1, another connection holds it)" do
    with_daemon(pool_size: 1)

    it "returns timeout_unknown within the deadline, never hanging, and recovers when the worker frees up" do
      holder = TbackendSpec::FramedSocket.new(Socket.tcp("127.0.0.1", daemon.port), 5)
      expect(holder.request({ "op" => "ping" })).to include("ok" => true)
      client = client_for(daemon, request_timeout: 0.3, breaker_threshold: 0)
      calls = Array.new(4) { |i| Thread.new { timed { i.even? ? client.ping : client.write_fact_once(fact(unique)) } } }
      join_all(calls, 5).each do |elapsed, result|
        expect(result[:status]).to eq("timeout_unknown").or eq("unavailable")
        expect(elapsed).to be < 0.3 + slack
      end
      _, result = timed { client.ping(timeout: 0.2) }
      expect(result[:status]).to eq("timeout_unknown").or eq("unavailable")
      expect(daemon_status(daemon)["connections_queued"]).to be >= 1

      holder.close
      recovered = eventually(3) { client.ping[:status] == "ok" }
      expect(recovered).to be(true)
      expect(client.write_fact_once(fact(unique))[:status]).to eq("committed_acked")
    ensure
      holder&.close
    end
  end
end
