# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_models"

# Issue 10: development, test and parallel test workers all wrote `orders:<id>` into one
# daemon, so tbackend_history returned development facts inside a spec. `store_prefix` is
# applied at one place, the client boundary (Client#wire_store / #wire_fact): every store
# the gem writes or reads gets it; the app's facts and names keep their own store.
RSpec.describe "store_prefix: keeping environments apart" do
  include_context "mirror model spec"
  let(:adapter) { :sqlite }

  def prefix!(prefix)
    ActsAsTbackend.configure { |c| c.store_prefix = prefix }
  end

  def ids_in(store)
    answer = ActsAsTbackend.client.facts_by_seq(store: store)
    expect(answer[:ok]).to be(true), answer.inspect
    answer[:response][:facts].map { |f| f[:id] }
  end

  it "two configs with different prefixes do not see each other's facts through tbackend_history" do
    prefix!(nil) # development: the stores as named
    order = models::Order.create!(status: "development")
    prefix!("test_")
    order.update!(status: "test")
    prefix!("test_2_")
    order.update!(status: "worker 2")

    seen = [nil, "test_", "test_2_"].map do |prefix|
      prefix!(prefix)
      [models::Order.tbackend_history(order).map { |f| f[:value][:status] },
       models::Order.tbackend_latest_for(order.id)[:value][:status]]
    end
    expect(seen).to eq([[["development"], "development"], [["test"], "test"], [["worker 2"], "worker 2"]])
    prefix!("")
    expect(ids_in("test_mirror_orders").size).to eq(1)
    expect(ids_in("test_2_mirror_orders").size).to eq(1)
  end

  it "prefixes every write and read path: write_fact_once(_safe), write_facts_once, the async writer, reads, tail" do
    prefix!("p-1_")
    client = ActsAsTbackend.client
    facts = Array.new(5) { |i| fact("iso-#{i}", store: "iso", key: "k#{i}") }
    expect(client.write_fact_once(facts[0])[:status]).to eq("committed_acked")
    expect(client.write_fact_once_safe(facts[1])[:status]).to eq("committed_acked")
    expect(client.write_facts_once(facts[2, 2]).map { |r| r[:status] }).to eq(%w[committed_acked] * 2)
    writer = ActsAsTbackend.async_writer
    expect(writer.enqueue(facts[4])[:status]).to eq("enqueued")
    expect(writer.flush(timeout: 10)).to be(true)
    expect(facts.map { |f| f["store"] }.uniq).to eq(["iso"]) # the caller's facts are left alone

    expect(ids_in("iso")).to eq(facts.map { |f| f["id"] })
    expect(client.facts_for(store: "iso", key: "k1")[:response][:facts].map { |f| f[:id] }).to eq(["iso-1"])
    expect(client.latest_for(store: "iso", key: "k4")[:response][:fact][:store]).to eq("p-1_iso")
    expect(client.tail(store: "iso").each(limit: 5).map { |f| f[:id] }).to eq(facts.map { |f| f["id"] })

    prefix!(nil)
    expect(ids_in("iso")).to eq([])
    expect(ids_in("p-1_iso")).to eq(facts.map { |f| f["id"] })
  end

  it "refuses a prefix outside the store-name alphabet, and a prefixed name over the daemon's 200 bytes" do
    expect { prefix!("bad prefix") }.to raise_error(ActsAsTbackend::ConfigurationError, /store_prefix/)
    expect { prefix!("x" * 65) }.to raise_error(ActsAsTbackend::ConfigurationError, /store_prefix/)
    config = ActsAsTbackend::Config.from_env("TBACKEND_STORE_PREFIX" => "a/b")
    expect(config.errors.join).to include("TBACKEND_STORE_PREFIX")
    expect(config.store_prefix).to be_nil

    prefix!("x" * 64)
    result = ActsAsTbackend.client.write_fact_once(fact(unique, store: "s" * 137))
    expect(result).to include(ok: false, status: "error", retryable: false)
    expect(result[:error]).to include("InvalidFact")
  end
end
