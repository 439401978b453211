# frozen_string_literal: true

require "active_record"

module TCB
  module OutboxStore
    # The outbox of one domain module in its `<context>_outbox` table (made by `rails g
    # tcb:outbox`). Rows are inserted on the app's connection, so inside TCB.record's
    # transaction they commit or roll back with the events.
    #
    # Claiming is atomic: on PostgreSQL the row is taken with `FOR UPDATE SKIP LOCKED`
    # (a second relay skips it instead of queueing behind the first), elsewhere with a
    # conditional UPDATE that only one writer can win. Every later transition is a single
    # UPDATE as well, so `attempts` never loses an increment.
    class ActiveRecord
      STATUSES = OutboxEntry::STATUSES.to_h { |status| [status.to_s, status] }.freeze

      attr_reader :domain_module, :model

      # Creates a module's outbox table as the `tcb:outbox` migration does: for test suites
      # that load a schema without migrations, and for the store lint.
      def self.create_table(domain_module, connection: ::ActiveRecord::Base.connection)
        table = DomainContext.from_module(domain_module).outbox_table
        connection.create_table(table) do |t|
          t.string :event_id, null: false
          t.string :stream_id, null: false
          t.integer :version, null: false
          t.string :handler_class, null: false
          t.string :status, null: false, default: "pending"
          t.integer :attempts, null: false, default: 0
          t.datetime :next_attempt_at, precision: 6
          t.datetime :locked_at, precision: 6
          t.datetime :delivered_at, precision: 6
          t.text :error
          t.datetime :created_at, null: false, precision: 6
        end
        connection.add_index(table, %i[status next_attempt_at], name: "index_#{table}_due")
        connection.add_index(table, %i[event_id handler_class], unique: true, name: "index_#{table}_delivery")
        table
      end

      def initialize(domain_module, base_class: ::ActiveRecord::Base)
        @domain_module = domain_module
        table = DomainContext.from_module(domain_module).outbox_table
        @model = Class.new(base_class) do
          self.table_name = table
          define_singleton_method(:name) { super() || "TCB::OutboxStore::ActiveRecord::Record(#{table})" }
        end
      end

      def insert(event_id:, stream_id:, version:, handler_class:)
        record = model.create!(event_id: event_id.to_s, stream_id: stream_id.to_s, version: version,
                               handler_class: handler_class.to_s, status: "pending", attempts: 0,
                               created_at: Time.now.utc)
        entry(record)
      end

      def all
        model.order(:id).map { |record| entry(record) }
      end

      # Pending entries, and failed ones whose next attempt is due, oldest first.
      def pending(now: Time.now.utc)
        due(model, now).order(:id).map { |record| entry(record) }
      end

      # The locked entry, or nil when another relay claimed (or finished) it first.
      def lock(entry, locked_at:)
        locked_at = locked_at.getutc
        claimed = if postgresql?
                    claim_skip_locked(entry.id, locked_at)
                  else
                    due(model.where(id: entry.id), locked_at).update_all(status: "locked", locked_at: locked_at) == 1
                  end
        claimed ? find(entry.id) : nil
      end

      def mark_delivered(entry, delivered_at:)
        update(entry, status: "delivered", delivered_at: delivered_at.getutc, locked_at: nil, error: nil, next_attempt_at: nil)
      end

      # Counts the attempt. `retry_at` schedules the next one; nil dead-letters the entry.
      def mark_failed(entry, error:, retry_at: nil)
        changed = model.where(id: entry.id).update_all(
          [
            "attempts = attempts + 1, status = ?, error = ?, locked_at = NULL, next_attempt_at = ?",
            retry_at ? "failed" : "dead", error.to_s, retry_at&.getutc
          ]
        )
        changed == 1 ? find(entry.id) : nil
      end

      # Entries locked before `older_than` belong to a relay that died: due again, as
      # failed when they were tried before. Returns how many were released.
      def recover_stale_locks(older_than:)
        model.where(status: "locked").where(model.arel_table[:locked_at].lt(older_than.getutc)).update_all(
          "status = CASE WHEN attempts > 0 THEN 'failed' ELSE 'pending' END, locked_at = NULL"
        )
      end

      private

      def due(scope, now)
        table = model.arel_table
        scope.where(status: "pending")
             .or(scope.where(status: "failed").where(table[:next_attempt_at].eq(nil).or(table[:next_attempt_at].lteq(now))))
      end

      # SKIP LOCKED: a row another relay is claiming right now is not ours to wait for.
      def claim_skip_locked(id, locked_at)
        model.transaction(requires_new: true) do
          row = due(model.where(id: id), locked_at).lock("FOR UPDATE SKIP LOCKED").pick(:id)
          row && model.where(id: row).update_all(status: "locked", locked_at: locked_at) == 1
        end
      end

      def postgresql?
        model.connection.adapter_name.match?(/postg/i)
      end

      def update(entry, **changes)
        model.where(id: entry.id).update_all(changes) == 1 ? find(entry.id) : nil
      end

      def find(id)
        record = model.find_by(id: id)
        record && entry(record)
      end

      def entry(record)
        OutboxEntry.new(id: record.id, event_id: record.event_id, stream_id: record.stream_id, version: record.version,
                        handler_class: record.handler_class, status: STATUSES.fetch(record.status),
                        locked_at: record.locked_at&.getutc, delivered_at: record.delivered_at&.getutc,
                        error: record.error, created_at: record.created_at&.getutc, attempts: record.attempts,
                        next_attempt_at: record.next_attempt_at&.getutc)
      end
    end
  end
end
