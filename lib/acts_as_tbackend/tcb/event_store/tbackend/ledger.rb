# frozen_string_literal: true

module TCB
  module EventStore
    class TBackend
      # A daemon answer that is neither success nor a transport failure: a bad token, an
      # ACL refusal, an invalid fact. Retrying does not help; the configuration must change.
      class Rejected < TCB::Error; end

      # The daemon calls of the TBackend store. The client answers softly; the store must
      # not (a domain write that did not happen has to stop the caller), so every call here
      # returns what was asked for or raises Unavailable / Rejected.
      class Ledger
        STORED_STATUSES = ActsAsTbackend::STATUSES.select { |_, row| row[:committed] }.keys.freeze
        CONFLICT = "duplicate_fact_id_conflict"

        def initialize(client:, durability:, attempts:, timeout:)
          @client = client
          @durability = durability
          @attempts = attempts
          @timeout = timeout
        end

        # The configured client, or the process's (read at each call, so a reconfigured or
        # forked process uses its current one).
        def client
          @client || ActsAsTbackend.client
        end

        def latest(store, key)
          read("read of #{key}") { client.latest_for(store: store, key: key, timeout: @timeout) }.dig(:response, :fact)
        end

        def facts(store, key, since: nil, as_of: nil)
          read("read of #{key}") do
            client.facts_for(store: store, key: key, since: since, as_of: as_of, timeout: @timeout)
          end.dig(:response, :facts)
        end

        # True once the fact is stored (inserted, or replayed by a retry of a lost answer:
        # ids are deterministic, so retrying is always safe); false when another fact holds
        # its id.
        def write(fact, what)
          result = call { client.write_fact_once_safe(fact, durability: @durability, timeout: @timeout, attempts: @attempts) }
          return true if STORED_STATUSES.include?(result[:status])
          return false if result[:status] == CONFLICT

          fail!(result, what)
        end

        # Pipelined; a fact whose write failed is retried on its own. Every fact must land.
        def write_all(facts, what)
          results = call { client.write_facts_once(facts, durability: @durability, timeout: @timeout) }
          facts.zip(results).each do |fact, result|
            next if STORED_STATUSES.include?(result[:status])

            fail!(result, what) unless write(fact, what)
          end
        end

        private

        def read(what, &block)
          result = call(&block)
          result[:ok] ? result : fail!(result, what)
        end

        # Strict clients raise transport errors; they become Unavailable like soft ones.
        def call
          yield
        rescue ActsAsTbackend::TransportError => e
          raise Unavailable.new("TBackend #{e.result&.dig(:status) || 'unavailable'}: #{e.message}", result: e.result)
        end

        def fail!(result, what)
          message = "TBackend #{result[:status]} on #{what}: #{result[:error] || result[:response].inspect}"
          transport = ActsAsTbackend::Client::TRANSPORT_STATUSES.include?(result[:status])
          raise Unavailable.new(message, result: result) if transport || result[:retryable]

          raise Rejected, message
        end
      end
    end
  end
end
