# frozen_string_literal: true

require "spec_helper"
require "digest"
require_relative "support/mirror_helpers"

RSpec.describe ActsAsTbackend::Mirror do
  include TbackendSpec::MirrorHelpers
  include_context "client spec"

  let(:updated_at) { Time.at(1_780_387_174, 123_456_789, :nsec) }
  let(:order) { timed_record(42, { id: 42, "status" => "new", password: "x" }, updated_at) }

  describe ".build_fact" do
    it "builds the 0.2 fact: legacy id from updated_at, store:id key, sanitized value, causation, producer" do
      ActsAsTbackend.config.producer = "shop"
      fact = described_class.build_fact(record: order, store: "orders", event_type: "create", denylist: true)
      expect(fact["id"]).to eq("orders:42:create:1780387174123456")
      expect(fact).to include("store" => "orders", "key" => "orders:42", "value" => { "id" => 42, "status" => "new" },
                              "causation" => "orders:42:create", "producer" => "shop", "schema_version" => 1)
      expect(fact["id"]).to eq(ActsAsTbackend::Fact.derive_id(store: "orders", record_id: 42, event_type: "create",
                                                              source_version: updated_at))
      expect(fact).not_to have_key("valid_time")
    end

    it "honours config.id_format" do
      ActsAsTbackend.config.id_format = "digest"
      fact = described_class.build_fact(record: order, store: "orders", event_type: "update")
      expect(fact["id"]).to eq(ActsAsTbackend::Fact.derive_id(store: "orders", record_id: 42, event_type: "update",
                                                              source_version: updated_at, format: :digest))
      expect(fact["id"]).to start_with("tbf1-")
    end

    it "passes only/except through the sanitizer" do
      fact = described_class.build_fact(record: order, store: "orders", event_type: "update", only: [:status])
      expect(fact["value"]).to eq("status" => "new")
      fact = described_class.build_fact(record: order, store: "orders", event_type: "update", except: %w[password])
      expect(fact["value"]).to eq("id" => 42, "status" => "new")
    end

    it "writes {\"_tombstone\" => true} for a tombstone" do
      fact = described_class.build_fact(record: order, store: "orders", event_type: "destroy", tombstone: true)
      expect(fact["value"]).to eq("_tombstone" => true)
      expect(fact["id"]).to eq("orders:42:destroy:1780387174123456")
    end

    it "takes valid_time from the argument, else from record.valid_time when the record has one" do
      timed = valid_time_record(1, { "a" => 1 }, updated_at, 100)
      expect(described_class.build_fact(record: timed, store: "s", event_type: "e")["valid_time"]).to eq(100.0)
      expect(described_class.build_fact(record: timed, store: "s", event_type: "e", valid_time: "2026-07-03")["valid_time"])
        .to eq(Time.utc(2026, 7, 3).to_f)
      expect(described_class.build_fact(record: order, store: "s", event_type: "e", valid_time: 5)["valid_time"]).to eq(5.0)
    end

    it "uses a custom key when given" do
      expect(described_class.build_fact(record: order, store: "orders", event_type: "e", key: "order:A-42")["key"])
        .to eq("order:A-42")
    end

    context "with a record without updated_at (0.2 used the wall clock: retries were new facts)" do
      let(:note) { plain_record(7, { "id" => 7, "body" => "hello", "meta" => { "b" => 1, "a" => [1, 2] } }) }

      it "derives the id from a SHA-256 of the canonical JSON of the mirrored content" do
        fact = described_class.build_fact(record: note, store: "notes", event_type: "create")
        canonical = '{"body":"hello","id":7,"meta":{"a":[1,2],"b":1}}'
        expect(fact["id"]).to eq("notes:7:create:#{Digest::SHA256.hexdigest(canonical)}")
      end

      it "gives the same content the same id, whenever and in whatever key order it is built" do
        first = described_class.build_fact(record: note, store: "notes", event_type: "update")
        sleep 0.002 # a wall-clock id would change here
        reordered = plain_record(7, { "meta" => { "a" => [1, 2], "b" => 1 }, "body" => "hello", "id" => 7 })
        expect(described_class.build_fact(record: reordered, store: "notes", event_type: "update")["id"]).to eq(first["id"])
      end

      it "gives different content a different id" do
        first = described_class.build_fact(record: note, store: "notes", event_type: "update")
        changed = plain_record(7, note.attributes.merge("body" => "hello!"))
        expect(described_class.build_fact(record: changed, store: "notes", event_type: "update")["id"]).not_to eq(first["id"])
      end

      it "digests only what is mirrored: a change to an excluded attribute keeps the id" do
        first = described_class.build_fact(record: note, store: "notes", event_type: "update", except: %w[meta])
        changed = plain_record(7, note.attributes.merge("meta" => {}))
        expect(described_class.build_fact(record: changed, store: "notes", event_type: "update", except: %w[meta])["id"])
          .to eq(first["id"])
      end

      it "digests the record's last state for a tombstone" do
        live = described_class.build_fact(record: note, store: "notes", event_type: "destroy", tombstone: true)
        other = plain_record(7, note.attributes.merge("body" => "other"))
        expect(described_class.build_fact(record: other, store: "notes", event_type: "destroy", tombstone: true)["id"])
          .not_to eq(live["id"])
        expect(live["value"]).to eq("_tombstone" => true)
      end

      it "falls back to the digest when updated_at is nil" do
        unsaved = timed_record(7, note.attributes, nil)
        expect(described_class.build_fact(record: unsaved, store: "notes", event_type: "create")["id"])
          .to eq(described_class.build_fact(record: note, store: "notes", event_type: "create")["id"])
      end
    end
  end

  describe ".mirror!" do
    with_daemon

    it "writes the fact with write_fact_once_safe; a retry of the same change is a replay" do
      client = client_for(daemon)
      first = described_class.mirror!(record: order, store: "orders", event_type: "create")
      again = described_class.mirror!(record: order, store: "orders", event_type: "create")
      expect(first).to include(ok: true, status: "committed_acked", attempt_count: 1)
      expect(again).to include(ok: true, status: "idempotent_replay")
      facts = client.facts_for(store: "orders", key: "orders:42")[:response][:facts]
      expect(facts.map { |f| f[:id] }).to eq(["orders:42:create:1780387174123456"])
      expect(facts.first[:value]).to eq(id: 42, status: "new", password: "x")
    end

    it "makes a retry of a record without updated_at a replay too" do
      client_for(daemon)
      note = plain_record(9, { "id" => 9, "body" => "b" })
      expect(described_class.mirror!(record: note, store: "notes", event_type: "create")[:status]).to eq("committed_acked")
      expect(described_class.mirror!(record: note, store: "notes", event_type: "create")[:status]).to eq("idempotent_replay")
    end

    it "answers `disabled` and sends nothing when the connector is disabled" do
      client = client_for(daemon, enabled: false)
      result = described_class.mirror!(record: order, store: "orders", event_type: "create")
      expect(result).to eq(ok: true, status: "disabled", committed: nil, retryable: false, response: nil, error: nil)
      ActsAsTbackend.config.enabled = true
      expect(client.facts_by_seq(store: "orders")[:response][:facts]).to eq([])
    end

    it "passes a failure through the failure policy and returns it" do
      client_for(daemon, failure_policy: "warn")
      daemon.kill!
      out = captured_stderr do
        result = described_class.mirror!(record: order, store: "orders", event_type: "create")
        expect(result).to include(ok: false, status: "unavailable")
      end
      line = /\A\[ActsAsTbackend\] mirror failure \(store=orders, event_type=create\): status=unavailable error="[^"]+"\n\z/
      expect(out).to match(line)
    end

    it "turns a value that cannot be a fact (NaN) into a soft error, through the policy" do
      client_for(daemon, failure_policy: "warn")
      bad = timed_record(1, { "x" => Float::NAN }, updated_at)
      out = captured_stderr do
        result = described_class.mirror!(record: bad, store: "orders", event_type: "create")
        expect(result).to include(ok: false, status: "error", retryable: false)
        expect(result[:error]).to include("InvalidFact")
      end
      expect(out).to include("status=error")
    end

    it "passes `durability:` to write_fact_once_safe" do
      require "acts_as_tbackend/test_helpers"
      ActsAsTbackend::TestHelpers.stub_client do |fake|
        described_class.mirror!(record: order, store: "orders", event_type: "create", durability: "durable")
        expect(fake.calls.map { |c| [c[:method], c[:kwargs][:durability]] }).to eq([[:write_fact_once_safe, "durable"]])
      end
    end
  end

  describe ".history and .latest" do
    with_daemon

    it "read the facts under a key (oldest first) and the newest one" do
      client_for(daemon)
      %w[a b c].each_with_index do |status, i|
        record = timed_record(1, { "status" => status }, Time.at(1000 + i))
        described_class.mirror!(record: record, store: "orders", event_type: "update")
      end
      expect(described_class.history(store: "orders", key: "orders:1").map { |f| f[:value][:status] }).to eq(%w[a b c])
      expect(described_class.latest(store: "orders", key: "orders:1")[:value]).to eq(status: "c")
      expect(described_class.history(store: "orders", key: "orders:2")).to eq([])
      expect(described_class.latest(store: "orders", key: "orders:2")).to be_nil
    end

    it "answer [] and nil, never raising, when the daemon is down, even in strict mode" do
      client_for(daemon, strict: true)
      daemon.kill!
      expect(described_class.history(store: "orders", key: "orders:1")).to eq([])
      expect(described_class.latest(store: "orders", key: "orders:1")).to be_nil
    end
  end
end
