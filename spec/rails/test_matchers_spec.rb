# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/extension"
require "acts_as_tbackend/rspec"
require "acts_as_tbackend/minitest"
require "minitest"

# Issue 4, test helpers for apps: RSpec matchers and minitest assertions that read like
# sentences, and a way to run a test with the daemon down or slow — on a real model,
# against the real test daemon.
RSpec.describe "Test helpers for apps" do
  include_context "client spec"
  include ActsAsTbackend::RSpec::Matchers
  with_daemon

  before do
    TbackendSpec::Database.connect(:sqlite)
    ActiveRecord::Schema.verbose = false
    ActiveRecord::Schema.define do
      create_table(:widgets, force: true) do |t|
        t.string :status
        t.timestamps
      end
    end
    stub_const("Widget", Class.new(ActiveRecord::Base) { acts_as_tbackend store: "widgets" })
    client_for(daemon)
  end

  describe "mirror_to_tbackend" do
    it "matches a committed change by store, event type and value" do
      expect { Widget.create!(status: "accepted") }
        .to mirror_to_tbackend(store: "widgets", event_type: "create").with_value(status: "accepted")
    end

    it "does not match a rolled-back change, or another store" do
      expect { Widget.transaction { Widget.create!(status: "x") && raise(ActiveRecord::Rollback) } }.not_to mirror_to_tbackend
      expect { Widget.create!(status: "x") }.not_to mirror_to_tbackend(store: "orders")
    end

    it "counts with times(n) and says what was mirrored when it fails" do
      expect { 2.times { Widget.create!(status: "n") } }.to mirror_to_tbackend(store: "widgets").times(2)
      expect do
        expect { Widget.create!(status: "new") }.to mirror_to_tbackend(store: "widgets").with_value(status: "paid")
      end.to raise_error(RSpec::Expectations::ExpectationNotMetError,
                         /\(store: "widgets", value: \{:status=>"paid"\}\), but mirrored: widgets widgets:\d+ create/)
    end
  end

  describe "minitest assertions" do
    let(:test_case) do
      Class.new do
        include Minitest::Assertions
        include ActsAsTbackend::Minitest::Assertions
        attr_writer :assertions

        def assertions = @assertions ||= 0
      end.new
    end

    it "assert_mirrored / refute_mirrored pass and fail like assertions" do
      widget = nil
      found = test_case.assert_mirrored(store: "widgets", value: { status: "new" }) { widget = Widget.create!(status: "new") }
      expect(found.map(&:key)).to eq(["widgets:#{widget.id}"])
      test_case.refute_mirrored(store: "widgets") do
        Widget.transaction { widget.update!(status: "x") && raise(ActiveRecord::Rollback) }
      end

      expect { test_case.assert_mirrored(store: "widgets") { nil } }
        .to raise_error(Minitest::Assertion, /but nothing was mirrored/)
      expect { test_case.refute_mirrored(store: "widgets") { widget.update!(status: "y") } }
        .to raise_error(Minitest::Assertion, /but mirrored: widgets widgets:#{widget.id} update/)
    end
  end

  describe "a daemon that is down or slow" do
    it "with_tbackend_down: the save succeeds and the mirror reports unavailable" do
      mirrored = with_tbackend_down do
        ActsAsTbackend::Testing.capture_mirrors { expect(Widget.create!(status: "offline")).to be_persisted }
      end
      expect(mirrored.map { |m| m.result[:status] }).to eq(["unavailable"])
      expect(ActsAsTbackend.client).not_to be_a(ActsAsTbackend::Testing::OutageClient)
    end

    it "with_tbackend_slow: calls take the delay, then answer" do
      with_tbackend_slow(delay: 0.2) do
        elapsed, result = timed { ActsAsTbackend.client.write_fact_once(fact(unique)) }
        expect(elapsed).to be >= 0.2
        expect(result[:status]).to eq("committed_acked")
      end
    end
  end
end
