# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/test_helpers"

RSpec.describe ActsAsTbackend::OutboxFlusher do
  include_context "client spec"

  let(:fact) { ActsAsTbackend::Fact.build(id: unique("outbox"), store: "orders", key: "orders:1", value: { "a" => 1 }) }
  let(:intent) { ActsAsTbackend::OutboxIntent.new(fact: fact) }

  # The 0.2 gem's mapping of client statuses to flush results, row by row.
  {
    "committed_acked" => ["inserted", true, false, true],
    "idempotent_replay" => ["replay", true, false, true],
    "duplicate_fact_id_conflict" => ["conflict", true, false, false],
    "timeout_unknown" => ["unknown", false, true, false],
    "unavailable" => ["retryable", false, true, false],
    "circuit_open" => ["retryable", false, true, false],
    "rejected_before_commit" => ["retryable", false, true, false],
    "error" => ["failed", true, false, false],
    "config_error" => ["failed", true, false, false]
  }.each do |client_status, (status, terminal, retryable, ok)|
    it "maps #{client_status} to #{status}" do
      fake = ActsAsTbackend::TestHelpers.fake_client.queue_result(status: client_status)
      flushed = described_class.flush(intent, client: fake)
      expect(flushed.slice(:ok, :status, :terminal, :retryable))
        .to eq(ok: ok, status: status, terminal: terminal, retryable: retryable)
      expect(flushed[:result][:status]).to eq(client_status)
      expect(flushed[:intent].to_h).to include("attempts" => 1, "last_status" => client_status)
    end
  end

  it "maps any other status with a truthy retryable to retryable" do
    fake = ActsAsTbackend::TestHelpers.fake_client.queue_result(status: "error", retryable: true)
    expect(described_class.flush(intent, client: fake)[:status]).to eq("retryable")
  end

  it "calls write_fact_once exactly once with durability and timeout" do
    fake = ActsAsTbackend::TestHelpers.fake_client
    described_class.flush(intent.to_h, client: fake, durability: "durable", timeout: 0.5)
    expect(fake.calls.map(&:to_a)).to eq([[:write_fact_once, [fact], { durability: "durable", timeout: 0.5 }]])
  end

  context "with the test daemon" do
    with_daemon

    it "inserts, then replays, a flushed JSON payload; unknown after a daemon loss, then replay" do
      client = client_for(daemon)
      payload = JSON.parse(JSON.generate(intent.to_h))
      first = described_class.flush(payload)
      expect(first.slice(:ok, :status, :terminal)).to eq(ok: true, status: "inserted", terminal: true)
      expect(described_class.flush(first[:intent])[:status]).to eq("replay")

      daemon.control({ "op" => "set", "stall" => "after_exec" })
      other = ActsAsTbackend::OutboxIntent.new(fact: fact.merge("id" => unique("stalled")))
      lost = described_class.flush(other, timeout: 0.2)
      expect(lost.slice(:status, :terminal, :retryable)).to eq(status: "unknown", terminal: false, retryable: true)
      daemon.control({ "op" => "clear" })
      retried = eventually(5) { (r = described_class.flush(lost[:intent]))[:status] == "replay" && r }
      expect(retried[:intent].attempts).to eq(2)
      expect(ids_by_seq(client, "orders").values).to contain_exactly(fact["id"], other.id)
    end

    it "reports strict mode's transport errors as a status instead of raising" do
      client_for(daemon, strict: true)
      daemon.kill!
      expect(described_class.flush(intent)[:status]).to eq("retryable")
    end
  end
end
