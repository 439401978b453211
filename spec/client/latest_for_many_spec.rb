# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/test_helpers"

# Issue 14: latest_for over many keys in one pipelined call (what verify reads the ledger
# with), one soft result per key in input order.
RSpec.describe "ActsAsTbackend::Client#latest_for_many" do
  include_context "client spec"

  with_daemon

  it "reads the latest fact of 2,000 keys from one thread on one connection, in input order" do
    client = client_for(daemon)
    facts = Array.new(2_000) { |i| fact("many-#{i}", store: "many", key: "k#{i}", value: { "i" => i }) }
    newer = Array.new(500) do |i|
      ActsAsTbackend::Fact.build(id: "newer-#{i}", store: "many", key: "k#{i * 4}", value: { "i" => i, "v" => 2 },
                                 transaction_time: Time.now + 60)
    end
    expect(client.write_facts_once(facts + newer).map { |r| r[:status] }.uniq).to eq(["committed_acked"])

    keys = (0...2_000).map { |i| "k#{i}" }.reverse.insert(7, "absent")
    accepted = daemon_status(daemon)["connections_accepted"]
    results = client.latest_for_many(store: "many", keys: keys)
    expect(results.size).to eq(keys.size)
    results.each { |r| expect_soft_result(r) }
    expect(results.map { |r| r[:status] }.uniq).to eq(["ok"])
    expect(results[7].dig(:response, :fact)).to be_nil
    (keys - ["absent"]).zip(results - [results[7]]).each do |key, result|
      i = Integer(key.delete_prefix("k"))
      stored = result.dig(:response, :fact)
      expect(stored[:key]).to eq(key)
      expect(stored[:value]).to eq((i % 4).zero? ? { i: i / 4, v: 2 } : { i: i })
    end
    expect(daemon_status(daemon)["connections_accepted"]).to eq(accepted)
  end

  it "applies the store prefix, as_of, and an invalid key gets its own soft error" do
    client = client_for(daemon, store_prefix: "pre_")
    old = ActsAsTbackend::Fact.build(id: "o", store: "s", key: "k", value: { "at" => "old" }, transaction_time: 100)
    new = ActsAsTbackend::Fact.build(id: "n", store: "s", key: "k", value: { "at" => "new" }, transaction_time: 200)
    client.write_facts_once([old, new])
    expect(client.latest_for_many(store: "s", keys: %w[k]).first.dig(:response, :fact, :store)).to eq("pre_s")
    expect(client.latest_for_many(store: "s", keys: %w[k], as_of: 150).first.dig(:response, :fact, :value))
      .to eq(at: "old")
    bad = Object.new
    bad.define_singleton_method(:to_s) { raise TypeError, "no key" }
    results = client.latest_for_many(store: "s", keys: ["k", bad, "k"])
    expect(results.map { |r| r[:status] }).to eq(%w[ok error ok])
    expect(results[1][:error]).to include("no key")
  end

  it "Fact.value_hash is the hash the daemon stores: 10 and 10.0 differ, Hash order does not" do
    client = client_for(daemon)
    values = [{ "n" => 10 }, { "n" => 10.0 }, { "b" => [1, { "y" => 2, "x" => nil }], "a" => "é\u0001" }]
    facts = values.each_with_index.map { |value, i| fact("h-#{i}", store: "hashes", key: "h#{i}", value: value) }
    client.write_facts_once(facts)
    stored = client.latest_for_many(store: "hashes", keys: %w[h0 h1 h2]).map { |r| r.dig(:response, :fact, :value_hash) }
    expect(values.map { |value| ActsAsTbackend::Fact.value_hash(value) }).to eq(stored)
    expect(stored[0]).not_to eq(stored[1])
    expect(ActsAsTbackend::Fact.value_hash("a" => "é\u0001", "b" => [1, { "x" => nil, "y" => 2 }])).to eq(stored[2])
    expect { ActsAsTbackend::Fact.value_hash("n" => Float::NAN) }.to raise_error(ActsAsTbackend::InvalidFact)
  end

  it "answers every key unavailable when the daemon is down, and never raises" do
    client = client_for(daemon)
    daemon.stop
    results = client.latest_for_many(store: "many", keys: %w[a b c])
    expect(results.map { |r| r[:status] }.uniq).to eq(["unavailable"])
    results.each { |r| expect_soft_result(r) }
  end

  it "is recorded by the FakeClient with one queued result per key" do
    fake = ActsAsTbackend::TestHelpers::FakeClient.new
    fake.queue_result(status: "ok", response: { fact: nil })
    results = fake.latest_for_many(store: "s", keys: %w[a b])
    expect(results.size).to eq(2)
    expect(fake.calls.last.to_h).to include(method: :latest_for_many, kwargs: { store: "s", keys: %w[a b] })
  end
end
