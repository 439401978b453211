# frozen_string_literal: true

module ActsAsTbackend
  # Deterministic fact ids and fact hashes. The work happens in the native core
  # (src/fact.rs over crates/tbackend-core/src/fact); this module only names the
  # keyword arguments the 0.2 gem's callers already use.
  module Fact
    class << self
      # The id a retry must reproduce byte-for-byte. `format:` defaults to
      # `ActsAsTbackend.config.id_format` (`:legacy`, the 0.2 join, unless configured).
      def derive_id(store:, record_id:, event_type:, source_version:, format: nil)
        Native.derive_id(store, record_id, event_type, source_version, id_format(format))
      end

      # A String-keyed fact Hash as the 0.2 gem built it, with times normalised to float
      # epoch seconds and the store name checked before anything is sent.
      def build(id:, store:, key:, value:, valid_time: nil, transaction_time: nil, causation: nil, schema_version: 1,
                producer: nil)
        Native.build_fact(id, store, key, value, valid_time, transaction_time, causation, schema_version, producer)
      end

      # The JSON the client sends for `value` (a fact or any value), encoded by the native
      # core exactly as the daemon will hash it. Raises InvalidFact for NaN, Infinity,
      # invalid UTF-8, cycles and values over `max_bytes`.
      def to_json(value, max_bytes: Native::DEFAULT_MAX_REQUEST_BYTES)
        Native.encode_json(value, max_bytes)
      end

      # The `value_hash` the daemon stores for a fact whose value is `value` (its JSON as
      # sent, hashed in canonical form: `10` and `10.0` differ, Hash order does not).
      # Raises InvalidFact like to_json.
      def value_hash(value)
        Native.value_hash(value)
      end

      # Raises InvalidFact unless the daemon would accept and persist a store of this name.
      def validate_store_name!(store)
        Native.validate_store_name(store)
      end

      # @api private, asked by the native encoder once per class it meets outside JSON's
      # core types: does `JSON.generate` write an object of `klass` as the JSON String of
      # its `to_s`? It does when `to_json` is json's own Object#to_json, reached directly
      # or through ActiveSupport's (which hands JSON.generate's calls back to it, so
      # neither `as_json` nor ActiveSupport's time format settings apply there: a
      # TimeWithZone is written "2026-01-02 03:04:05 UTC", as the 0.2 gem sent it); true
      # for Time, ActiveSupport::TimeWithZone, Date, DateTime and BigDecimal unless the app
      # overrides their `to_json`. The encoder then calls `to_s` itself instead of
      # JSON.generate. False when JSON.generate is not json's own (Oj's mimic mode).
      def generic_json_class?(klass)
        return false unless json_generate_stock?

        method = klass.instance_method(:to_json)
        method = method.super_method while method && active_support_to_json?(method.owner)
        !method.nil? && method.owner.equal?(::JSON::Ext::Generator::GeneratorMethods::Object)
      rescue NameError
        false
      end

      private

      def json_generate_stock?
        ::JSON.method(:generate).source_location&.first&.end_with?("json/common.rb") &&
          ::JSON::State.equal?(::JSON::Ext::Generator::State)
      end

      def active_support_to_json?(owner)
        defined?(::ActiveSupport::ToJsonWithActiveSupportEncoder) &&
          owner.equal?(::ActiveSupport::ToJsonWithActiveSupportEncoder)
      end

      def id_format(format)
        (format || ActsAsTbackend.config.id_format).to_s
      end
    end
  end
end
