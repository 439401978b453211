# frozen_string_literal: true

require "spec_helper"
require "tempfile"
require "tmpdir"
require "active_support"
require "active_support/notifications"
require "acts_as_tbackend/rails/log_subscriber"
require_relative "async_helpers"

# Issue 12: what the native writer thread has to say reaches Ruby as ActiveSupport
# notifications (and, through the log subscriber, the app's log): facts it gives up, its
# pauses while the daemon is unreachable, spool errors and segments it adopts. Stderr
# is the last resort.
RSpec.describe "The async writer's events" do
  include_context "async spec"
  include TbackendSpec::AppLog
  with_daemon

  # The notifications published during the block (from the writer's events thread or a
  # flush); the block gets the list as it grows.
  def capture(pattern = /\.acts_as_tbackend\z/)
    events = []
    lock = Mutex.new
    subscriber = ActiveSupport::Notifications.subscribe(pattern) do |*args|
      lock.synchronize { events << ActiveSupport::Notifications::Event.new(*args) }
    end
    yield events
    lock.synchronize { events.dup }
  ensure
    ActiveSupport::Notifications.unsubscribe(subscriber)
  end

  def named(events, name)
    events.select { |e| e.name == "#{name}.acts_as_tbackend" }
  end

  # What the process (Ruby and native code alike) writes to stderr during the block.
  def stderr_of
    Tempfile.create("stderr") do |file|
      saved = $stderr.dup
      begin
        $stderr.reopen(file.path, "w")
        yield
      ensure
        $stderr.reopen(saved)
        saved.close
      end
      File.read(file.path)
    end
  end

  # The daemon holds v1 of `id`; the writer then sends v2: a conflict, given up at once.
  def conflict(writer, id, store: "conflicts")
    ActsAsTbackend.client.write_fact_once(fact(id, store: store, value: { "v" => 1 }))
    writer.enqueue(fact(id, store: store, value: { "v" => 2, "secret" => "s3cr3t" }))
    expect(writer.flush(timeout: 10)).to be(true)
  end

  def events_threads
    Thread.list.select { |t| t.name == ActsAsTbackend::AsyncWriter::EVENTS_THREAD }
  end

  def events_thread
    events_threads.first
  end

  it "publishes a conflicting fact as dead_letter.acts_as_tbackend, as MirrorRetryJob does, and nothing on stderr" do
    Dir.mktmpdir do |dir|
      writer = async_writer_for(daemon, spool_path: dir)
      events = nil
      log = nil
      err = stderr_of { log = app_log { events = capture { conflict(writer, "conflicted") } } }
      expect(named(events, :dead_letter).map(&:payload)).to eq(
        [{ fact_id: "conflicted", store: "conflicts", status: "duplicate_fact_id_conflict", attempts: 1,
           reason: "conflict", kept: File.join(dir, ActsAsTbackend::DeadLetters::FILE_NAME), via: "async_writer" }]
      )
      expect(log).to include("TBackend dead letter store=conflicts id=conflicted attempts=1 " \
                             "status=duplicate_fact_id_conflict via=async_writer")
      expect(err).to eq("")
      expect(events.map { |e| e.payload.inspect }.join + log).not_to include("s3cr3t")
    end
  end

  it "without a spool, the dead letter is kept nowhere; unheard, it is a stderr line" do
    writer = async_writer_for(daemon)
    events = nil
    err = stderr_of { events = capture(/\Adead_letter\./) { conflict(writer, "unkept") } }
    expect(named(events, :dead_letter).map(&:payload)).to contain_exactly(include(fact_id: "unkept", kept: nil))
    expect(err).to eq("")
    err = stderr_of { conflict(writer, "unheard") }
    expect(err).to include("fact not delivered (conflict): store=conflicts id=unheard")
    expect(err.lines.size).to eq(1)
  end

  it "publishes the writer pausing while the daemon is down and resuming once it is back" do
    writer = async_writer_for(daemon, retry_attempts: 1000)
    log = app_log do
      events = capture do |seen|
        daemon.kill!
        writer.enqueue(fact("during-outage", store: "outage"))
        expect(eventually(10) { named(seen, :writer_paused).any? }).to be(true)
        daemon.restart
        expect(writer.flush(timeout: 20)).to be(true)
      end
      paused = named(events, :writer_paused)
      expect(paused.size).to eq(1)
      expect(paused.first.payload).to include(host: "127.0.0.1", port: daemon.port, status: "unavailable", queued: 1)
      resumed = named(events, :writer_resumed)
      expect(resumed.size).to eq(1)
      expect(resumed.first.payload).to include(host: "127.0.0.1", port: daemon.port, queued: 0)
      expect(resumed.first.payload[:paused_for]).to be > 0
    end
    expect(log).to include("TBackend async writer paused: 127.0.0.1:#{daemon.port} unreachable (unavailable",
                           "TBackend async writer resumed: 127.0.0.1:#{daemon.port} answers again")
    expect(stored("outage").keys).to include("during-outage")
  end

  it "publishes the segment of a writer that left facts behind when the next one adopts it" do
    Dir.mktmpdir do |dir|
      writer = async_writer_for(daemon, spool_path: dir, retry_attempts: 1000)
      stall(daemon)
      3.times { |i| writer.enqueue(fact("left-#{i}", store: "left", key: "k")) }
      segment = writer.spool_segments.last
      stderr_of { expect(writer.shutdown(timeout: 0.2)).to be(false) }
      unstall(daemon)
      ActsAsTbackend.reset!
      events = nil
      log = app_log do
        events = capture do
          successor = async_writer_for(daemon, spool_path: dir)
          expect(successor.flush(timeout: 10)).to be(true)
        end
      end
      expect(named(events, :spool_adopt).map(&:payload)).to eq([{ segment: segment, facts: 3, spool_path: dir }])
      expect(log).to include("TBackend spool adopted #{segment}: 3 fact(s) of a process that died")
    end
  end

  it "publishes a dead-letter file that cannot be written as spool_error.acts_as_tbackend" do
    Dir.mktmpdir do |dir|
      # A directory where the file should be: the append fails (even as root).
      Dir.mkdir(File.join(dir, ActsAsTbackend::DeadLetters::FILE_NAME))
      writer = async_writer_for(daemon, spool_path: dir)
      events = nil
      log = app_log { events = capture { conflict(writer, "unkeepable") } }
      expect(named(events, :dead_letter).map(&:payload)).to contain_exactly(include(fact_id: "unkeepable", kept: nil))
      expect(named(events, :spool_error).map(&:payload)).to eq(
        [{ operation: "dead_letter", error: "Is a directory (os error 21)", count: 1, spool_path: dir }]
      )
      expect(log).to include("TBackend spool dead_letter failed in #{dir}: Is a directory")
    end
  end

  it "counts what does not fit while nothing publishes in events_dropped.acts_as_tbackend" do
    writer = async_writer_for(daemon)
    total = 1100
    facts = Array.new(total) { |i| fact("flood-#{i}", store: "flood", key: "k#{i}", value: { "v" => 1 }) }
    expect(ActsAsTbackend.client.write_facts_once(facts).map { |r| r[:status] }.uniq).to eq(["committed_acked"])
    gate = Queue.new
    # The first dead letter holds the events thread until the flood is in.
    held = ActiveSupport::Notifications.subscribe("dead_letter.acts_as_tbackend") do |*, payload|
      gate.pop if payload[:fact_id] == "gate"
    end
    events = nil
    log = app_log do
      events = capture do
        ActsAsTbackend.client.write_fact_once(fact("gate", store: "flood", value: { "v" => 1 }))
        writer.enqueue(fact("gate", store: "flood", value: { "v" => 2 }))
        expect(eventually(10) { gate.num_waiting == 1 }).to be(true)
        facts.each { |f| writer.enqueue(f.merge("value" => { "v" => 2 })) }
        expect(eventually(20) { writer.stats[:conflicts] == total + 1 }).to be(true)
        gate << :open
        expect(writer.flush(timeout: 10)).to be(true)
      end
    end
    expect(named(events, :events_dropped).map(&:payload)).to eq([{ count: total - 1024 }])
    expect(named(events, :dead_letter).size).to eq(1 + 1024)
    expect(log).to include("TBackend async writer: #{total - 1024} event(s) dropped (the event queue was full)")
  ensure
    ActiveSupport::Notifications.unsubscribe(held) if held
  end

  it "keeps publishing after a subscriber raises, saying so on stderr" do
    writer = async_writer_for(daemon)
    seen = Queue.new
    raising = ActiveSupport::Notifications.subscribe("dead_letter.acts_as_tbackend") do |*, payload|
      seen << payload[:fact_id]
      raise "subscriber bug"
    end
    err = stderr_of do
      conflict(writer, "first")
      expect(eventually(5) { events_thread&.status == "sleep" }).to be(true)
      conflict(writer, "second")
    end
    expect(Array.new(seen.size) { seen.pop }).to eq(%w[first second])
    expect(err).to include("a dead_letter.acts_as_tbackend subscriber raised RuntimeError: subscriber bug")
    expect(events_thread).to be_alive
  ensure
    ActiveSupport::Notifications.unsubscribe(raising) if raising
  end

  it "falls back to stderr once no Ruby thread publishes them" do
    writer = async_writer_for(daemon)
    thread = events_thread
    # Killed while it waits for events, as at exit or by a Thread#kill.
    expect(eventually(5) { thread.status == "sleep" }).to be(true)
    thread.kill
    thread.join(5)
    events = nil
    err = stderr_of { events = capture { conflict(writer, "orphaned") } }
    expect(named(events, :dead_letter)).to be_empty
    expect(err).to include("fact not delivered (conflict): store=conflicts id=orphaned")
  end

  it "falls back to stderr when its events thread is killed before it ever ran" do
    writer = async_writer_for(daemon)
    thread = events_thread
    # Nothing has let go of the GVL since the writer made it: it has not run yet.
    expect(thread.status).to eq("run")
    thread.kill
    expect(thread.join(5)).to be(thread)
    err = stderr_of { conflict(writer, "never-drained") }
    expect(err).to include("fact not delivered (conflict): store=conflicts id=never-drained")
  end

  it "runs one events thread per writer, fork-safe for Puma's preload check, ended by its shutdown" do
    writer = async_writer_for(daemon)
    thread = events_thread
    expect(thread).to be_alive
    expect(thread.thread_variable_get(:fork_safe)).to be(true)
    expect(writer.shutdown(timeout: 1)).to be(true)
    expect(thread).not_to be_alive
    expect(events_thread).to be_nil
  end

  it "gives a forked child's writer an events thread of its own, which publishes the child's events" do
    parent = async_writer_for(daemon)
    reader, pipe = IO.pipe
    pid = fork do
      reader.close
      child = ActsAsTbackend.async_writer
      published = capture(/\Adead_letter\./) { conflict(child, "child-conflict") }
      ids = published.map { |e| e.payload[:fact_id] }
      pipe.puts(JSON.generate(new_writer: !child.equal?(parent), threads: events_threads.size, ids: ids))
      ActsAsTbackend.shutdown_async_writer(timeout: 1)
      pipe.puts(JSON.generate(threads: events_threads.size))
    ensure
      exit!(0)
    end
    pipe.close
    report = JSON.parse(read_line(reader, 20))
    expect(report).to eq("new_writer" => true, "threads" => 1, "ids" => ["child-conflict"])
    expect(JSON.parse(read_line(reader, 20))).to eq("threads" => 0)
    expect(wait_exit(pid, 20)).to be_success
    expect(events_thread).to be_alive
    expect(parent.stats[:conflicts]).to eq(0)
  ensure
    reader&.close
  end
end
