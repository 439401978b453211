# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_helpers"

RSpec.describe ActsAsTbackend::FailurePolicy do
  include TbackendSpec::MirrorHelpers

  let(:failure) do
    { ok: false, status: "unavailable", committed: nil, retryable: true, response: nil, error: "boom" }
  end
  let(:context) { { store: "orders", event_type: "create" } }

  around { |example| with_env("RAILS_ENV" => nil, "RACK_ENV" => nil, "TBACKEND_FORCE_TEST_MODE" => nil) { example.run } }

  it "returns the same result for every policy" do
    %w[ignore warn raise_in_test enqueue_retry].each do |policy|
      captured_stderr { expect(described_class.apply(failure, policy: policy, context: context)).to equal(failure) }
    end
  end

  it "ignore: says nothing" do
    expect(captured_stderr { described_class.apply(failure, policy: :ignore, context: context) }).to eq("")
  end

  it "warn: writes exactly the 0.2 line to $stderr" do
    out = captured_stderr { described_class.apply(failure, policy: :warn, context: context) }
    expect(out).to eq(
      %([ActsAsTbackend] mirror failure (store=orders, event_type=create): status=unavailable error="boom"\n)
    )
  end

  it "warn: still writes under `ruby -W0` (it does not go through Kernel#warn)" do
    verbose = $VERBOSE
    $VERBOSE = nil
    expect(captured_stderr { described_class.apply(failure, policy: "warn", context: context) }).to include("mirror failure")
  ensure
    $VERBOSE = verbose
  end

  it "warn: shows a nil error as nil" do
    out = captured_stderr { described_class.apply(failure.merge(error: nil), policy: "warn", context: context) }
    expect(out).to end_with("status=unavailable error=nil\n")
  end

  it "uses config.failure_policy by default" do
    ActsAsTbackend.config.failure_policy = "warn"
    expect(captured_stderr { described_class.apply(failure, context: context) }).to include("status=unavailable")
  end

  it "treats ok results and `disabled` as success: no line, no raise" do
    with_env("RAILS_ENV" => "test") do
      [{ ok: true, status: "committed_acked" }, { ok: true, status: "idempotent_replay" },
       { ok: true, status: "disabled" }, { ok: false, status: "disabled" }].each do |result|
        expect(captured_stderr { described_class.apply(result, policy: :warn, context: context) }).to eq("")
        expect(described_class.apply(result, policy: :raise_in_test, context: context)).to equal(result)
      end
    end
  end

  %w[RAILS_ENV RACK_ENV].each do |variable|
    it "raise_in_test: raises MirrorFailure with the result when #{variable}=test" do
      with_env(variable => "test") do
        expect { described_class.apply(failure, policy: :raise_in_test, context: context) }
          .to raise_error(ActsAsTbackend::MirrorFailure) { |e|
            expect(e.result).to equal(failure)
            expect(e.message).to include("store=orders, event_type=create", "status=unavailable")
            expect(e.retryable?).to be(true)
            expect(e).to be_a(ActsAsTbackend::Error)
          }
      end
    end
  end

  it "raise_in_test: raises when TBACKEND_FORCE_TEST_MODE=1" do
    with_env("TBACKEND_FORCE_TEST_MODE" => "1", "RAILS_ENV" => "production") do
      expect { described_class.apply(failure, policy: :raise_in_test) }.to raise_error(ActsAsTbackend::MirrorFailure)
    end
  end

  it "raise_in_test: never raises outside a test environment" do
    with_env("RAILS_ENV" => "production", "RACK_ENV" => "development", "TBACKEND_FORCE_TEST_MODE" => "0") do
      expect(described_class.apply(failure, policy: :raise_in_test, context: context)).to equal(failure)
    end
  end

  describe "enqueue_retry (0.2 accepted it and did nothing)" do
    include TbackendSpec::ClientHelpers

    around do |example|
      TbackendSpec::TestDaemon.with do |d|
        @daemon = d
        client_for(d)
        example.run
      ensure
        ActsAsTbackend.reset!
      end
    end

    let(:fact) { ActsAsTbackend::Fact.build(id: unique("retry"), store: "orders", key: "orders:1", value: { "a" => 1 }) }

    def stored_ids
      ActsAsTbackend.client.facts_by_seq(store: "orders")[:response][:facts].map { |f| f[:id] }
    end

    %w[unavailable timeout_unknown circuit_open rejected_before_commit].each do |status|
      it "hands the fact of a #{status} failure to the async writer, which delivers it" do
        result = failure.merge(status: status)
        out = captured_stderr { described_class.apply(result, policy: :enqueue_retry, context: context, fact: fact) }
        expect(out).to eq("")
        expect(eventually(10) { stored_ids == [fact["id"]] }).to be(true)
        expect(ActsAsTbackend.async_writer.stats[:enqueued]).to eq(1)
      end
    end

    it "retries nothing that cannot succeed later, or without a fact" do
      %w[duplicate_fact_id_conflict error config_error].each do |status|
        result = failure.merge(status: status, retryable: false)
        described_class.apply(result, policy: :enqueue_retry, context: context, fact: fact)
      end
      described_class.apply(failure, policy: :enqueue_retry, context: context)
      expect(ActsAsTbackend.async_writer.stats[:enqueued]).to eq(0)
      expect(stored_ids).to eq([])
    end

    it "reports an enqueue that fails as one line, without raising" do
      bad = fact.merge("value" => { "x" => "\xff".b.force_encoding("UTF-8") })
      out = captured_stderr { described_class.apply(failure, policy: :enqueue_retry, context: context, fact: bad) }
      expect(out).to start_with("[ActsAsTbackend] enqueue_retry failed (store=orders, event_type=create): status=error")
    end
  end

  it "rejects an unknown policy with an ArgumentError" do
    expect { described_class.apply(failure, policy: :loud) }.to raise_error(ArgumentError, /failure_policy/)
  end
end
