# frozen_string_literal: true

require "spec_helper"
require "bigdecimal"
require "time"

# Every place where Ruby objects cross into the native client and back: request values
# of every kind, answers turned into Symbol-keyed Hashes, batches with their per-fact
# errors, retries' attempts, tail cursors, stats, strict exceptions and interrupts.
# Tagged :gc_stress: `rake spec:gc_stress` reruns them with GC.stress = true, so an object
# the native side uses after the GC could have moved or freed it crashes there.
RSpec.describe "ActsAsTbackend::Client at the native boundary", :gc_stress do
  include_context "client spec"

  with_daemon

  let(:client) { client_for(daemon, request_timeout: 5) }

  def rich_value(index)
    {
      "text" => "tëxt-#{index} \"q\" \\ \n", :symbol => :sym, 7 => [1, -2**70, 1.5, 10.0, nil, true, false],
      "nested" => { "deeper" => { "list" => Array.new(5) { |j| { "j" => j, "s" => "s#{j}" * j } } } },
      "latin1" => "caf\xE9".dup.force_encoding(Encoding::ISO_8859_1), "big" => BigDecimal("1.25"),
      "at" => Time.utc(2026, 1, 2, 3, 4, 5)
    }
  end

  it "round-trips rich values: written, replayed and read back with Symbol keys" do
    facts = Array.new(2) { |i| fact("rich-#{i}", store: "native", key: "rich:#{i}", value: rich_value(i)) }
    facts.each do |f|
      expect(client.write_fact_once(f)[:status]).to eq("committed_acked")
      expect(client.write_fact_once(f)[:status]).to eq("idempotent_replay")
    end
    read = client.latest_for(store: :native, key: "rich:1", as_of: Time.now + 60)
    value = read.dig(:response, :fact, :value)
    # BigDecimal as JSON.generate writes it ("0.125e1"; "1.25" once ActiveSupport is
    # loaded, as in a Rails app); 2**70 as the daemon keeps it (a double).
    big = JSON.parse(JSON.generate([BigDecimal("1.25")])).first
    expect(value).to include(text: "tëxt-1 \"q\" \\ \n", symbol: "sym", "7": [1, -(2**70).to_f, 1.5, 10.0, nil, true, false],
                             latin1: "café", big: big, at: Time.utc(2026, 1, 2, 3, 4, 5).to_s)
    expect(value.dig(:nested, :deeper, :list).last).to eq(j: 4, s: "s4s4s4s4")
    history = client.facts_for(store: "native", since: Time.at(0), as_of: Time.now + 60)
    expect(history.dig(:response, :facts).map { |f| f[:id] }).to match_array(facts.map { |f| f["id"] })
    expect(client.facts_by_seq(store: "native", after_seq: 1, until_seq: 2).dig(:response, :facts).size).to eq(1)
  end

  it "builds one result per fact in a batch, invalid ones included" do
    facts = Array.new(7) { |i| fact("batch-#{i}", store: "native", value: i.zero? ? rich_value(i) : { "i" => i }) }
    facts[2] = fact("nan", store: "native", value: { "x" => Float::NAN })
    facts[4] = fact("utf", store: "native", value: "bad \xFF".dup.force_encoding(Encoding::UTF_8))
    facts[5] = :not_a_fact
    results = client.write_facts_once(facts)
    expect(results.map { |r| r[:status] }.tally).to eq("committed_acked" => 4, "error" => 3)
    expect(results.values_at(2, 4, 5).map { |r| r[:error] }).to all(start_with("ActsAsTbackend::InvalidFact: "))
  end

  it "reports attempts of a retried write, stats and health" do
    daemon.control({ "op" => "set", "answer_fault" => { "kind" => "close", "count" => 1 } })
    result = client.write_fact_once_safe(fact("retried", store: "native", value: rich_value(0)), attempts: 3, backoff: 0.001)
    expect(result[:attempts].map { |a| a[:status] }).to eq(%w[timeout_unknown idempotent_replay])
    expect(client.stats[:lanes].first).to include(:connected, :in_flight, :reconnects, :generation, :last_error)
    expect(ActsAsTbackend.health).to include(status: "ok", daemon: include(:data_dir))
  end

  it "tails facts through the native cursor" do
    client.write_facts_once(Array.new(4) { |i| fact("tail-#{i}", store: "native_tail", value: { "i" => [i, "x"] }) })
    tail = client.tail(store: "native_tail", grace: 0.1)
    expect(tail.poll.map { |f| f[:id] }).to eq(Array.new(4) { |i| "tail-#{i}" })
    expect(tail.after_seq).to eq(4)
  end

  it "raises strict errors carrying their result, and survives reset! and an interrupted call" do
    strict = ActsAsTbackend::Client.new(config_with(port: closed_port, strict: true))
    expect { strict.ping }.to raise_error(ActsAsTbackend::ConnectionError) { |e| expect(e.result[:status]).to eq("unavailable") }
    strict.shutdown

    client.ping
    daemon.control({ "op" => "set", "delay_ms" => 300 })
    waiting = Thread.new { client.ping }
    sleep 0.05
    waiting.kill
    waiting.join(2)
    daemon.control({ "op" => "set", "delay_ms" => 0 })
    ActsAsTbackend.reset!
    expect(ActsAsTbackend.client.write_fact_once(fact("after-reset", store: "native"))[:status]).to eq("committed_acked")
  end
end
