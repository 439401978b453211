# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_helpers"

RSpec.describe ActsAsTbackend::OutboxIntent do
  include TbackendSpec::MirrorHelpers

  let(:fact) { ActsAsTbackend::Fact.build(id: "orders:1:create:5", store: "orders", key: "orders:1", value: { "a" => 1 }) }

  it "defaults id to the fact id, attempts to 0" do
    intent = described_class.new(fact: fact)
    expect(intent.to_h).to eq("id" => "orders:1:create:5", "fact" => fact, "attempts" => 0,
                              "last_status" => nil, "last_error" => nil)
    expect(intent).to be_frozen
  end

  it "requires the fact keys id, store, key and value" do
    expect { described_class.new(fact: fact.except("value")) }.to raise_error(ArgumentError, /value/)
    expect { described_class.new(fact: { "id" => "x" }) }.to raise_error(ArgumentError, /store, key, value/)
    expect { described_class.new(fact: nil) }.to raise_error(ArgumentError)
  end

  it "builds from a record exactly as the mirror does" do
    record = timed_record(1, { "id" => 1, "secret" => "s", "status" => "new" }, Time.at(5))
    intent = described_class.from_record(record: record, store: "orders", event_type: "create", denylist: true)
    built = ActsAsTbackend::Mirror.build_fact(record: record, store: "orders", event_type: "create", denylist: true)
    expect(intent.fact.except("transaction_time")).to eq(built.except("transaction_time"))
    expect(intent.id).to eq("orders:1:create:5000000")
  end

  it "survives a JSON round trip through to_h / from_h" do
    intent = described_class.new(fact: fact, attempts: 2, last_status: "unavailable", last_error: "down")
    restored = described_class.from_h(JSON.parse(JSON.generate(intent.to_h)))
    expect(restored).to eq(intent)
    expect(described_class.from_h(intent.to_h.transform_keys(&:to_sym))).to eq(intent)
  end

  it "record_result returns a new intent with one more attempt and the result's status and error" do
    intent = described_class.new(fact: fact)
    after = intent.record_result({ ok: false, status: "timeout_unknown", error: "late" })
    expect(after.to_h).to include("attempts" => 1, "last_status" => "timeout_unknown", "last_error" => "late")
    expect(after.record_result({ ok: true, status: "idempotent_replay", error: nil }).to_h)
      .to include("attempts" => 2, "last_status" => "idempotent_replay", "last_error" => nil)
    expect(intent.attempts).to eq(0)
  end
end
