# frozen_string_literal: true

require "spec_helper"

# Issue 3, "More than the old gem": write_facts_once pipelines a batch from one thread
# and returns one soft result per fact, in order; a fact that cannot be sent gets its own
# soft error and does not stop the others.
RSpec.describe "ActsAsTbackend::Client#write_facts_once" do
  include_context "client spec"

  with_daemon

  it "writes 1,000 facts from one thread, one result per fact in input order" do
    client = client_for(daemon)
    facts = Array.new(1_000) { |i| fact("batch-#{i}", store: "batch", value: { "i" => i }) }
    elapsed, results = timed { client.write_facts_once(facts) }
    expect(results.size).to eq(1_000)
    expect(results.map { |r| r[:status] }.uniq).to eq(["committed_acked"])
    results.each { |r| expect_soft_result(r) }
    expect_writes_match_read_back(client, "batch", facts.map { |f| f["id"] }.zip(results))
    # One lane, one thread: the daemon stored them in the order they were sent.
    expect(results.map { |r| r.dig(:response, :seq_id) }).to eq((1..1_000).to_a)
    expect(elapsed).to be < 5
    expect(daemon_status(daemon)["connections_accepted"]).to eq(1)

    again = client.write_facts_once(facts.reverse)
    expect(again.map { |r| r[:status] }.uniq).to eq(["idempotent_replay"])
    expect(again.map { |r| r.dig(:response, :seq_id) }).to eq((1..1_000).to_a.reverse)
  end

  it "puts the first facts on the wire while it still encodes the last ones" do
    client = client_for(daemon)
    received = -> { daemon_status(daemon)["requests_received"] }
    before = received.call
    received_meanwhile = nil
    probe = Object.new
    # Encoded last: it waits (up to 2 s) for the daemon to have read the first groups,
    # which can only happen if they were sent before the batch was fully encoded.
    probe.define_singleton_method(:to_json) do |*|
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2
      loop do
        received_meanwhile = received.call - before
        break if received_meanwhile >= 900 || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.01
      end
      '"probe"'
    end
    facts = Array.new(1_000) { |i| fact("overlap-#{i}", store: "overlap") }
    facts[999] = fact("overlap-999", store: "overlap", value: { "probe" => probe })
    results = client.write_facts_once(facts)
    expect(results.map { |r| r[:error] }.compact).to eq([])
    expect(received_meanwhile).to be >= 900
  end

  it "gives an invalid fact in the middle its own soft error and writes all the others" do
    client = client_for(daemon)
    facts = Array.new(1_000) { |i| fact("mixed-#{i}", store: "mixed") }
    facts[400] = fact("mixed-400", store: "mixed", value: { "bad" => Float::NAN })
    facts[500] = fact("mixed-500").merge("store" => "not valid!")
    facts[600] = "not a fact"
    results = client.write_facts_once(facts)
    expect(results.size).to eq(1_000)
    [400, 500, 600].each do |i|
      expect(results[i]).to include(ok: false, status: "error", retryable: false)
      expect(results[i][:error]).to start_with("ActsAsTbackend::InvalidFact: ")
    end
    expect(results[400][:error]).to include("NaN")
    expect(results[500][:error]).to include("store")
    good = (0...1_000).to_a - [400, 500, 600]
    expect(good.map { |i| results[i][:status] }.uniq).to eq(["committed_acked"])
    by_seq = expect_writes_match_read_back(client, "mixed", good.map { |i| [facts[i]["id"], results[i]] })
    expect(by_seq.size).to eq(997)
  end

  it "answers duplicates within one batch in order: insert, then replay or conflict" do
    client = client_for(daemon)
    f = fact(unique, store: "dups")
    results = client.write_facts_once([f, f, f.merge("value" => "other"), fact(unique, store: "dups")])
    expect(results.map { |r| r[:status] }).to eq(%w[committed_acked idempotent_replay duplicate_fact_id_conflict committed_acked])
    expect(results[1].dig(:response, :seq_id)).to eq(results[0].dig(:response, :seq_id))
  end

  it "accepts an empty batch and any Enumerable" do
    client = client_for(daemon)
    expect(client.write_facts_once([])).to eq([])
    enum = Enumerator.new { |y| 3.times { |i| y << fact("enum-#{i}", store: "enum") } }
    expect(client.write_facts_once(enum).map { |r| r[:status] }).to eq(%w[committed_acked] * 3)
  end

  it "spreads a batch over every lane and still answers in input order (pool_size 2)" do
    client = client_for(daemon, pool_size: 2)
    facts = Array.new(1_000) { |i| fact("two-#{i}", store: "two") }
    results = client.write_facts_once(facts)
    expect(results.map { |r| r[:status] }.uniq).to eq(["committed_acked"])
    expect_writes_match_read_back(client, "two", facts.map { |f| f["id"] }.zip(results))
    expect(daemon_status(daemon)["connections_accepted"]).to eq(2)
  end

  it "answers a batch against a down daemon with one soft result per fact, fast" do
    ActsAsTbackend.configure { |c| c.port = closed_port }
    elapsed, results = timed { ActsAsTbackend.client.write_facts_once(Array.new(100) { fact(unique) }) }
    expect(results.size).to eq(100)
    expect(results.map { |r| r[:status] }.uniq - %w[unavailable circuit_open]).to be_empty
    expect(elapsed).to be < 0.5
  end
end
