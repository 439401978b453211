# frozen_string_literal: true

require "spec_helper"
require "set"
require "timeout"

# docs/protocol.md §8 and issue 3: seq order is not visibility order, and a failed append
# burns a seq for good. The gap-safe tail yields every stored fact exactly once, in seq
# order, and gives a burned seq up after its grace; a "highest seq seen" reader misses
# facts under the same conditions (which proves the scenario can catch a naive tail).
RSpec.describe "ActsAsTbackend::Client#tail" do
  include_context "client spec"

  with_daemon

  let(:client) { client_for(daemon) }

  def set_knobs(**knobs)
    daemon.control({ "op" => "set", **knobs.transform_keys(&:to_s) })
  end

  def write_all(ids, store)
    ids.map { |id| client.write_fact_once(fact(id, store: store)) }
  end

  it "holds the facts after a fact that is not visible yet, then yields them in seq order" do
    client.ping
    set_knobs(visibility_lag: { "every" => 2, "lag_ms" => 200, "store" => "lagged" })
    expect(write_all(%w[l1 l2 l3], "lagged").map { |r| r.dig(:response, :seq_id) }).to eq([1, 2, 3])
    tail = client.tail(store: "lagged", grace: 0.5)
    first = tail.poll
    expect(first.map { |f| f[:id] }).to eq(["l1"])
    expect(tail.after_seq).to eq(1)
    sleep 0.25
    expect(tail.poll.map { |f| [f[:seq_id], f[:id]] }).to eq([[2, "l2"], [3, "l3"]])
    expect(tail.poll).to eq([])
    expect(tail.skipped).to eq(0)
    expect(tail.after_seq).to eq(3)
  end

  it "gives a burned seq up after the grace, and only then" do
    client.ping
    set_knobs(skip_seq: { "every" => 1, "count" => 1, "store" => "burned" })
    expect(write_all(%w[b1 b2 b3], "burned").map { |r| r.dig(:response, :seq_id) }).to eq([2, 3, 4])
    tail = client.tail(store: "burned", grace: 0.3)
    expect(tail.poll).to eq([])
    expect(tail.after_seq).to eq(0)
    sleep 0.35
    expect(tail.poll.map { |f| f[:id] }).to eq(%w[b1 b2 b3])
    expect(tail.skipped).to eq(1)
    expect(tail.after_seq).to eq(4)
  end

  it "iterates with each(limit:), Symbol keys" do
    ids = Array.new(5) { |i| "e#{i}" }
    write_all(ids, "each")
    tail = client.tail(store: "each", grace: 0.3, poll_interval: 0.01)
    seen = []
    tail.each(limit: 5) { |f| seen << f }
    expect(seen.map { |f| f[:id] }).to eq(ids)
    expect(seen.first.keys).to include(:id, :seq_id, :value)
    expect(tail.after_seq).to eq(5)
  end

  it "loses no fact when each(limit:) stops in the middle of a poll: the same tail goes on, " \
     "and after_seq only covers what was yielded" do
    ids = Array.new(5) { |i| "e#{i}" }
    write_all(ids, "limit")
    tail = client.tail(store: "limit", grace: 0.3, poll_interval: 0.01)
    first = []
    tail.each(limit: 3) { |f| first << f[:id] }
    expect(first).to eq(ids.first(3))
    aggregate_failures do
      # "Every seq up to here has been yielded or given up: persist it to resume."
      expect(tail.after_seq).to eq(3)
      resumed = client.tail(store: "limit", after_seq: tail.after_seq, grace: 0.3)
      expect(resumed.poll.map { |f| f[:id] }).to eq(ids.last(2))
      rest = []
      begin
        Timeout.timeout(1) { tail.each(limit: 2) { |f| rest << f[:id] } }
      rescue Timeout::Error
        nil # each polls forever when nothing comes: the facts were dropped
      end
      expect(rest).to eq(ids.last(2))
    end
  end

  it "yields every fact exactly once in seq order under concurrent writers, lag and burned seqs; " \
     "a \"max seq seen\" reader misses some" do
    store = "tailed"
    client.ping
    set_knobs(visibility_lag: { "every" => 3, "lag_ms" => 150, "store" => store },
              skip_seq: { "every" => 7, "store" => store })
    writing = true
    writers = Array.new(4) do |t|
      Thread.new do
        Array.new(100) do |i|
          id = "w#{t}-#{i}"
          result = client.write_fact_once(fact(id, store: store))
          sleep 0.002
          [id, result]
        end
      end
    end

    tail = client.tail(store: store, grace: 0.3)
    tailed = []
    tailer = Thread.new do
      deadline = monotonic + 20
      until monotonic > deadline
        facts = tail.poll
        tailed.concat(facts)
        break if !writing && facts.empty? && tailed.size >= 400

        sleep 0.01
      end
    end

    naive = []
    naive_reader = Thread.new do
      max_seen = 0
      quiet_since = nil
      loop do
        facts = client.facts_by_seq(store: store, after_seq: max_seen).dig(:response, :facts) || []
        naive.concat(facts)
        max_seen = facts.map { |f| f[:seq_id] }.max || max_seen
        quiet_since = writing ? nil : (quiet_since || monotonic)
        break if quiet_since && monotonic - quiet_since > 0.5

        sleep 0.01
      end
    end

    written = join_all(writers, 30).flatten(1)
    writing = false
    join_all([tailer, naive_reader], 30)

    expect(written.map { |_, r| r[:status] }.uniq).to eq(["committed_acked"])
    written_ids = written.map(&:first)
    stored_seqs = written.map { |_, r| r.dig(:response, :seq_id) }
    faults = daemon_status(daemon)["faults"]
    expect(faults["facts_hidden"]).to be > 50
    expect(faults["seqs_skipped"]).to be > 40

    tailed_seqs = tailed.map { |f| f[:seq_id] }
    expect(tailed.map { |f| f[:id] }.sort).to eq(written_ids.sort)
    expect(tailed_seqs).to eq(tailed_seqs.uniq.sort)
    expect(tailed_seqs).to eq(stored_seqs.sort)
    burned = (1..stored_seqs.max).to_a - stored_seqs
    expect(tail.skipped).to eq(burned.size)
    expect(burned.size).to eq(faults["seqs_skipped"])
    expect(tail.after_seq).to eq(stored_seqs.max)

    missed = written_ids.to_set - naive.map { |f| f[:id] }.to_set
    expect(missed).not_to be_empty, "the naive reader saw every fact: the scenario proves nothing"
    missed_seqs = written.select { |id, _| missed.include?(id) }.map { |_, r| r.dig(:response, :seq_id) }
    expect(missed_seqs).to all(satisfy { |s| (s % 3).zero? }) # exactly the facts that were hidden for a while
  end

  # Issue 12: a second poll of a tail whose cursor another poll held built a fresh cursor
  # at the last settled seq, so two threads polling one tail both got the same facts.
  it "refuses a poll while another thread's poll of the same tail is in progress, and goes on after it" do
    write_all(%w[c1 c2 c3], "concurrent")
    tail = client.tail(store: "concurrent", grace: 0.3)
    daemon.control({ "op" => "set", "delay_ms" => 300 })
    first = Thread.new { tail.poll }
    eventually(2) { client.stats[:lanes].sum { |lane| lane[:in_flight] } >= 1 }
    second = Thread.new do
      tail.poll
    rescue ActsAsTbackend::ConcurrentUseError => e
      e
    end
    polled = join_all([first, second], 10)
    daemon.control({ "op" => "set", "delay_ms" => 0 })

    ids = polled.grep(Array).flatten.map { |f| f[:id] }
    expect(ids).to eq(ids.uniq), "a fact was polled twice: #{ids.inspect}"
    expect(polled.first.map { |f| f[:id] }).to eq(%w[c1 c2 c3])
    expect(polled.last).to be_a(ActsAsTbackend::ConcurrentUseError)
    expect(polled.last).to be_a(ActsAsTbackend::Error)
    expect(polled.last.message).to match(/in use by another poll/)
    expect(tail.after_seq).to eq(3)
    write_all(%w[c4], "concurrent")
    expect(tail.poll.map { |f| f[:id] }).to eq(%w[c4])
  end

  it "lets a forked child poll a tail that a thread of the parent was polling at the fork",
     if: Process.respond_to?(:fork) do
    write_all(%w[f1 f2], "forkedtail")
    tail = client.tail(store: "forkedtail", grace: 0.3)
    daemon.control({ "op" => "set", "delay_ms" => 300 })
    polling = Thread.new { tail.poll }
    eventually(2) { client.stats[:lanes].sum { |lane| lane[:in_flight] } >= 1 }
    reader, writer = IO.pipe
    pid = Process.fork do
      reader.close
      ids = begin
        tail.poll.map { |f| f[:id] }
      rescue Exception => e # rubocop:disable Lint/RescueException
        "#{e.class}: #{e.message}"
      end
      writer.write(Marshal.dump(ids))
      writer.close
      exit!(0)
    end
    writer.close
    child = Marshal.load(reader.read) # rubocop:disable Security/MarshalLoad
    reader.close
    Process.waitpid(pid)
    expect(child).to eq(%w[f1 f2])
    expect(join_all([polling], 10).first.map { |f| f[:id] }).to eq(%w[f1 f2])
  ensure
    daemon.control({ "op" => "set", "delay_ms" => 0 })
  end

  it "returns no facts and keeps its place when the daemon is down" do
    write_all(%w[d1 d2], "down")
    tail = client.tail(store: "down", grace: 0.3)
    expect(tail.poll.size).to eq(2)
    daemon.control({ "op" => "set", "stall" => true })
    slow = client.tail(store: "down", after_seq: tail.after_seq, timeout: 0.2)
    expect(slow.poll).to eq([])
    expect(slow.last_result[:status]).to eq("timeout_unknown")
    expect(slow.after_seq).to eq(2)
  end
end
