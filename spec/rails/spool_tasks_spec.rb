# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 4: `rake tbackend:spool:status` and `rake tbackend:spool:flush`. A process enqueues
# with the daemon down and dies without flushing; status shows its orphaned segment, flush
# delivers every fact once the daemon is up, and the spool is empty afterwards.
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

  it "reports an orphaned segment, then delivers it exactly once" do
    leave_orphaned_segment(spool)
    out, status = rake("tbackend:spool:status", closed_port)
    expect(status).to be_success, out
    report = json(out)
    expect(report).to include("spool_path" => spool, "held" => 0, "orphaned" => 1, "dead_letters" => 0)
    expect(report["bytes"]).to be > 0

    TbackendSpec::TestDaemon.with do |d|
      out, status = rake("tbackend:spool:flush", d.port)
      expect(status).to be_success, out
      expect(json(out)).to include("settled" => true, "adopted" => 50, "delivered" => 50)
      expect_delivered_once(d)

      out, status = rake("tbackend:spool:status", d.port)
      expect(status).to be_success, out
      expect(json(out)).to include("orphaned" => 0, "bytes" => 0)
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
