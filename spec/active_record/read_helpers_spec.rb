# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_models"

# The 0.2 read helpers queried key "42" while the mirror wrote "orders:42": they never found
# anything. They now read the key the mirror writes.
RSpec.describe "acts_as_tbackend: read helpers" do
  TbackendSpec::MirrorModels::ADAPTERS.each do |adapter_name|
    context "on #{adapter_name}" do
      let(:adapter) { adapter_name }
      include_context "mirror model spec"

      it "tbackend_history(id): the facts the mirror wrote, oldest first, as an Array of fact Hashes" do
        order = models::Order.create!(status: "a")
        order.update!(status: "b")
        order.update!(status: "c")
        models::Order.create!(status: "other")
        history = models::Order.tbackend_history(order.id)
        expect(history).to all(be_a(Hash))
        expect(history.map { |f| f[:value][:status] }).to eq(%w[a b c])
        expect(history.map { |f| f[:key] }.uniq).to eq(["mirror_orders:#{order.id}"])
        expect(order.tbackend_history).to eq(history)
        expect(models::Order.tbackend_history(order)).to eq(history)
      end

      it "tbackend_latest_for(id): the newest fact, or as of a time" do
        order = models::Order.create!(status: "a")
        between = Time.now
        sleep 0.01 # the daemon's transaction_time must move past `between`
        order.update!(status: "b")
        expect(models::Order.tbackend_latest_for(order.id)[:value][:status]).to eq("b")
        expect(models::Order.tbackend_latest_for(order.id, as_of: between)[:value][:status]).to eq("a")
        expect(order.tbackend_latest[:value][:status]).to eq("b")
        order.destroy!
        expect(models::Order.tbackend_latest_for(order.id)[:value]).to eq(_tombstone: true)
      end

      it "answer [] and nil for an id that was never mirrored" do
        expect(models::Order.tbackend_history(404)).to eq([])
        expect(models::Order.tbackend_latest_for(404)).to be_nil
      end

      it "read a custom key: by id while the row exists, by the record itself after a destroy" do
        widget = models::Widget.create!(sku: "A-1")
        widget.update!(sku: "A-1", mirrored: true, updated_at: Time.now + 1)
        expect(models::Widget.tbackend_history(widget.id).map { |f| f[:key] }).to eq(%w[widget:A-1 widget:A-1])
        expect(models::Widget.tbackend_latest_for(widget.id)[:key]).to eq("widget:A-1")
        expect(widget.tbackend_key).to eq("widget:A-1")
        widget.destroy!
        expect(models::Widget.tbackend_history(widget.id)).to eq([])
        expect(models::Widget.tbackend_history(widget).size).to eq(3)
        keyed = models::KeyedWidget.create!(sku: "B")
        expect(keyed.tbackend_history.map { |f| f[:key] }).to eq(["sku/B"])
      end

      it "never raise: a down daemon, even in strict mode, reads as nothing" do
        order = models::Order.create!(status: "a")
        ActsAsTbackend.configure { |c| c.strict = true }
        daemon.kill!
        expect(models::Order.tbackend_history(order.id)).to eq([])
        expect(models::Order.tbackend_latest_for(order.id)).to be_nil
        expect(order.tbackend_history).to eq([])
      end

      it "read nothing while the connector is disabled" do
        order = models::Order.create!(status: "a")
        ActsAsTbackend.config.enabled = false
        expect(models::Order.tbackend_history(order.id)).to eq([])
        expect(order.tbackend_latest).to be_nil
        ActsAsTbackend.config.enabled = true
        expect(models::Order.tbackend_history(order.id).size).to eq(1)
      end

      it "tbackend_fact builds what the macro writes; mirror_tbackend writes it now" do
        order = models::Order.create!(status: "a")
        fact = order.tbackend_fact(event_type: "order.audited")
        expect(fact).to include("key" => "mirror_orders:#{order.id}", "store" => "mirror_orders")
        expect(order.mirror_tbackend(event_type: "order.audited")).to include(ok: true, status: "committed_acked")
        expect(order.tbackend_history.map { |f| f[:causation] })
          .to eq(["mirror_orders:#{order.id}:create", "mirror_orders:#{order.id}:order.audited"])
      end
    end
  end
end
