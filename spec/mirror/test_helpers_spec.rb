# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/test_helpers"
require_relative "support/mirror_helpers"

RSpec.describe ActsAsTbackend::TestHelpers do
  include TbackendSpec::MirrorHelpers

  let(:fake) { described_class.fake_client }
  let(:fact) { ActsAsTbackend::Fact.build(id: "f1", store: "orders", key: "orders:1", value: { "status" => "new" }) }

  describe "FakeClient#queue_result" do
    {
      committed_acked: [true, true, false], idempotent_replay: [true, true, false],
      duplicate_fact_id_conflict: [false, false, false], rejected_before_commit: [false, false, true],
      unavailable: [false, nil, true], circuit_open: [false, nil, true], timeout_unknown: [false, nil, nil],
      ok: [true, nil, false], disabled: [true, nil, false]
    }.each do |status, (ok, committed, retryable)|
      it "defaults #{status} to ok=#{ok.inspect} committed=#{committed.inspect} retryable=#{retryable.inspect}" do
        fake.queue_result(status: status)
        # A failure also carries its error_kind (checked against the table below).
        expect(fake.write_fact_once(fact).except(:error_kind))
          .to eq(ok: ok, status: status.to_s, committed: committed, retryable: retryable, response: nil, error: nil)
      end
    end

    it "is chainable, answers in order, lets keywords override or add fields, then answers ok" do
      expect(fake.queue_result(status: :committed_acked, seq_id: 7).queue_result(status: "unavailable", ok: true, error: "e"))
        .to equal(fake)
      expect(fake.write_fact_once(fact)).to include(status: "committed_acked", seq_id: 7)
      expect(fake.latest_for(store: "orders", key: "orders:1")).to include(status: "unavailable", ok: true, error: "e")
      expect(fake.ping).to eq(ok: true, status: "ok", committed: nil, retryable: false, response: nil, error: nil)
    end

    it "answers every status exactly as the status table says" do
      ActsAsTbackend::STATUSES.each do |status, row|
        fake.queue_result(status: status)
        expected = { ok: row[:ok], status: status, committed: row[:committed], retryable: row[:retryable],
                     response: nil, error: nil }
        expected[:error_kind] = row[:error_kind] unless row[:ok]
        expect(fake.write_fact_once(fact)).to eq(expected)
      end
    end

    it "passes response through" do
      fake.queue_result(status: :ok, response: { facts: [{ id: "x" }] })
      expect(fake.facts_for(store: "orders")[:response]).to eq(facts: [{ id: "x" }])
    end
  end

  describe "FakeClient's interface" do
    # Client methods a fake has no use for: the native plumbing (@api private) and the
    # gap-safe tail, which needs the native cursor.
    let(:not_faked) { %i[wire_store wire_fact native_options native_call tail] }

    it "keeps every public method of Client, with the same parameters and keywords" do
      real = ActsAsTbackend::Client.public_instance_methods(false) - not_faked
      expect(real).to include(:write_fact_once, :write_facts_once, :ping, :health, :stats, :shutdown)
      fake_class = described_class::FakeClient
      missing = real.reject { |name| fake_class.public_method_defined?(name) }
      expect(missing).to be_empty, "FakeClient lacks #{missing.inspect}"
      differing = real.filter_map do |name|
        want = ActsAsTbackend::Client.instance_method(name).parameters
        got = fake_class.instance_method(name).parameters
        "#{name}: Client #{want.inspect}, FakeClient #{got.inspect}" unless want == got
      end
      expect(differing).to be_empty, differing.join("\n")
    end

    it "answers stats as a client without lanes" do
      expect(fake.stats).to eq({})
      expect(fake.calls).to be_empty
    end
  end

  describe "FakeClient calls" do
    it "records method, args and kwargs of every call" do
      fake.write_fact_once(fact, durability: "durable")
      fake.write_fact_once_safe(fact, attempts: 3)
      fake.facts_by_seq(store: "orders", after_seq: 4)
      fake.shutdown
      expect(fake.calls.map(&:method)).to eq(%i[write_fact_once write_fact_once_safe facts_by_seq shutdown])
      expect(fake.calls.map { |c| c[:method] }).to eq(fake.calls.map(&:method))
      expect(fake.calls.first).to eq(described_class::FakeClient::Call.new(:write_fact_once, [fact], { durability: "durable" }))
      expect(fake.calls[1].kwargs).to eq(attempts: 3)
      expect(fake.calls[2].args).to eq([])
    end

    # As acts-as-tbackend 0.2's own suite asserts it.
    it "records each call as a Struct whose kwargs are exactly the keywords the caller passed" do
      fake = ActsAsTbackend::TestHelpers.fake_client
      fake.queue_result(status: :ok)
      fake.latest_for(store: "orders", key: "order:1")

      call = fake.calls.last
      expect(call).to be_a(Struct)
      expect(call.method).to eq(:latest_for)
      expect(call.args).to eq([])
      expect(call.kwargs).to eq({ store: "orders", key: "order:1" })
    end

    it "records write_fact_once's durability: and timeout: only when passed, nil included" do
      fake.write_fact_once(fact, durability: "durable", timeout: 0.5)
      fake.write_fact_once(fact)
      fake.write_fact_once(fact, durability: nil, timeout: nil)
      fake.ping
      expect(fake.calls.map(&:kwargs)).to eq([{ durability: "durable", timeout: 0.5 }, {}, { durability: nil, timeout: nil }, {}])
      expect(fake.calls.first.args).to eq([fact])
    end

    it "refuses what the real client refuses: unknown and missing keywords" do
      expect { fake.latest_for(store: "orders", key: "k", since: 1) }.to raise_error(ArgumentError, /unknown keyword: :since/)
      expect { fake.latest_for(store: "orders") }.to raise_error(ArgumentError, /missing keyword: :key/)
      expect(fake.calls).to eq([])
    end

    it "answers write_fact_once_safe with attempt_count and attempts" do
      fake.queue_result(status: :idempotent_replay)
      expect(fake.write_fact_once_safe(fact)).to include(status: "idempotent_replay", attempt_count: 1,
                                                         attempts: [{ ok: true, status: "idempotent_replay",
                                                                      committed: true, retryable: false }])
    end

    it "answers write_facts_once with one queued result per fact, as one call" do
      fake.queue_result(status: :committed_acked).queue_result(status: :duplicate_fact_id_conflict)
      results = fake.write_facts_once([fact, fact, fact])
      expect(results.map { |r| r[:status] }).to eq(%w[committed_acked duplicate_fact_id_conflict ok])
      expect(fake.calls.size).to eq(1)
    end

    it "answers health without taking a queued result" do
      fake.queue_result(status: :unavailable)
      expect(fake.health).to include(ok: true, status: "ok", host: ActsAsTbackend.config.host)
      expect(fake.health).not_to have_key(:token)
      expect(fake.ping[:status]).to eq("unavailable")
    end

    it "is thread-safe: every queued result is handed out exactly once and every call is recorded" do
      threads_count = 8
      per_thread = 250
      (threads_count * per_thread).times { |i| fake.queue_result(status: :committed_acked, seq_id: i) }
      threads = Array.new(threads_count) do
        Thread.new { Array.new(per_thread) { fake.write_fact_once(fact)[:seq_id] } }
      end
      seqs = threads.flat_map(&:value)
      expect(seqs.sort).to eq((0...(threads_count * per_thread)).to_a)
      expect(fake.calls.size).to eq(threads_count * per_thread)
      expect(fake.queued_count).to eq(0)
      expect(fake.remaining).to eq(0)
    end
  end

  describe ".stub_client" do
    it "swaps the module client for the block and restores it, even after an exception" do
      original = ActsAsTbackend.client
      seen = nil
      expect do
        described_class.stub_client do |stub|
          seen = ActsAsTbackend.client
          expect(stub).to be_a(described_class::FakeClient)
          raise "boom"
        end
      end.to raise_error("boom")
      expect(seen).to be_a(described_class::FakeClient)
      expect(ActsAsTbackend.client).to equal(original)
    ensure
      ActsAsTbackend.reset!
    end

    it "takes a client of the caller's and returns the block's value" do
      mine = described_class::FakeClient.new
      expect(described_class.stub_client(mine) { |stub| stub.equal?(mine) && :done }).to eq(:done)
    end
  end

  describe ".capture_mirror_result" do
    it "returns the fact the mirror built and the (fake) client's result" do
      record = timed_record(1, { "id" => 1, "status" => "accepted" }, Time.at(1))
      described_class.stub_client do |stub|
        stub.queue_result(status: :committed_acked, seq_id: 7)
        captured = described_class.capture_mirror_result(record: record, store: "orders", event_type: "order.accepted")
        expect(captured[:result]).to include(status: "committed_acked", seq_id: 7)
        expect(captured[:fact]).to include("id" => "orders:1:order.accepted:1000000", "key" => "orders:1")
        expect(stub.calls.first[:args]).to eq([captured[:fact]])
        expect(stub.calls.first.kwargs).to eq({}) # as 0.2's mirror called it
        described_class.capture_mirror_result(record: record, store: "orders", event_type: "x", durability: "durable")
        expect(stub.calls.last.kwargs).to eq(durability: "durable")
      end
    end

    it "applies the failure policy like the mirror" do
      ActsAsTbackend.config.failure_policy = "raise_in_test"
      with_env("TBACKEND_FORCE_TEST_MODE" => "1") do
        described_class.stub_client do |stub|
          stub.queue_result(status: :unavailable)
          expect { described_class.capture_mirror_result(record: plain_record(1, {}), store: "orders", event_type: "x") }
            .to raise_error(ActsAsTbackend::MirrorFailure)
        end
      end
    end
  end

  describe ".assert_tbackend_fact" do
    it "passes for a matching fact, String- or Symbol-keyed" do
      expect(described_class.assert_tbackend_fact(fact, store: "orders", key: "orders:1",
                                                        value_includes: { status: "new" })).to be(true)
      read_back = { store: "orders", key: "orders:1", value: { status: "new" } }
      expect(described_class.assert_tbackend_fact(read_back, store: :orders, value_includes: { "status" => "new" })).to be(true)
    end

    it "raises AssertionFailed naming every mismatch in 0.2's words, joined by '; '" do
      expect do
        described_class.assert_tbackend_fact(fact, store: "invoices", key: "orders:2",
                                                   value_includes: { "status" => "ok", "total" => 1 })
      end.to raise_error(described_class::AssertionFailed) { |e|
        expect(e.message).to eq('expected store "invoices", got "orders"; expected key "orders:2", got "orders:1"; ' \
                                'expected value["status"] to be "ok", got "new"; expected value["total"] to be 1, got nil')
      }
    end

    # As acts-as-tbackend 0.2's own suite asserts it.
    it "names the expected store first, as 0.2 did" do
      fact = { "store" => "orders", "key" => "orders:1", "value" => { "status" => "ok" } }
      error = nil
      begin
        ActsAsTbackend::TestHelpers.assert_tbackend_fact(fact, store: "invoices")
      rescue ActsAsTbackend::TestHelpers::AssertionFailed => e
        error = e
      end
      expect(error.message).to eq('expected store "invoices", got "orders"')
    end

    it "quotes expectations as the caller wrote them, and reads a missing or non-Hash value as nil" do
      expect { described_class.assert_tbackend_fact(fact, store: :users, value_includes: { status: "old" }) }
        .to raise_error(described_class::AssertionFailed,
                        'expected store :users, got "orders"; expected value[:status] to be "old", got "new"')
      expect { described_class.assert_tbackend_fact(fact.merge("value" => "text"), value_includes: { "status" => "new" }) }
        .to raise_error(described_class::AssertionFailed, 'expected value["status"] to be "new", got nil')
    end

    it "works as an included helper" do
      helper = Class.new { include ActsAsTbackend::TestHelpers }.new
      expect { helper.assert_tbackend_fact(fact, store: "x") }.to raise_error(described_class::AssertionFailed, /store/)
      expect(helper.fake_client).to be_a(described_class::FakeClient)
    end
  end
end
