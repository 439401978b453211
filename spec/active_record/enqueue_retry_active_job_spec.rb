# frozen_string_literal: true

require "spec_helper"
require "active_job"
require_relative "support/mirror_models"

# `enqueue_retry` with `retry_backend: "active_job"`: a change whose write failed becomes a
# MirrorRetryJob, which writes the same fact once the daemon is back.
RSpec.describe "acts_as_tbackend: enqueue_retry through ActiveJob" do
  include_context "mirror model spec"
  include_context "active job test queue"
  let(:adapter) { :sqlite }

  it "enqueues the failed change's fact, and the job writes it after the daemon is back" do
    ActsAsTbackend.configure do |c|
      c.failure_policy = "enqueue_retry"
      c.retry_backend = "active_job"
    end
    daemon.kill!
    order = models::DurableOrder.create!(status: "retry me")
    jobs = ActiveJob::Base.queue_adapter.enqueued_jobs
    expect(jobs.map { |j| j[:job] }).to eq([ActsAsTbackend::MirrorRetryJob])
    expect(jobs.first[:args][1]).to eq("durable")

    daemon.restart
    ActsAsTbackend.reset!
    perform_enqueued
    facts = facts_in("orders_durable")
    expect(facts.map { |f| [f[:key], f[:value][:status]] }).to eq([["orders_durable:#{order.id}", "retry me"]])
  end

  it "enqueues nothing for a failure that cannot succeed later, or a change that never became a fact" do
    ActsAsTbackend.configure do |c|
      c.failure_policy = "enqueue_retry"
      c.retry_backend = "active_job"
    end
    fact = models::Order.new(id: 1, status: "x").tbackend_fact(event_type: "create")
    %w[duplicate_fact_id_conflict error].each do |status|
      result = { ok: false, status: status, committed: false, retryable: false, response: nil, error: "no" }
      ActsAsTbackend::FailurePolicy.apply(result, context: { store: "mirror_orders", event_type: "create" }, fact: fact)
    end
    models::BrokenWidget.create!(sku: "x")
    expect(ActiveJob::Base.queue_adapter.enqueued_jobs).to eq([])
  end
end
