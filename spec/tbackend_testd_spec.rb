# frozen_string_literal: true

require "spec_helper"

# The Ruby side of the test-daemon harness: every later spec starts daemons this way, so
# it must find a free port, speak the protocol, restart on the same data and always stop.
RSpec.describe TbackendSpec::TestDaemon do
  def fact(id, value)
    { "id" => id, "store" => "harness", "key" => "k", "value" => value, "transaction_time" => 1.0, "schema_version" => 1 }
  end

  it "starts on a free loopback port, answers, and is gone after stop" do
    daemon = described_class.start
    expect(daemon.port).to be > 0
    expect(daemon.request({ "op" => "ping" })).to eq("ok" => true, "pong" => true)
    pid = daemon.pid
    daemon.stop
    expect { Process.kill(0, pid) }.to raise_error(Errno::ESRCH)
  end

  it "stops every daemon a spec left running" do
    daemon = described_class.start
    pid = daemon.pid
    described_class.stop_all
    expect { Process.kill(0, pid) }.to raise_error(Errno::ESRCH)
  end

  it "keeps every acknowledged fact across SIGKILL and a restart on the same port" do
    Dir.mktmpdir do |dir|
      described_class.with(data_dir: dir) do |daemon|
        first = daemon.request({ "op" => "write_fact_once", "fact" => fact("h:1", { "n" => 1 }) })
        expect(first).to include("ok" => true, "idempotent_replay" => false, "seq_id" => 1)
        port = daemon.port
        daemon.kill!
        daemon.restart
        expect(daemon.port).to eq(port)
        replay = daemon.request({ "op" => "write_fact_once", "fact" => fact("h:1", { "n" => 1 }) })
        expect(replay).to include("ok" => true, "idempotent_replay" => true, "seq_id" => 1)
        conflict = daemon.request({ "op" => "write_fact_once", "fact" => fact("h:1", { "n" => 1.0 }) })
        expect(conflict).to include("error_code" => "duplicate_fact_id_conflict")
      end
    end
  end

  it "exposes the fault knobs on its control port" do
    described_class.with do |daemon|
      daemon.control({ "op" => "set", "delay_ms" => 150 })
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      daemon.request({ "op" => "ping" })
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be >= 0.15
      daemon.control({ "op" => "clear" })
      status = daemon.control({ "op" => "status" })
      expect(status).to include("ok" => true)
      expect(status.to_s).to include("connections_accepted")
    end
  end
end
