# frozen_string_literal: true

require_relative "tcb_helper"
require "active_support/notifications"

RSpec.describe TCB::EventBus do
  let(:buses) { [] }
  let(:got) { Queue.new }

  def bus(**options)
    described_class.new(**options).tap { |b| buses << b }
  end

  before do
    stub_const("UserRegistered", Struct.new(:id, :email, keyword_init: true))
    stub_const("Ping", Struct.new(:n))
    stub_const("GOT", got)
  end

  after { buses.each(&:force_shutdown) }

  def drain(queue, count, seconds = 5)
    Array.new(count) do
      eventually(seconds) { !queue.empty? } || raise("only #{count} expected, queue stayed empty")
      queue.pop
    end
  end

  describe "sync mode" do
    it "runs handlers in the caller's thread, blocks with the envelope, classes with the event" do
      stub_const("Welcome", Class.new { def call(event) = GOT << [:class, event, Thread.current] })
      b = bus(sync: true)
      b.subscribe(UserRegistered) { |envelope| got << [:block, envelope, Thread.current] }
      b.subscribe(UserRegistered, Welcome)
      event = UserRegistered.new(id: 1, email: "a@example.com")
      expect(b.publish(event)).to be(event)
      (kind, envelope, thread), (kind2, received, thread2) = drain(got, 2)
      expect([kind, envelope.class, envelope.event, thread]).to eq([:block, TCB::Envelope, event, Thread.current])
      expect([kind2, received, thread2]).to eq([:class, event, Thread.current])
      expect(b.dispatcher).to be_nil
    end

    it "runs the README's block handlers, which treat the envelope as the event" do
      b = bus(sync: true)
      b.subscribe(UserRegistered) { |event| got << event.email }
      b.publish(UserRegistered.new(id: 1, email: "alice@example.com"))
      expect(got.pop).to eq("alice@example.com")
    end
  end

  describe "async mode" do
    it "delivers on one dispatcher thread, FIFO, handlers of one event in registration order" do
      b = bus
      b.subscribe(Ping) { |e| got << [:first, e.event.n, Thread.current] }
      b.subscribe(Ping) { |e| got << [:second, e.event.n, Thread.current] }
      200.times { |n| b.publish(Ping.new(n)) }
      delivered = drain(got, 400)
      expect(delivered.map { |kind, n, _| [kind, n] }).to eq((0...200).flat_map { |n| [[:first, n], [:second, n]] })
      expect(delivered.map(&:last).uniq).to eq([b.dispatcher])
      expect(b.dispatcher).not_to eq(Thread.current)
    end

    it "starts its thread on the first publish, not when built, subscribed or configured" do
      bus_threads = -> { Thread.list.select { |t| t.name == "tcb-event-bus" && t.alive? } }
      before = bus_threads.call
      b = bus
      b.subscribe(Ping) { |e| got << e.event.n }
      configure_tcb(bus: b)
      expect(b.dispatcher).to be_nil
      expect(bus_threads.call).to eq(before)
      TCB.publish(Ping.new(1))
      expect(drain(got, 1)).to eq([1])
      expect(bus_threads.call - before).to eq([b.dispatcher])
    end

    # Anyone listing threads right after the first publish (Puma's boot check, a forked
    # child's census) must see the dispatcher by its name, even before it has run.
    it "names its thread as it starts it" do
      b = bus
      b.subscribe(Ping) { |e| got << e.event.n }
      b.publish(Ping.new(1))
      expect(b.dispatcher.name).to eq("tcb-event-bus")
      expect(drain(got, 1)).to eq([1])
    end

    it "shuts down a bus that never published at once, with nothing to drain" do
      b = bus
      final = b.shutdown(drain: true, timeout: 5)
      expect(final.to_h).to include(status: :completed, events_drained: 0)
      expect(b.dispatcher).to be_nil
      expect { b.publish(Ping.new(1)) }.to raise_error(described_class::ShutdownError)
      expect(b.dispatcher).to be_nil
    end

    it "routes by exact class" do
      stub_const("Pong", Class.new(Ping))
      b = bus(sync: true)
      b.subscribe(Ping) { |e| got << e.event }
      b.publish(Pong.new(1))
      b.publish(Ping.new(2))
      expect(drain(got, 1)).to eq([Ping.new(2)])
      expect(got).to be_empty
    end
  end

  describe "subscriptions" do
    it "runs the same block once however often it is subscribed; unsubscribe is idempotent" do
      b = bus(sync: true)
      handler = proc { |e| got << e.event.n }
      first = b.subscribe(Ping, &handler)
      expect(b.subscribe(Ping, &handler)).to eq(first)
      expect(b.registry.handlers_for(Ping)).to eq([handler])
      b.publish(Ping.new(1))
      expect(got.size).to eq(1)
      b.unsubscribe(first)
      b.unsubscribe(first)
      b.publish(Ping.new(2))
      expect(got.size).to eq(1)
      expect(b.registry.handlers_for(Ping)).to eq([])
    end

    it "raises ShutdownError for subscribe, unsubscribe and publish after shutdown" do
      b = bus
      subscription = b.subscribe(Ping) { nil }
      b.shutdown
      expect(b).to be_shutdown
      expect { b.subscribe(Ping) { nil } }.to raise_error(described_class::ShutdownError)
      expect { b.unsubscribe(subscription) }.to raise_error(described_class::ShutdownError)
      expect { b.publish(Ping.new(1)) }.to raise_error(described_class::ShutdownError)
      expect(described_class::ShutdownError.ancestors).to include(TCB::Error)
    end
  end

  describe "a failing handler" do
    it "becomes a SubscriberInvocationFailed event; the other handlers still run" do
      stub_const("Exploding", Class.new { def call(_event) = raise(KeyError, "class boom") })
      b = bus
      line = __LINE__ + 1
      b.subscribe(Ping) { raise ArgumentError, "block boom" }
      b.subscribe(Ping, Exploding)
      b.subscribe(Ping) { |e| got << [:ran, e.event.n] }
      b.subscribe(TCB::SubscriberInvocationFailed) { |e| got << e.event }
      b.publish(Ping.new(1))
      ran, block_failure, class_failure = drain(got, 3) # failures are queued behind the event
      expect(ran).to eq([:ran, 1])
      expect(block_failure.to_h).to include(
        original_event: Ping.new(1), subscriber_type: :block, subscriber_class: "Proc",
        subscriber_location: "#{__FILE__}:#{line}", error_class: "ArgumentError", error_message: "block boom"
      )
      expect(block_failure.error_backtrace.first).to include(__FILE__)
      expect(block_failure.occurred_at).to be_utc
      expect(class_failure.to_h).to include(subscriber_type: :class, subscriber_class: "Exploding", error_class: "KeyError",
                                            subscriber_source: "Exploding#call")
      expect(class_failure.subscriber_location).to start_with("#{__FILE__}:")
    end

    it "can be logged with the README's error-handling block, written against the failure event" do
      logger = test_logger
      b = bus(sync: true)
      b.subscribe(TCB::SubscriberInvocationFailed) do |failure|
        logger.error "#{failure.error_class}: #{failure.error_message}"
        logger.error failure.error_backtrace.join("\n")
      end
      b.subscribe(Ping) { raise ArgumentError, "readme" }
      b.publish(Ping.new(1))
      expect(log_io.string).to include("ArgumentError: readme").and include(__FILE__)
    end

    it "is logged on TCB.config.logger and instrumented as handler_failed.tcb by default" do
      TCB.config.logger = test_logger
      notifications = []
      subscriber = ActiveSupport::Notifications.subscribe("handler_failed.tcb") { |*args| notifications << args.last }
      b = bus(sync: true)
      b.subscribe(Ping) { raise ArgumentError, "nobody listens" }
      b.publish(Ping.new(1))
      expect(log_io.string).to include("ERROR").and include("ArgumentError: nobody listens").and include("Ping")
      expect(notifications.size).to eq(1)
      expect(notifications.first[:error]).to be_a(ArgumentError)
      expect(notifications.first[:failure]).to be_a(TCB::SubscriberInvocationFailed)
    ensure
      ActiveSupport::Notifications.unsubscribe(subscriber)
    end

    it "in a failure handler is logged but not republished (no loop)" do
      TCB.config.logger = test_logger
      b = bus(sync: true)
      b.subscribe(Ping) { raise "first" }
      b.subscribe(TCB::SubscriberInvocationFailed) do |e|
        got << e.event.error_message
        raise "second"
      end
      b.publish(Ping.new(1))
      expect(drain(got, 1)).to eq(["first"])
      expect(got).to be_empty
      expect(log_io.string).to include("RuntimeError: second")
    end

    it "cannot deadlock a bounded bus, and force_shutdown returns" do
      b = bus(max_queue_size: 1)
      publisher = nil
      b.subscribe(Ping) do |e|
        # Fail only once the publisher waits on the full queue, so the failure event meets a
        # full queue (tcb 0.6.2 pushed it there and waited for itself).
        sleep 0.001 until publisher && (publisher.status == "sleep" || !publisher.alive?)
        raise "boom #{e.event.n}"
      end
      b.subscribe(TCB::SubscriberInvocationFailed) { |e| got << e.event.original_event.n }
      publisher = Thread.new { 50.times { |n| b.publish(Ping.new(n)) } }
      join_all([publisher], 10)
      expect(drain(got, 50, 10)).to eq((0...50).to_a)
      started = monotonic
      b.force_shutdown
      expect(monotonic - started).to be < 2
    end
  end

  describe "bounded queue" do
    it "blocks publish while full, and never blocks a handler publishing from the dispatcher" do
      gate = Queue.new
      b = bus(max_queue_size: 2)
      b.subscribe(Ping) do |e|
        gate.pop if e.event.n.zero?
        # The dispatcher publishing into its own full queue: tcb 0.6.2 deadlocked here.
        b.publish(Ping.new(1000 + e.event.n)) if e.event.n < 3
        got << e.event.n
      end
      b.publish(Ping.new(0))
      eventually(2) { b.instance_variable_get(:@queue).empty? } # 0 is being handled
      b.publish(Ping.new(1))
      b.publish(Ping.new(2))
      publisher = Thread.new { b.publish(Ping.new(3)) }
      expect(eventually(2) { publisher.status == "sleep" }).to be(true)
      expect(publisher).to be_alive
      gate << :go
      join_all([publisher], 5)
      expect(drain(got, 7).sort).to eq([0, 1, 2, 3, 1000, 1001, 1002])
    end

    it "publishes one EventBusQueuePressure per upward crossing of the high-water mark" do
      gate = Queue.new
      b = bus(max_queue_size: 4, high_water_mark: 2)
      b.subscribe(Ping) { |e| gate.pop if e.event.n.zero? }
      b.subscribe(TCB::EventBusQueuePressure) { |e| got << e.event }
      b.publish(Ping.new(0))
      eventually(2) { b.instance_variable_get(:@queue).empty? }
      3.times { |n| b.publish(Ping.new(n + 1)) } # 1 … 3 queued: crosses 2 once
      gate << :go
      first, = drain(got, 1)
      expect(first.to_h).to include(queue_size: 2, max_queue_size: 4, occupancy: 0.5)
      expect(first.occurred_at).to be_utc
      eventually(2) { b.instance_variable_get(:@queue).empty? }
      expect(got).to be_empty
      b.publish(Ping.new(0)) # blocks the dispatcher again
      eventually(2) { b.instance_variable_get(:@queue).empty? }
      2.times { |n| b.publish(Ping.new(n + 1)) }
      gate << :go
      expect(drain(got, 1).first.queue_size).to eq(2)
    end
  end

  it "validates its sizes, and ignores a high-water mark without a bound (as tcb does)" do
    expect { bus(max_queue_size: 0) }.to raise_error(ArgumentError, /max_queue_size must be a positive Integer/)
    expect { bus(high_water_mark: -1) }.to raise_error(ArgumentError, /high_water_mark/)
    b = bus(high_water_mark: 1)
    b.subscribe(TCB::EventBusQueuePressure) { |e| got << e.event }
    b.subscribe(Ping) { |e| got << e.event }
    3.times { |n| b.publish(Ping.new(n)) }
    b.shutdown(timeout: 5)
    expect(drain(got, 3)).to eq([Ping.new(0), Ping.new(1), Ping.new(2)])
  end

  describe "shutdown" do
    it "drains the queue and reports :initiated then :completed with the count" do
      gate = Queue.new
      b = bus
      b.subscribe(Ping) { |e| gate.pop if e.event.n.zero? }
      b.subscribe(Ping) { |e| got << e.event.n }
      statuses = []
      b.subscribe(TCB::EventBusShutdown) { |e| statuses << e.event }
      5.times { |n| b.publish(Ping.new(n)) }
      Thread.new do
        sleep 0.05 until b.instance_variable_get(:@state) == :draining
        gate << :go
      end
      final = b.shutdown(drain: true, timeout: 5)
      expect(drain(got, 5)).to eq([0, 1, 2, 3, 4])
      expect(statuses.map(&:status)).to eq(%i[initiated completed])
      expect(final.to_h).to include(status: :completed, drain_requested: true, timeout_seconds: 5)
      expect(final.events_drained).to be_between(4, 5)
      expect(b.dispatcher).not_to be_alive
    end

    it "gives up after the timeout (:timeout_exceeded), drops the rest, and never kills the running handler" do
      gate = Queue.new
      finished = Queue.new
      b = bus
      b.subscribe(Ping) do |e|
        if e.event.n.zero?
          got << :started
          gate.pop
          finished << :finished
        end
        got << e.event.n
      end
      3.times { |n| b.publish(Ping.new(n)) }
      drain(got, 1)
      started = monotonic
      final = b.shutdown(drain: true, timeout: 0.2)
      expect(monotonic - started).to be < 2
      expect(final.status).to eq(:timeout_exceeded)
      gate << :go
      expect(drain(finished, 1)).to eq([:finished])
      expect(drain(got, 1)).to eq([0])
      expect(eventually(2) { !b.dispatcher.alive? }).to be(true)
      expect(got).to be_empty # 1 and 2 were dropped
    end

    it "force_shutdown returns at once while a handler is inside a database transaction, which still commits whole" do
      TbackendSpec::Database.connect(:postgresql, database: "tcb_core")
      connection = ActiveRecord::Base.connection
      table = "tcb_bus_rows_#{Process.pid}" # concurrent runs share the database
      connection.create_table(table, force: true) { |t| t.string :name }
      row = Class.new(ActiveRecord::Base) { self.table_name = table }
      gate = Queue.new
      b = bus
      b.subscribe(Ping) do
        ActiveRecord::Base.connection_pool.with_connection do
          ActiveRecord::Base.transaction do
            row.create!(name: "first")
            got << :inside
            gate.pop
            row.create!(name: "second")
          end
        end
        got << :committed
      end
      b.publish(Ping.new(1))
      b.publish(Ping.new(2))
      drain(got, 1)
      started = monotonic
      b.force_shutdown
      expect(monotonic - started).to be < 1
      gate << :go
      expect(drain(got, 1)).to eq([:committed])
      expect(row.order(:id).pluck(:name)).to eq(%w[first second]) # Ping 2 was dropped, Ping 1 finished whole
    ensure
      ActiveRecord::Base.connection.drop_table(table, if_exists: true) if table
    end

    it "lets force_shutdown cut a drain short" do
      gate = Queue.new
      b = bus
      b.subscribe(Ping) do |e|
        gate.pop if e.event.n.zero?
        got << e.event.n
      end
      5.times { |n| b.publish(Ping.new(n)) }
      draining = Thread.new { b.shutdown(drain: true, timeout: 30) }
      expect(eventually(2) { b.instance_variable_get(:@state) == :draining }).to be(true)
      b.force_shutdown
      gate << :go
      join_all([draining], 5)
      expect(drain(got, 1)).to eq([0])
      expect(eventually(2) { !b.dispatcher.alive? }).to be(true)
      expect(got).to be_empty # 1 … 4 were dropped
    end

    it "wakes publishers blocked on a full queue with ShutdownError instead of leaving them hanging" do
      gate = Queue.new
      b = bus(max_queue_size: 1)
      b.subscribe(Ping) { gate.pop }
      b.publish(Ping.new(0))
      eventually(2) { b.instance_variable_get(:@queue).empty? }
      b.publish(Ping.new(1))
      blocked = Thread.new do
        b.publish(Ping.new(2))
      rescue described_class::ShutdownError => e
        e
      end
      eventually(2) { blocked.status == "sleep" }
      b.force_shutdown
      join_all([blocked], 2)
      expect(blocked.value).to be_a(described_class::ShutdownError)
      gate << :go
    end
  end

  it "keeps working in a forked child (its own dispatcher), and in the parent" do
    b = bus
    reader, writer = IO.pipe
    b.subscribe(Ping) do |e|
      writer.puts("#{Process.pid}:#{e.event.n}")
      writer.flush
    end
    b.publish(Ping.new(1))
    expect(reader.gets).to eq("#{Process.pid}:1\n")
    pid = fork do
      reader.close
      # Four threads race to be the child's first publisher: one dispatcher must come of it.
      Array.new(4) { |i| Thread.new { b.publish(Ping.new(10 + i)) } }.each(&:join)
      dispatchers = Thread.list.count { |t| t.name == "tcb-event-bus" && t.alive? }
      b.shutdown(timeout: 5)
      exit!(dispatchers == 1 && !b.dispatcher.alive? ? 0 : 1)
    end
    writer.close unless pid.nil?
    child_lines = Array.new(4) { reader.gets }
    _, status = Process.wait2(pid)
    expect(child_lines.sort).to eq((10..13).map { |n| "#{pid}:#{n}\n" })
    expect(status.exitstatus).to eq(0)
    b.publish(Ping.new(3))
    expect(eventually(2) { got.empty? }).to be(true)
    expect(b.dispatcher).to be_alive
  ensure
    reader&.close
  end

  describe "handle_signals: true (in a subprocess)" do
    let(:script) do
      <<~RUBY
        require "acts_as_tbackend/tcb"
        $stdout.sync = true
        TCB.config.logger = Logger.new(File::NULL)
        Ping = Struct.new(:n)
        gate = Queue.new
        bus = TCB::EventBus.new(handle_signals: true, shutdown_timeout: 10, on_signal: ->(sig) { puts "signal \#{sig}" })
        bus.subscribe(Ping) do |e|
          puts "started \#{e.event.n}"
          gate.pop if ENV["BLOCK"] == "forever"
          sleep 0.2
          puts "handled \#{e.event.n}"
        end
        bus.subscribe(TCB::EventBusShutdown) { |e| puts "shutdown \#{e.event.status}" }
        bus.publish(Ping.new(1))
        bus.publish(Ping.new(2))
        sleep 30
        puts "not killed"
      RUBY
    end

    def spawn_script(env = {})
      Open3.popen2e(env, RbConfig.ruby, "-I", TCBSpec::LIB, "-e", script)
    end

    def read_until(out, text, seconds = 10)
      lines = []
      deadline = monotonic + seconds
      until lines.last&.include?(text)
        raise "no #{text.inspect} within #{seconds}s: #{lines.inspect}" if monotonic > deadline
        break unless out.wait_readable(deadline - monotonic)

        line = out.gets or break
        lines << line.chomp
      end
      lines
    end

    it "drains on TERM, then re-raises it to the process" do
      stdin, out, wait = spawn_script
      stdin.close
      read_until(out, "started 1")
      Process.kill(:TERM, wait.pid)
      expect(wait.join(15)).not_to be_nil
      rest = out.read.lines.map(&:chomp)
      expect(rest).to include("signal TERM", "handled 1", "started 2", "handled 2", "shutdown initiated", "shutdown completed")
      expect(rest).not_to include("not killed")
      expect(wait.value.termsig).to eq(Signal.list["TERM"])
    end

    it "forces on a second signal" do
      stdin, out, wait = spawn_script("BLOCK" => "forever")
      stdin.close
      read_until(out, "started 1")
      Process.kill(:INT, wait.pid)
      read_until(out, "shutdown initiated")
      Process.kill(:INT, wait.pid)
      expect(wait.join(5)).not_to be_nil
      expect(wait.value.signaled? || !wait.value.success?).to be(true)
      expect(out.read).not_to include("handled 1")
    end
  end
end
