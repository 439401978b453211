# frozen_string_literal: true

module ActsAsTbackend
  # A fact waiting to be written, in a shape any store can keep (a JSON column, a queue
  # payload): `to_h` holds only Strings, numbers, nil and the fact Hash, and `from_h`
  # reads it back with String or Symbol keys. Immutable: `record_result` returns a new one.
  class OutboxIntent
    REQUIRED_FACT_KEYS = %w[id store key value].freeze

    attr_reader :id, :fact, :attempts, :last_status, :last_error

    # The intent for one change of a record, built exactly as the mirror builds it, so a
    # flush and a mirror of the same change share a fact id.
    def self.from_record(record:, store:, event_type:, **mirror_options)
      new(fact: Mirror.build_fact(record: record, store: store, event_type: event_type, **mirror_options))
    end

    def self.from_h(hash)
      raise ArgumentError, "an outbox intent must be a Hash, got #{hash.class}" unless hash.is_a?(Hash)

      fields = hash.transform_keys(&:to_s)
      new(fact: fields["fact"], id: fields["id"], attempts: fields["attempts"] || 0,
          last_status: fields["last_status"], last_error: fields["last_error"])
    end

    def initialize(fact:, id: nil, attempts: 0, last_status: nil, last_error: nil)
      raise ArgumentError, "an outbox intent needs a fact Hash, got #{fact.class}" unless fact.is_a?(Hash)

      @fact = fact.transform_keys(&:to_s).freeze
      missing = REQUIRED_FACT_KEYS.reject { |name| @fact.key?(name) }
      raise ArgumentError, "an outbox intent's fact needs #{missing.join(', ')}" unless missing.empty?

      @id = (id || @fact["id"]).to_s
      @attempts = Integer(attempts)
      @last_status = last_status&.to_s
      @last_error = last_error&.to_s
      freeze
    end

    def to_h
      { "id" => id, "fact" => fact, "attempts" => attempts, "last_status" => last_status, "last_error" => last_error }
    end

    # The intent after one more attempt that ended with `result` (a soft result).
    def record_result(result)
      self.class.new(fact: fact, id: id, attempts: attempts + 1,
                     last_status: result[:status], last_error: result[:error])
    end

    def ==(other)
      other.is_a?(OutboxIntent) && other.to_h == to_h
    end
    alias eql? ==

    def hash
      to_h.hash
    end
  end
end
