# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 3, fork safety: after fork (Puma cluster, Sidekiq, Spring) the child gets fresh
# lanes with no reset!, and the parent — forked while its threads were mid-request — is
# never disturbed: its connection stays up and every answer still reaches its caller.
RSpec.describe "ActsAsTbackend::Client across fork", if: Process.respond_to?(:fork) do
  include_context "client spec"

  with_daemon(pool_size: 64)

  def forks = 50

  # A child's work: writes and reads through the inherited module client, then through
  # a new one after reset!. Returns nil when all is well, else what went wrong.
  def child_work(index)
    client = ActsAsTbackend.client
    ids = Array.new(3) { |j| "child-#{index}-#{j}" }
    writes = ids.map { |id| client.write_fact_once(fact(id, store: "fork")) }
    return "writes: #{writes.inspect}" unless writes.all? { |r| r[:status] == "committed_acked" }

    reads = ids.map { |id| client.latest_for(store: "fork", key: "key:#{id}").dig(:response, :fact, :id) }
    return "reads: #{reads.inspect}" unless reads == ids

    ActsAsTbackend.reset!
    again = ActsAsTbackend.client.write_fact_once(fact(ids.first, store: "fork"))
    return "after reset!: #{again.inspect}" unless again[:status] == "idempotent_replay"

    nil
  rescue Exception => e # rubocop:disable Lint/RescueException
    "#{e.class}: #{e.message}"
  end

  def fork_child(index, dir)
    Process.fork do
      problem = child_work(index)
      File.write(File.join(dir, "child-#{index}"), problem) if problem
      exit!(problem ? 1 : 0)
    end
  end

  # Waits for every child within `seconds`; SIGKILLs stragglers. pid => exit status.
  def reap_children(pids, seconds)
    deadline = monotonic + seconds
    statuses = {}
    until statuses.size == pids.size || monotonic > deadline
      pids.each do |pid|
        next if statuses.key?(pid)

        _, status = Process.waitpid2(pid, Process::WNOHANG)
        statuses[pid] = status.exitstatus if status
      end
      sleep 0.01
    end
    (pids - statuses.keys).each do |pid|
      Process.kill(:KILL, pid)
      Process.waitpid(pid)
      statuses[pid] = :hung
    end
    statuses
  end

  def parent_call(client, tag, num)
    id = "parent-#{tag}-#{num}"
    if num.odd?
      result = client.write_fact_once(fact(id, store: "fork"))
      [id, result, (result.inspect unless result[:status] == "committed_acked")]
    else
      result = client.latest_for(store: "fork", key: "key:parent-#{tag}-#{num - 1}")
      [nil, result, (result.inspect unless result.dig(:response, :fact, :id) == "parent-#{tag}-#{num - 1}")]
    end
  end

  it "forks 50 times while 8 threads are mid-request: children work, the parent is undisturbed" do
    client = client_for(daemon, request_timeout: 5)
    expect(client.ping[:status]).to eq("ok")
    daemon.control({ "op" => "set", "delay_ms" => 10 })
    stop = false
    parents = Array.new(8) do |t|
      Thread.new do
        n = 0
        calls = []
        calls << parent_call(client, t, n += 1) until stop && n > 20
        calls
      end
    end
    eventually(2) { client.stats[:lanes].first[:in_flight] >= 4 }

    Dir.mktmpdir("tbackend-fork") do |dir|
      pids = Array.new(forks) do |i|
        sleep rand * 0.01
        fork_child(i, dir)
      end
      statuses = reap_children(pids, 60)
      problems = Dir[File.join(dir, "child-*")].to_h { |f| [File.basename(f), File.read(f)] }
      expect(problems).to be_empty
      expect(statuses.values.tally).to eq(0 => forks)
    end

    sleep 0.1
    stop = true
    calls = join_all(parents, 30).flatten(1)
    expect(calls.size).to be > 100
    expect(calls.filter_map(&:last)).to be_empty
    # The children closed only their copies of the parent's socket: no reconnect here.
    expect(client.stats[:connections_opened]).to eq(1)
    expect(client.stats[:lanes].first[:reconnects]).to eq(0)

    daemon.control({ "op" => "set", "delay_ms" => 0 })
    writes = calls.select(&:first).map { |id, result, _| [id, result] }
    by_seq = expect_writes_match_read_back(client, "fork", writes)
    expect(by_seq.values.grep(/\Achild-/).size).to eq(forks * 3)

    ActsAsTbackend.reset!
    expect(ActsAsTbackend.client).not_to equal(client)
    expect(ActsAsTbackend.client.write_fact_once(fact(writes.first.first, store: "fork"))[:status]).to eq("idempotent_replay")
  ensure
    # A failed expectation must not leave the callers looping (against a daemon stopped
    # by then: 100% CPU and an ever-growing `calls`).
    stop = true
    parents&.each do |thread|
      thread.join(30) || thread.kill.join(5)
    rescue StandardError
      nil # it ended by raising, which join_all above reports when the example gets there
    end
  end

  it "gives a child fresh lanes with no reset!, and the parent keeps its connection" do
    client = client_for(daemon)
    expect(client.ping[:status]).to eq("ok")
    reader, writer = IO.pipe
    pid = Process.fork do
      reader.close
      writer.write(Marshal.dump([client.ping[:status], client.stats[:connections_opened]]))
      writer.close
      exit!(0)
    end
    writer.close
    child_status, child_connections = Marshal.load(reader.read) # rubocop:disable Security/MarshalLoad
    reader.close
    Process.waitpid(pid)
    expect(child_status).to eq("ok")
    expect(child_connections).to eq(1) # its own, new connection
    expect(client.ping[:status]).to eq("ok")
    expect(client.stats[:connections_opened]).to eq(1)
    expect(daemon_status(daemon)["connections_accepted"]).to eq(2)
  end
end
