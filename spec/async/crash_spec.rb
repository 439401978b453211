# frozen_string_literal: true

require "spec_helper"
require_relative "async_helpers"

# Issue 4, nothing lost: an app process is `kill -9`ed mid-flush while the daemon is also
# killed; both restart (a new app process adopting the spool); every fact arrives, none
# is stored twice.
RSpec.describe "AsyncWriter spool across a crash" do
  include_context "async spec"

  with_daemon_in_tmpdir("tbackend-crash")

  let(:spool) { File.join(@dir, "spool") }
  let(:total) { 3000 }

  def app_script(port, body)
    <<~RUBY
      require "acts_as_tbackend"
      $stdout.sync = true
      ActsAsTbackend.configure do |c|
        c.port = #{port}
        c.spool_path = #{spool.inspect}
        c.request_timeout = 0.5
        c.retry_base_backoff = 0.01
        c.retry_max_backoff = 0.2
        c.retry_attempts = 1000
      end
      writer = ActsAsTbackend.async_writer
      #{body}
    RUBY
  end

  # Enqueues every fact (20 keys), says so, then lets the flusher run until killed.
  def producer(port)
    app_script(port, <<~RUBY)
      #{total}.times do |i|
        fact = ActsAsTbackend::Fact.build(id: "crash-\#{i}", store: "crash", key: "k\#{i % 20}", value: { "i" => i })
        result = writer.enqueue(fact)
        abort "enqueue failed: \#{result.inspect}" unless result[:ok]
      end
      puts "enqueued \#{writer.stats[:spooled]}"
      sleep
    RUBY
  end

  # Adopts what the dead producer left, delivers it, reports.
  def recoverer(port)
    app_script(port, <<~RUBY)
      flushed = writer.flush(timeout: 60)
      puts JSON.generate(writer.stats.merge(flushed: flushed))
      ActsAsTbackend.shutdown_async_writer(timeout: 5)
      exit!(flushed ? 0 : 1)
    RUBY
  end

  def daemon_count
    answer = ActsAsTbackend.client.facts_by_seq(store: "crash", after_seq: 0, timeout: 10)
    answer[:ok] ? answer[:response][:facts].size : 0
  end

  it "delivers every fact exactly once after kill -9 of the app mid-flush and a daemon kill" do
    client_for(daemon)
    # Slow answers, so the flush is still running when the axe falls.
    daemon.control({ "op" => "set", "delay_ms" => 2 })
    pid, out = spawn_ruby(producer(daemon.port))
    line = read_line(out, 30)
    expect(line).to start_with("enqueued")
    expect(line.split.last.to_i).to be > 0
    expect(eventually(20) { daemon_count >= 200 }).to be(true)
    delivered_before = daemon_count
    expect(delivered_before).to be < total

    daemon.kill!
    Process.kill(:KILL, pid)
    expect(wait_exit(pid, 10).termsig).to eq(Signal.list["KILL"])
    out.close
    segments = Dir[File.join(spool, "*.spool")]
    expect(segments.size).to eq(1)

    daemon.restart
    stored_before = daemon_count
    expect(stored_before).to be >= delivered_before
    pid, out = spawn_ruby(recoverer(daemon.port))
    report = JSON.parse(read_line(out, 90))
    expect(wait_exit(pid, 30)).to be_success
    expect(report).to include("flushed" => true, "dead" => 0, "failed" => 0, "conflicts" => 0, "queued" => 0)
    # Everything the daemon had not stored was adopted (and some it had: their acks
    # were not written yet; those land as replays).
    expect(report["adopted"]).to be >= total - stored_before
    expect(report["delivered"]).to eq(report["adopted"])

    facts = stored("crash")
    expect(facts.keys).to match_array(Array.new(total) { |i| "crash-#{i}" })
    # Each key's facts are stored in enqueue order, across the crash too.
    by_key = facts.group_by { |_id, (_seq, key)| key }
    by_key.each_value do |entries|
      ordered = entries.sort_by { |id, _| id.delete_prefix("crash-").to_i }.map { |_, (seq, _)| seq }
      expect(ordered).to eq(ordered.sort)
    end
    # The dead producer's segment was adopted and deleted; the recoverer drained its own.
    expect(Dir[File.join(spool, "*.spool")]).to be_empty.or(satisfy { |left| (left & segments).empty? })
    expect(File.exist?(File.join(spool, "dead-letter.jsonl"))).to be(false)
  end
end
