# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_models"

# A failed mirror never breaks the request path, except `raise_in_test` in a test
# environment — which 0.2 swallowed in the macro's rescue-all.
RSpec.describe "acts_as_tbackend: failures and failure policies" do
  TbackendSpec::MirrorModels::ADAPTERS.each do |adapter_name|
    context "on #{adapter_name}" do
      let(:adapter) { adapter_name }
      include_context "mirror model spec"

      around do |example|
        with_env("RAILS_ENV" => "production", "RACK_ENV" => nil, "TBACKEND_FORCE_TEST_MODE" => nil) { example.run }
      end

      describe "raise_in_test" do
        before { ActsAsTbackend.config.failure_policy = "raise_in_test" }

        %w[RAILS_ENV RACK_ENV TBACKEND_FORCE_TEST_MODE].each do |variable|
          it "raises MirrorFailure from the commit when #{variable} marks a test run; the row stays committed" do
            daemon.kill!
            with_env("RAILS_ENV" => nil, variable => variable == "TBACKEND_FORCE_TEST_MODE" ? "1" : "test") do
              expect { models::Order.create!(status: "new") }.to raise_error(ActsAsTbackend::MirrorFailure) { |e|
                expect(e.result).to include(ok: false, status: "unavailable")
                expect(e.message).to include("store=mirror_orders, event_type=create", "status=unavailable")
              }
            end
            expect(models::Order.pluck(:status)).to eq(["new"])
          end
        end

        it "raises for a change that could not become a fact (a raising if:), after the commit" do
          with_env("RAILS_ENV" => "test") do
            expect { models::BrokenWidget.create!(sku: "x") }.to raise_error(ActsAsTbackend::MirrorFailure, /condition bug/)
          end
          expect(models::BrokenWidget.count).to eq(1)
        end

        it "raises nothing outside a test environment" do
          daemon.kill!
          order = models::Order.create!(status: "new")
          expect(order.update!(status: "paid")).to be(true)
          expect(order.destroy!).to be_destroyed
          expect(models::BrokenWidget.create!(sku: "x")).to be_persisted
        end

        it "raises nothing when the write succeeds" do
          with_env("RAILS_ENV" => "test") { models::Order.create!(status: "fine") }
          expect(event_types("mirror_orders")).to eq(%w[create])
        end
      end

      it "warn: one line per failed change on $stderr, and the app's change stands" do
        ActsAsTbackend.config.failure_policy = "warn"
        daemon.kill!
        out = captured_stderr do
          order = models::Order.create!(status: "new")
          order.destroy!
        end
        lines = out.lines
        expect(lines.size).to eq(2)
        expect(lines[0]).to start_with(
          '[ActsAsTbackend] mirror failure (store=mirror_orders, event_type=create): status=unavailable error="'
        )
        expect(lines[1]).to start_with("[ActsAsTbackend] mirror failure (store=mirror_orders, event_type=destroy): status=")
      end

      it "warn: reports a change that could not become a fact" do
        ActsAsTbackend.config.failure_policy = "warn"
        out = captured_stderr { models::BrokenWidget.create!(sku: "x") }
        expect(out).to include("(store=widgets_broken, event_type=create): status=error", "condition bug")
      end

      %w[ignore warn enqueue_retry raise_in_test].each do |policy|
        it "with the daemon down, strict mode and policy #{policy}, nothing raises in the request path" do
          ActsAsTbackend.configure do |c|
            c.failure_policy = policy
            c.strict = true
          end
          daemon.kill!
          captured_stderr do
            orders = Array.new(8) { |i| models::Order.create!(status: "n#{i}") }
            models::Order.transaction { orders.each { |o| o.update!(status: "u") } }
            orders.each(&:destroy!)
            models::Note.create!(body: "n")
            # enqueue_retry queued the failed facts: not worth the writer's exit flush here.
            ActsAsTbackend.shutdown_async_writer(timeout: 0.1)
          end
          expect(models::Order.count).to eq(0)
          expect(models::Note.count).to eq(1)
        end
      end

      it "enqueue_retry: a change whose write failed reaches the daemon later, through the async writer" do
        ActsAsTbackend.configure do |c|
          c.failure_policy = "enqueue_retry"
          c.retry_max_backoff = 0.2 # the writer's retries, kept short for the spec
        end
        daemon.kill!
        order = models::Order.create!(status: "retried")
        daemon.restart
        facts = eventually(15) { (found = facts_in("mirror_orders", polling: true))&.any? && found }
        expect(facts.map { |f| [f[:key], f[:value][:status]] }).to eq([["mirror_orders:#{order.id}", "retried"]])
      end

      it "recovers by itself when the daemon comes back (same port, no reset!)" do
        ActsAsTbackend.configure { |c| c.breaker_cooldown = 0.5 } # the failures open the breaker; keep its pause short
        daemon.kill!
        models::Order.create!(status: "lost")
        daemon.restart
        landed = eventually(10) do
          models::Order.create!(status: "back")
          facts_in("mirror_orders", polling: true)&.any?
        end
        expect(landed).to be(true)
        expect(facts_in("mirror_orders").map { |f| f[:value][:status] }.uniq).to eq(["back"])
      end
    end
  end
end
