# frozen_string_literal: true

require "spec_helper"

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

# Issue 12: fork handling in one place. One Process._fork hook resets each registered
# process-wide object in the child, once per fork; through the native core's registry
# that lets go of every client and async writer the parent built, however many have
# died, and one built in a child lets go in the child's own forks.
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

  # The sockets this process has open (Linux): their /proc/self/fd link targets.
  def open_sockets
    Dir["/proc/self/fd/*"].filter_map do |fd|
      target = File.readlink(fd)
      target if target.start_with?("socket:")
    rescue SystemCallError
      nil
    end
  end

  it "lets go of every client's and async writer's connections in the child before fork returns; the " \
     "parent keeps them, and the child builds its own on use" do
    before = open_sockets
    client = client_for(daemon)
    expect(client.ping[:status]).to eq("ok")
    writer = ActsAsTbackend.async_writer
    expect(writer.enqueue(fact("from-parent"))[:status]).to eq("enqueued")
    expect(writer.flush(timeout: 10)).to be(true)
    plain = counted(counter)
    # The client's lane and the writer's connection.
    theirs = open_sockets - before
    expect(theirs.size).to eq(2)

    child = in_child do
      inherited = theirs & open_sockets # first thing in the child, before any call
      grandchild = in_child { plain.resets }
      {
        inherited: inherited.size, resets: plain.resets, grandchild: grandchild,
        pid: ActsAsTbackend::ForkSafety.pid == Process.pid,
        # The memoised writer was the parent's: the child builds its own.
        own_writer: !ActsAsTbackend.async_writer.equal?(writer),
        writer_ok: ActsAsTbackend.async_writer.enqueue(fact("from-child"))[:status] == "enqueued" &&
          ActsAsTbackend.async_writer.flush(timeout: 10),
        client_ok: client.write_fact_once(fact("child-write"))[:status]
      }
    end

    expect(child).to eq(inherited: 0, resets: 1, grandchild: 2, pid: true,
                        own_writer: true, writer_ok: true, client_ok: "committed_acked")
    expect(plain.resets).to eq(0)
    expect(open_sockets).to include(*theirs)
    expect(ActsAsTbackend::ForkSafety.pid).to eq(Process.pid)
    expect(ActsAsTbackend.async_writer).to equal(writer)
    expect(client.write_fact_once(fact("parent-after"))[:status]).to eq("committed_acked")
    expect(client.stats[:connections_opened]).to eq(1)
  end

  it "lets a client built in a child work there, and go in the child's own forks" do
    config = config_with(port: daemon.port, request_timeout: 2.0)
    child = in_child do
      client = ActsAsTbackend::Client.new(config)
      first = client.write_fact_once(fact("late-1"))[:status]
      grandchild = in_child do
        { write: client.write_fact_once(fact("late-2"))[:status], connections: client.stats[:connections_opened] }
      end
      { first: first, grandchild: grandchild, again: client.write_fact_once(fact("late-3"))[:status],
        connections: client.stats[:connections_opened] }
    end
    expect(child).to eq(
      first: "committed_acked",
      # The grandchild's own connection, not the child's.
      grandchild: { write: "committed_acked", connections: 1 },
      again: "committed_acked", connections: 1
    )
    expect(daemon_status(daemon)["connections_accepted"]).to eq(2)
  end

  # Clients and writers die all the time (a Client per job, per test); the fork hook must
  # only ever reach live ones. Its registry was once an ObjectSpace::WeakMap, whose #keys
  # on Ruby 3.1 handed back freed objects: resetting one crashed the child.
  it "never reaches a client that has died" do
    config = config_with(port: daemon.port)
    outcome = in_child do
      2_000.times do
        20.times { ActsAsTbackend::Client.new(config) }
        Array.new(50) { "garbage" * 8 }
        ActsAsTbackend::ForkSafety.after_fork
      end
      :survived
    end
    expect(outcome).to eq(:survived)
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
