# frozen_string_literal: true

require_relative "store_helpers"

# Issue 14: an app that moved its events from an ActiveRecord event store into TBackend
# compares each stream, version by version.
RSpec.describe "TCB::EventStore::TBackend#compare" do
  include TbackendSpec::ClientHelpers

  before(:context) { TcbStoresSpec.create_tables(TcbStoresSpec::SqliteRecord, [TCB::Lint::Orders], outbox: false) }

  around do |example|
    TbackendSpec::TestDaemon.with do |daemon|
      @client = ActsAsTbackend::Client.new(config_with(port: daemon.port, request_timeout: 2.0))
      example.run
    ensure
      @client&.shutdown
    end
  end

  let(:ledger) { TCB::EventStore::TBackend.new(client: @client).tap { |s| s.register_domain(TCB::Lint::Orders) } }
  let(:records) do
    TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::SqliteRecord).tap { |s| s.register_domain(TCB::Lint::Orders) }
  end
  let(:stream) { "#{TCB::DomainContext.from_module(TCB::Lint::Orders)}|#{SecureRandom.uuid}" }
  let(:at) { Time.utc(2026, 4, 1, 8, 0, 0, 250_000) }

  def noted(text)
    TCB::Lint::Orders::Noted.new(order_id: "o", text: text)
  end

  # The same events and times in both stores, as a migration copies them.
  def copy(events)
    records.append(stream_id: stream, events: events, occurred_at: at, correlation_id: "c")
    ledger.append(stream_id: stream, events: records.read(stream).map(&:event), occurred_at: at, correlation_id: "c")
  end

  it "finds a stream moved over whole in sync" do
    copy([noted("a"), noted("b")])
    expect(ledger.compare(stream, with: records))
      .to eq(stream_id: stream, checked: 2, missing: [], extra: [], differing: [], in_sync: true)
  end

  it "names the versions missing from the ledger, extra in it, or differing" do
    copy([noted("a"), noted("b")])
    records.append(stream_id: stream, events: [noted("c"), noted("d")], occurred_at: at, correlation_id: "c")
    ledger.append(stream_id: stream, events: [noted("C")], occurred_at: at, correlation_id: "c")
    report = ledger.compare(stream, with: records)
    expect(report).to include(checked: 4, missing: [4], extra: [], differing: [3], in_sync: false)

    other = "#{TCB::DomainContext.from_module(TCB::Lint::Orders)}|#{SecureRandom.uuid}"
    ledger.append(stream_id: other, events: [noted("only here")], occurred_at: at)
    expect(ledger.compare(other, with: records)).to include(checked: 1, missing: [], extra: [1], in_sync: false)
  end
end
