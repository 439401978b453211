# frozen_string_literal: true

require "spec_helper"
require "timeout"

# Issue 3, "Ruby threads, the GVL, interrupts": every wait happens with the GVL released
# and an unblocking function, so Thread#kill, Thread#raise and Timeout interrupt a
# waiting call promptly — and an interrupted call leaves no answer behind for anyone else.
RSpec.describe "ActsAsTbackend::Client interrupted calls" do
  include_context "client spec"

  with_daemon

  # How soon an interrupted waiting call must let its thread go. Under `rake
  # spec:gc_stress` GC.stress is on while a native call waits, and it is the whole
  # process's: the killing thread then runs with a full GC at each allocation (0.16 s was
  # seen there). A second is still far inside the 5 s request_timeout a missed interrupt
  # would wait out.
  def prompt = TbackendSpec::GcStress.active ? 1.0 : 0.1

  # A thread parked in a call the daemon never answers (request_timeout 5 s).
  def waiting_call(client)
    thread = Thread.new { client.ping }
    eventually(2) { thread.status == "sleep" || !thread.alive? }
    sleep 0.05
    expect(thread).to be_alive
    thread
  end

  describe "promptness, with a 5 s request_timeout" do
    let(:client) { client_for(daemon, request_timeout: 5) }

    before do
      expect(client.ping[:status]).to eq("ok")
      daemon.control({ "op" => "set", "stall" => true })
    end

    it "lets Thread#kill end a waiting call within ~0.1 s" do
      3.times do
        thread = waiting_call(client)
        elapsed, = timed do
          thread.kill
          thread.join(2)
        end
        expect(thread).not_to be_alive
        expect(elapsed).to be < prompt
      end
    end

    it "lets Timeout.timeout end a waiting call on time" do
      elapsed, = timed do
        expect { Timeout.timeout(0.05) { client.ping } }.to raise_error(Timeout::Error)
      end
      expect(elapsed).to be < 0.05 + prompt
    end

    it "propagates an exception raised into a waiting thread (Thread#raise, as Rack::Timeout does) " \
       "instead of returning it as a soft result" do
      request_timeout = Class.new(RuntimeError)
      thread = Thread.new do
        client.ping
      rescue request_timeout => e
        e
      end
      eventually(2) { thread.status == "sleep" }
      sleep 0.05
      elapsed, = timed do
        thread.raise(request_timeout, "request took too long")
        thread.join(2)
      end
      expect(elapsed).to be < prompt
      expect(thread.value).to be_a(request_timeout)
    end

    it "lets Thread#kill end a waiting tail poll within ~0.1 s, the tail keeping its place", :gc_stress do
      tail = client.tail(store: "specs", after_seq: 7, grace: 0.3)
      thread = Thread.new { tail.poll }
      eventually(2) { thread.status == "sleep" }
      sleep 0.05
      elapsed, = timed do
        thread.kill
        thread.join(2)
      end
      expect(thread).not_to be_alive
      expect(elapsed).to be < prompt
      expect(tail.after_seq).to eq(7)
    end

    it "propagates Timeout.timeout's own error class (Timeout.timeout(t, SomeError))" do
      custom = Class.new(StandardError)
      elapsed, = timed do
        expect { Timeout.timeout(0.05, custom) { client.ping } }.to raise_error(custom)
      end
      expect(elapsed).to be < 0.05 + prompt
    end
  end

  # Ruby calls a waiting thread's unblocking function for every interrupt, also for the
  # ones that raise nothing: a signal trap that returns (handled on the main thread),
  # Thread#wakeup, and on Ruby 3.3 a signal the parent had not handled yet when it forked
  # (the child's timer thread delivers it: the 50-fork spec's first writes came back
  # "cancelled"). Such a call must go on, on its deadline, and get its own answer.
  describe "interrupts that raise nothing" do
    let(:client) { client_for(daemon, request_timeout: 5) }

    before do
      expect(client.ping[:status]).to eq("ok")
      daemon.control({ "op" => "set", "delay_ms" => 300 })
    end

    def expect_own_answer(id, result)
      expect(result[:status]).to eq("committed_acked"), result.inspect
      daemon.control({ "op" => "set", "delay_ms" => 0 })
      expect_writes_match_read_back(client, "specs", [[id, result]])
    end

    %i[write_fact_once write_fact_once_safe].each do |call|
      it "lets #{call} woken by Thread#wakeup go on to its own answer" do
        id = unique("wakeup")
        thread = Thread.new { client.public_send(call, fact(id)) }
        eventually(2) { thread.status == "sleep" }
        sleep 0.05
        thread.wakeup
        result = join_all([thread], 10).first
        expect(result[:attempt_count]).to eq(1) if call == :write_fact_once_safe
        expect_own_answer(id, result)
      end
    end

    it "lets write_facts_once woken by Thread#wakeup go on to its own answers" do
      ids = Array.new(2) { unique("wakeup-batch") }
      thread = Thread.new { client.write_facts_once(ids.map { |id| fact(id) }) }
      eventually(2) { thread.status == "sleep" }
      sleep 0.05
      thread.wakeup
      results = join_all([thread], 10).first
      expect(results.map { |r| r[:status] }).to eq(%w[committed_acked committed_acked]), results.inspect
      daemon.control({ "op" => "set", "delay_ms" => 0 })
      expect_writes_match_read_back(client, "specs", ids.zip(results))
    end

    # Before, the poll came back timeout_unknown with no facts.
    it "lets a tail poll woken by Thread#wakeup go on to its facts", :gc_stress do
      store = "tailwake"
      ids = Array.new(2) { unique("tail") }
      ids.each { |id| expect(client.write_fact_once(fact(id, store: store))[:status]).to eq("committed_acked") }
      tail = client.tail(store: store, grace: 0.3)
      thread = Thread.new { tail.poll }
      eventually(2) { thread.status == "sleep" }
      sleep 0.05
      thread.wakeup
      facts = join_all([thread], 10).first
      expect(tail.last_result[:status]).to eq("ok"), tail.last_result.inspect
      expect(facts.map { |f| f[:id] }).to eq(ids)
      expect(tail.after_seq).to eq(facts.last[:seq_id])
    end

    it "lets a tail poll on the main thread go on after a signal trap that returns", :gc_stress do
      store = "tailtrap"
      id = unique("tail")
      expect(client.write_fact_once(fact(id, store: store))[:status]).to eq("committed_acked")
      tail = client.tail(store: store, grace: 0.3)
      trapped = false
      previous = trap(:USR2) { trapped = true }
      signaller = Thread.new do
        sleep 0.1
        Process.kill(:USR2, Process.pid)
      end
      facts = tail.poll
      join_all([signaller], 5)
      expect(trapped).to be(true)
      expect(tail.last_result[:status]).to eq("ok"), tail.last_result.inspect
      expect(facts.map { |f| f[:id] }).to eq([id])
    ensure
      trap(:USR2, previous || "DEFAULT")
    end

    it "lets a call on the main thread go on after a signal trap that returns" do
      id = unique("trap")
      trapped = false
      previous = trap(:USR2) { trapped = true }
      signaller = Thread.new do
        sleep 0.1
        Process.kill(:USR2, Process.pid)
      end
      result = client.write_fact_once(fact(id))
      join_all([signaller], 5)
      expect(trapped).to be(true)
      expect_own_answer(id, result)
    ensure
      trap(:USR2, previous || "DEFAULT")
    end
  end

  describe "1,000 interrupts during traffic, then 1,000 requests" do
    def preloaded = 100

    # A batch of up to 70 spans two of write_facts_once's groups of 64 (separate GVL-free
    # steps), so an interrupt may land between them. Returns [:batch, ids, results, problem].
    def random_batch(client, tag, num)
      ids = Array.new(rand(1..70)) { |i| "intr-#{tag}-#{num}-#{i}" }
      results = client.write_facts_once(ids.map { |id| fact(id, store: "intr", key: "k:#{id}") })
      bad = results.reject { |r| r[:status] == "committed_acked" }
      [:batch, ids, results, (bad.first.inspect unless bad.empty? && results.size == ids.size)]
    end

    # One call of a random kind, checked against what it must answer. Returns
    # [kind, id, result, problem or nil].
    def random_call(client, tag, num)
      return random_batch(client, tag, num) if num % 20 == 19

      case num % 3
      when 0
        id = "intr-#{tag}-#{num}"
        result = client.write_fact_once(fact(id, store: "intr", key: "k:#{id}"))
        [:write, id, result, (result.inspect unless result[:status] == "committed_acked")]
      when 1
        k = rand(preloaded)
        result = client.latest_for(store: "pre", key: "pre:#{k}")
        [:read, "pre-#{k}", result, (result.inspect unless result.dig(:response, :fact, :id) == "pre-#{k}")]
      else
        result = client.ping
        [:ping, nil, result, (result.inspect unless result == { ok: true, status: "ok", committed: nil, retryable: false,
                                                                response: { ok: true, pong: true }, error: nil })]
      end
    end

    it "answers every completed call with its own answer, before, during and after the interrupts" do
      client = client_for(daemon, request_timeout: 5)
      pre = Array.new(preloaded) { |k| fact("pre-#{k}", store: "pre", key: "pre:#{k}") }
      expect(client.write_facts_once(pre).map { |r| r[:status] }.uniq).to eq(["committed_acked"])
      # Answers come 2 ms late, in order per connection: calls are waiting when hit.
      daemon.control({ "op" => "set", "delay_ms" => 2 })

      done = Queue.new
      lock = Mutex.new
      interrupts = { timeout: 0, kill: 0 }
      kill_joins = []
      target = 1_000
      deadline = monotonic + 40
      enough = -> { lock.synchronize { interrupts.values.sum >= target } || monotonic > deadline }

      timeouters = Array.new(4) do |t|
        Thread.new do
          n = 0
          until enough.call
            n += 1
            begin
              Timeout.timeout(0.0005 + (rand * 0.02)) { done << random_call(client, "t#{t}", n) }
            rescue Timeout::Error
              lock.synchronize { interrupts[:timeout] += 1 }
            end
          end
        end
      end
      killer = Thread.new do
        v = 0
        until enough.call
          v += 1
          victim = Thread.new do
            n = 0
            loop { done << random_call(client, "v#{v}", n += 1) }
          end
          sleep rand * 0.02
          joined, = timed do
            victim.kill
            victim.join(2)
          end
          kill_joins << joined
          lock.synchronize { interrupts[:kill] += 1 }
        end
      end
      # Calls never interrupted, interleaved with the interrupted ones on the same lane.
      steady = Array.new(2) do |t|
        Thread.new do
          n = 0
          done << random_call(client, "s#{t}", n += 1) until enough.call
        end
      end
      join_all([*timeouters, killer, *steady], 60)
      expect(monotonic).to be < deadline, "only #{interrupts.inspect} interrupts in 40 s"
      expect(interrupts[:timeout]).to be > 100
      expect(interrupts[:kill]).to be > 100
      expect(kill_joins.max).to be < 0.5
      expect(kill_joins.sort[kill_joins.size * 9 / 10]).to be < prompt

      during = Array.new(done.size) { done.pop }
      # Answers checked while the interrupts went on (a batch checks one per fact). Few:
      # every interrupted call leaves its slot to a late answer, and answers come 2 ms
      # apart per connection, so most of the lane's time goes to the dead slots (19 to 33
      # on a loaded machine, before and after lanes waited in recv).
      expect(during.sum { |kind, id, *| kind == :batch ? id.size : 1 }).to be >= 10
      expect(during.filter_map(&:last)).to be_empty

      daemon.control({ "op" => "set", "delay_ms" => 0 })
      after_threads = Array.new(4) { |t| Thread.new { Array.new(250) { |n| random_call(client, "after#{t}", n) } } }
      after = join_all(after_threads, 60).flatten(1)
      expect(after.size).to eq(1_000)
      expect(after.filter_map(&:last)).to be_empty

      writes = (during + after).flat_map do |kind, id, result, _|
        case kind
        when :write then [[id, result]]
        when :batch then id.zip(result)
        else []
        end
      end
      expect(writes.size).to be > 300
      expect((during + after).count { |kind, *| kind == :batch }).to be >= 48
      expect_writes_match_read_back(client, "intr", writes)
      expect(daemon_status(daemon)["connections_accepted"]).to be <= 2
    end
  end
end
