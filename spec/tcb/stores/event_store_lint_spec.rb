# frozen_string_literal: true

require_relative "store_helpers"

RSpec.describe "Event store lint" do
  describe TCB::EventStore::InMemory do
    it_behaves_like "a TCB event store" do
      let(:store) { described_class.new }
    end
  end

  describe "TCB::EventStore::ActiveRecord on SQLite" do
    before(:context) { TcbStoresSpec.create_tables(TcbStoresSpec::SqliteRecord, TCB::Lint::DOMAIN_MODULES, outbox: false) }

    # One in-memory database per connection, so no threads; and sqlite3 1.4 waits for a lock
    # holding the GVL, so threads on a file database would time out instead of taking turns.
    it_behaves_like "a TCB event store", concurrent: false do
      let(:store) { TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::SqliteRecord) }
    end
  end

  describe "TCB::EventStore::ActiveRecord on PostgreSQL" do
    before(:context) { TcbStoresSpec.create_tables(TcbStoresSpec::PgRecord, TCB::Lint::DOMAIN_MODULES, outbox: false) }

    it_behaves_like "a TCB event store" do
      let(:store) { TCB::EventStore::ActiveRecord.new(base_class: TcbStoresSpec::PgRecord) }
    end
  end

  describe TCB::EventStore::TBackend do
    include TbackendSpec::ClientHelpers

    before(:context) do
      @daemon = TbackendSpec::TestDaemon.start
      @client = ActsAsTbackend::Client.new(config_with(port: @daemon.port, request_timeout: 5.0))
    end

    after(:context) do
      @client&.shutdown
      @daemon&.stop
    end

    it_behaves_like "a TCB event store", transactional: false do
      let(:store) { described_class.new(client: @client) }
    end
  end
end
