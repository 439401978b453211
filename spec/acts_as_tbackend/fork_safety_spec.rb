# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/tcb"

module TbackendSpec
  # Counts the resets of one object, in the process where they happen (a child starts
  # with its parent's count).
  module CountsResets
    def after_fork
      @resets = resets + 1
      super
    end

    def resets
      @resets || 0
    end
  end
end

# Issue 12: fork handling in one place. Whatever holds per-process state registers with
# ForkSafety, and one Process._fork hook resets each registered object in the child,
# once per fork; an object built in a child registers there and is reset by the child's
# own forks.
RSpec.describe ActsAsTbackend::ForkSafety, if: Process.respond_to?(:fork) do
  include_context "client spec"

  with_daemon

  # A registered object with nothing to reset but its count.
  def counter
    ActsAsTbackend::ForkSafety.register(Object.new.tap { |o| o.define_singleton_method(:after_fork) { nil } })
  end

  def counted(object)
    object.singleton_class.prepend(TbackendSpec::CountsResets)
    object
  end

  # Runs the block in a forked child; returns its value (or what it raised, as a String).
  def in_child
    reader, writer = IO.pipe
    pid = Process.fork do
      reader.close
      value = begin
        yield
      rescue Exception => e # rubocop:disable Lint/RescueException
        "#{e.class}: #{e.message}\n#{e.backtrace&.first(5)&.join("\n")}"
      end
      writer.write(Marshal.dump(value))
      writer.close
      exit!(0)
    end
    writer.close
    value = Marshal.load(reader.read) # rubocop:disable Security/MarshalLoad
    reader.close
    Process.waitpid(pid)
    value
  end

  it "resets every registered object exactly once per fork, in the child only" do
    client = counted(client_for(daemon))
    expect(client.ping[:status]).to eq("ok")
    writer = counted(ActsAsTbackend.async_writer)
    bus = counted(TCB::EventBus.new)
    plain = counted(counter)
    ActsAsTbackend::ForkSafety.register(plain) # twice: still one entry
    objects = { client: client, writer: writer, bus: bus, plain: plain }
    expect(objects.values).to all(satisfy { |o| ActsAsTbackend::ForkSafety.registered?(o) })

    child = in_child do
      first = objects.transform_values(&:resets)
      grandchild = in_child { objects.transform_values(&:resets) }
      {
        first: first, grandchild: grandchild, after_grandchild: objects.transform_values(&:resets),
        pid: ActsAsTbackend::ForkSafety.pid == Process.pid,
        # The memoised writer was the parent's: the child builds its own.
        own_writer: !ActsAsTbackend.async_writer.equal?(writer),
        writer_ok: ActsAsTbackend.async_writer.enqueue(fact("from-child"))[:status] == "enqueued" &&
          ActsAsTbackend.async_writer.flush(timeout: 10)
      }
    end

    once = { client: 1, writer: 1, bus: 1, plain: 1 }
    expect(child).to eq(first: once, grandchild: once.transform_values { 2 }, after_grandchild: once,
                        pid: true, own_writer: true, writer_ok: true)
    expect(objects.transform_values(&:resets)).to eq(once.transform_values { 0 })
    expect(ActsAsTbackend::ForkSafety.pid).to eq(Process.pid)
    expect(ActsAsTbackend.async_writer).to equal(writer)
  ensure
    bus&.shutdown(timeout: 1)
  end

  it "resets an object registered in a child after the fork, and that object works in the child and in " \
     "the child's own forks" do
    config = config_with(port: daemon.port, request_timeout: 2.0)
    child = in_child do
      client = counted(ActsAsTbackend::Client.new(config))
      late = counted(counter)
      first = client.write_fact_once(fact("late-1"))[:status]
      grandchild = in_child do
        { write: client.write_fact_once(fact("late-2"))[:status], connections: client.stats[:connections_opened],
          resets: [client.resets, late.resets] }
      end
      { registered: ActsAsTbackend::ForkSafety.registered?(client), first: first, grandchild: grandchild,
        again: client.write_fact_once(fact("late-3"))[:status], resets: [client.resets, late.resets],
        connections: client.stats[:connections_opened] }
    end
    expect(child).to eq(
      registered: true, first: "committed_acked",
      # The grandchild's own connection, not the child's.
      grandchild: { write: "committed_acked", connections: 1, resets: [1, 1] },
      again: "committed_acked", resets: [0, 0], connections: 1
    )
    expect(daemon_status(daemon)["connections_accepted"]).to eq(2)
  end

  it "keeps a client that was shut down before the fork shut down in the child" do
    client = ActsAsTbackend::Client.new(config_with(port: daemon.port))
    client.shutdown
    expect(in_child { [client.ping[:status], client.stats] }).to eq(["unavailable", { shut_down: true }])
    expect(daemon_status(daemon)["connections_accepted"]).to eq(0)
  end

  it "resets after Process.daemon too, which forks without Process._fork" do
    plain = counted(counter)
    reader, writer = IO.pipe
    pid = Process.fork do
      reader.close
      Process.daemon(true, true) # the child exits here; its daemonized copy goes on
      writer.write(Marshal.dump([plain.resets, ActsAsTbackend::ForkSafety.pid == Process.pid]))
      writer.close
      exit!(0)
    end
    writer.close
    Process.waitpid(pid)
    # Read to the end: the daemonized process (not our child) has written and exited.
    expect(Marshal.load(reader.read)).to eq([2, true]) # rubocop:disable Security/MarshalLoad
  ensure
    reader&.close
  end

  it "resets the others when one object's reset raises, and says which failed" do
    failing = Object.new
    failing.define_singleton_method(:after_fork) { raise "boom" if @armed }
    failing.instance_variable_set(:@armed, true)
    ActsAsTbackend::ForkSafety.register(failing)
    plain = counted(counter)
    reader, writer = IO.pipe
    warnings, stderr = IO.pipe
    stderr.sync = true
    saved = $stderr
    $stderr = stderr # the child's: the hook runs before fork returns there
    pid = Process.fork do
      reader.close
      writer.write(Marshal.dump(plain.resets))
      writer.close
      exit!(0)
    end
    $stderr = saved
    [writer, stderr].each(&:close)
    resets = Marshal.load(reader.read) # rubocop:disable Security/MarshalLoad
    Process.waitpid(pid)
    expect(resets).to eq(1)
    expect(warnings.read).to eq("acts_as_tbackend: after fork, resetting Object failed: RuntimeError: boom\n")
  ensure
    $stderr = saved if saved
    [reader, warnings].each { |io| io&.close }
    failing&.instance_variable_set(:@armed, false)
  end
end
