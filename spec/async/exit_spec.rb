# frozen_string_literal: true

require "spec_helper"
require_relative "async_helpers"

# Issue 10: with the daemon down, every `rails runner` or rake exit waited 5 s for the
# async writer. The wait is `shutdown_timeout`: 0 by default with a spool (the facts are on
# disk and the next writer delivers them), bounded and configurable without one.
RSpec.describe "AsyncWriter at exit with the daemon down" do
  include_context "async spec"

  with_daemon_in_tmpdir("tbackend-exit")

  # Enqueues `count` facts to a dead port, says so and exits normally (at_exit runs).
  def enqueue_and_exit(count, env)
    script = <<~RUBY
      require "acts_as_tbackend"
      $stdout.sync = true
      ActsAsTbackend.configure { |c| c.port = #{daemon.port} }
      #{count}.times do |i|
        fact = ActsAsTbackend::Fact.build(id: "exit-\#{i}", store: "exit_down", key: "k\#{i % 3}", value: { "i" => i })
        result = ActsAsTbackend.async_writer.enqueue(fact)
        abort "enqueue failed: \#{result.inspect}" unless result[:ok]
      end
      puts "enqueued"
    RUBY
    pid, out = spawn_ruby(script, env)
    expect(read_line(out, 30).strip).to eq("enqueued")
    took, status = timed { wait_exit(pid, 30) }
    [took, status, out.read]
  ensure
    out&.close
  end

  it "exits at once with a spool, and another writer delivers the spooled facts later" do
    spool = File.join(@dir, "spool")
    daemon.kill!
    took, status, output = enqueue_and_exit(20, "TBACKEND_SPOOL_PATH" => spool)
    expect(status).to be_success
    # Without the fix: the 5 s exit flush. A process exit takes milliseconds.
    expect(took).to be < 4
    expect(output).to include("20 fact(s) undelivered: kept in the spool")

    daemon.restart
    writer = async_writer_for(daemon, spool_path: spool)
    expect(writer.flush(timeout: 30)).to be(true)
    expect(writer.stats).to include(adopted: 20, delivered: 20)
    expect(stored("exit_down").keys).to match_array(Array.new(20) { |i| "exit-#{i}" })
  end

  it "without a spool, waits no longer than shutdown_timeout" do
    daemon.kill!
    took, status, output = enqueue_and_exit(5, "TBACKEND_SHUTDOWN_TIMEOUT" => "0.5")
    expect(status).to be_success
    expect(took).to be < 4
    expect(output).to include("5 fact(s) undelivered: lost (no spool_path)")
  end

  it "without a spool or a setting, still gives the queue its 5 s" do
    daemon.kill!
    took, status, output = enqueue_and_exit(1, "TBACKEND_SHUTDOWN_TIMEOUT" => "")
    expect(status).to be_success
    expect(took).to be >= ActsAsTbackend::Config::SHUTDOWN_TIMEOUT_WITHOUT_SPOOL - 0.5
    expect(output).to include("1 fact(s) undelivered")
  end
end
