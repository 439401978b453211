# frozen_string_literal: true

require_relative "record_shape"

module ActsAsTbackend
  # Turns a record (anything with `id` and `attributes`) into a fact and writes it. The
  # ActiveRecord macro, outbox intents and app jobs all build their facts here, so a
  # change gets the same id whichever path sends it.
  module Mirror
    TOMBSTONE = { "_tombstone" => true }.freeze

    module_function

    # The fact for one change of `record`. The id is `derive_id(store, record.id,
    # event_type, source_version)`, where source_version is `record.updated_at` or, for a
    # record without one, the content digest of the sanitized attributes (0.2 used the wall
    # clock there, so a retry wrote a second fact). `key:` defaults to "store:id".
    # One native call (src/record.rs) over `record.attributes`: Sanitizer.call,
    # Fact.derive_id and Fact.build are the same code.
    def build_fact(record:, store:, event_type:, only: nil, except: nil, denylist: nil, tombstone: false, valid_time: nil,
                   key: nil)
      record_fact(record, store, event_type, only, except, denylist, tombstone, valid_time, key)
    end

    # @api private: build_fact without keywords, for Model::Options#fact_for, which every
    # save of a mirrored model goes through (a keyword splat is a Hash per call).
    def record_fact(record, store, event_type, only, except, denylist, tombstone, valid_time, key) # rubocop:disable Metrics/ParameterLists
      config = ActsAsTbackend.config
      Native.record_fact(record, record.attributes, RecordShape.of(record), store, event_type, only, except, denylist,
                         tombstone ? TOMBSTONE : nil, valid_time, key, config.id_format, config.producer)
    end

    # Builds and writes the fact with `write_fact_once_safe`, then applies the failure
    # policy. Disabled: no fact is built, nothing is sent. A record that cannot become a
    # fact (NaN, invalid UTF-8, a bad store name) gives a soft `error` result.
    def mirror!(record:, store:, event_type:, durability: nil, **build_options)
      return Client::DISABLED.dup unless ActsAsTbackend.enabled?

      fact = build_fact(record: record, store: store, event_type: event_type, **build_options)
      deliver(fact, store: store, event_type: event_type, durability: durability)
    rescue InvalidFact, TypeError, EncodingError => e
      FailurePolicy.apply(Client.error_result(e), context: { store: store, event_type: event_type })
    end

    # @api private: writes a built fact and applies the failure policy. Strict mode's
    # transport errors pass through, as from the client.
    def deliver(fact, store:, event_type:, durability: nil, async: false)
      result = write(fact, store: store, event_type: event_type, durability: durability, async: async)
      FailurePolicy.apply(result, context: { store: store, event_type: event_type }, fact: fact, durability: durability)
    end

    # @api private: the write itself (synchronous, or handed to the async writer), with
    # no failure policy. Disabled: nothing is sent.
    def write(fact, store:, event_type:, durability: nil, async: false)
      return Client::DISABLED.dup unless ActsAsTbackend.enabled?

      result = Instrumentation.observe(:mirror, self, :mirror_payload, fact, store, event_type, async) do
        hand_over(fact, durability, async)
      end
      # The app-facing matchers (acts_as_tbackend/testing) see every fact handed over.
      Testing.record(fact, result, event_type) if defined?(ActsAsTbackend::Testing)
      result
    end

    # @api private: the mirror event's payload.
    def mirror_payload(fact, store, event_type, async)
      { store: store.to_s, event_type: event_type.to_s, fact_id: fact["id"], async: async }
    end

    # @api private
    def hand_over(fact, durability, async)
      if async
        ActsAsTbackend.async_writer.enqueue(fact, durability: durability)
      else
        # No durability keyword unless one was chosen, so a stubbed client records the call
        # exactly as 0.2's mirror made it (and no Hash is built for the keywords).
        client = ActsAsTbackend.client
        durability ? client.write_fact_once_safe(fact, durability: durability) : client.write_fact_once_safe(fact)
      end
    end

    # Every fact stored under the key, oldest first (by seq). An empty Array when there
    # are none, when the connector is disabled, and on any failure: reads are for
    # debugging and must never break the page that shows them.
    def history(store:, key:)
      return [] unless ActsAsTbackend.enabled?

      result = ActsAsTbackend.client.facts_for(store: store, key: key)
      facts = result[:ok] ? result.dig(:response, :facts) : nil
      facts.is_a?(Array) ? facts.sort_by { |fact| fact[:seq_id] || 0 } : []
    rescue StandardError
      []
    end

    # The newest fact under the key (as of `as_of`), or nil — also when disabled or on
    # any failure.
    def latest(store:, key:, as_of: nil)
      return nil unless ActsAsTbackend.enabled?

      result = ActsAsTbackend.client.latest_for(store: store, key: key, as_of: as_of)
      fact = result[:ok] ? result.dig(:response, :fact) : nil
      fact.is_a?(Hash) ? fact : nil
    rescue StandardError
      nil
    end

    def default_key(store, record_id)
      Native.default_key(store, record_id)
    end

    private_class_method :hand_over, :mirror_payload
  end
end
