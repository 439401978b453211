# frozen_string_literal: true

require "spec_helper"
require "active_job"
require "tmpdir"

# Issue 4: `enqueue_retry` through ActiveJob. The job writes the same fact again (a replay
# if it landed before) and schedules the next run with backoff while the outcome is
# retryable. Issue 10: an outage never spends attempts (28 of 50 facts were given up after
# a one-minute outage), and a fact given up for good is kept with its content.
RSpec.describe ActsAsTbackend::MirrorRetryJob do
  include_context "client spec"
  include_context "active job test queue"

  around do |example|
    Dir.mktmpdir("tbackend-dead-letters") do |dir|
      @dir = dir
      example.run
    end
  end

  let(:dead_letter_file) { File.join(@dir, "dead-letter.jsonl") }

  def kept
    File.file?(dead_letter_file) ? File.readlines(dead_letter_file).map { |line| JSON.parse(line) } : []
  end

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
    expect(enqueued_jobs.first[:args].last(2)).to eq([1, 3])

    TbackendSpec::TestDaemon.with(port: port) do
      ActsAsTbackend.reset!
      perform_enqueued
      expect(ids_by_seq(ActsAsTbackend.client, "specs").values).to eq([one["id"]])
    end
  end

  # The reported case: retry_attempts 10 and the daemon gone for longer than ten runs.
  # Without the fix the fact was dead-lettered after run 10 (status=circuit_open) and gone.
  it "never spends attempts in an outage: a stall and a kill longer than retry_attempts runs lose nothing" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d, request_timeout: 0.2, retry_attempts: 10, retry_base_backoff: 0.5, retry_max_backoff: 4.0,
                    breaker_cooldown: 0.05, dead_letter_path: dead_letter_file)
      one = fact(unique)
      described_class.enqueue_fact(one)
      d.control({ "op" => "set", "stall" => "before_exec" })
      statuses = Array.new(3) { perform_next_job }
      d.kill!
      statuses += Array.new(27) { perform_next_job }
      expect(statuses.uniq).to include("timeout_unknown", "unavailable", "circuit_open")
      expect(statuses - %w[timeout_unknown unavailable circuit_open]).to eq([])

      job = enqueued_jobs.first
      expect(job[:args].last(2)).to eq([1, 30]) # still attempt 1, the 30th run of the outage
      # Capped exponential backoff with full jitter: never beyond retry_max_backoff.
      expect(job[:at] - Time.now.to_f).to be <= 4.0
      expect(active_job_log.string).not_to include("dead letter")
      expect(kept).to eq([])

      d.restart
      ActsAsTbackend.reset!
      perform_enqueued
      expect(ids_by_seq(ActsAsTbackend.client, "specs").values).to eq([one["id"]])
    end
  end

  it "backs off the n-th run of a kind exponentially from retry_base_backoff, capped at retry_max_backoff" do
    config = config_with(retry_base_backoff: 0.5, retry_max_backoff: 4.0)
    draws = (1..8).to_h { |n| [n, Array.new(200) { described_class.backoff(n, config) }] }
    draws.each { |n, waits| expect(waits).to all(be_between(0, [0.5 * (2**(n - 1)), 4.0].min)) }
    expect(draws[8].max).to be > 3.0 # the cap is reached, and jitter spreads below it
    expect(draws[8].min).to be < 1.0
    expect(described_class.backoff(10_000, config)).to be <= 4.0
  end

  it "gives up a non-outage retryable failure after retry_attempts and keeps it with its content" do
    TbackendSpec::TestDaemon.with(data_dir: File.join(@dir, "daemon")) do |d|
      client_for(d, retry_attempts: 3, retry_base_backoff: 0.01, dead_letter_path: dead_letter_file)
      d.control({ "op" => "set", "fail_durable_sync" => true })
      one = fact(unique, value: { "card" => "4111-secret" })
      described_class.enqueue_fact(one, durability: "durable")
      statuses = []
      statuses << perform_next_job until enqueued_jobs.empty?
      expect(statuses.size).to eq(3)

      lines = active_job_log.string.lines.grep(/dead letter/)
      expect(lines.size).to eq(1)
      expect(lines.first).to include("fact_id=#{one['id']}", "store=specs", "attempts=3", "kept in #{dead_letter_file}")
      expect(active_job_log.string).not_to include("4111-secret")
      expect(kept.size).to eq(1)
      expect(kept.first).to include("id" => one["id"], "store" => "specs", "attempts" => 3, "reason" => "exhausted",
                                    "durability" => "durable", "via" => "active_job", "fact" => one)
    end
  end

  it "keeps the fact as sent under a store_prefix, and a replay sends it to that same store" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d, dead_letter_path: dead_letter_file, store_prefix: "test_")
      id = unique
      ActsAsTbackend.client.write_fact_once(fact(id, value: { "v" => 1 }))
      described_class.enqueue_fact(fact(id, value: { "v" => 2 }))
      perform_enqueued
      expect(kept.map { |r| [r["store"], r.dig("fact", "store")] }).to eq([%w[test_specs test_specs]])

      d.kill!
      d.restart
      outcomes = ActsAsTbackend::DeadLetters.replay
      expect(outcomes.map { |_, result| result[:status] }).to eq(["committed_acked"])
      expect(kept).to eq([])
      # Read through a client of its own: this example is about where the replay writes,
      # and the module client's lane still points at the daemon killed above.
      reader = ActsAsTbackend::Client.new(ActsAsTbackend.config)
      read = reader.latest_for(store: "specs", key: "key:#{id}")
      reader.shutdown
      expect(read.dig(:response, :fact, :value)).to eq({ v: 2 }), read.inspect
    end
  end

  it "keeps a terminal outcome (an id conflict) with its content after one attempt, and publishes it" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d, dead_letter_path: dead_letter_file)
      id = unique
      ActsAsTbackend.client.write_fact_once(fact(id, value: { "v" => 1 }))
      second = fact(id, value: { "v" => 2 })
      events = []
      subscriber = ActiveSupport::Notifications.subscribe("dead_letter.acts_as_tbackend") { |*, payload| events << payload }
      described_class.enqueue_fact(second)
      perform_enqueued
      ActiveSupport::Notifications.unsubscribe(subscriber)

      expect(active_job_log.string.lines.grep(/dead letter/).first).to include("status=duplicate_fact_id_conflict", "attempts=1")
      expect(kept.map { |r| r.values_at("id", "status", "reason", "attempts", "fact") })
        .to eq([[id, "duplicate_fact_id_conflict", "conflict", 1, second]])
      expect(events).to eq([{ fact_id: id, store: "specs", attempts: 1, status: "duplicate_fact_id_conflict",
                              via: "active_job", kept: dead_letter_file }])
    end
  end
end
