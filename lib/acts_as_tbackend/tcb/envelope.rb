# frozen_string_literal: true

require "securerandom"

module TCB
  # One event with its identity and place in the history. Two envelopes are the same only
  # if they carry the same event_id: equal events recorded twice are two facts.
  class Envelope
    ATTRIBUTES = %i[event event_id stream_id version occurred_at correlation_id causation_id].freeze

    NOT_DELEGATED = %i[each deconstruct deconstruct_keys call].freeze

    attr_reader(*ATTRIBUTES)

    def self.wrap(event, correlation_id: nil, causation_id: nil)
      return event if event.is_a?(Envelope)

      new(event: event, event_id: SecureRandom.uuid, stream_id: nil, version: nil, occurred_at: Time.now.utc,
          correlation_id: correlation_id, causation_id: causation_id)
    end

    def initialize(event:, event_id:, stream_id:, version:, occurred_at:, correlation_id: nil, causation_id: nil)
      @event = event
      @event_id = event_id.to_s.freeze
      @stream_id = stream_id&.to_s&.freeze
      @version = version
      @occurred_at = occurred_at&.getutc
      @correlation_id = correlation_id&.to_s&.freeze
      @causation_id = causation_id&.to_s&.freeze
      freeze
    end

    def ==(other)
      other.is_a?(Envelope) && other.event_id == event_id
    end
    alias eql? ==

    def hash
      event_id.hash
    end

    def to_h
      ATTRIBUTES.to_h { |name| [name, public_send(name)] }
    end

    def inspect
      "#<TCB::Envelope #{event.class} event_id=#{event_id} stream_id=#{stream_id.inspect} version=#{version.inspect}>"
    end

    # Block subscribers receive the envelope, and handlers written as `|event| event.email`
    # (the tcb README's own examples) would fail on it. The event's readers answer through
    # the envelope; the envelope's own fields win on a clash.
    # Conversions stay the envelope's own: Array(envelope) must not splat a Struct event.
    def method_missing(name, *args, &block)
      return super if !event.respond_to?(name) || name.start_with?("to_") || NOT_DELEGATED.include?(name)

      event.public_send(name, *args, &block)
    end

    def respond_to_missing?(name, include_private = false)
      (event.respond_to?(name) && !name.start_with?("to_") && !NOT_DELEGATED.include?(name)) || super
    end
  end
end
