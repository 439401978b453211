# frozen_string_literal: true

require "spec_helper"
require "time"
require "tmpdir"

# Issue 4: `rake tbackend:spool:status` and `rake tbackend:spool:flush`. A process enqueues
# with the daemon down and dies without flushing; status shows its orphaned segment, flush
# delivers every fact once the daemon is up, and the spool is empty afterwards.
# Issue 12: status reports facts (pending per segment, delivered, dead, the oldest pending
# fact's age), so an operator can tell whether anything waits while live writers hold
# segments full of delivered facts.
RSpec.describe "rake tbackend:spool" do
  include TbackendSpec::ClientHelpers

  include_context "rails app"

  around do |example|
    Dir.mktmpdir("tbackend-spool") do |dir|
      @spool = dir
      example.run
    end
  ensure
    ActsAsTbackend.reset!
  end

  attr_reader :spool

  def rake(task, port)
    TbackendSpec::RailsApp.rake(app, task, env: { "TBACKEND_SPOOL_PATH" => spool, "TBACKEND_TEST_PORT" => port.to_s })
  end

  def json(output)
    JSON.parse(output[output.index("{")..])
  end

  def status_report(port)
    out, status = rake("tbackend:spool:status", port)
    expect(status).to be_success, out
    json(out)
  end

  # The module's writer in this process, spooling into `spool`: it holds its segment while
  # the rake task (another process) reads the spool.
  def live_writer(port)
    ActsAsTbackend.configure do |c|
      c.port = port
      c.spool_path = spool
      c.request_timeout = 0.5
      c.retry_base_backoff = 0.01
      c.retry_max_backoff = 0.1
    end
    ActsAsTbackend.async_writer
  end

  def fact(id, value)
    ActsAsTbackend::Fact.build(id: id, store: "spooled", key: "k#{value % 3}", value: { "i" => value })
  end

  def segment_counts(report)
    report["segments"].map { |s| s.slice("held", "pending", "delivered", "dead") }
  end

  it "reports an orphaned segment's pending facts and their age, then delivers it exactly once" do
    before = Time.now.floor(3)
    leave_orphaned_segment(spool)
    spooled = Time.now
    report = status_report(closed_port)
    expect(report).to include(
      "spool_path" => spool, "held" => 0, "orphaned" => 1, "dead_letters" => 0,
      "pending" => 50, "delivered" => 0, "dead" => 0
    )
    expect(report["bytes"]).to be > 0
    expect(segment_counts(report)).to eq([{ "held" => false, "pending" => 50, "delivered" => 0, "dead" => 0 }])
    oldest = Time.iso8601(report["oldest_pending_at"])
    expect(oldest).to be_between(before, spooled)
    expect(report["oldest_pending_age"]).to be_between(0, Time.now - before + 1)
    expect(report["segments"][0]).to include("oldest_pending_at" => report["oldest_pending_at"])

    TbackendSpec::TestDaemon.with do |d|
      out, status = rake("tbackend:spool:flush", d.port)
      expect(status).to be_success, out
      expect(json(out)).to include("settled" => true, "adopted" => 50, "delivered" => 50)
      expect_delivered_once(d)

      out, status = rake("tbackend:spool:status", d.port)
      expect(status).to be_success, out
      expect(json(out)).to include(
        "orphaned" => 0, "bytes" => 0, "pending" => 0, "oldest_pending_at" => nil, "oldest_pending_age" => nil,
        "segments" => []
      )
    end
  end

  it "reports a live writer's held segment with its pending facts while the daemon is down" do
    before = Time.now.floor(3)
    writer = live_writer(closed_port)
    5.times { |i| expect(writer.enqueue(fact("waiting-#{i}", i))[:status]).to eq("enqueued") }
    report = status_report(closed_port)
    expect(report).to include("held" => 1, "orphaned" => 0, "pending" => 5, "delivered" => 0, "dead" => 0)
    expect(segment_counts(report)).to eq([{ "held" => true, "pending" => 5, "delivered" => 0, "dead" => 0 }])
    expect(Time.iso8601(report["oldest_pending_at"])).to be_between(before, Time.now)
    expect(report["oldest_pending_age"]).to be >= 0
  ensure
    ActsAsTbackend.shutdown_async_writer(timeout: 0)
  end

  it "reports nothing pending once a live writer delivered everything, and counts the fact it gave up" do
    TbackendSpec::TestDaemon.with do |d|
      taken = fact("taken", 0)
      expect(client_for(d).write_fact_once(taken)[:status]).to eq("committed_acked")
      writer = live_writer(d.port)
      20.times { |i| expect(writer.enqueue(fact("live-#{i}", i))[:status]).to eq("enqueued") }
      # The same id with other content: the daemon answers duplicate_fact_id_conflict.
      expect(writer.enqueue(fact("taken", 1))[:status]).to eq("enqueued")
      expect(writer.flush(timeout: 20)).to be(true)
      expect(writer.stats).to include(delivered: 20, conflicts: 1)

      report = status_report(d.port)
      # The segment stays on disk, held by the live writer: bytes, but nothing waits.
      expect(report["bytes"]).to be > 0
      expect(report).to include(
        "held" => 1, "orphaned" => 0, "pending" => 0, "delivered" => 20, "dead" => 1, "dead_letters" => 1,
        "oldest_pending_at" => nil, "oldest_pending_age" => nil
      )
      expect(segment_counts(report)).to eq([{ "held" => true, "pending" => 0, "delivered" => 20, "dead" => 1 }])
    ensure
      ActsAsTbackend.shutdown_async_writer(timeout: 0)
    end
  end

  it "recognises a Puma process by its program name, and a console or runner as no server" do
    env = { "TBACKEND_SPOOL_PATH" => spool, "TBACKEND_TEST_PORT" => closed_port.to_s }
    probe = "require './config/environment'; puts(ActsAsTbackend.instance_variable_get(:@async_writer) ? 'writer' : 'none')"
    outputs = ["$PROGRAM_NAME = 'puma 5.6.5 (tcp://127.0.0.1:3000) [app]'; #{probe}", probe].map do |code|
      out, status = TbackendSpec::RailsApp.run(app, "-e", code, env: env)
      expect(status).to be_success, out
      out.lines.last.strip
    end
    expect(outputs).to eq(%w[writer none])
  end

  it "starts the writer at boot in server processes only, which then delivers orphaned segments" do
    leave_orphaned_segment(spool)
    TbackendSpec::TestDaemon.with do |d|
      env = { "TBACKEND_SPOOL_PATH" => spool, "TBACKEND_TEST_PORT" => d.port.to_s }
      probe = "w = ActsAsTbackend.instance_variable_get(:@async_writer); puts(w ? w.flush(timeout: 20) : 'no writer')"

      out = in_app(probe, env: env.merge("TBACKEND_SERVER_PROCESS" => "0"))
      expect(out.lines.last.strip).to eq("no writer")
      expect(client_for(d).facts_by_seq(store: "spooled")[:response][:facts]).to be_empty

      out = in_app(probe, env: env.merge("TBACKEND_SERVER_PROCESS" => "1"))
      expect(out.lines.last.strip).to eq("true")
      expect_delivered_once(d)
    end
  end
end
