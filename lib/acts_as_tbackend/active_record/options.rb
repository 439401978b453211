# frozen_string_literal: true

module ActsAsTbackend
  module Model
    # The macro's options, checked once when the model class loads: a typo in an option
    # name, a bad store name or durability fails at boot, not on the first write.
    class Options
      DURABILITIES = %w[accepted durable].freeze

      attr_reader :only, :except, :denylist, :durability

      def initialize(model, store: nil, only: nil, except: nil, denylist: nil, key: nil, durability: nil, async: nil,
                     **conditions)
        unknown = conditions.keys - %i[if unless]
        raise ArgumentError, "acts_as_tbackend: unknown option(s) #{unknown.map(&:inspect).join(', ')}" unless unknown.empty?

        @model = model
        @store = store&.to_s
        Fact.validate_store_name!(@store) if @store
        @only = only
        @except = except
        @denylist = denylist
        @key = callable!(key, "key") unless key.nil?
        @if = Array(conditions[:if]).map { |condition| callable!(condition, "if") }
        @unless = Array(conditions[:unless]).map { |condition| callable!(condition, "unless") }
        @durability = durability!(durability)
        @async = (async ? true : false) unless async.nil?
        freeze
      end

      # The table name unless `store:` was given; read late, as table_name can be set
      # after the macro.
      def store
        @store || @model.table_name
      end

      # `async:` when given, else `ActsAsTbackend.config.async` read live (false when the
      # config has no such setting).
      def async?
        return @async unless @async.nil?

        config = ActsAsTbackend.config
        config.respond_to?(:async) && config.async ? true : false
      end

      def custom_key?
        !@key.nil?
      end

      # The key the mirror writes for this record: the `key:` option's value, or "store:id".
      def key_for(record)
        custom_key? ? evaluate(record, @key).to_s : Mirror.default_key(store, record.id)
      end

      # The fact for a change of `record` as these options make it: the macro, the record's
      # own helpers, backfill and verify all build here. Only a custom key is passed
      # (the default, "store:id", is the native build's own).
      def fact_for(record, event_type, tombstone: false, valid_time: nil)
        Mirror.record_fact(record, store, event_type, @only, @except, @denylist, tombstone, valid_time,
                           custom_key? ? key_for(record) : nil)
      end

      # `if:` conditions all truthy and `unless:` conditions all falsy.
      def mirror?(record)
        @if.all? { |condition| evaluate(record, condition) } && @unless.none? { |condition| evaluate(record, condition) }
      end

      private

      # Like ActiveRecord's callback conditions: a method name, a block run on the record
      # (no arguments), or anything callable given the record.
      def evaluate(record, callable)
        case callable
        when Symbol, String then record.send(callable)
        when Proc then callable.arity.zero? ? record.instance_exec(&callable) : callable.call(record)
        else callable.call(record)
        end
      end

      def callable!(value, name)
        return value.to_sym if value.is_a?(Symbol) || value.is_a?(String)
        return value if value.respond_to?(:call)

        raise ArgumentError, "acts_as_tbackend: #{name}: expects a method name or something callable, got #{value.inspect}"
      end

      def durability!(value)
        return nil if value.nil?
        return value.to_s if DURABILITIES.include?(value.to_s)

        raise ArgumentError, "acts_as_tbackend: durability: must be one of #{DURABILITIES.join(', ')}, got #{value.inspect}"
      end
    end
  end
end
