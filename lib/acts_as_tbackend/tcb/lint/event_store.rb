# frozen_string_literal: true

require "securerandom"

# `it_behaves_like "a TCB event store"` with `let(:store)`. Pass `concurrent: false` for a
# store whose connections cannot be used from several threads (an in-memory SQLite), and
# `transactional: false` for one without `transaction { }` (TBackend).
# rubocop:disable Metrics/BlockLength -- RSpec groups, exempt in spec/ too
RSpec.shared_examples "a TCB event store" do |concurrent: true, transactional: true|
  let(:orders_context) { TCB::DomainContext.from_module(TCB::Lint::Orders).to_s }
  let(:archive_context) { TCB::DomainContext.from_module(TCB::Lint::OrdersArchive).to_s }
  let(:occurred_at) { Time.utc(2026, 3, 1, 12, 0, 0, 123_456) }

  before do
    TCB::Lint::DOMAIN_MODULES.each { |mod| store.register_domain(mod) } if store.respond_to?(:register_domain)
  end

  def lint_stream(context = orders_context)
    TCB::StreamId.build(context, SecureRandom.uuid).to_s
  end

  def placed(order_id, total: BigDecimal("12.50"))
    TCB::Lint::Orders::Placed.new(order_id: order_id, total: total, placed_at: Time.utc(2026, 3, 1, 11, 59, 58, 250_000),
                                  due_on: Date.new(2026, 3, 8), channel: :web,
                                  lines: [{ "sku" => "A-1", "qty" => 2 }, { sym_keys: true }])
  end

  def shipped(order_id)
    TCB::Lint::Orders::Shipped.new(order_id, "DHL")
  end

  def noted(order_id, text = "fragile")
    TCB::Lint::Orders::Noted.new(order_id: order_id, text: text)
  end

  def append(stream, events, **options)
    store.append(stream_id: stream, events: events, occurred_at: occurred_at, **options)
  end

  describe "append" do
    it "returns one envelope per event, versions contiguous from 1, ids unique" do
      stream = lint_stream
      envelopes = append(stream, [placed("o1"), shipped("o1")], correlation_id: "corr-1", causation_id: "cause-1")

      expect(envelopes.map(&:version)).to eq([1, 2])
      expect(envelopes.map(&:event)).to eq([placed("o1"), shipped("o1")])
      expect(envelopes.map(&:stream_id)).to all(eq(stream))
      expect(envelopes.map(&:event_id)).to all(match(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/))
      expect(envelopes.map(&:event_id).uniq.size).to eq(2)
      expect(envelopes.map(&:correlation_id)).to all(eq("corr-1"))
      expect(envelopes.map(&:causation_id)).to all(eq("cause-1"))
      expect(envelopes.map(&:occurred_at)).to all(eq(occurred_at))
      expect(envelopes.first.occurred_at).to be_utc
    end

    it "continues the stream's versions on the next append" do
      stream = lint_stream
      append(stream, [placed("o1")])

      expect(append(stream, [shipped("o1"), noted("o1")]).map(&:version)).to eq([2, 3])
      expect(store.read(stream).map(&:version)).to eq([1, 2, 3])
    end

    it "appends nothing for an empty list" do
      stream = lint_stream

      expect(append(stream, [])).to eq([])
      expect(store.read(stream)).to eq([])
    end

    it "keeps streams apart" do
      first = lint_stream
      second = lint_stream
      append(first, [placed("a")])
      append(second, [placed("b")])

      expect(store.read(second).map { |e| [e.version, e.event.order_id] }).to eq([[1, "b"]])
    end
  end

  describe "expected_version" do
    it "accepts :none and 0 on an empty stream" do
      expect(append(lint_stream, [placed("o1")], expected_version: :none).map(&:version)).to eq([1])
      expect(append(lint_stream, [placed("o1")], expected_version: 0).map(&:version)).to eq([1])
    end

    it "accepts the stream's current version" do
      stream = lint_stream
      append(stream, [placed("o1"), shipped("o1")])

      expect(append(stream, [noted("o1")], expected_version: 2).map(&:version)).to eq([3])
    end

    it "raises WrongExpectedVersion on any other version and appends nothing" do
      stream = lint_stream
      append(stream, [placed("o1")])

      [:none, 0, 2, 7].each do |expected|
        expect { append(stream, [shipped("o1")], expected_version: expected) }.to raise_error(TCB::WrongExpectedVersion) { |error|
          expect([error.stream_id, error.expected_version, error.actual_version]).to eq([stream, expected, 1])
          expect(error.message).to include(stream)
        }
      end
      expect(store.read(stream).map(&:version)).to eq([1])
    end

    it "rejects a value that is no version" do
      expect { append(lint_stream, [placed("o1")], expected_version: -1) }.to raise_error(ArgumentError, /expected_version/)
      expect { append(lint_stream, [placed("o1")], expected_version: "1") }.to raise_error(ArgumentError, /expected_version/)
    end
  end

  describe "read" do
    let(:stream) { lint_stream }

    before do
      append(stream, [placed("o1")], correlation_id: "c", causation_id: "k")
      store.append(stream_id: stream, events: [shipped("o1"), noted("o1", "a")], occurred_at: occurred_at + 10)
      store.append(stream_id: stream, events: [noted("o1", "b"), noted("o1", "c")], occurred_at: occurred_at + 20)
    end

    it "returns the events as the app's own objects, with every envelope field, in version order" do
      read = store.read(stream)

      expect(read.map(&:version)).to eq([1, 2, 3, 4, 5])
      expect(read.map(&:event)).to eq([placed("o1"), shipped("o1"), noted("o1", "a"), noted("o1", "b"), noted("o1", "c")])
      first = read.first
      expect(first.event.total).to be_a(BigDecimal)
      expect(first.event.placed_at).to eq(Time.utc(2026, 3, 1, 11, 59, 58, 250_000))
      expect(first.event.due_on).to eq(Date.new(2026, 3, 8))
      expect(first.event.channel).to eq(:web)
      expect([first.stream_id, first.correlation_id, first.causation_id]).to eq([stream, "c", "k"])
      expect(read.map(&:occurred_at)).to eq([occurred_at, occurred_at + 10, occurred_at + 10, occurred_at + 20, occurred_at + 20])
      expect(read.map(&:occurred_at)).to all(be_utc)
    end

    it "returns envelopes equal to the ones append returned" do
      other = lint_stream
      appended = append(other, [placed("x"), shipped("x")], correlation_id: "c2")

      expect(store.read(other)).to eq(appended)
      expect(store.read(other).map(&:to_h)).to eq(appended.map(&:to_h))
    end

    it "filters by version range, inclusive" do
      expect(store.read(stream, from_version: 2).map(&:version)).to eq([2, 3, 4, 5])
      expect(store.read(stream, to_version: 2).map(&:version)).to eq([1, 2])
      expect(store.read(stream, from_version: 2, to_version: 4).map(&:version)).to eq([2, 3, 4])
      expect(store.read(stream, from_version: 6)).to eq([])
    end

    it "filters by occurred_after, exclusive" do
      expect(store.read(stream, occurred_after: occurred_at).map(&:version)).to eq([2, 3, 4, 5])
      expect(store.read(stream, occurred_after: occurred_at + 10).map(&:version)).to eq([4, 5])
    end

    it "limits and orders" do
      expect(store.read(stream, limit: 2).map(&:version)).to eq([1, 2])
      expect(store.read(stream, order: :desc, limit: 2).map(&:version)).to eq([5, 4])
      expect(store.read(stream, from_version: 2, order: :desc).map(&:version)).to eq([5, 4, 3, 2])
      expect { store.read(stream, order: :sideways) }.to raise_error(ArgumentError, /order/)
    end

    it "returns nothing for an unknown stream" do
      expect(store.read(lint_stream)).to eq([])
    end
  end

  describe "read_by_correlation" do
    it "returns the chain of one exact context, ordered by occurred_at" do
      correlation = SecureRandom.uuid
      first = lint_stream
      second = lint_stream
      late = store.append(stream_id: first, events: [shipped("a")], occurred_at: occurred_at + 30, correlation_id: correlation)
      early = store.append(stream_id: second, events: [placed("b")], occurred_at: occurred_at, correlation_id: correlation)
      store.append(stream_id: lint_stream, events: [placed("c")], occurred_at: occurred_at, correlation_id: SecureRandom.uuid)
      store.append(stream_id: lint_stream(archive_context), events: [TCB::Lint::OrdersArchive::Archived.new(order_id: "a")],
                   occurred_at: occurred_at, correlation_id: correlation)

      chain = store.read_by_correlation(correlation, context: orders_context)

      expect(chain).to eq(early + late)
      expect(chain.map(&:event)).to eq([placed("b"), shipped("a")])
      expect(store.read_by_correlation(correlation, context: archive_context).map(&:event))
        .to eq([TCB::Lint::OrdersArchive::Archived.new(order_id: "a")])
    end

    it "bounds the chain by occurred_after and occurred_before, both exclusive" do
      correlation = SecureRandom.uuid
      stream = lint_stream
      [0, 10, 20].each do |offset|
        store.append(stream_id: stream, events: [noted("o", offset.to_s)], occurred_at: occurred_at + offset,
                     correlation_id: correlation)
      end

      read = ->(**bounds) { store.read_by_correlation(correlation, context: orders_context, **bounds).map { |e| e.event.text } }
      expect(read.call(occurred_after: occurred_at)).to eq(%w[10 20])
      expect(read.call(occurred_before: occurred_at + 20)).to eq(%w[0 10])
      expect(read.call(occurred_after: occurred_at, occurred_before: occurred_at + 20)).to eq(%w[10])
    end

    it "returns nothing for an unknown correlation id" do
      expect(store.read_by_correlation(SecureRandom.uuid, context: orders_context)).to eq([])
    end
  end

  describe "read_by_event_ids" do
    it "maps each known event id to its envelope and skips unknown ids" do
      first = append(lint_stream, [placed("a"), shipped("a")])
      archived = TCB::Lint::OrdersArchive::Archived.new(order_id: "z")
      other = store.append(stream_id: lint_stream(archive_context), events: [archived], occurred_at: occurred_at)
      wanted = [first.last, other.first]

      found = store.read_by_event_ids(wanted.map(&:event_id) + [SecureRandom.uuid])

      expect(found.keys).to match_array(wanted.map(&:event_id))
      expect(found.values_at(*wanted.map(&:event_id)).map(&:to_h)).to eq(wanted.map(&:to_h))
      expect(store.read_by_event_ids([])).to eq({})
    end
  end

  if transactional
    it "rolls back appends made inside a transaction whose block raises" do
      stream = lint_stream
      append(stream, [placed("o1")])
      expect do
        store.transaction do
          append(stream, [shipped("o1")])
          raise ArgumentError, "boom"
        end
      end.to raise_error(ArgumentError, "boom")

      expect(store.read(stream).map(&:version)).to eq([1])
    end
  end

  if concurrent
    it "gives racing writers with expected_version distinct, contiguous versions" do
      stream = lint_stream
      writers = 4
      per_writer = 5
      conflicts = Queue.new
      threads = Array.new(writers) do |writer|
        Thread.new do
          per_writer.times do |n|
            loop do
              current = store.read(stream, order: :desc, limit: 1).first&.version || 0
              store.append(stream_id: stream, events: [noted("o", "#{writer}-#{n}")], occurred_at: occurred_at,
                           expected_version: current)
              break
            rescue TCB::WrongExpectedVersion
              conflicts << writer
            end
          end
        end
      end
      threads.each { |thread| expect(thread.join(60)).to be_truthy }

      read = store.read(stream)
      expect(read.map(&:version)).to eq((1..writers * per_writer).to_a)
      written = (0...writers).flat_map { |w| (0...per_writer).map { |n| "#{w}-#{n}" } }
      expect(read.map { |e| e.event.text }).to match_array(written)
    end

    it "appends every event of racing writers without expected_version" do
      stream = lint_stream
      threads = Array.new(4) do |writer|
        Thread.new do
          3.times do |n|
            store.append(stream_id: stream, events: [noted("o", "#{writer}-#{n}")], occurred_at: occurred_at)
          end
        end
      end
      threads.each { |thread| expect(thread.join(60)).to be_truthy }

      expect(store.read(stream).map(&:version)).to eq((1..12).to_a)
    end
  end
end
# rubocop:enable Metrics/BlockLength
