# frozen_string_literal: true

require "spec_helper"
require "open3"
require "rbconfig"
require "tmpdir"

# System calls the calling thread makes per request, counted with strace: on the VMs
# we run on every system call costs microseconds, and a count, unlike a time, does not
# move with the machine's load. A child Ruby runs each loop under `strace -f` against a
# test daemon in the `real` profile (three sends per answer, like the real daemon) that
# runs outside the trace; only the child's main thread counts, between two marker
# calls. The ceilings are today's counts plus a little headroom: lower them when the
# path gets cheaper. bench/request_path.rb has the CPU times.
module TbackendSpec
  # The child process and the trace reading of the system-call counts below.
  module Syscalls
    STRACE = ["/usr/bin/strace", "/bin/strace"].find { |path| File.executable?(path) }
    ROOT = File.expand_path("../..", __dir__)
    MARK = "/acts_as_tbackend-syscalls"
    COUNT = 200

    # The child: configures the client for the daemon on ARGV[0], warms the path up, then
    # runs ARGV[1]'s loop COUNT times between the two markers.
    CHILD = <<~RUBY.freeze
      require "acts_as_tbackend"
      port, loop_name = ARGV
      ActsAsTbackend.configure do |c|
        c.host = "127.0.0.1"
        c.port = Integer(port)
        c.spool_path = ENV["SYSCALLS_SPOOL"]
      end
      run = "\#{loop_name}-\#{Process.pid}"
      fact = ->(i) { ActsAsTbackend::Fact.build(id: "\#{run}-\#{i}", store: "syscalls", key: "k\#{i}", value: { "n" => i }) }
      step =
        case loop_name
        when "write"
          ->(i) { ActsAsTbackend.client.write_fact_once(fact.(i))[:ok] || raise("write failed") }
        when "enqueue"
          ->(i) { ActsAsTbackend.async_writer.enqueue(fact.(i))[:ok] || raise("enqueue failed") }
        when "plain_create", "mirrored_create"
          require "active_record"
          require "acts_as_tbackend/extension"
          require "support/database"
          TbackendSpec::Database.connect(:sqlite)
          ActiveRecord::Schema.verbose = false
          ActiveRecord::Schema.define { create_table(:orders) { |t| t.string :status; t.integer :total; t.timestamps } }
          model = Class.new(ActiveRecord::Base) { self.table_name = "orders" }
          Object.const_set(:Order, model)
          model.acts_as_tbackend(store: "syscalls", async: false) if loop_name == "mirrored_create"
          ->(i) { model.create!(status: "order \#{i}", total: i) }
        end
      #{COUNT}.times { |i| step.(-i - 1) }
      ActsAsTbackend.async_writer.flush(timeout: 10) if loop_name == "enqueue"
      File.exist?("#{MARK}-start")
      #{COUNT}.times(&step)
      File.exist?("#{MARK}-end")
      ActsAsTbackend.async_writer.flush(timeout: 10) if loop_name == "enqueue"
      ActsAsTbackend.reset!
    RUBY
  end
end

RSpec.describe "acts_as_tbackend: system calls per request" do
  let(:syscalls) { TbackendSpec::Syscalls }

  # System calls per iteration of `loop_name` on the child's main thread, by name.
  def syscalls_per_call(loop_name, env = {})
    Dir.mktmpdir("syscalls") do |dir|
      trace = File.join(dir, "trace")
      out, status = Open3.capture2e(env, syscalls::STRACE, "-f", "-qq", "-o", trace, RbConfig.ruby,
                                    "-I", File.join(syscalls::ROOT, "lib"), "-I", File.join(syscalls::ROOT, "spec"),
                                    "-e", syscalls::CHILD, @daemon.port.to_s, loop_name)
      raise "the #{loop_name} child failed under strace:\n#{out}" unless status.success?

      per_call = count_between_markers(File.readlines(trace)).transform_values { |n| n.to_f / syscalls::COUNT }
      per_call.default = 0
      per_call
    end
  end

  def count_between_markers(lines)
    main = lines.first[/\A\d+/]
    counts = Hash.new(0)
    inside = false
    lines.each do |line|
      next unless line.start_with?("#{main} ")

      if line.include?("#{syscalls::MARK}-")
        inside = line.include?("#{syscalls::MARK}-start")
        next
      end
      name = line[/\A\d+ +([a-z_0-9]+)\(/, 1]
      counts[name] += 1 if inside && name
    end
    counts
  end

  def total(counts)
    counts.values.sum.round(2)
  end

  # What the process does now and then whatever runs (malloc's mmap, the GC's clock).
  def incidental(counts, *named)
    counts.except(*named).values.sum
  end

  def report(label, counts)
    puts format("system calls per %<label>s: %<total>.2f %<counts>s", label: label, total: total(counts),
                                                                      counts: counts.transform_values { |n| n.round(2) })
  end

  before { skip "strace is not installed (bin/setup installs it)" unless syscalls::STRACE }

  around { |example| TbackendSpec::TestDaemon.with(profile: :real) { |d| (@daemon = d) && example.run } }

  it "makes one sendto, at most two recvfrom, no getpid and next to no ppoll per warm write_fact_once" do
    counts = syscalls_per_call("write")
    report("write_fact_once", counts)
    expect(counts["getpid"]).to eq(0)
    expect(counts["sendto"]).to eq(1)
    # A blocking recv for the answer's head, a MSG_WAITALL one for the rest when it comes
    # in pieces (2.0 today); a wait longer than REST_WAIT (2 ms, lane/conn.rs) adds a
    # recv and goes on in ppoll. Ceilings per kind, not on the sum: the sum moved over a
    # line with the process's clock reads, which are not the write's.
    expect(counts["recvfrom"]).to be <= 2.25
    expect(counts["ppoll"]).to be <= 0.25
    expect(incidental(counts, "sendto", "recvfrom", "ppoll")).to be <= 0.1
  end

  it "enqueues without a system call, or with one write to the spool, beyond a wake of a sleeping flusher" do
    counts = syscalls_per_call("enqueue")
    report("enqueue", counts)
    expect(counts["write"]).to eq(0)
    expect(counts["futex"]).to be <= 1
    expect(incidental(counts, "futex")).to be <= 0.1

    Dir.mktmpdir("spool") do |spool|
      counts = syscalls_per_call("enqueue", "SYSCALLS_SPOOL" => spool)
      report("enqueue with a spool", counts)
      expect(counts["write"]).to eq(1)
      expect(counts["futex"]).to be <= 1
      expect(incidental(counts, "write", "futex")).to be <= 0.1
    end
  end

  it "adds at most 3.5 system calls to a synchronously mirrored create (one write, and Rails 6.1's getpid)" do
    plain = syscalls_per_call("plain_create")
    mirrored = syscalls_per_call("mirrored_create")
    report("plain create", plain)
    report("mirrored create", mirrored)
    # Rails 6.1 checks the pid on every `connection` (ActiveSupport::ForkTracker), and
    # the mirror asks for the record's connection once; later Rails hook Process._fork.
    expect(mirrored["getpid"] - plain["getpid"]).to be <= 1
    expect(mirrored["ppoll"]).to be <= 0.25
    expect(total(mirrored) - total(plain)).to be <= 3.5
  end
end
