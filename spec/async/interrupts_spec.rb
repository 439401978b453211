# frozen_string_literal: true

require "spec_helper"
require_relative "async_helpers"

# The async writer's waits (flush, shutdown, an enqueue blocking for room) release the GVL
# with an unblocking function, which Ruby calls for every interrupt. One that raises
# nothing (Thread#wakeup, a signal trap that returns) must not end the wait: it goes on,
# on its own deadline. One that raises still ends it at once.
RSpec.describe "ActsAsTbackend::AsyncWriter interrupted waits" do
  include_context "async spec"

  with_daemon

  # Each wait's own deadline, far beyond the example's: only an interrupt or the daemon's
  # answer may end it. Under `rake spec:gc_stress` GC.stress is on for as long as a native
  # call runs, and it is the whole process's: while the waiting thread blocks, the main
  # thread runs under it too, slow enough to outlast 30 s (an enqueue once answered
  # queue_full after 30 s before the example could wake it).
  def wait_limit
    600
  end

  # A thread parked in `block`, the daemon stalled so that the wait cannot end by itself.
  def waiting(&block)
    thread = Thread.new(&block)
    eventually(2) { thread.status == "sleep" }
    sleep 0.05
    expect(thread).to be_alive, lambda {
      "the wait ended before any interrupt: #{outcome(thread)}; writer #{ActsAsTbackend.async_writer.stats}"
    }
    thread
  end

  def outcome(thread)
    thread.value.inspect
  rescue Exception => e # rubocop:disable Lint/RescueException
    "raised #{e.class}: #{e.message}"
  end

  # Wakes `thread` (an interrupt that raises nothing), checks it still waits, then lets the
  # daemon answer and returns what the wait returned.
  def woken_then_answered(thread)
    thread.wakeup
    sleep 0.2
    expect(thread).to be_alive, -> { "the wait ended on Thread#wakeup: #{outcome(thread)}" }
    unstall(daemon)
    join_all([thread], 20).first
  end

  it "lets a flush woken by Thread#wakeup wait on until the facts are delivered", :gc_stress do
    writer = async_writer_for(daemon, retry_attempts: 1000)
    stall(daemon)
    ids = Array.new(2) { unique("wakeup") }
    ids.each { |id| writer.enqueue(fact(id, store: "async")) }
    thread = waiting { writer.flush(timeout: wait_limit) }
    expect(woken_then_answered(thread)).to be(true)
    expect(stored("async").keys).to include(*ids)
    expect(writer.stats).to include(queued: 0, delivered: 2)
  end

  it "lets a flush on the main thread wait on after a signal trap that returns", :gc_stress do
    writer = async_writer_for(daemon, retry_attempts: 1000)
    stall(daemon)
    id = unique("trap")
    writer.enqueue(fact(id, store: "async"))
    trapped = false
    previous = trap(:USR2) { trapped = true }
    signaller = Thread.new do
      sleep 0.1
      Process.kill(:USR2, Process.pid)
      sleep 0.2
      unstall(daemon)
    end
    expect(writer.flush(timeout: wait_limit)).to be(true)
    join_all([signaller], 5)
    expect(trapped).to be(true)
    expect(stored("async").keys).to include(id)
  ensure
    trap(:USR2, previous || "DEFAULT")
  end

  it "lets a shutdown woken by Thread#wakeup drain the queue", :gc_stress do
    writer = async_writer_for(daemon, retry_attempts: 1000)
    stall(daemon)
    id = unique("shutdown")
    writer.enqueue(fact(id, store: "async"))
    thread = waiting { writer.shutdown(timeout: wait_limit) }
    expect(woken_then_answered(thread)).to be(true)
    expect(stored("async").keys).to include(id)
  end

  it "lets an enqueue blocked on a full queue and woken by Thread#wakeup wait on for room", :gc_stress do
    writer = async_writer_for(daemon, queue_size: 1, queue_full_policy: "block", queue_block_timeout: wait_limit,
                                      retry_attempts: 1000)
    stall(daemon)
    expect(writer.enqueue(fact(unique("fill"), store: "async"))).to include(status: "enqueued")
    id = unique("late")
    thread = waiting { writer.enqueue(fact(id, store: "async")) }
    expect(woken_then_answered(thread)).to include(ok: true, status: "enqueued")
    expect(writer.flush(timeout: 20)).to be(true)
    expect(stored("async").keys).to include(id)
  end

  it "lets Thread#kill end a flush at once" do
    writer = async_writer_for(daemon, retry_attempts: 1000)
    stall(daemon)
    writer.enqueue(fact(unique, store: "async"))
    thread = waiting { writer.flush(timeout: wait_limit) }
    took, = timed do
      thread.kill
      thread.join(2)
    end
    expect(thread).not_to be_alive
    expect(took).to be < 0.5
  end

  it "lets Thread#raise end a shutdown at once, the writer shut down all the same" do
    writer = async_writer_for(daemon, retry_attempts: 1000)
    stall(daemon)
    writer.enqueue(fact(unique, store: "async"))
    stop = Class.new(StandardError)
    thread = waiting do
      writer.shutdown(timeout: wait_limit)
    rescue stop => e
      e
    end
    took, = timed do
      thread.raise(stop)
      thread.join(2)
    end
    expect(took).to be < 1.5
    expect(thread.value).to be_a(stop)
    expect(writer.enqueue(fact(unique, store: "async"))[:status]).to eq("unavailable")
  end
end
