# frozen_string_literal: true

require "spec_helper"
require_relative "async_helpers"

# Issue 4, fork (Puma cluster, Sidekiq): a forked child gets a fresh writer. It never
# delivers the parent's in-memory queue (the parent does) and never touches the parent's
# spool segment.
RSpec.describe "AsyncWriter across fork", if: Process.respond_to?(:fork) && File.directory?("/proc/self/fd") do
  include_context "async spec"

  with_daemon

  # The files this process has open (Linux).
  def open_files
    Dir["/proc/self/fd/*"].filter_map do |fd|
      File.readlink(fd)
    rescue SystemCallError
      nil
    end
  end

  # Runs `work` in a forked child; returns what it wrote to its result file as JSON.
  def in_child(dir, &work)
    path = File.join(dir, "child-#{SecureRandom.hex(4)}.json")
    pid = Process.fork do
      File.write(path, JSON.generate(work.call))
      exit!(0)
    rescue Exception => e # rubocop:disable Lint/RescueException
      File.write(path, JSON.generate("error" => "#{e.class}: #{e.message}"))
      exit!(1)
    end
    [pid, path]
  end

  it "gives the child a fresh writer; each process delivers only its own facts" do
    Dir.mktmpdir do |dir|
      spool = File.join(dir, "spool")
      parent = async_writer_for(daemon, spool_path: spool, retry_attempts: 1000)
      parent_segments = parent.spool_segments
      expect(parent_segments.size).to eq(1)
      stall(daemon)
      parent_ids = Array.new(5) { |i| "parent-#{i}" }
      parent_ids.each { |id| parent.enqueue(fact(id, store: "forked")) }

      pid, path = in_child(dir) do
        child = ActsAsTbackend.async_writer
        ids = Array.new(3) { |i| "child-#{i}" }
        ids.each { |id| child.enqueue(fact(id, store: "forked")) }
        flushed = child.flush(timeout: 20)
        { "fresh" => !child.equal?(parent), "pid" => child.pid == Process.pid, "flushed" => flushed,
          "stats" => child.stats, "segments" => child.spool_segments,
          "parent_segment_kept" => parent_segments.all? { |s| File.exist?(s) },
          "holds_parent_segment" => open_files.intersect?(parent_segments) }
      end
      # The child has built its writer by now or soon; its facts wait for the daemon too.
      sleep 0.2
      unstall(daemon)
      expect(wait_exit(pid, 30)).to be_success
      child = JSON.parse(File.read(path))
      expect(child).to include("fresh" => true, "pid" => true, "flushed" => true, "parent_segment_kept" => true,
                               "holds_parent_segment" => false)
      expect(child["stats"]).to include("enqueued" => 3, "delivered" => 3, "adopted" => 0)
      expect(child["stats"]["replays"]).to be <= child["stats"]["retries"]
      expect(child["segments"] & parent_segments).to be_empty

      expect(parent.flush(timeout: 20)).to be(true)
      # Each process delivered its own facts and nothing else (delivered == enqueued, none
      # adopted). Writes timed out during the stall and were retried; a retry can land as
      # a replay when the daemon executed the timed-out attempt as the stall was lifted,
      # so replays may occur, but never more than the process's own retries.
      stats = parent.stats
      expect(stats).to include(enqueued: 5, delivered: 5)
      expect(stats[:replays]).to be <= stats[:retries]
      expect(ActsAsTbackend.async_writer).to be(parent)
      expect(parent.spool_segments).to eq(parent_segments)
      expect(stored("forked").keys).to match_array(parent_ids + Array.new(3) { |i| "child-#{i}" })
    end
  end

  it "shutdown and at-exit in a child leave the parent's writer running" do
    parent = async_writer_for(daemon)
    pid, path = in_child(Dir.tmpdir) do
      ActsAsTbackend.shutdown_async_writer(timeout: 1)
      { "done" => true }
    end
    expect(wait_exit(pid, 10)).to be_success
    expect(JSON.parse(File.read(path))).to eq("done" => true)
    File.delete(path)
    expect(parent.enqueue(fact("after-child", store: "forked"))[:status]).to eq("enqueued")
    expect(parent.flush(timeout: 10)).to be(true)
    expect(stored("forked").keys).to include("after-child")
  end
end
