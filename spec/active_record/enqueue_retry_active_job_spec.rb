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

  # Issue 10, as reported: 50 changes, the daemon down for longer than retry_attempts runs
  # of every job (28 of 50 were given up with status=circuit_open). Now none is.
  it "loses none of 50 changes to an outage that outlasts retry_attempts runs of each job" do
    ActsAsTbackend.configure do |c|
      c.failure_policy = "enqueue_retry"
      c.retry_backend = "active_job"
      c.dead_letter_path = File.join(Dir.tmpdir, "never-#{SecureRandom.hex(4)}.jsonl")
    end
    daemon.kill!
    orders = Array.new(50) { |i| models::DurableOrder.create!(status: "outage #{i}") }
    expect(enqueued_jobs.size).to eq(50)
    statuses = []
    (ActsAsTbackend.config.retry_attempts + 2).times do
      enqueued_jobs.size.times { statuses << perform_next_job }
    end
    expect(statuses.size).to eq(50 * 12)
    expect(statuses.uniq - ActsAsTbackend::Client::TRANSPORT_STATUSES).to eq([])
    expect(statuses).to include("circuit_open")
    expect(enqueued_jobs.size).to eq(50)
    expect(active_job_log.string).not_to include("dead letter")
    expect(File.exist?(ActsAsTbackend.config.dead_letter_path)).to be(false)

    daemon.restart
    ActsAsTbackend.reset!
    perform_enqueued
    keys = facts_in("orders_durable").map { |f| f[:key] }
    expect(keys).to match_array(orders.map { |o| "orders_durable:#{o.id}" })
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
