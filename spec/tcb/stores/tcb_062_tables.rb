# frozen_string_literal: true

require "yaml"
require "securerandom"
require_relative "store_helpers"

# Tables and rows as tcb 0.6.2 left them in an app: its generators' migrations (no
# schema_version or created_at on events; a String UUID id and no attempts/next_attempt_at
# on the outbox), and rows written the way its stores wrote them (payloads YAML.dump'ed).
module Tcb062
  module_function

  # `rails g tcb:event_store <name>` in tcb 0.6.2.
  def events_migration(table)
    Class.new(ActiveRecord::Migration[6.1]) do
      define_method(:change) do
        create_table table do |t|
          t.string :event_id, null: false
          t.string :stream_id, null: false
          t.integer :version, null: false
          t.string :event_type, null: false
          t.text :payload, null: false
          t.datetime :occurred_at, null: false
          t.string :correlation_id
          t.string :causation_id
        end
        add_index table, %i[stream_id version], unique: true
        add_index table, :event_id, unique: true
        add_index table, :correlation_id
      end
    end
  end

  # `rails g tcb:outbox <name>` in tcb 0.6.2.
  def outbox_migration(table)
    Class.new(ActiveRecord::Migration[6.1]) do
      define_method(:change) do
        create_table table, id: :string do |t|
          t.string :event_id, null: false
          t.string :stream_id, null: false
          t.integer :version, null: false
          t.string :handler_class, null: false
          t.string :status, null: false, default: "pending"
          t.datetime :locked_at
          t.datetime :delivered_at
          t.text :error
          t.datetime :created_at, null: false
        end
        add_index table, %i[status created_at]
      end
    end
  end

  def migrate(migration, connection)
    instance = migration.new
    instance.verbose = false
    instance.exec_migration(connection, :up)
  end

  # Fresh tcb tables for `mod` on `base_class`'s database.
  def create_tables(base_class, mod, outbox: true)
    connection = TcbStoresSpec.connect(base_class)
    context = TCB::DomainContext.from_module(mod)
    connection.drop_table(context.events_table, if_exists: true)
    connection.drop_table(context.outbox_table, if_exists: true)
    migrate(events_migration(context.events_table), connection)
    migrate(outbox_migration(context.outbox_table), connection) if outbox
    TcbStoresSpec.forget_schema(connection)
  end

  def table(base_class, name)
    Class.new(base_class) { self.table_name = name }
  end

  # An event row as tcb's ActiveRecord store inserted it: the event itself YAML-dumped.
  def write_event(base_class, mod, event, stream_id:, version:, payload: YAML.dump(event), occurred_at: Time.now,
                  correlation_id: nil, causation_id: nil, event_id: SecureRandom.uuid)
    table(base_class, TCB::DomainContext.from_module(mod).events_table).create!(
      event_id: event_id, stream_id: stream_id, version: version, event_type: event.class.name, payload: payload,
      occurred_at: occurred_at, correlation_id: correlation_id, causation_id: causation_id
    )
    event_id
  end

  # An outbox row as tcb's ActiveRecord outbox store inserted it.
  def write_outbox(base_class, mod, event_id:, stream_id:, version:, handler_class:)
    table(base_class, TCB::DomainContext.from_module(mod).outbox_table).create!(
      id: SecureRandom.uuid, event_id: event_id, stream_id: stream_id, version: version,
      handler_class: handler_class.to_s, status: "pending", created_at: Time.now
    ).id
  end
end
