# frozen_string_literal: true

require "tmpdir"
require "rails/generators"
require "generators/tcb/upgrade/upgrade_generator"
require_relative "tcb_062_tables"

# An app upgrading from tcb 0.6.2: its tables come from tcb's generators, its rows are the
# YAML tcb wrote, its outbox job is the one tcb's README shows. The same app code then runs
# on our stores, with and without the optional `tcb:upgrade` migration.
module Tcb062Spec
  # A value object inside events, listed in extra_serialization_classes as tcb asked.
  class Money
    attr_reader :cents, :currency

    def initialize(cents:, currency:)
      @cents = cents
      @currency = currency
    end

    def ==(other)
      other.is_a?(Money) && [other.cents, other.currency] == [cents, currency]
    end
  end

  # Not registered anywhere: YAML naming it must not load.
  Secret = Struct.new(:command)

  # The ensure_reaction handler; `failure` makes it raise that message.
  class SendInvoice
    DELIVERED = Queue.new

    class << self
      attr_accessor :failure
    end

    def call(event)
      raise IOError, SendInvoice.failure if SendInvoice.failure

      DELIVERED << event.invoice_id
    end
  end

  module Invoicing
    include TCB::Domain

    Invoiced = Struct.new(:invoice_id, :total, :issued_at, :due_on, :channel, :amount, keyword_init: true)
    Voided = Struct.new(:invoice_id, :reason, keyword_init: true)

    persist events(Invoiced, Voided, stream_id_from_event: :invoice_id)
    on Invoiced, ensure_reaction(SendInvoice)
  end

  # A module whose EventRecord and OutboxRecord the app wrote itself.
  module Billing
    include TCB::Domain

    Charged = Struct.new(:invoice_id, keyword_init: true)

    persist events(Charged, stream_id_from_event: :invoice_id)
    on Charged, ensure_reaction(SendInvoice)
  end

  def self.drain
    Array.new(SendInvoice::DELIVERED.size) { SendInvoice::DELIVERED.pop }
  end
end

RSpec.shared_examples "an app upgrading from tcb 0.6.2" do
  let(:invoicing) { Tcb062Spec::Invoicing }
  let(:stream) { "tcb062_spec/invoicing|inv-1" }
  let(:log) { StringIO.new }
  let(:issued_at) { Time.utc(2026, 3, 1, 12, 30, 15.5r) }

  def invoiced(id = "inv-1", cents: 1250)
    invoicing::Invoiced.new(invoice_id: id, total: BigDecimal("12.50"), issued_at: issued_at, due_on: Date.new(2026, 4, 1),
                            channel: :web, amount: Tcb062Spec::Money.new(cents: cents, currency: "EUR"))
  end

  def events_table
    Tcb062.table(base_class, "tcb062_spec__invoicing_events")
  end

  def outbox_table
    Tcb062.table(base_class, "tcb062_spec__invoicing_outbox")
  end

  def configure(event_store: TCB::EventStore::ActiveRecord.new(base_class: base_class))
    outbox_class = Class.new(TCB::OutboxStore::ActiveRecord)
    connection_class = base_class
    outbox_class.define_method(:initialize) { |mod| super(mod, base_class: connection_class) }
    TCB.domain_modules = [Tcb062Spec::Invoicing]
    TCB.configure do |c|
      c.event_bus = TCB::EventBus.new(sync: true)
      c.event_store = event_store
      c.outbox_store_class = outbox_class
      c.extra_serialization_classes = [Tcb062Spec::Money]
      c.logger = Logger.new(log)
    end
  end

  # The job tcb 0.6.2's README and generator give the app.
  def readme_outbox_job
    TCB::OutboxRelay.new(outbox_store: Tcb062Spec::Invoicing::OutboxRecord, event_store: TCB.config.event_store,
                         lock_timeout: 300).run
  end

  around do |example|
    TCB.reset!
    Tcb062Spec.drain
    Tcb062Spec::SendInvoice.failure = nil
    example.run
  ensure
    TCB.reset!
  end

  before { Tcb062.create_tables(base_class, invoicing) }

  it "reads the YAML rows tcb wrote, then appends after them in JSON, writing only the table's columns" do
    voided = invoicing::Voided.new(invoice_id: "inv-1", reason: :duplicate)
    Tcb062.write_event(base_class, invoicing, invoiced, stream_id: stream, version: 1, correlation_id: "req-1")
    Tcb062.write_event(base_class, invoicing, voided, stream_id: stream, version: 2, correlation_id: "req-1")
    configure

    expect(TCB.read(invoicing).stream("inv-1").to_a.map(&:event)).to eq([invoiced, voided])
    expect(TCB.read_correlation("req-1").to_a.map(&:version)).to eq([1, 2])

    again = invoiced(cents: 99)
    envelopes = TCB.record(events: [again])

    expect(envelopes.map(&:version)).to eq([3])
    expect(events_table.column_names).not_to include("schema_version", "created_at")
    row = events_table.find_by!(version: 3)
    expect(JSON.parse(row.payload)).to include("invoice_id" => "inv-1", "channel" => { "$tcb" => "sym", "v" => "web" })
    expect(row.event_type).to eq("Tcb062Spec::Invoicing::Invoiced")
    expect(TCB.read(invoicing).stream("inv-1").to_a.map(&:event)).to eq([invoiced, voided, again])
  end

  it "refuses to append an event of a later schema version where the table cannot record it" do
    store = TCB::EventStore::ActiveRecord.new(base_class: base_class)
    store.codec.register(invoicing::Voided, schema_version: 2)
    configure(event_store: store)

    expect { TCB.record(events: [invoicing::Voided.new(invoice_id: "inv-1", reason: "x")]) }
      .to raise_error(TCB::ConfigurationError, /schema_version 2.*tcb:upgrade/)
    expect(events_table.count).to eq(0)
  end

  it "reads rows whose YAML holds the event's attributes" do
    Tcb062.write_event(base_class, invoicing, invoiced, stream_id: stream, version: 1, payload: YAML.dump(invoiced.to_h))
    configure

    expect(TCB.read(invoicing).stream("inv-1").to_a.map(&:event)).to eq([invoiced])
  end

  it "reads and appends events holding ActiveSupport::TimeWithZone (Time.current), as Rails apps record them" do
    berlin = invoiced.tap { |event| event.issued_at = issued_at.in_time_zone("Europe/Berlin") }
    Tcb062.write_event(base_class, invoicing, berlin, stream_id: stream, version: 1)
    configure

    TCB.record(events: [berlin])

    read = TCB.read(invoicing).stream("inv-1").to_a.map(&:event)
    expect(read.map(&:issued_at)).to eq([issued_at, issued_at])
    expect(read.first.issued_at.time_zone.name).to eq("Europe/Berlin")
  end

  it "refuses YAML naming a class that is neither registered nor configured" do
    event = invoicing::Voided.new(invoice_id: "inv-1", reason: Tcb062Spec::Secret.new("rm -rf"))
    Tcb062.write_event(base_class, invoicing, event, stream_id: stream, version: 1)
    configure

    expect { TCB.read(invoicing).stream("inv-1").to_a }.to raise_error(Psych::DisallowedClass, /Tcb062Spec::Secret/)
  end

  it "relays tcb's pending outbox rows and new ones with the README's job, naming the model tcb names" do
    event_id = Tcb062.write_event(base_class, invoicing, invoiced("inv-old"), stream_id: "tcb062_spec/invoicing|inv-old",
                                                                              version: 1)
    Tcb062.write_outbox(base_class, invoicing, event_id: event_id, stream_id: "tcb062_spec/invoicing|inv-old", version: 1,
                                               handler_class: Tcb062Spec::SendInvoice)
    configure
    TCB.record(events: [invoiced("inv-new")])

    expect(Tcb062Spec::Invoicing::OutboxRecord.table_name).to eq("tcb062_spec__invoicing_outbox")
    new_row = outbox_table.find_by!(stream_id: "tcb062_spec/invoicing|inv-new")
    expect(new_row.id).to match(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/)

    result = readme_outbox_job

    expect(result.delivered).to eq(2)
    expect(Tcb062Spec.drain).to eq(%w[inv-new inv-old])
    expect(outbox_table.pluck(:status)).to eq(%w[delivered delivered])
  end

  it "retries a failing entry on every run without backoff columns, storing the exception's message" do
    configure
    TCB.record(events: [invoiced])
    Tcb062Spec::SendInvoice.failure = "mail server down"

    2.times { expect(readme_outbox_job.to_h).to include(failed: 1, delivered: 0) }
    expect(log.string.scan(%r{failed attempt 1/10: IOError: mail server down, retrying on the next run}).size).to eq(2)
    expect(outbox_table.pluck(:status, :error)).to eq([["failed", "mail server down"]])

    Tcb062Spec::SendInvoice.failure = nil
    expect(readme_outbox_job.delivered).to eq(1)
    expect(Tcb062Spec.drain).to eq(["inv-1"])
  end

  it "takes the model as tcb constructs the store, OutboxStore::ActiveRecord.new(Invoicing::OutboxRecord)" do
    configure
    store = TCB::OutboxStore::ActiveRecord.new(Tcb062Spec::Invoicing::OutboxRecord)

    entry = store.insert(event_id: SecureRandom.uuid, stream_id: stream, version: 1, handler_class: Tcb062Spec::SendInvoice)

    expect(store.domain_module).to eq(Tcb062Spec::Invoicing)
    expect(store.all.map(&:id)).to eq([entry.id])
    expect(TCB.config.outbox_store_for(invoicing).all.map(&:id)).to eq([entry.id])
  end

  it "serializes with the configured classes in a store configure did not wire" do
    Tcb062.write_event(base_class, invoicing, invoiced, stream_id: stream, version: 1)
    configure(event_store: TCB::EventStore::InMemory.new)
    unwired = TCB::EventStore::ActiveRecord.new(base_class: base_class)

    unwired.append(stream_id: stream, events: [invoiced(cents: 7)])

    expect(unwired.read(stream).map(&:event)).to eq([invoiced, invoiced(cents: 7)])
  end

  it "serializes the fresh classes in that store after a code reload" do
    load_module = lambda do
      Tcb062Spec.send(:remove_const, :Reloaded) if Tcb062Spec.const_defined?(:Reloaded, false)
      Tcb062Spec.const_set(:Reloaded, Module.new).tap do |mod|
        mod.include(TCB::HandlesEvents)
        mod.const_set(:Noted, Struct.new(:note_id, :text, keyword_init: true))
        mod.persist(mod.events(mod::Noted, stream_id_from_event: :note_id))
      end
    end
    boot = lambda do
      TCB.reset!
      TCB.domain_modules = [load_module.call]
      TCB.configure do |c|
        c.event_bus = TCB::EventBus.new(sync: true)
        c.event_store = TCB::EventStore::InMemory.new
      end
    end
    boot.call
    Tcb062.create_tables(base_class, Tcb062Spec::Reloaded, outbox: false)
    unwired = TCB::EventStore::ActiveRecord.new(base_class: base_class)
    unwired.append(stream_id: "tcb062_spec/reloaded|n1", events: [Tcb062Spec::Reloaded::Noted.new(note_id: "n1", text: "a")])

    boot.call
    unwired.append(stream_id: "tcb062_spec/reloaded|n1", events: [Tcb062Spec::Reloaded::Noted.new(note_id: "n1", text: "b")])

    read = unwired.read("tcb062_spec/reloaded|n1").map(&:event)
    expect(read).to all(be_a(Tcb062Spec::Reloaded::Noted))
    expect(read.map(&:text)).to eq(%w[a b])
  ensure
    Tcb062Spec.send(:remove_const, :Reloaded) if Tcb062Spec.const_defined?(:Reloaded, false)
  end

  it "keeps and uses an EventRecord and an OutboxRecord the app defined itself" do
    billing = Tcb062Spec::Billing
    Tcb062.create_tables(base_class, billing)
    event_record = Class.new(base_class) do
      self.table_name = "tcb062_spec__billing_events"
      def self.charges = distinct.count(:stream_id)
    end
    outbox_record = Class.new(base_class) do
      self.table_name = "tcb062_spec__billing_outbox"
      def self.backlog = where(status: "pending").count
    end
    billing.const_set(:EventRecord, event_record)
    billing.const_set(:OutboxRecord, outbox_record)
    store = TCB::EventStore::ActiveRecord.new(base_class: base_class)
    outbox_class = Class.new(TCB::OutboxStore::ActiveRecord)
    TCB.domain_modules = [billing]
    TCB.configure do |c|
      c.event_bus = TCB::EventBus.new(sync: true)
      c.event_store = store
      c.outbox_store_class = outbox_class
    end

    TCB.record(events: [billing::Charged.new(invoice_id: "c1")])

    expect(billing::EventRecord).to equal(event_record)
    expect(billing::OutboxRecord).to equal(outbox_record)
    expect([billing::EventRecord.charges, billing::OutboxRecord.backlog]).to eq([1, 1])
    expect(TCB::OutboxRelay.new(outbox_store: billing::OutboxRecord, event_store: store, lock_timeout: 300).run.delivered)
      .to eq(1)
  ensure
    %i[EventRecord OutboxRecord].each { |name| billing.send(:remove_const, name) if billing.const_defined?(name, false) }
  end

  describe "after the optional tcb:upgrade migration" do
    def run_upgrade
      Dir.mktmpdir("tcb-upgrade") do |root|
        Rails::Generators.invoke("tcb:upgrade", ["tcb062_spec/invoicing", "--quiet"], destination_root: root)
        path = Dir[File.join(root, "db/migrate/*_upgrade_tcb062_spec__invoicing_tcb_tables.rb")].first
        load path
        migration = File.basename(path, ".rb").sub(/\A\d+_/, "").camelize.constantize
        Tcb062.migrate(migration, base_class.connection)
        Object.send(:remove_const, migration.name)
      end
      [events_table, outbox_table].each(&:reset_column_information)
    end

    it "adds our columns, keeps tcb's rows readable, and backs failed entries off" do
      Tcb062.write_event(base_class, invoicing, invoiced, stream_id: stream, version: 1)
      run_upgrade
      run_upgrade # idempotent: a second run finds every column in place
      configure
      TCB.record(events: [invoiced(cents: 5)])

      expect(events_table.column_names).to include("schema_version", "created_at")
      expect(outbox_table.column_names).to include("attempts", "next_attempt_at")
      expect(events_table.order(:version).pluck(:schema_version)).to eq([1, 1])
      expect(events_table.find_by!(version: 2).created_at).to be_within(60).of(Time.now)
      expect(TCB.read(invoicing).stream("inv-1").to_a.map(&:event)).to eq([invoiced, invoiced(cents: 5)])

      Tcb062Spec::SendInvoice.failure = "mail server down"
      expect(readme_outbox_job.failed).to eq(1)
      expect(readme_outbox_job.failed).to eq(0) # backing off now
      expect(outbox_table.pluck(:next_attempt_at).first).to be > Time.now
      expect(outbox_table.pluck(:status, :attempts, :error)).to eq([["failed", 1, "mail server down"]])
    end
  end
end

RSpec.describe "Upgrading from tcb 0.6.2" do
  describe "on SQLite" do
    let(:base_class) { TcbStoresSpec::SqliteRecord }

    it_behaves_like "an app upgrading from tcb 0.6.2"
  end

  describe "on PostgreSQL" do
    let(:base_class) { TcbStoresSpec::PgRecord }

    it_behaves_like "an app upgrading from tcb 0.6.2"
  end

  describe "event store lint on tcb 0.6.2's events tables" do
    describe "on SQLite" do
      before(:context) do
        TCB::Lint::DOMAIN_MODULES.each { |mod| Tcb062.create_tables(TcbStoresSpec::SqliteRecord, mod, outbox: false) }
      end

      it_behaves_like "a TCB event store", concurrent: false do
        let(:store) { TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::SqliteRecord) }
      end
    end

    describe "on PostgreSQL" do
      before(:context) do
        TCB::Lint::DOMAIN_MODULES.each { |mod| Tcb062.create_tables(TcbStoresSpec::PgRecord, mod, outbox: false) }
      end

      it_behaves_like "a TCB event store" do
        let(:store) { TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::PgRecord) }
      end
    end
  end

  describe "outbox store lint on tcb 0.6.2's outbox table" do
    describe "on SQLite" do
      before(:context) { Tcb062.create_tables(TcbStoresSpec::SqliteRecord, TCB::Lint::Orders) }

      it_behaves_like "a TCB outbox store", concurrent: false, backoff: false do
        let(:outbox_store) { TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: TcbStoresSpec::SqliteRecord) }

        before { outbox_store.model.delete_all }
      end
    end

    describe "on PostgreSQL" do
      before(:context) { Tcb062.create_tables(TcbStoresSpec::PgRecord, TCB::Lint::Orders) }

      it_behaves_like "a TCB outbox store", backoff: false do
        let(:outbox_store) { TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: TcbStoresSpec::PgRecord) }

        before { outbox_store.model.delete_all }
      end
    end
  end
end
