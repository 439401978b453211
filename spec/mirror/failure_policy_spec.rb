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

  it "enqueue_retry: accepted, and like ignore" do
    expect(captured_stderr { described_class.apply(failure, policy: :enqueue_retry, context: context) }).to eq("")
  end

  it "rejects an unknown policy with an ArgumentError" do
    expect { described_class.apply(failure, policy: :loud) }.to raise_error(ArgumentError, /failure_policy/)
  end
end
