# frozen_string_literal: true

require_relative "store_helpers"

RSpec.describe "Outbox store lint" do
  describe TCB::OutboxStore::InMemory do
    it_behaves_like "a TCB outbox store" do
      let(:outbox_store) { described_class.new(TCB::Lint::Orders) }
    end

    it "identifies entries by UUID, as tcb 0.6.2 did" do
      entry = described_class.new(TCB::Lint::Orders).insert(event_id: "e1", stream_id: "tcb/lint/orders|1", version: 1,
                                                            handler_class: TCB::Lint::NotifyWarehouse)

      expect(entry.id).to match(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/)
    end
  end

  describe "TCB::OutboxStore::ActiveRecord on SQLite" do
    before(:context) { TcbStoresSpec.create_tables(TcbStoresSpec::SqliteRecord, [TCB::Lint::Orders], events: false) }

    # One in-memory database per connection: the racing relays run as processes on a
    # SQLite file in outbox_store_active_record_spec.rb instead.
    it_behaves_like "a TCB outbox store", concurrent: false do
      let(:outbox_store) { TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: TcbStoresSpec::SqliteRecord) }

      before { outbox_store.model.delete_all }
    end
  end

  describe "TCB::OutboxStore::ActiveRecord on PostgreSQL" do
    before(:context) { TcbStoresSpec.create_tables(TcbStoresSpec::PgRecord, [TCB::Lint::Orders], events: false) }

    it_behaves_like "a TCB outbox store" do
      let(:outbox_store) { TCB::OutboxStore::ActiveRecord.new(TCB::Lint::Orders, base_class: TcbStoresSpec::PgRecord) }

      before { outbox_store.model.delete_all }
    end
  end
end
