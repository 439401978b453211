# frozen_string_literal: true

require "spec_helper"
require "active_support"
require "active_support/notifications"

# Issue 4: ActiveSupport::Notifications events for writes, reads, retries and breaker
# state changes, whose payloads never carry a value or the token.
RSpec.describe ActsAsTbackend::Instrumentation do
  include_context "client spec"

  # An ephemeral test daemon started with --auth accepts this admin token.
  let(:token) { "ephemeral_dev_admin" }

  def capture(pattern = /\.acts_as_tbackend\z/)
    events = []
    subscriber = ActiveSupport::Notifications.subscribe(pattern) do |*args|
      events << ActiveSupport::Notifications::Event.new(*args)
    end
    yield
    events
  ensure
    ActiveSupport::Notifications.unsubscribe(subscriber)
  end

  def expect_no_secrets(events)
    dumped = events.map { |e| e.payload.inspect }.join
    expect(dumped).not_to include("very secret value")
    expect(dumped).not_to include(token)
  end

  it "times every client call under <op>.acts_as_tbackend with names, ids and statuses only" do
    TbackendSpec::TestDaemon.with(auth: true) do |d|
      client = client_for(d, token: token)
      id = unique
      events = capture do
        client.write_fact_once(fact(id, value: { "secret" => "very secret value" }))
        client.write_facts_once([fact(unique), fact(id, value: { "secret" => "very secret value" })])
        client.latest_for(store: "specs", key: "key:#{id}")
        client.facts_for(store: "specs", key: "key:#{id}")
        client.facts_by_seq(store: "specs")
        client.ping
      end
      by_name = events.to_h { |e| [e.name, e] }
      expect(by_name.keys).to contain_exactly(
        "write_fact_once.acts_as_tbackend", "write_facts_once.acts_as_tbackend", "latest_for.acts_as_tbackend",
        "facts_for.acts_as_tbackend", "facts_by_seq.acts_as_tbackend", "ping.acts_as_tbackend"
      )
      expect(by_name["write_fact_once.acts_as_tbackend"].payload)
        .to eq(store: "specs", fact_id: id, durability: "accepted", status: "committed_acked", ok: true)
      expect(by_name["write_facts_once.acts_as_tbackend"].payload)
        .to include(count: 2, statuses: { "committed_acked" => 1, "idempotent_replay" => 1 }, ok: true)
      expect(by_name["latest_for.acts_as_tbackend"].payload).to include(store: "specs", status: "ok", ok: true)
      expect(events).to all(satisfy { |e| e.duration >= 0 })
      expect_no_secrets(events)
    end
  end

  it "reports retries and the breaker opening, then closing once the daemon is back" do
    port = closed_port
    client_for(Struct.new(:port).new(port), breaker_threshold: 2, breaker_cooldown: 0.2, connect_timeout: 0.2)
    client = ActsAsTbackend.client
    events = capture do
      client.write_fact_once_safe(fact(unique), attempts: 2, backoff: 0.001)
      client.ping
      expect(client.ping[:status]).to eq("circuit_open")
    end
    names = events.map(&:name)
    expect(names).to include("retry.acts_as_tbackend", "breaker_open.acts_as_tbackend")
    expect(names.count("breaker_open.acts_as_tbackend")).to eq(1)
    retry_event = events.find { |e| e.name == "retry.acts_as_tbackend" }
    expect(retry_event.payload).to include(store: "specs", attempt_count: 2, statuses: %w[unavailable unavailable])
    opened = events.find { |e| e.name == "breaker_open.acts_as_tbackend" }
    expect(opened.payload).to include(host: "127.0.0.1", port: port, opens: 1)

    TbackendSpec::TestDaemon.with(port: port) do
      closed = capture do
        eventually(5) { client.ping[:ok] }
      end
      expect(closed.map(&:name)).to include("breaker_closed.acts_as_tbackend")
    end
  end

  it "reports the async writer: each enqueue, and a flush with its counters" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d)
      id = unique
      events = capture do
        ActsAsTbackend.async_writer.enqueue(fact(id, value: { "secret" => "very secret value" }))
        ActsAsTbackend.async_writer.flush(timeout: 10)
      end
      enqueue = events.find { |e| e.name == "enqueue.acts_as_tbackend" }
      expect(enqueue.payload).to eq(store: "specs", fact_id: id, status: "enqueued", ok: true)
      flush = events.find { |e| e.name == "spool_flush.acts_as_tbackend" }
      expect(flush.payload).to include(timeout: 10, settled: true, delivered: 1, queued: 0)
      expect_no_secrets(events)
    end
  end

  # The Railtie attaches the gem's LogSubscriber; a production logger (:info) shows its
  # warnings, not its debug lines. An event per call would be made only to be dropped.
  context "with the gem's log subscriber on a production (info) logger" do
    include TbackendSpec::AppLog

    it "logs no line for calls that succeed, and a failed call's warning with its duration and status" do
      TbackendSpec::TestDaemon.with do |d|
        client = client_for(d, request_timeout: 0.3, breaker_threshold: 0)
        stored = fact(unique)
        log = app_log(level: :info) do
          expect(client.write_fact_once(stored)).to include(ok: true)
          expect(ActsAsTbackend::Mirror.write(fact(unique), store: "specs", event_type: "create")).to include(ok: true)
          d.control({ "op" => "set", "stall" => true })
          expect(client.write_fact_once(fact("stalled-1", value: { "secret" => "very secret value" })))
            .to include(status: "timeout_unknown")
        end
        lines = log.lines
        expect(lines.size).to eq(1), log
        expect(lines.first).to match(/\AW, .* TBackend write_fact_once \((\d+\.\d)ms\) store=specs id=stalled-1 /)
        expect(lines.first[/\((\d+\.\d)ms\)/, 1].to_f).to be >= 290
        expect(lines.first).to include("status=timeout_unknown")
        expect(log).not_to include("very secret value")
      end
    end

    it "still instruments every call for any other subscriber, and logs every call on a debug logger" do
      TbackendSpec::TestDaemon.with do |d|
        client = client_for(d)
        events = nil
        quiet = app_log(level: :info) { events = capture { client.write_fact_once(fact(unique)) } }
        expect(events.map(&:name)).to eq(["write_fact_once.acts_as_tbackend"])
        expect(events.first.payload).to include(ok: true, status: "committed_acked")
        expect(quiet).to eq("")
        loud = app_log(level: :debug) { client.write_fact_once(fact("loud-1")) }
        expect(loud).to match(/TBackend write_fact_once \([\d.]+ms\) store=specs id=loud-1 .*status=committed_acked/)
      end
    end

    # What a production logger built by `build` shows of the gem's calls: nothing for a
    # success at info, the call's line at debug, and the warning for a failure at info.
    def expect_production_logging(build, marker)
      TbackendSpec::TestDaemon.with do |d|
        client = client_for(d, request_timeout: 0.3, breaker_threshold: 0)
        expect(app_log(level: :info, logger: build) { client.write_fact_once(fact(unique)) }).to eq("")
        loud = app_log(level: :debug, logger: build) { client.write_fact_once(fact("loud-#{marker}")) }
        expect(loud).to match(/\AD.* TBackend write_fact_once .*id=loud-#{marker} .*status=committed_acked/)
        d.control({ "op" => "set", "stall" => true })
        failed = app_log(level: :info, logger: build) { client.write_fact_once(fact("stalled-#{marker}")) }
        expect(failed).to match(/\AW.* TBackend write_fact_once .*id=stalled-#{marker} .*status=timeout_unknown/)
      end
    end

    # Rails 7.1+ wraps Rails.logger in a BroadcastLogger: its level is its loggers' lowest.
    it "reads a BroadcastLogger's level as Rails.logger's" do
      skip "ActiveSupport::BroadcastLogger is Rails 7.1+" unless defined?(ActiveSupport::BroadcastLogger)

      expect_production_logging(->(io, level) { ActiveSupport::BroadcastLogger.new(Logger.new(io, level: level)) },
                                "broadcast")
    end

    # SemanticLogger's `level` is a Symbol: such a logger is asked `debug?` and `warn?`.
    it "asks a logger whose level is not an Integer what it shows" do
      symbol_levels = Class.new do
        attr_reader :level

        def initialize(io, level)
          @io = io
          @level = level
        end

        def debug? = level == :debug
        def info? = %i[debug info].include?(level)
        def warn? = true
        def debug(line = nil) = (@io << "D #{line || yield}\n" if debug?)
        def info(line = nil) = (@io << "I #{line || yield}\n" if info?)
        def warn(line = nil) = @io << "W #{line || yield}\n"
      end
      expect_production_logging(->(io, level) { symbol_levels.new(io, level) }, "symbol")
    end
  end

  # Asking ActiveSupport's notifier for a name's listeners was half of what deciding
  # whether to instrument a call cost; a call on the request path now reads a kept
  # verdict, and a subscription made or dropped in between is still seen at once.
  it "works out who listens again only after a subscription changes, and then at once" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d)
      notifier = ActiveSupport::Notifications.notifier
      lister = %i[all_listeners_for listeners_for].find { |method| notifier.respond_to?(method) }
      asked = 0
      allow(notifier).to(receive(lister).and_wrap_original { |original, *args| (asked += 1) && original.call(*args) })
      client.write_fact_once(fact(unique))
      asked = 0
      5.times { expect(client.write_fact_once(fact(unique))).to include(ok: true) }
      expect(asked).to eq(0)

      events = capture(/\Awrite_fact_once\.acts_as_tbackend\z/) { 2.times { client.write_fact_once(fact(unique)) } }
      expect(events.size).to eq(2)
      late = []
      subscriber = ActiveSupport::Notifications.subscribe("write_fact_once.acts_as_tbackend") { |*args| late << args }
      client.write_fact_once(fact(unique))
      ActiveSupport::Notifications.unsubscribe(subscriber)
      asked = 0
      3.times { client.write_fact_once(fact(unique)) }
      expect(late.size).to eq(1)
      expect(asked).to eq(1)
    end
  end

  # A verdict belongs to the notifier it was worked out for: an app that swaps in its own
  # (here of a Fanout subclass, whose verdicts are kept by its listener list instead)
  # gets its subscribers' events from the next call, and back again.
  it "works out who listens again when the app swaps the notifier" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d)
      own = Class.new(ActiveSupport::Notifications::Fanout).new
      events = []
      own.subscribe("write_fact_once.acts_as_tbackend") { |*args| events << args }
      original = ActiveSupport::Notifications.notifier
      client.write_fact_once(fact(unique))
      begin
        ActiveSupport::Notifications.notifier = own
        2.times { client.write_fact_once(fact(unique)) }
      ensure
        ActiveSupport::Notifications.notifier = original
      end
      client.write_fact_once(fact(unique))
      expect(events.size).to eq(2)
    end
  end

  it "costs nothing visible without subscribers: calls return the same soft results" do
    TbackendSpec::TestDaemon.with do |d|
      client = client_for(d)
      expect(ActsAsTbackend::Instrumentation.listening?(:write_fact_once)).to be(false)
      expect(client.write_fact_once(fact(unique))).to include(ok: true, status: "committed_acked")
    end
  end
end
