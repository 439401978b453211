# frozen_string_literal: true

require "spec_helper"
require "active_job"

# Issue 4: `enqueue_retry` through ActiveJob. The job writes the same fact again (a replay
# if it landed before), schedules the next attempt with backoff while the outcome is
# retryable, and logs one dead letter when the attempts run out.
RSpec.describe ActsAsTbackend::MirrorRetryJob do
  include_context "client spec"
  include_context "active job test queue"

  it "writes the fact when the daemon answers" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d)
      one = fact(unique)
      described_class.enqueue_fact(one)
      perform_enqueued
      expect(ids_by_seq(ActsAsTbackend.client, "specs").values).to eq([one["id"]])
    end
  end

  it "reschedules with growing backoff while the daemon is down, then delivers once it is back" do
    port = closed_port
    client_for(Struct.new(:port).new(port), retry_base_backoff: 1.0, retry_max_backoff: 8.0, breaker_threshold: 0)
    one = fact(unique)
    described_class.enqueue_fact(one, durability: "durable")
    waits = Array.new(3) do
      perform_next_job
      next_job = enqueued_jobs.first
      expect(next_job[:args].first(2)).to eq([JSON.generate(one), "durable"])
      next_job[:at] - Time.now.to_f
    end
    expect(waits).to all(be <= 8.0)
    expect(enqueued_jobs.first[:args].last).to eq(4)

    TbackendSpec::TestDaemon.with(port: port) do
      ActsAsTbackend.reset!
      perform_enqueued
      expect(ids_by_seq(ActsAsTbackend.client, "specs").values).to eq([one["id"]])
    end
  end

  it "dead-letters once after retry_attempts, with ids and status only" do
    client_for(Struct.new(:port).new(closed_port), retry_attempts: 3, retry_base_backoff: 0.01)
    one = fact(unique, value: { "card" => "4111-secret" })
    described_class.enqueue_fact(one)
    perform_enqueued
    lines = active_job_log.string.lines.grep(/dead letter/)
    expect(lines.size).to eq(1)
    expect(lines.first).to include("fact_id=#{one['id']}", "store=specs", "attempts=3", "status=unavailable")
    expect(active_job_log.string).not_to include("4111-secret")
  end

  it "does not retry a terminal outcome (an id conflict)" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d)
      id = unique
      ActsAsTbackend.client.write_fact_once(fact(id, value: { "v" => 1 }))
      described_class.enqueue_fact(fact(id, value: { "v" => 2 }))
      perform_enqueued
      expect(active_job_log.string.lines.grep(/dead letter/).first).to include("status=duplicate_fact_id_conflict", "attempts=1")
    end
  end
end
