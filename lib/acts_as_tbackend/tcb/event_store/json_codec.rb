# frozen_string_literal: true

require "bigdecimal"
require "date"
require "time"
require "yaml"

module TCB
  module EventStore
    # Events as JSON for the persistent stores: `{"type", "schema_version", "data"}`, never
    # YAML or a Ruby class dump, so stored events are readable by any tool and loading one
    # can only ever instantiate a class the app registered.
    #
    # Event classes are registered by name (the stores do it for every `persist events(…)`
    # of the domain modules they serve). Attributes come from `to_h` (Struct, Data and
    # most value objects) or else the instance variables; loading calls the keyword
    # initializer, then a positional one, then restores instance variables. Values JSON
    # cannot carry (Symbol, Time, Date, DateTime, BigDecimal, Hashes with non-String keys,
    # nested registered objects) are written as tagged objects `{"$tcb" => tag, "v" => …}`
    # so they come back as the same Ruby values.
    #
    # Schema evolution: `register(klass, schema_version: 2)` and an upcaster per old version,
    # `upcast("Orders::Placed", from: 1) { |data| data.merge("currency" => "EUR") }`.
    #
    # Rows tcb 0.6.2 wrote hold YAML; `load_yaml` reads them with `YAML.safe_load`, so only the
    # registered classes, the configured extras and the time and number classes can come back.
    #
    # A codec nobody registered a class on (a store built outside `TCB.configure`) falls back
    # to the classes the current configuration persists or lists as extras.
    class JsonCodec
      TAG = "$tcb"
      # Values written as tagged JSON, never as registered objects.
      NATIVE = [Symbol, Time, Date, DateTime, BigDecimal].freeze

      # A stored type no registered class answers to, or an attribute value this codec
      # cannot write.
      class UnknownType < TCB::Error; end

      Registration = Struct.new(:klass, :type, :schema_version)

      def initialize
        @by_type = {}
        @by_class = {}
        @upcasters = Hash.new { |hash, type| hash[type] = {} }
        @lock = Mutex.new
      end

      # Makes `klass` writable and readable under `type`. Registering the same class again
      # is a no-op; a type name taken by another class raises, unless that class has the
      # same name: a code reload made `klass` anew, and the stale class is dropped.
      def register(klass, type: klass.name, schema_version: 1)
        raise ArgumentError, "cannot register anonymous class #{klass.inspect}: give it a type: name" if type.nil?

        @lock.synchronize do
          existing = @by_type[type]
          if existing && existing.klass != klass
            unless existing.klass.name == klass.name
              raise ArgumentError, "event type #{type.inspect} is already registered for #{existing.klass}"
            end

            @by_class.delete(existing.klass)
          end

          registration = Registration.new(klass, type.to_s.freeze, Integer(schema_version))
          @by_type[registration.type] = registration
          @by_class[klass] = registration
        end
        self
      end

      # The event classes a domain module persists, and the value classes the configuration
      # lists in `extra_serialization_classes`; classes registered before keep their
      # registration (and schema version).
      def register_domain(domain_module)
        classes = domain_module.respond_to?(:persist_registrations) ? domain_module.persist_registrations.map(&:event_class) : []
        classes += Array(TCB.config.extra_serialization_classes).select { |klass| klass.is_a?(Class) && klass.name }
        classes.each { |klass| register(klass) unless registered?(klass) || NATIVE.include?(klass) }
        self
      end

      # `block` turns the data of version `from` into the data of version `from + 1`.
      def upcast(type, from:, &block)
        raise ArgumentError, "upcast needs a block" unless block

        @lock.synchronize { @upcasters[type.to_s][Integer(from)] = block }
        self
      end

      def registered?(klass)
        @lock.synchronize { @by_class.key?(klass) }
      end

      # The event a tcb 0.6.2 row holds: its YAML is either the event object itself or its
      # attributes, which the class of `type` is built from.
      def load_yaml(type, yaml)
        registration = registration_for_type!(type)
        loaded = YAML.safe_load(yaml, permitted_classes: yaml_permitted_classes, aliases: true)
        return loaded if loaded.is_a?(registration.klass)
        unless loaded.is_a?(Hash)
          raise UnknownType, "stored #{type} payload is a #{loaded.class}, not a #{registration.klass} or its attributes"
        end

        instantiate(registration.klass, loaded.transform_keys(&:to_s))
      end

      # `{"type", "schema_version", "data"}` for an event of a registered class.
      def dump(event)
        registration = registration_for!(event.class)
        { "type" => registration.type, "schema_version" => registration.schema_version,
          "data" => encode_attributes(event) }
      end

      # The event of `type`, its data upcast from `schema_version` to the registered one.
      def load(type, schema_version, data)
        registration = registration_for_type!(type)
        data = upcast_data(registration, Integer(schema_version), stringify(data))
        instantiate(registration.klass, data.transform_values { |value| decode(value) })
      end

      private

      def registration_for!(klass)
        @lock.synchronize { @by_class[klass] } || fallback_registration { |candidate| candidate == klass } ||
          raise(UnknownType, "cannot serialize #{klass}: it is not a registered event class " \
                             "(persist it in a TCB domain module, or register it on the store's codec)")
      end

      def registration_for_type!(type)
        @lock.synchronize { @by_type[type.to_s] } || fallback_registration { |klass| klass.name == type.to_s } ||
          raise(UnknownType, "stored event type #{type.inspect} is not registered: persist it in a TCB domain " \
                             "module or call #register(#{type}) on the store's codec")
      end

      # Registers the first configured class the block accepts, and answers its registration.
      def fallback_registration(&block)
        klass = configured_classes.find(&block)
        return nil unless klass

        register(klass)
        @lock.synchronize { @by_class[klass] }
      end

      def configured_classes
        return [] unless defined?(TCB) && TCB.respond_to?(:config)

        config = TCB.config
        (config.persist_registrations.keys + Array(config.extra_serialization_classes))
          .select { |klass| klass.is_a?(Class) && klass.name && !NATIVE.include?(klass) }
      end

      # What tcb 0.6.2's YAML may hold: events, their value objects, times and numbers.
      def yaml_permitted_classes
        registered = @lock.synchronize { @by_class.keys }
        time_classes = [DateTime]
        time_classes += [::ActiveSupport::TimeWithZone, ::ActiveSupport::TimeZone] if defined?(::ActiveSupport::TimeWithZone)
        (NATIVE + time_classes + registered + configured_classes).uniq
      end

      def encode_attributes(object)
        attributes(object).to_h { |name, value| [name.to_s, encode(value)] }
      end

      def attributes(object)
        return object.to_h if object.is_a?(Struct) || (object.respond_to?(:to_h) && object.method(:to_h).arity.zero?)

        object.instance_variables.to_h { |ivar| [ivar.to_s.delete_prefix("@"), object.instance_variable_get(ivar)] }
      end

      def encode(value)
        case value
        when nil, true, false, String, Integer, Float then value
        when Array then value.map { |item| encode(item) }
        when Hash then encode_hash(value)
        when Symbol then tagged("sym", value.to_s)
        when DateTime then tagged("datetime", value.iso8601(9))
        when Date then tagged("date", value.iso8601)
        when Time then tagged("time", value.iso8601(9))
        when BigDecimal then tagged("decimal", value.to_s)
        else encode_object(value)
        end
      end

      def encode_hash(hash)
        if hash.each_key.all?(String) && !hash.key?(TAG)
          hash.transform_values { |item| encode(item) }
        else
          tagged("hash", hash.map { |key, item| [encode(key), encode(item)] })
        end
      end

      def encode_object(value)
        registration = @lock.synchronize { @by_class[value.class] } || fallback_registration { |klass| klass == value.class }
        unless registration
          raise UnknownType, "cannot serialize a #{value.class} inside an event: register #{value.class} on the " \
                             "store's codec (or list it in c.extra_serialization_classes)"
        end

        { TAG => "object", "type" => registration.type, "schema_version" => registration.schema_version,
          "v" => encode_attributes(value) }
      end

      def tagged(tag, value)
        { TAG => tag, "v" => value }
      end

      def decode(value)
        case value
        when Array then value.map { |item| decode(item) }
        when Hash then value.key?(TAG) ? decode_tagged(value) : value.transform_values { |item| decode(item) }
        else value
        end
      end

      def decode_tagged(value)
        raw = value["v"]
        case value[TAG]
        when "sym" then raw.to_sym
        when "datetime" then DateTime.iso8601(raw)
        when "date" then Date.iso8601(raw)
        when "time" then Time.iso8601(raw)
        when "decimal" then BigDecimal(raw)
        when "hash" then raw.to_h { |key, item| [decode(key), decode(item)] }
        when "object" then load(value["type"], value["schema_version"] || 1, raw)
        else raise UnknownType, "unknown tagged value #{value[TAG].inspect}"
        end
      end

      def upcast_data(registration, version, data)
        if version > registration.schema_version
          raise UnknownType, "stored #{registration.type} has schema_version #{version}, newer than the registered " \
                             "#{registration.schema_version}: deploy the code that writes it first"
        end

        while version < registration.schema_version
          upcaster = @lock.synchronize { @upcasters[registration.type][version] }
          raise UnknownType, "no upcaster for #{registration.type} from schema_version #{version}" unless upcaster

          data = stringify(upcaster.call(data))
          version += 1
        end
        data
      end

      # The client hands back JSON objects with Symbol keys; data is keyed by String here.
      def stringify(value)
        case value
        when Hash then value.to_h { |key, item| [key.to_s, stringify(item)] }
        when Array then value.map { |item| stringify(item) }
        else value
        end
      end

      def instantiate(klass, data)
        return instantiate_struct(klass, data) if klass < Struct

        parameters = klass.instance_method(:initialize).parameters
        if parameters.any? { |kind, _| %i[key keyreq keyrest].include?(kind) } || data_class?(klass)
          klass.new(**data.transform_keys(&:to_sym))
        elsif parameters.any? { |kind, _| %i[req opt].include?(kind) }
          klass.new(*parameters.filter_map { |kind, name| data[name.to_s] if %i[req opt].include?(kind) })
        else
          restore_instance_variables(klass.allocate, data)
        end
      end

      def instantiate_struct(klass, data)
        return klass.new(**data.transform_keys(&:to_sym)) if klass.respond_to?(:keyword_init?) && klass.keyword_init?

        klass.new(*klass.members.map { |member| data[member.to_s] })
      end

      # Ruby 3.2's Data classes take keywords through a C initializer that reports no parameters.
      def data_class?(klass)
        defined?(::Data) && ::Data.respond_to?(:define) && klass < ::Data
      end

      def restore_instance_variables(object, data)
        data.each { |name, value| object.instance_variable_set(:"@#{name}", value) }
        object
      end
    end
  end
end
