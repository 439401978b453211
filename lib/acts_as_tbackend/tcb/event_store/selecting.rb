# frozen_string_literal: true

module TCB
  module EventStore
    # The read side of stores that filter envelopes in Ruby (in memory; TBackend, whose
    # daemon has no version filter): one place for the store contract's read rules.
    module Selecting
      ORDERS = %i[asc desc].freeze

      module_function

      def check_order!(order)
        raise ArgumentError, "order must be :asc or :desc, got #{order.inspect}" unless ORDERS.include?(order)
      end

      # A stream's envelopes (oldest first) narrowed to the versions and time asked for;
      # `occurred_after` is exclusive; `limit` counts from the `order` end.
      def stream(envelopes, from_version:, to_version:, occurred_after:, limit:, order:)
        selected = envelopes.select do |envelope|
          (from_version.nil? || envelope.version >= from_version) &&
            (to_version.nil? || envelope.version <= to_version) &&
            (occurred_after.nil? || envelope.occurred_at > occurred_after)
        end
        selected.reverse! if order == :desc
        limit ? selected.first(limit) : selected
      end

      # One correlation id's envelopes between two exclusive bounds, ordered by
      # occurred_at (then stream and version, so equal times still read the same way).
      def correlation_chain(envelopes, correlation_id:, occurred_after:, occurred_before:)
        chain = envelopes.select do |envelope|
          envelope.correlation_id == correlation_id &&
            (occurred_after.nil? || envelope.occurred_at > occurred_after) &&
            (occurred_before.nil? || envelope.occurred_at < occurred_before)
        end
        chain.sort_by { |envelope| [envelope.occurred_at, envelope.stream_id, envelope.version] }
      end
    end
  end
end
