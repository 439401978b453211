# frozen_string_literal: true

require_relative "appending"
require_relative "selecting"

module TCB
  module EventStore
    # The reference store: every other store answers the same calls the same way (the
    # store lint specs run against all of them). Thread-safe; `transaction` rolls back
    # every append made inside its block when the block raises.
    class InMemory
      def initialize
        @lock = Monitor.new
        @streams = {}
        @by_event_id = {}
      end

      # Nothing to prepare: every context lives in the same hashes.
      def register_domain(_domain_module); end

      # `expected_version`: nil skips the check; :none or 0 requires an empty stream; an
      # Integer n requires the stream to be at version n. On a mismatch nothing is appended.
      def append(stream_id:, events:, occurred_at: Time.now, correlation_id: nil, causation_id: nil, expected_version: nil)
        stream_id = StreamId.parse(stream_id.to_s).to_s
        occurred_at = occurred_at.getutc
        @lock.synchronize do
          stream = @streams.fetch(stream_id, [])
          Appending.check_expected_version!(stream_id, stream.size, expected_version)
          envelopes = Appending.build_envelopes(stream_id, events, after_version: stream.size, occurred_at: occurred_at,
                                                                   correlation_id: correlation_id, causation_id: causation_id)
          store(stream_id, stream, envelopes) unless envelopes.empty?
          envelopes
        end
      end

      def read(stream_id, from_version: nil, to_version: nil, occurred_after: nil, limit: nil, order: :asc)
        Selecting.check_order!(order)

        # `fetch` with a default, never a defaulting Hash: reading an unknown stream must
        # not create it (tcb 0.6.2 grew a hash entry per unknown stream read).
        stream = @lock.synchronize { @streams.fetch(stream_id.to_s, nil)&.dup } || []
        Selecting.stream(stream, from_version: from_version, to_version: to_version, occurred_after: occurred_after,
                                 limit: limit, order: order)
      end

      # Exact context match: "orders" never returns "orders_archive" events.
      def read_by_correlation(correlation_id, context:, occurred_after: nil, occurred_before: nil)
        context = context.to_s
        all = @lock.synchronize { @by_event_id.values }
        in_context = all.select { |envelope| StreamId.parse(envelope.stream_id).context == context }
        Selecting.correlation_chain(in_context, correlation_id: correlation_id, occurred_after: occurred_after,
                                                occurred_before: occurred_before)
      end

      def read_by_event_ids(event_ids)
        @lock.synchronize do
          event_ids.each_with_object({}) do |event_id, found|
            envelope = @by_event_id[event_id.to_s]
            found[envelope.event_id] = envelope if envelope
          end
        end
      end

      def stream_ids
        @lock.synchronize { @streams.keys }
      end

      # Appends made inside the block vanish if it raises. Nested calls join the outer one.
      def transaction
        @lock.synchronize do
          return yield if @snapshot

          @snapshot = [@streams.transform_values(&:dup), @by_event_id.dup]
          begin
            yield
          rescue Exception # rubocop:disable Lint/RescueException -- Thread#raise/kill must roll back too
            @streams, @by_event_id = @snapshot
            raise
          ensure
            @snapshot = nil
          end
        end
      end

      def reset!
        @lock.synchronize do
          @streams = {}
          @by_event_id = {}
        end
        nil
      end

      private

      def store(stream_id, stream, envelopes)
        @streams[stream_id] = stream + envelopes
        envelopes.each { |envelope| @by_event_id[envelope.event_id] = envelope }
      end
    end
  end
end
