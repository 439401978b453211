# frozen_string_literal: true

require "active_record"
require "securerandom"

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
    #
    # Tables made by tcb 0.6.2's generator work as they are: a String `id` gets a UUID per
    # entry, and without `attempts`/`next_attempt_at` a failed entry is due again on every
    # relay run (no backoff, no attempt count) until `rails g tcb:upgrade` adds them.
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

      # `domain_module`: the module whose `<context>_outbox` table this is; it gets the model
      # `<Module>::OutboxRecord` unless the app defined that model itself. Or, as tcb 0.6.2
      # constructs it, the model: `OutboxStore::ActiveRecord.new(Invoicing::OutboxRecord)`.
      def initialize(domain_module, base_class: ::ActiveRecord::Base)
        @lock = Mutex.new
        if domain_module.is_a?(Class) && domain_module < ::ActiveRecord::Base
          @model = domain_module
          @domain_module = domain_module.module_parent unless domain_module.module_parent == Object
          return
        end

        @domain_module = domain_module
        own = domain_module.const_defined?(:OutboxRecord, false) && domain_module.const_get(:OutboxRecord, false)
        @model = EventStore::ActiveRecord.app_model?(own) ? own : name_model(build_model(base_class))
      end

      def insert(event_id:, stream_id:, version:, handler_class:)
        now = Time.now.utc
        attributes = { "event_id" => event_id.to_s, "stream_id" => stream_id.to_s, "version" => version,
                       "handler_class" => handler_class.to_s, "status" => "pending", "attempts" => 0,
                       "created_at" => now, "updated_at" => now }.slice(*columns)
        attributes["id"] = SecureRandom.uuid if uuid_ids?
        entry(model.create!(attributes))
      end

      def all
        ordered(model).map { |record| entry(record) }
      end

      # Pending entries, and failed ones whose next attempt is due, by stream and version.
      def pending(now: Time.now.utc)
        ordered(due(model, now)).map { |record| entry(record) }
      end

      # The locked entry, or nil when another relay claimed (or finished) it first.
      def lock(entry, locked_at: Time.now.utc)
        locked_at = locked_at.getutc
        claimed = if postgresql?
                    claim_skip_locked(entry.id, locked_at)
                  else
                    due(model.where(id: entry.id), locked_at).update_all(status: "locked", locked_at: locked_at) == 1
                  end
        claimed ? find(entry.id) : nil
      end

      def mark_delivered(entry, delivered_at: Time.now.utc)
        update(entry, status: "delivered", delivered_at: delivered_at.getutc, locked_at: nil, error: nil,
                      next_attempt_at: nil)
      end

      # Counts the attempt; the entry stays retryable, at `retry_at` (nil: at once).
      def mark_failed(entry, error:, retry_at: nil)
        failed(entry, "failed", error, retry_at)
      end

      # Counts the attempt and dead-letters the entry: the relay's call once max_attempts failed.
      def mark_dead(entry, error:)
        failed(entry, "dead", error, nil)
      end

      # Entries locked before `older_than` belong to a relay that died: due again, as
      # failed when they were tried before. Returns the entries released.
      def recover_stale_locks(older_than: Time.now.utc)
        model.transaction(requires_new: true) do
          stale = model.where(status: "locked").where(model.arel_table[:locked_at].lt(older_than.getutc))
          ids = (postgresql? ? stale.lock("FOR UPDATE SKIP LOCKED") : stale).pluck(:id)
          next [] if ids.empty?

          status = backoff? ? "CASE WHEN attempts > 0 THEN 'failed' ELSE 'pending' END" : "'pending'"
          model.where(id: ids, status: "locked").update_all("status = #{status}, locked_at = NULL")
          ordered(model.where(id: ids)).map { |record| entry(record) }
        end
      end

      private

      def build_model(base_class)
        table = DomainContext.from_module(domain_module).outbox_table
        Class.new(base_class) do
          @tcb_built = true
          self.table_name = table
          define_singleton_method(:name) { super() || "TCB::OutboxStore::ActiveRecord::Record(#{table})" }
        end
      end

      # tcb 0.6.2's generated jobs name `<Module>::OutboxRecord`.
      def name_model(model)
        domain_module.send(:remove_const, :OutboxRecord) if domain_module.const_defined?(:OutboxRecord, false)
        domain_module.const_set(:OutboxRecord, model)
      end

      # Read once, on first use: the store may be built before the table is migrated.
      def columns
        @columns || @lock.synchronize { @columns ||= model.column_names.freeze }
      end

      def uuid_ids?
        model.columns_hash[model.primary_key]&.type == :string
      end

      def backoff?
        columns.include?("attempts") && columns.include?("next_attempt_at")
      end

      def failed(entry, status, error, retry_at)
        sql = if backoff?
                ["attempts = attempts + 1, status = ?, error = ?, locked_at = NULL, next_attempt_at = ?",
                 status, error.to_s, retry_at&.getutc]
              else
                ["status = ?, error = ?, locked_at = NULL", status, error.to_s]
              end
        model.where(id: entry.id).update_all(sql) == 1 ? find(entry.id) : nil
      end

      # By stream and version; entries of one event (several handlers) in insertion order.
      def ordered(scope)
        keys = %w[stream_id version created_at id].select { |column| column == "id" || columns.include?(column) }
        scope.order(*keys)
      end

      def due(scope, now)
        table = model.arel_table
        failed = scope.where(status: "failed")
        failed = failed.where(table[:next_attempt_at].eq(nil).or(table[:next_attempt_at].lteq(now))) if backoff?
        scope.where(status: "pending").or(failed)
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
        changes = changes.slice(*columns.map(&:to_sym))
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
                        error: record.error, created_at: record[:created_at]&.getutc,
                        attempts: record[:attempts], next_attempt_at: record[:next_attempt_at]&.getutc)
      end
    end
  end
end
