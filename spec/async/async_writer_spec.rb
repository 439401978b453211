# frozen_string_literal: true

require "spec_helper"
require "stringio"
require_relative "async_helpers"

# Issue 4, off the request path: enqueue hands the fact to the native queue and returns at
# once, whatever the daemon does; a native thread delivers it later, in order per key.
RSpec.describe ActsAsTbackend::AsyncWriter do
  include_context "async spec"

  context "with a test daemon" do
    with_daemon

    it "returns in microseconds while the daemon is stalled, where a synchronous write waits out its timeout" do
      writer = async_writer_for(daemon, retry_attempts: 1000)
      stall(daemon)
      # On a client of its own: the stalled daemon never answers that write, so the next
      # answer on its connection would be paired with it, and the read-back below would
      # wait in vain. (It passed on the module client while the writer, sending at once
      # into the stall, took over a second to flush: the lane replaced the connection.)
      sync_client = ActsAsTbackend::Client.new(ActsAsTbackend.config)
      sync_elapsed, sync = timed { sync_client.write_fact_once(fact(unique, store: "async"), timeout: 0.3) }
      sync_client.shutdown
      expect(sync[:status]).to eq("timeout_unknown")

      ids = Array.new(300) { |i| "stalled-#{i}" }
      elapsed = ids.each_with_index.map do |id, i|
        took, result = timed { writer.enqueue(fact(id, store: "async", key: "k#{i % 7}")) }
        expect(result).to eq(ok: true, status: "enqueued", committed: nil, retryable: false, response: nil, error: nil)
        took
      end
      median = elapsed.sort[elapsed.size / 2]
      # Typically 5-20 µs; the bounds only catch a wait on the daemon.
      expect(median).to be < 0.002
      expect(elapsed.max).to be < 0.1
      expect(sync_elapsed).to be > 50 * median
      expect(writer.stats[:delivered]).to eq(0)

      unstall(daemon)
      expect(writer.flush(timeout: 20)).to be(true)
      expect(stored("async").keys).to include(*ids)
      expect(writer.stats).to include(queued: 0, delivered: 300, dead: 0, failed: 0)
    end

    it "delivers everything after the daemon is killed and comes back" do
      writer = async_writer_for(daemon, retry_attempts: 1000)
      ids = Array.new(200) { |i| "outage-#{i}" }
      ids.first(50).each { |id| writer.enqueue(fact(id, store: "outage")) }
      daemon.kill!
      ids.drop(50).each { |id| expect(writer.enqueue(fact(id, store: "outage"))[:status]).to eq("enqueued") }
      expect(writer.flush(timeout: 0.3)).to be(false)
      daemon.restart
      expect(writer.flush(timeout: 20)).to be(true)
      # The daemon is ephemeral here: what it had before the kill is gone, and the
      # writer does not know; everything enqueued after the kill must be there.
      expect(stored("outage").keys).to include(*ids.drop(50))
      expect(writer.stats).to include(queued: 0, dead: 0)
    end

    it "writes each key's facts in enqueue order, also through retries" do
      writer = async_writer_for(daemon, retry_attempts: 1000)
      # Every 7th answer is lost (the connection closes after the write): retries of the
      # same fact id while later facts of the key wait their turn.
      daemon.control({ "op" => "set", "answer_fault" => { "kind" => "close", "after" => 5, "count" => 12 } })
      expected = Hash.new { |h, k| h[k] = [] }
      threads = Array.new(4) do |t|
        Thread.new do
          Array.new(40) do |n|
            key = "order:#{(t + n) % 5}"
            id = "order-#{t}-#{n}"
            # One thread per key at a time would hide races: several threads share keys,
            # so the order checked is each thread's order within a key.
            writer.enqueue(fact(id, store: "ordered", key: key, value: { "n" => n }))
            [key, t, id]
          end
        end
      end
      join_all(threads, 10).flatten(1).each { |key, t, id| expected[[key, t]] << id }
      expect(writer.flush(timeout: 20)).to be(true)
      facts = stored("ordered")
      expected.each do |(key, _t), ids|
        seqs = ids.map { |id| facts.fetch(id).first }
        expect(seqs).to eq(seqs.sort), "#{key}: stored out of enqueue order"
        expect(ids.map { |id| facts.fetch(id).last }.uniq).to eq([key])
      end
      expect(writer.stats[:retries]).to be > 0
    end

    it "reads back in order per key through facts_for", :gc_stress do
      writer = async_writer_for(daemon)
      ids = Array.new(30) { |n| "history-#{n}" }
      ids.each_with_index { |id, n| writer.enqueue(fact(id, store: "history", key: "order:1", value: { "n" => n })) }
      expect(writer.flush(timeout: 10)).to be(true)
      facts = ActsAsTbackend.client.facts_for(store: "history", key: "order:1")[:response][:facts]
      expect(facts.sort_by { |f| f[:seq_id] }.map { |f| f[:id] }).to eq(ids)
    end

    it "flush answers false on a timeout while facts wait, true once they are settled; stats count" do
      writer = async_writer_for(daemon, retry_attempts: 1000)
      expect(writer.stats.keys).to include(:queued, :spooled, :delivered, :replays, :conflicts, :failed, :dead, :retries,
                                           :dropped)
      first = fact(unique, store: "stats")
      expect(ActsAsTbackend.client.write_fact_once(first)[:status]).to eq("committed_acked")
      clash = fact(first["id"], store: "stats", value: { "other" => true })
      stall(daemon)
      writer.enqueue(first)
      writer.enqueue(clash)
      writer.enqueue(fact(unique, store: "stats"))
      took, flushed = timed { writer.flush(timeout: 0.2) }
      expect(flushed).to be(false)
      expect(took).to be_between(0.15, 2)
      expect(writer.stats[:queued]).to eq(3)
      unstall(daemon)
      expect(writer.flush(timeout: 10)).to be(true)
      stats = writer.stats
      expect(stats).to include(queued: 0, enqueued: 3, delivered: 2, conflicts: 1, dead: 0)
      expect(stats[:retries]).to be >= 1
      # `first` replays. The third fact may too: a send that timed out during the stall is
      # still queued in the daemon, which commits it on unstall, so the retry replays it.
      expect(stats[:replays]).to be_between(1, 2)
      expect(writer.flush(timeout: 0.01)).to be(true)
    end

    it "holds a partial round for linger; flush and shutdown send it at once; stats count the rounds" do
      writer = async_writer_for(daemon, linger: 60)
      ids = Array.new(3) { unique("linger") }
      ids.each { |id| writer.enqueue(fact(id, store: "linger")) }
      sleep 0.2
      expect(writer.stats).to include(delivered: 0, batches: 0)
      took, flushed = timed { writer.flush(timeout: 30) }
      expect(flushed).to be(true)
      expect(took).to be < 5
      expect(writer.stats).to include(delivered: 3, batches: 1)
      writer.enqueue(fact(unique("linger"), store: "linger"))
      took, drained = timed { writer.shutdown(timeout: 30) }
      expect([drained, took]).to match([true, be < 5])
      expect(stored("linger").size).to eq(4)
    end

    it "sends each fact as soon as the flusher sees it with linger 0" do
      writer = async_writer_for(daemon, linger: 0)
      writer.enqueue(fact(unique("eager"), store: "eager"))
      deadline = monotonic + 10
      sleep 0.01 until writer.stats[:delivered] == 1 || monotonic > deadline
      expect(writer.stats).to include(delivered: 1, batches: 1)
    end

    it "lets Timeout interrupt a flush at once" do
      writer = async_writer_for(daemon, retry_attempts: 1000)
      stall(daemon)
      writer.enqueue(fact(unique, store: "async"))
      took, = timed do
        expect { Timeout.timeout(0.2) { writer.flush(timeout: 30) } }.to raise_error(Timeout::Error)
      end
      expect(took).to be < 1.5
    end

    context "when the queue is full" do
      def fill(writer, count)
        count.times { |i| expect(writer.enqueue(fact("fill-#{i}", store: "full"))[:status]).to eq("enqueued") }
      end

      it "blocks up to queue_block_timeout, then answers queue_full" do
        writer = async_writer_for(daemon, queue_size: 3, queue_block_timeout: 0.2, retry_attempts: 1000)
        stall(daemon)
        fill(writer, 3)
        took, result = timed { writer.enqueue(fact("late", store: "full")) }
        expect(result).to include(ok: false, status: "queue_full", committed: false, retryable: true)
        expect(result[:error]).to include("ActsAsTbackend::QueueFull")
        expect(took).to be_between(0.15, 2)
      end

      it "blocks until room appears (the GVL is free meanwhile)" do
        writer = async_writer_for(daemon, queue_size: 3, queue_block_timeout: 10, retry_attempts: 1000)
        stall(daemon)
        fill(writer, 3)
        waiter = Thread.new { writer.enqueue(fact("waited", store: "full")) }
        ticks = 0
        ticks += 1 while waiter.join(0.01).nil? && ticks < 20
        expect(waiter).to be_alive
        unstall(daemon)
        expect(join_all([waiter], 10).first[:status]).to eq("enqueued")
        expect(writer.flush(timeout: 10)).to be(true)
        expect(stored("full").keys).to include("waited", "fill-0", "fill-1", "fill-2")
      end

      it "is interrupted promptly by Thread#raise while it blocks" do
        writer = async_writer_for(daemon, queue_size: 1, queue_block_timeout: 30, retry_attempts: 1000)
        stall(daemon)
        fill(writer, 1)
        waiter = Thread.new { writer.enqueue(fact("never", store: "full")) }
        waiter.report_on_exception = false
        sleep 0.05 while waiter.status == "run"
        took, = timed do
          waiter.raise(RuntimeError, "interrupted")
          expect { waiter.join(5) }.to raise_error(RuntimeError, "interrupted")
        end
        expect(took).to be < 1
      end

      it "drops with one rate-limited warning on $stderr", :gc_stress do
        writer = async_writer_for(daemon, queue_size: 2, queue_full_policy: "drop", retry_attempts: 1000)
        stall(daemon)
        fill(writer, 2)
        captured = StringIO.new
        original = $stderr
        $stderr = captured
        results = begin
          Array.new(3) { |i| writer.enqueue(fact("dropped-#{i}", store: "full")) }
        ensure
          $stderr = original
        end
        expect(results.map { |r| r[:status] }).to eq(%w[dropped dropped dropped])
        expect(results.first).to include(ok: false, retryable: true)
        lines = captured.string.lines
        expect(lines.size).to eq(1)
        expect(lines.first).to include("dropped 1 fact(s)", "queue_full_policy \"drop\"")
        expect(writer.stats[:dropped]).to eq(3)
      end

      it "raises ActsAsTbackend::QueueFull under the raise policy" do
        writer = async_writer_for(daemon, queue_size: 2, queue_full_policy: :raise, retry_attempts: 1000)
        stall(daemon)
        fill(writer, 2)
        expect { writer.enqueue(fact("raised", store: "full")) }.to raise_error(ActsAsTbackend::QueueFull) { |e|
          expect(e).to be_a(ActsAsTbackend::Error)
          expect(e.retryable?).to be(true)
        }
      end
    end

    it "answers an invalid fact with the soft error a synchronous write gives, and queues nothing", :gc_stress do
      writer = async_writer_for(daemon)
      bad = fact(unique, store: "async", value: { "x" => Float::NAN })
      expect(writer.enqueue(bad)).to eq(ActsAsTbackend.client.write_fact_once(bad))
      expect(writer.enqueue({ "store" => "no such store!", "id" => "x" })).to include(status: "error", retryable: false)
      expect(writer.enqueue("not a hash")).to include(status: "error")
      expect(writer.stats[:enqueued]).to eq(0)
    end

    it "answers disabled when the connector is switched off" do
      writer = async_writer_for(daemon, enabled: false)
      expect(writer.enqueue(fact(unique))).to eq(ok: true, status: "disabled", committed: nil, retryable: false,
                                                 response: nil, error: nil)
      expect(writer.stats[:enqueued]).to eq(0)
    end

    it "dead-letters a fact that exhausts retry_attempts: one line on stderr without values, the fact beside the spool" do
      Dir.mktmpdir do |dir|
        ActsAsTbackend.configure { |c| c.token = nil }
        writer = async_writer_for(daemon, spool_path: dir, retry_attempts: 3, request_timeout: 0.2)
        # Every answer is lost: timeout_unknown, an attempt each time.
        daemon.control({ "op" => "set", "answer_fault" => { "kind" => "close", "count" => 0 } })
        log = File.join(dir, "stderr.log")
        saved = $stderr.dup
        begin
          $stderr.reopen(log, "w")
          writer.enqueue(fact("doomed", store: "dead", value: { "secret_value" => "s3cr3t" }))
          expect(writer.flush(timeout: 10)).to be(true)
        ensure
          $stderr.reopen(saved)
        end
        expect(writer.stats).to include(dead: 1, delivered: 0, queued: 0)
        line = File.read(log)
        expect(line.lines.size).to eq(1)
        expect(line).to include("fact not delivered (exhausted)", "store=dead", "id=doomed", "attempts=3")
        expect(line).not_to include("s3cr3t")
        letter = JSON.parse(File.read(File.join(dir, "dead-letter.jsonl")))
        expect(letter).to include("reason" => "exhausted", "status" => "timeout_unknown", "attempts" => 3, "id" => "doomed")
        expect(letter["fact"]).to include("id" => "doomed", "value" => { "secret_value" => "s3cr3t" })
      end
    end

    it "spools a fact before enqueue returns, and drops it from the spool once delivered" do
      Dir.mktmpdir do |dir|
        %w[batch always never].each do |mode|
          writer = async_writer_for(daemon, spool_path: dir, spool_fsync: mode, retry_attempts: 1000)
          stall(daemon)
          id = "spooled-#{mode}"
          expect(writer.enqueue(fact(id, store: "spool"))[:status]).to eq("enqueued")
          segment = writer.spool_segments.last
          expect(File.binread(segment)).to include(id)
          expect(writer.stats[:spooled]).to eq(1)
          unstall(daemon)
          expect(writer.flush(timeout: 10)).to be(true)
          expect(writer.stats).to include(spooled: 0, delivered: 1)
          ActsAsTbackend.shutdown_async_writer(timeout: 1)
          expect(Dir[File.join(dir, "*.spool")]).to be_empty
        end
        expect(stored("spool").keys).to include("spooled-batch", "spooled-always", "spooled-never")
      end
    end

    it "keeps what a shutdown could not deliver in the spool; the next writer delivers it" do
      Dir.mktmpdir do |dir|
        writer = async_writer_for(daemon, spool_path: dir, retry_attempts: 1000)
        stall(daemon)
        ids = Array.new(3) { |i| "kept-#{i}" }
        ids.each { |id| writer.enqueue(fact(id, store: "kept", key: "k")) }
        captured = StringIO.new
        original = $stderr
        $stderr = captured
        begin
          expect(writer.shutdown(timeout: 0.2)).to be(false)
        ensure
          $stderr = original
        end
        expect(captured.string).to include("3 fact(s) undelivered", "kept in the spool #{dir}")
        unstall(daemon)
        ActsAsTbackend.reset!
        successor = async_writer_for(daemon, spool_path: dir)
        expect(successor).not_to be(writer)
        expect(successor.stats[:adopted]).to eq(3)
        expect(successor.flush(timeout: 10)).to be(true)
        facts = stored("kept")
        expect(ids.map { |id| facts.fetch(id).first }).to eq(ids.map { |id| facts.fetch(id).first }.sort)
      end
    end

    it "reset! shuts the writer down with a bounded flush; the next call gets a new one" do
      writer = async_writer_for(daemon)
      writer.enqueue(fact("before-reset", store: "reset"))
      ActsAsTbackend.reset!
      expect(stored("reset").keys).to include("before-reset")
      expect(writer.enqueue(fact(unique, store: "reset"))).to include(ok: false, status: "unavailable", retryable: true)
      expect(ActsAsTbackend.async_writer).not_to be(writer)
      expect(ActsAsTbackend.async_writer).to be(ActsAsTbackend.async_writer)
    end

    it "builds a new writer when the config is replaced, shutting the old one down first" do
      writer = async_writer_for(daemon)
      writer.enqueue(fact("old-config", store: "reconfigured"))
      replacement = ActsAsTbackend::Config.new.tap { |c| c.port = daemon.port }
      ActsAsTbackend.instance_variable_set(:@config, replacement)
      successor = ActsAsTbackend.async_writer
      expect(successor).not_to be(writer)
      expect(successor.config).to be(replacement)
      expect(writer.enqueue(fact(unique, store: "reconfigured"))[:status]).to eq("unavailable")
      expect(stored("reconfigured").keys).to include("old-config")
    end

    it "reset! with the daemon stalled returns within the bound and warns how much was left" do
      writer = async_writer_for(daemon, retry_attempts: 1000)
      stall(daemon)
      writer.enqueue(fact(unique, store: "reset"))
      captured = StringIO.new
      original = $stderr
      $stderr = captured
      took, = timed { ActsAsTbackend.shutdown_async_writer(timeout: 0.3) }
      $stderr = original
      expect(took).to be < 3
      expect(captured.string).to include("1 fact(s) undelivered", "lost (no spool_path)")
    end

    it "flushes at exit: a process that enqueues and exits delivers everything" do
      client_for(daemon)
      script = <<~RUBY
        require "acts_as_tbackend"
        ActsAsTbackend.configure { |c| c.port = #{daemon.port} }
        50.times do |i|
          fact = ActsAsTbackend::Fact.build(id: "exit-\#{i}", store: "at_exit", key: "k", value: { "i" => i })
          ActsAsTbackend.async_writer.enqueue(fact)
        end
        puts ActsAsTbackend.async_writer.stats[:enqueued]
      RUBY
      pid, out = spawn_ruby(script)
      expect(read_line(out, 20).to_i).to eq(50)
      expect(wait_exit(pid, 20)).to be_success
      expect(stored("at_exit").keys).to match_array(Array.new(50) { |i| "exit-#{i}" })
    end
  end

  it "answers config_error, naming the problem, when the spool directory cannot be used" do
    Dir.mktmpdir do |dir|
      file = File.join(dir, "a-file")
      File.write(file, "")
      ActsAsTbackend.configure { |c| c.spool_path = File.join(file, "spool") }
      result = ActsAsTbackend.async_writer.enqueue(fact(unique))
      expect(result).to include(ok: false, status: "config_error", retryable: false)
      expect(result[:error]).to include("spool")
    end
  end

  it "answers config_error for a malformed setting in ENV" do
    ActsAsTbackend.instance_variable_set(:@config, ActsAsTbackend::Config.from_env("TBACKEND_QUEUE_SIZE" => "lots"))
    result = ActsAsTbackend.async_writer.enqueue(fact(unique))
    expect(result).to include(ok: false, status: "config_error")
    expect(result[:error]).to include("TBACKEND_QUEUE_SIZE")
  end
end
