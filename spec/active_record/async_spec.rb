# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_models"

# 0.2 wrote synchronously inside after_commit: a stalled daemon held every request for
# seconds. An async model's commit only enqueues.
RSpec.describe "acts_as_tbackend: async" do
  TbackendSpec::MirrorModels::ADAPTERS.each do |adapter_name|
    context "on #{adapter_name}" do
      let(:adapter) { adapter_name }
      include_context "mirror model spec"

      before { ActsAsTbackend.configure { |c| c.request_timeout = 0.5 } }

      it "commits at once while the daemon is stalled; the fact arrives once it answers again" do
        daemon.control({ "op" => "set", "stall" => "before_exec" })
        seconds, order = timed { models::AsyncOrder.create!(status: "fast") }
        expect(seconds).to be < 0.4 # a synchronous write waits out request_timeout (0.5 s) at least once

        sync_seconds, = timed { models::Order.create!(status: "slow") }
        expect(sync_seconds).to be >= 0.5

        daemon.control({ "op" => "clear" })
        facts = eventually(15) { (found = facts_in("orders_async", polling: true))&.any? && found }
        expect(facts.map { |f| [f[:key], f[:value][:status]] }).to eq([["orders_async:#{order.id}", "fast"]])
      end

      it "follows config.async when the model does not say; async: false keeps a model synchronous" do
        ActsAsTbackend.config.async = true
        daemon.control({ "op" => "set", "stall" => "before_exec" })
        seconds, = timed { models::Order.create!(status: "via config") }
        expect(seconds).to be < 0.4
        sync_seconds, = timed { models::SyncOrder.create!(status: "sync") }
        expect(sync_seconds).to be >= 0.5
        daemon.control({ "op" => "clear" })
        expect(eventually(15) { facts_in("mirror_orders", polling: true)&.any? }).to be(true)
      end

      it "enqueues each committed change exactly once, nothing of a rollback, in order per key" do
        order = models::AsyncOrder.create!(status: "v0")
        models::AsyncOrder.transaction do
          order.update!(status: "v1")
          models::AsyncOrder.transaction(requires_new: true) do
            order.update!(status: "rolled back")
            raise ActiveRecord::Rollback
          end
        end
        models::AsyncOrder.transaction do
          models::AsyncOrder.create!(status: "never")
          raise ActiveRecord::Rollback
        end
        order.update!(status: "v2")
        order.destroy!
        expect(ActsAsTbackend.async_writer.flush(timeout: 10)).to be(true)
        facts = facts_in("orders_async")
        expect(facts.map { |f| [f[:causation].split(":").last, f[:value][:status] || f[:value][:_tombstone]] })
          .to eq([%w[create v0], %w[update v1], %w[update v2], ["destroy", true]])
      end

      it "passes enqueue failures (a full queue) to the failure policy, without raising" do
        ActsAsTbackend.configure do |c|
          c.queue_size = 1
          c.queue_full_policy = "drop"
          c.failure_policy = "warn"
        end
        daemon.control({ "op" => "set", "stall" => "before_exec" })
        out = captured_stderr { Array.new(5) { |i| models::AsyncOrder.create!(status: "n#{i}") } }
        expect(out).to include("(store=orders_async, event_type=create): status=dropped")
        expect(models::AsyncOrder.count).to eq(5)
        # The stalled facts are not worth the writer's exit flush.
        captured_stderr { ActsAsTbackend.shutdown_async_writer(timeout: 0.1) }
      end
    end
  end
end
