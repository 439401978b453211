# frozen_string_literal: true

require "securerandom"

module TCB
  module EventStore
    # What every persistent store does the same way before it writes: the
    # `expected_version:` rule and the envelopes of the events being appended.
    module Appending
      module_function

      # nil skips the check; :none or 0 requires an empty stream; an Integer n requires
      # the stream to be at version n.
      def check_expected_version!(stream_id, actual, expected)
        return if expected.nil?

        wanted = expected == :none ? 0 : expected
        unless wanted.is_a?(Integer) && wanted >= 0
          raise ArgumentError, "expected_version must be nil, :none or an Integer >= 0, got #{expected.inspect}"
        end
        return if wanted == actual

        raise WrongExpectedVersion.new(stream_id: stream_id.to_s, expected_version: expected, actual_version: actual)
      end

      # One envelope per event, versions following `after_version`, a fresh event id each.
      def build_envelopes(stream_id, events, after_version:, occurred_at:, correlation_id:, causation_id:)
        events.each_with_index.map do |event, index|
          Envelope.new(event: event, event_id: SecureRandom.uuid, stream_id: stream_id.to_s, version: after_version + index + 1,
                       occurred_at: occurred_at, correlation_id: correlation_id, causation_id: causation_id)
        end
      end
    end
  end
end
