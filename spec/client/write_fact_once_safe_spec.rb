# frozen_string_literal: true

require "spec_helper"

# Issue 3, "Breaker and retries": write_fact_once_safe
# retries unavailable (0.2 never did), timeout_unknown and rejected_before_commit with a
# growing, jittered backoff inside one overall deadline, and reports every attempt.
RSpec.describe "ActsAsTbackend::Client#write_fact_once_safe" do
  include_context "client spec"

  def statuses(result)
    result[:attempts].map { |a| a[:status] }
  end

  def expect_attempt_fields(result)
    expect(result[:attempt_count]).to eq(result[:attempts].size)
    result[:attempts].each { |a| expect(a.keys).to eq(%i[ok status committed retryable]) }
    expect(result[:attempts].last[:status]).to eq(result[:status])
  end

  it "returns the first answer when it settles the write (attempt_count 1)" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d)
      f = fact(unique)
      first = client.write_fact_once_safe(f)
      expect(first).to include(ok: true, status: "committed_acked", attempt_count: 1)
      expect(first[:attempts]).to eq([{ ok: true, status: "committed_acked", committed: true, retryable: false }])
      expect(client.write_fact_once_safe(f)).to include(status: "idempotent_replay", attempt_count: 1)
      conflict = client.write_fact_once_safe(f.merge("value" => "other"))
      expect(conflict).to include(status: "duplicate_fact_id_conflict", attempt_count: 1) # never retried
    end
  end

  it "retries unavailable until the daemon accepts connections again (cleared from another thread)" do
    TbackendSpec::TestDaemon.with do |d|
      d.control({ "op" => "set", "refuse_connections" => true })
      client = client_for(d, breaker_threshold: 0)
      clearer = Thread.new do
        sleep 0.25
        d.control({ "op" => "set", "refuse_connections" => false })
      end
      elapsed, result = timed { client.write_fact_once_safe(fact(unique), attempts: 12, backoff: 0.05) }
      clearer.join
      expect_attempt_fields(result)
      expect(result).to include(ok: true, status: "committed_acked")
      expect(result[:attempt_count]).to be > 1
      expect(statuses(result)[0..-2]).to all(eq("unavailable"))
      expect(elapsed).to be >= 0.2
    end
  end

  it "retries timeout_unknown, and the retry of an executed write lands as idempotent_replay" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d)
      client.ping
      # The write is executed, then the connection closes before its answer.
      d.control({ "op" => "set", "answer_fault" => { "kind" => "close", "count" => 1 } })
      f = fact(unique)
      result = client.write_fact_once_safe(f, attempts: 3, backoff: 0.01)
      expect_attempt_fields(result)
      expect(statuses(result)).to eq(%w[timeout_unknown idempotent_replay])
      expect(result[:attempts].first).to eq(ok: false, status: "timeout_unknown", committed: nil, retryable: nil)
      expect(client.facts_by_seq(store: "specs")[:response][:facts].map { |x| x[:id] }).to eq([f["id"]])
    end
  end

  it "retries rejected_before_commit (overload) until a slot is free" do
    TbackendSpec::TestDaemon.with(max_inflight: 1) do |d|
      client = client_for(d)
      client.ping
      d.control({ "op" => "set", "exec_delay_ms" => 300 })
      holder = Thread.new { d.request({ "op" => "ping" }) }
      sleep 0.05
      result = client.write_fact_once_safe(fact(unique), attempts: 12, backoff: 0.05)
      holder.join
      expect_attempt_fields(result)
      expect(result[:status]).to eq("committed_acked")
      expect(statuses(result).first).to eq("rejected_before_commit")
      expect(result[:attempts].first).to eq(ok: false, status: "rejected_before_commit", committed: false, retryable: true)
    end
  end

  it "makes 2 attempts by default and returns the last failure" do
    ActsAsTbackend.configure { |c| c.port = closed_port }
    result = ActsAsTbackend.client.write_fact_once_safe(fact(unique))
    expect_attempt_fields(result)
    expect(result).to include(ok: false, status: "unavailable", attempt_count: 2, retryable: true)
    expect(statuses(result)).to eq(%w[unavailable unavailable])
  end

  it "backs off exponentially with full jitter: growing sleeps, never all alike" do
    ActsAsTbackend.configure do |c|
      c.port = closed_port
      c.breaker_threshold = 0
    end
    client = ActsAsTbackend.client
    runs = Array.new(5) { timed { client.write_fact_once_safe(fact(unique), attempts: 6, backoff: 0.02) } }
    runs.each { |_, r| expect(r).to include(status: "unavailable", attempt_count: 6) }
    times = runs.map(&:first)
    # Caps 20+40+80+160+320 ms: a mean of 310 ms with full jitter. A fixed 20 ms backoff
    # would sleep 100 ms per run at most; no jitter would make every run the same.
    expect(times.sum / times.size).to be > 0.12
    expect(times.max).to be < 0.62 + 0.3
    expect(times.max - times.min).to be > 0.01
  end

  it "never exceeds its overall deadline against a stalled daemon (request_timeout per attempt)" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d, request_timeout: 0.2, breaker_threshold: 0)
      client.ping
      d.control({ "op" => "set", "stall" => true })
      elapsed, result = timed { client.write_fact_once_safe(fact(unique), attempts: 3, backoff: 0.05) }
      expect_attempt_fields(result)
      expect(result).to include(status: "timeout_unknown", attempt_count: 3)
      expect(elapsed).to be_between(0.55, 0.75 + 0.25)
    end
  end

  it "applies its timeout: to each attempt and never exceeds its overall deadline against a stalled daemon" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d, request_timeout: 5, breaker_threshold: 0)
      client.ping
      d.control({ "op" => "set", "stall" => true })
      elapsed, result = timed { client.write_fact_once_safe(fact(unique), timeout: 0.2, attempts: 3, backoff: 0.05) }
      expect_attempt_fields(result)
      expect(result).to include(status: "timeout_unknown", attempt_count: 3)
      # 3 attempts of 0.2 s and two jittered sleeps capped at 50 and 100 ms.
      expect(elapsed).to be_between(0.55, 0.75 + 0.25)
    end
  end

  it "stops retrying at the overall deadline when the breaker opens in between (circuit_open is final)" do
    ActsAsTbackend.configure do |c|
      c.port = closed_port
      c.breaker_threshold = 2
      c.breaker_cooldown = 30
    end
    result = ActsAsTbackend.client.write_fact_once_safe(fact(unique), attempts: 5, backoff: 0.001)
    expect(statuses(result)).to eq(%w[unavailable unavailable circuit_open])
    expect(result).to include(status: "circuit_open", attempt_count: 3)
  end
end
