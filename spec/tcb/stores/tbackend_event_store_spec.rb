# frozen_string_literal: true

require_relative "store_helpers"

RSpec.describe TCB::EventStore::TBackend do
  include TbackendSpec::ClientHelpers

  let(:orders_context) { TCB::DomainContext.from_module(TCB::Lint::Orders).to_s }
  let(:events_store_name) { "tcb-tcb__lint__orders" }
  let(:index_store_name) { "tcb-tcb__lint__orders-index" }

  def new_client(port, **settings)
    ActsAsTbackend::Client.new(config_with(port: port, request_timeout: 2.0, **settings)).tap { |c| clients << c }
  end

  def new_store(client, **options)
    described_class.new(client: client, **options).tap { |store| store.register_domain(TCB::Lint::Orders) }
  end

  def noted(text, order_id: "o")
    TCB::Lint::Orders::Noted.new(order_id: order_id, text: text)
  end

  def stream
    @stream ||= "#{orders_context}|#{SecureRandom.uuid}"
  end

  let(:clients) { [] }

  after { clients.each(&:shutdown) }

  context "with a running daemon" do
    around do |example|
      Dir.mktmpdir("tcb-tbackend") do |dir|
        TbackendSpec::TestDaemon.with(data_dir: dir) do |daemon|
          @daemon = daemon
          example.run
        end
      end
    end

    let(:client) { new_client(@daemon.port) }
    let(:store) { new_store(client) }

    it "names one TBackend store per context, and refuses prefixes that could make two contexts collide" do
      expect(store.events_store("payments/charges")).to eq("tcb-payments__charges")
      expect(store.index_store("payments/charges")).to eq("tcb-payments__charges-index")
      expect(described_class.new(store_prefix: "ledger_2").events_store("http_gateway")).to eq("ledger_2-http_gateway")
      expect { described_class.new(store_prefix: "tcb-x") }.to raise_error(ArgumentError, /store_prefix/)
      expect { described_class.new(store_prefix: "") }.to raise_error(ArgumentError, /store_prefix/)
    end

    it "writes one fact per append, keyed by the stream, with a deterministic id, the JSON event and valid_time = occurred_at" do
      at = Time.utc(2026, 4, 1, 8, 0, 0, 250_000)
      envelopes = store.append(stream_id: stream, events: [noted("a"), noted("b")], occurred_at: at,
                               correlation_id: "corr", causation_id: "cause")

      facts = client.facts_for(store: events_store_name, key: stream).dig(:response, :facts)
      expect(facts.size).to eq(1)
      fact = facts.first
      expect(fact[:id]).to eq(ActsAsTbackend::Fact.derive_id(store: events_store_name, record_id: stream,
                                                             event_type: "tcb.commit", source_version: 1, format: :digest))
      expect([fact[:key], fact[:valid_time], fact[:schema_version], fact[:causation], fact[:producer]])
        .to eq([stream, at.to_r.to_f, 1, "cause", "tcb"])
      expect(fact[:value]).to eq(
        stream_id: stream, first_version: 1, occurred_at: "2026-04-01T08:00:00.250000Z", correlation_id: "corr",
        causation_id: "cause",
        events: envelopes.map do |e|
          { type: "TCB::Lint::Orders::Noted", schema_version: 1, data: { order_id: "o", text: e.event.text },
            event_id: e.event_id, version: e.version }
        end
      )
    end

    it "indexes event ids and the correlation id before the commit, in the context's index store" do
      envelopes = store.append(stream_id: stream, events: [noted("a"), noted("b")], correlation_id: "corr-idx")

      keys = client.facts_for(store: index_store_name).dig(:response, :facts).map { |f| f[:key] }
      expect(keys).to match_array(envelopes.map { |e| "event:#{e.event_id}" } + ["correlation:corr-idx"])
    end

    it "lands a commit whose answer was lost: the retry of the same fact id is an idempotent replay" do
      # latest_for and the index write are answered; the commit is executed, its answer lost.
      @daemon.control({ "op" => "set", "answer_fault" => { "kind" => "close", "after" => 2, "count" => 1 } })

      envelopes = store.append(stream_id: stream, events: [noted("a")])

      expect(envelopes.map(&:version)).to eq([1])
      expect(store.read(stream)).to eq(envelopes)
      expect(client.facts_for(store: events_store_name, key: stream).dig(:response, :facts).size).to eq(1)
    end

    it "turns a commit of a version another writer took first into WrongExpectedVersion, even when its read was stale" do
      # The real daemon acknowledges facts before readers see them: the second writer reads
      # an empty stream, and only the commit's id tells it that version 1 is taken.
      @daemon.control({ "op" => "set", "visibility_lag" => { "lag_ms" => 2000, "store" => events_store_name } })
      first = store.append(stream_id: stream, events: [noted("first")], expected_version: :none)
      other = new_store(new_client(@daemon.port))

      expect { other.append(stream_id: stream, events: [noted("second")], expected_version: :none, correlation_id: "lost") }
        .to raise_error(TCB::WrongExpectedVersion) { |e| expect([e.expected_version, e.actual_version]).to eq([:none, 1]) }

      @daemon.control({ "op" => "set", "visibility_lag" => nil })
      eventually(5) { store.read(stream).any? }
      expect(store.read(stream)).to eq(first)
      # The loser's index entry exists, but the chain it points to was never committed.
      expect(client.facts_for(store: index_store_name, key: "correlation:lost").dig(:response, :facts).size).to eq(1)
      expect(store.read_by_correlation("lost", context: orders_context)).to eq([])
    end

    it "gives exactly one of two forked processes each version; the other gets WrongExpectedVersion" do
      streams = Array.new(8) { "#{orders_context}|fork-#{SecureRandom.hex(4)}" }
      store # the parent's client is built before the fork; each child gets fresh connections
      go_reader, go_writer = IO.pipe
      results_reader, results_writer = IO.pipe
      pids = Array.new(2) do |child|
        fork do
          go_writer.close
          results_reader.close
          go_reader.read(1)
          outcomes = streams.map do |s|
            store.append(stream_id: s, events: [noted("child-#{child}")], expected_version: :none)
            "won"
          rescue TCB::WrongExpectedVersion => e
            "lost:#{e.actual_version}"
          end
          results_writer.puts(JSON.generate(outcomes))
          exit!(0)
        rescue Exception => e # rubocop:disable Lint/RescueException -- a child must never run RSpec's at_exit
          warn "append child failed: #{e.class}: #{e.message}"
          exit!(1)
        end
      end
      [go_reader, results_writer].each(&:close)
      go_writer.write("go")
      go_writer.close
      statuses = pids.map { |pid| Process.wait2(pid).last }
      outcomes = results_reader.each_line.map { |line| JSON.parse(line) }
      results_reader.close

      expect(statuses).to all(be_success)
      outcomes.transpose.each { |pair| expect(pair).to contain_exactly("won", "lost:1") }
      streams.each { |s| expect(store.read(s).map(&:version)).to eq([1]) }
    end

    it "answers as_of: with what the ledger knew at that transaction time" do
      before_anything = Time.now
      store.append(stream_id: stream, events: [noted("v1")])
      between = Time.now
      store.append(stream_id: stream, events: [noted("v2"), noted("v3")])

      expect(store.read(stream, as_of: before_anything)).to eq([])
      expect(store.read(stream, as_of: between).map { |e| e.event.text }).to eq(%w[v1])
      expect(store.read(stream, as_of: Time.now).map { |e| e.event.text }).to eq(%w[v1 v2 v3])
      expect(store.read(stream, as_of: between, order: :desc, limit: 1).map(&:version)).to eq([1])
    end

    it "answers as_of through TCB.read's query (to_a, last, in_batches); stores without it refuse" do
      store.append(stream_id: stream, events: [noted("v1"), noted("v2")])
      between = Time.now
      store.append(stream_id: stream, events: [noted("v3")])
      query = TCB::EventQuery.new(store, TCB::Lint::Orders).stream(stream.split("|", 2).last).as_of(between)

      expect(query.to_a.map { |e| e.event.text }).to eq(%w[v1 v2])
      expect(query.last(1).map(&:version)).to eq([2])
      expect(query.in_batches(of: 1).to_a.flatten.map(&:version)).to eq([1, 2])
      in_memory = TCB::EventQuery.new(TCB::EventStore::InMemory.new, TCB::Lint::Orders).stream("x")
      expect { in_memory.as_of(between) }.to raise_error(ArgumentError, /need the TBackend store/)
    end

    it "serves EventQuery's last and in_batches" do
      7.times { |n| store.append(stream_id: stream, events: [noted("e#{n + 1}")]) }
      query = TCB::EventQuery.new(store, TCB::Lint::Orders).stream(stream.split("|", 2).last)

      expect(query.last(3).map(&:version)).to eq([5, 6, 7])
      expect(query.in_batches(of: 3).map { |batch| batch.map(&:version) }).to eq([[1, 2, 3], [4, 5, 6], [7]])
      expect(query.in_batches(of: 2, from_version: 3, to_version: 6).map { |b| b.map(&:version) }).to eq([[3, 4], [5, 6]])
    end

    it "reads events back only into classes registered with it" do
      store.append(stream_id: stream, events: [noted("a")])

      expect { described_class.new(client: client).read(stream) }
        .to raise_error(TCB::EventStore::JsonCodec::UnknownType, /TCB::Lint::Orders::Noted" is not registered/)
    end

    it "raises Unavailable while the daemon is down, appends nothing, and works again once it is back" do
      store.append(stream_id: stream, events: [noted("before")])
      @daemon.kill!

      expect { store.append(stream_id: stream, events: [noted("lost")]) }
        .to raise_error(TCB::EventStore::Unavailable,
                        /TBackend (unavailable|timeout_unknown) on read of #{Regexp.escape(stream)}/)
      expect { store.read(stream) }.to raise_error(TCB::EventStore::Unavailable, /TBackend unavailable/)

      @daemon.restart
      appended = eventually(10) do
        store.append(stream_id: stream, events: [noted("after")])
      rescue TCB::EventStore::Unavailable
        nil
      end
      expect(appended.map(&:version)).to eq([2])
      expect(store.read(stream).map { |e| e.event.text }).to eq(%w[before after])
    end

    it "raises Unavailable when the commit cannot be sent, and leaves the version free" do
      # latest_for and the index write pass; the commit is refused unexecuted on every try.
      @daemon.control({ "op" => "set", "answer_fault" => { "kind" => "close", "after" => 2, "count" => 0, "execute" => false } })
      strict_store = new_store(new_client(@daemon.port, strict: true, breaker_threshold: 0), attempts: 1)

      expect { strict_store.append(stream_id: stream, events: [noted("x")], correlation_id: "unsent") }
        .to raise_error(TCB::EventStore::Unavailable)

      @daemon.control({ "op" => "clear" })
      expect(store.append(stream_id: stream, events: [noted("y")]).map(&:version)).to eq([1])
      expect(store.read_by_correlation("unsent", context: orders_context)).to eq([])
    end
  end

  describe "as the event store of the TCB runtime" do
    def configure_with(store)
      TCB.reset!
      TCB.domain_modules = [TCB::Lint::Orders]
      TCB.configure do |c|
        c.event_bus = TCB::EventBus.new(sync: true)
        c.event_store = store
      end
    end

    after { TCB.reset! }

    it "records, reads streams and correlation chains through TCB" do
      TbackendSpec::TestDaemon.with do |daemon|
        configure_with(described_class.new(client: new_client(daemon.port)))
        order_id = SecureRandom.uuid

        recorded = TCB::Context.with(correlation_id: "chain-1", causation_id: nil) do
          TCB.record(events: [noted("a", order_id: order_id), noted("b", order_id: order_id)])
        end

        expect(TCB.read(TCB::Lint::Orders).stream(order_id).to_a).to eq(recorded)
        expect(TCB.read(TCB::Lint::Orders).stream(order_id).last(1).map { |e| e.event.text }).to eq(%w[b])
        expect(TCB.read_correlation("chain-1").to_a).to eq(recorded)
      end
    end

    it "makes TCB.record raise Unavailable when the daemon is down: domain writes are never dropped" do
      configure_with(described_class.new(client: new_client(closed_port)))

      expect { TCB.record(events: [noted("x", order_id: SecureRandom.uuid)]) }
        .to raise_error(TCB::EventStore::Unavailable, /TBackend unavailable/)
    end
  end

  it "raises Unavailable, naming the status, when no daemon listens" do
    store = new_store(new_client(closed_port))

    expect { store.append(stream_id: stream, events: [noted("x")]) }
      .to raise_error(TCB::EventStore::Unavailable, /TBackend unavailable/) { |e| expect(e.result[:retryable]).to be(true) }
  end

  it "raises Rejected for an answer no retry can fix (a daemon that wants a token)" do
    TbackendSpec::TestDaemon.with(auth: true) do |daemon|
      store = new_store(new_client(daemon.port))

      expect { store.append(stream_id: stream, events: [noted("x")]) }
        .to raise_error(TCB::EventStore::TBackend::Rejected, /Authentication failed/)
    end
  end
end
