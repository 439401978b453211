# frozen_string_literal: true

require "active_record"
require "json"
require_relative "appending"
require_relative "json_codec"

module TCB
  module EventStore
    # One table per domain module (`payments__charges_events`, made by `rails g
    # tcb:event_store`), events as JSON (see JsonCodec). The table follows from the stream's
    # context string alone, so no model is ever found by camelizing a context (tcb 0.6.2
    # broke on `HTTPGateway`); `register_domain` also names the model `<Module>::EventRecord`.
    #
    # Tables made by tcb 0.6.2's generator have no `schema_version` and no `created_at` and
    # hold YAML payloads: each model's columns are read once, rows carry only the columns the
    # table has, and payloads are read as JSON or YAML (JsonCodec#load_yaml). New rows are
    # JSON either way; `rails g tcb:upgrade` adds the two columns.
    #
    # Versions: each append reads the stream's last version and inserts after it inside a
    # savepoint; the unique index on (stream_id, version) turns a concurrent append of the
    # same version into WrongExpectedVersion (with `expected_version:`) or a fresh attempt
    # at the new end of the stream (without).
    class ActiveRecord
      # Appends without expected_version retry this often when another writer takes the
      # version they read as next.
      APPEND_ATTEMPTS = 50

      attr_reader :codec, :base_class

      # Creates a module's events table as the `tcb:event_store` migration does: for test
      # suites that load a schema without migrations, and for the store lint.
      def self.create_table(domain_module, connection: ::ActiveRecord::Base.connection)
        table = DomainContext.from_module(domain_module).events_table
        connection.create_table(table) do |t|
          t.string :event_id, null: false
          t.string :stream_id, null: false
          t.integer :version, null: false
          t.string :event_type, null: false
          t.integer :schema_version, null: false, default: 1
          t.text :payload, null: false
          t.datetime :occurred_at, null: false, precision: 6
          t.string :correlation_id
          t.string :causation_id
          t.datetime :created_at, null: false, precision: 6
        end
        connection.add_index(table, %i[stream_id version], unique: true, name: "index_#{table}_stream_version")
        connection.add_index(table, :event_id, unique: true, name: "index_#{table}_event_id")
        connection.add_index(table, %i[correlation_id occurred_at], name: "index_#{table}_correlation")
        table
      end

      # `base_class`: the abstract class whose connection the tables live on (e.g.
      # ApplicationRecord, or one of a multi-database app's).
      def initialize(base_class: ::ActiveRecord::Base, codec: JsonCodec.new)
        @base_class = base_class
        @codec = codec
        @models = {}
        @columns = {}
        @lock = Mutex.new
      end

      # Called by TCB.configure for every module that persists: its event classes become
      # readable, and its table gets the model `<Module>::EventRecord`. An EventRecord the app
      # defined itself (an ActiveRecord model with its own methods) is kept and used.
      def register_domain(domain_module)
        codec.register_domain(domain_module)
        context = DomainContext.from_module(domain_module).to_s
        own = domain_module.const_defined?(:EventRecord, false) && domain_module.const_get(:EventRecord, false)
        return adopt_model(context, own) if app_model?(own)

        model = model_for(context)
        domain_module.send(:remove_const, :EventRecord) if own
        domain_module.const_set(:EventRecord, model)
        model
      end

      # True for an ActiveRecord model the app wrote, false for the ones stores build.
      def self.app_model?(candidate)
        candidate.is_a?(Class) && candidate < ::ActiveRecord::Base && !candidate.instance_variable_get(:@tcb_built)
      end

      def append(stream_id:, events:, occurred_at: Time.now, correlation_id: nil, causation_id: nil, expected_version: nil)
        stream = StreamId.parse(stream_id.to_s)
        model = model_for(stream.context)
        # The column keeps microseconds: the envelopes returned must equal the ones read back.
        occurred_at = occurred_at.getutc.floor(6)
        attempts = 0
        begin
          attempts += 1
          model.transaction(requires_new: true) do
            current = model.where(stream_id: stream.to_s).maximum(:version) || 0
            Appending.check_expected_version!(stream, current, expected_version)
            envelopes = Appending.build_envelopes(stream, events, after_version: current, occurred_at: occurred_at,
                                                                  correlation_id: correlation_id, causation_id: causation_id)
            model.insert_all!(envelopes.map { |envelope| row(envelope, columns(model)) }) unless envelopes.empty?
            envelopes
          end
        rescue ::ActiveRecord::RecordNotUnique
          retry if expected_version.nil? && attempts < APPEND_ATTEMPTS
          raise WrongExpectedVersion.new(stream_id: stream.to_s, expected_version: expected_version,
                                         actual_version: current_version(model, stream))
        end
      end

      def read(stream_id, from_version: nil, to_version: nil, occurred_after: nil, limit: nil, order: :asc)
        raise ArgumentError, "order must be :asc or :desc, got #{order.inspect}" unless %i[asc desc].include?(order)

        stream = StreamId.parse(stream_id.to_s)
        scope = model_for(stream.context).where(stream_id: stream.to_s)
        scope = scope.where(version: from_version..) if from_version
        scope = scope.where(version: ..to_version) if to_version
        scope = scope.where(scope.arel_table[:occurred_at].gt(occurred_after)) if occurred_after
        scope = scope.limit(limit) if limit
        scope.order(version: order).map { |record| envelope(record) }
      end

      # Exact context: the stream id must start with "<context>|", so "orders" never returns
      # events of "orders_archive" even where two contexts shared a table. Times compare as
      # instants whatever the app's time zone.
      def read_by_correlation(correlation_id, context:, occurred_after: nil, occurred_before: nil)
        model = model_for(context.to_s)
        scope = model.where(correlation_id: correlation_id.to_s)
                     .where("stream_id LIKE ? ESCAPE '\\'", "#{model.sanitize_sql_like(context.to_s)}|%")
        scope = scope.where(model.arel_table[:occurred_at].gt(occurred_after)) if occurred_after
        scope = scope.where(model.arel_table[:occurred_at].lt(occurred_before)) if occurred_before
        scope.order(:occurred_at, :stream_id, :version).map { |record| envelope(record) }
      end

      # Looks in the table of every context this store has registered or used.
      def read_by_event_ids(event_ids)
        ids = event_ids.map(&:to_s).uniq
        return {} if ids.empty?

        models.each_with_object({}) do |model, found|
          model.where(event_id: ids - found.keys).each do |record|
            found[record.event_id] = envelope(record)
          end
        end
      end

      # Yields nothing, as the other stores do (ActiveRecord 7.1+ would yield its transaction).
      def transaction(&block)
        base_class.transaction { block.call }
      end

      private

      def models
        @lock.synchronize { @models.values }
      end

      def app_model?(candidate)
        self.class.app_model?(candidate)
      end

      def adopt_model(context, model)
        @lock.synchronize do
          @columns.delete(model)
          @models[context] = model
        end
      end

      # The model of a context's table, built once; no constant lookup involved.
      def model_for(context)
        @lock.synchronize do
          @models[context] ||= begin
            table = "#{context.gsub(DomainContext::NAMESPACE_SEPARATOR, DomainContext::TABLE_SEPARATOR)}" \
                    "#{DomainContext::TABLE_SUFFIX}"
            Class.new(base_class) do
              @tcb_built = true
              self.table_name = table
              define_singleton_method(:name) { super() || "TCB::EventStore::ActiveRecord::Record(#{table})" }
            end
          end
        end
      end

      # The table's columns, read once per model.
      def columns(model)
        @lock.synchronize { @columns[model] ||= model.column_names.freeze }
      end

      def current_version(model, stream)
        model.where(stream_id: stream.to_s).maximum(:version) || 0
      end

      def row(envelope, columns)
        dumped = codec.dump(envelope.event)
        row = { "event_id" => envelope.event_id, "stream_id" => envelope.stream_id, "version" => envelope.version,
                "event_type" => dumped["type"], "schema_version" => dumped["schema_version"],
                "payload" => JSON.generate(dumped["data"]), "occurred_at" => envelope.occurred_at,
                "correlation_id" => envelope.correlation_id, "causation_id" => envelope.causation_id,
                "created_at" => Time.now.utc }
        check_schema_version!(dumped, columns)
        row.slice(*columns)
      end

      # Without the column every row reads as schema version 1: writing a later one would
      # make its upcasters run over data that is already current.
      def check_schema_version!(dumped, columns)
        return if dumped["schema_version"] == 1 || columns.include?("schema_version")

        raise ConfigurationError, "#{dumped['type']} has schema_version #{dumped['schema_version']}, but its table has " \
                                  "no schema_version column: run `rails g tcb:upgrade` and migrate"
      end

      def envelope(record)
        Envelope.new(event: event(record), event_id: record.event_id, stream_id: record.stream_id,
                     version: record.version, occurred_at: record.occurred_at.getutc,
                     correlation_id: record.correlation_id, causation_id: record.causation_id)
      end

      # JSON rows start with "{"; tcb 0.6.2 wrote YAML documents ("--- ...").
      def event(record)
        payload = record.payload
        return codec.load_yaml(record.event_type, payload) unless payload.lstrip.start_with?("{")

        schema_version = record.has_attribute?(:schema_version) ? record.schema_version : 1
        codec.load(record.event_type, schema_version, JSON.parse(payload))
      end
    end
  end
end
