# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 10: a fact given up for good stays recoverable, kept with its content.
# MirrorRetryJob and the native async writer keep theirs in one file beside the spool, in
# one format; an app with the tbackend_dead_letters table keeps MirrorRetryJob's there.
# `rake tbackend:dead_letters` lists both, `rake tbackend:dead_letters:replay` sends them
# again and removes only what the daemon stored.
RSpec.describe "rake tbackend:dead_letters" do
  include TbackendSpec::ClientHelpers
  include_context "rails app"
  include_context "active job test queue"

  around do |example|
    Dir.mktmpdir("tbackend-dead") do |dir|
      @spool = File.join(dir, "spool")
      TbackendSpec::TestDaemon.with do |d|
        @daemon = d
        example.run
      end
    ensure
      ActsAsTbackend.reset!
    end
  end

  attr_reader :spool, :daemon

  def rake(task, env = {})
    TbackendSpec::RailsApp.rake(app, task, env: { "TBACKEND_TEST_PORT" => daemon.port.to_s }.merge(env))
  end

  def listed(output)
    output.lines.grep(/\A\{/).map { |line| JSON.parse(line) }
  end

  def stored(store)
    facts = ActsAsTbackend.client.facts_by_seq(store: store)[:response][:facts]
    facts.to_h { |f| [f[:id], f[:value]] }
  end

  # The daemon holds v1 of `id`; the job (or the native writer) then sends v2: a conflict.
  def conflict_through_job(id, store)
    ActsAsTbackend.client.write_fact_once(fact(id, store: store, value: { "v" => 1 }))
    ActsAsTbackend::MirrorRetryJob.enqueue_fact(fact(id, store: store, value: { "v" => 2 }))
    perform_enqueued
  end

  it "lists and replays the job's and the native writer's dead letters from the one file beside the spool" do
    client_for(daemon, spool_path: spool)
    conflict_through_job("job-conflict", "dead_jobs")
    ActsAsTbackend.client.write_fact_once(fact("native-conflict", store: "dead_native", value: { "v" => 1 }))
    writer = ActsAsTbackend.async_writer
    writer.enqueue(fact("native-conflict", store: "dead_native", value: { "v" => 2 }))
    expect(writer.flush(timeout: 10)).to be(true)
    expect(writer.stats[:conflicts]).to eq(1)

    file = File.join(spool, "dead-letter.jsonl")
    records = File.readlines(file).map { |line| JSON.parse(line) }
    # One format: both carry the fact itself.
    expect(records.map { |r| [r["id"], r["status"], r["reason"], r.dig("fact", "value")] }).to match_array(
      [["job-conflict", "duplicate_fact_id_conflict", "conflict", { "v" => 2 }],
       ["native-conflict", "duplicate_fact_id_conflict", "conflict", { "v" => 2 }]]
    )

    env = { "TBACKEND_SPOOL_PATH" => spool }
    out, status = rake("tbackend:dead_letters", env)
    expect(status).to be_success, out
    expect(listed(out).map { |r| r.values_at("id", "store", "status", "attempts", "source") }).to match_array(
      [["job-conflict", "dead_jobs", "duplicate_fact_id_conflict", 1, file],
       ["native-conflict", "dead_native", "duplicate_fact_id_conflict", 1, file]]
    )
    expect(listed(out).map { |r| Time.iso8601(r["at"]) }).to all(be_within(120).of(Time.now))
    expect(out).not_to include("\"v\"") # the list never shows values

    # Still conflicting: nothing is removed, the task says so.
    out, status = rake("tbackend:dead_letters:replay", env)
    expect(status).not_to be_success
    expect(listed(out).map { |r| r["replay"] }).to eq(%w[duplicate_fact_id_conflict] * 2)
    expect(File.readlines(file).size).to eq(2)

    # Fixed: the ledger no longer holds the conflicting v1 (here: a fresh daemon).
    daemon.kill!
    daemon.restart
    out, status = rake("tbackend:dead_letters:replay", env)
    expect(status).to be_success, out
    expect(listed(out).map { |r| r["replay"] }).to eq(%w[committed_acked] * 2)
    expect(File.read(file)).to eq("")
    out, = rake("tbackend:dead_letters", env)
    expect(listed(out)).to eq([])
    ActsAsTbackend.reset!
    expect(stored("dead_jobs")).to eq("job-conflict" => { v: 2 })
    expect(stored("dead_native")).to eq("native-conflict" => { v: 2 })
  end

  TbackendSpec::Database::ADAPTERS.each do |adapter|
    it "keeps the job's dead letters in the app's tbackend_dead_letters table when it has one (#{adapter})" do
      db = adapter == :postgresql ? { "DATABASE_URL" => TbackendSpec::Database.postgres_url("rails_dead_letters") } : {}
      in_app(<<~RUBY, env: db)
        require "rails/generators"
        Rails.application.load_generators
        Rails::Generators.invoke("acts_as_tbackend:dead_letters", [], destination_root: Rails.root.to_s, behavior: :invoke)
      RUBY
      expect(Dir[File.join(app, "db/migrate/*_create_tbackend_dead_letters.rb")].size).to eq(1)
      client_for(daemon)
      ActsAsTbackend.client.write_fact_once(fact("table-conflict", store: "dead_table", value: { "v" => 1 }))
      env = db.merge("TBACKEND_TEST_PORT" => daemon.port.to_s, "TBACKEND_DEAD_LETTER_PATH" => File.join(app, "unused.jsonl"))
      out = in_app(<<~RUBY, env: env)
        ActiveRecord::Migration.verbose = false
        ActiveRecord::Base.connection.drop_table(:tbackend_dead_letters, if_exists: true)
        load Dir["db/migrate/*_create_tbackend_dead_letters.rb"].first
        CreateTbackendDeadLetters.new.migrate(:up)
        fact = ActsAsTbackend::Fact.build(id: "table-conflict", store: "dead_table", key: "k", value: { "v" => 2 })
        ActsAsTbackend::MirrorRetryJob.perform_now(JSON.generate(fact))
        rows = ActsAsTbackend::DeadLetterRecord.all.to_a
        raise "expected one row, got \#{rows.size}" unless rows.size == 1

        row = rows.first
        puts JSON.generate([row.fact_id, row.store, row.status, row.reason, row.attempts, JSON.parse(row.fact)["value"]])
      RUBY
      expect(JSON.parse(out.lines.last)).to eq(["table-conflict", "dead_table", "duplicate_fact_id_conflict", "conflict", 1,
                                                { "v" => 2 }])
      expect(File.exist?(File.join(app, "unused.jsonl"))).to be(false)

      out, status = rake("tbackend:dead_letters", db)
      expect(status).to be_success, out
      expect(listed(out).map { |r| r.values_at("id", "source") }).to eq([%w[table-conflict tbackend_dead_letters]])

      daemon.kill!
      daemon.restart
      out, status = rake("tbackend:dead_letters:replay", db)
      expect(status).to be_success, out
      out, = rake("tbackend:dead_letters", db)
      expect(listed(out)).to eq([])
      ActsAsTbackend.reset!
      expect(stored("dead_table")).to eq("table-conflict" => { v: 2 })
    end
  end
end
