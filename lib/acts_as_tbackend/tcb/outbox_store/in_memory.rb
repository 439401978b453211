# frozen_string_literal: true

require "securerandom"

module TCB
  module OutboxStore
    # The reference outbox store (one per domain module, like the ActiveRecord one).
    # Every state change is a compare-and-set under one lock, so two relays never both
    # claim an entry.
    class InMemory
      attr_reader :domain_module

      def initialize(domain_module = nil)
        @domain_module = domain_module
        @lock = Monitor.new
        @entries = {}
      end

      def insert(event_id:, stream_id:, version:, handler_class:)
        @lock.synchronize do
          entry = OutboxEntry.new(id: SecureRandom.uuid, event_id: event_id.to_s, stream_id: stream_id.to_s, version: version,
                                  handler_class: handler_class.to_s, status: :pending, attempts: 0,
                                  created_at: Time.now.utc)
          @entries[entry.id] = entry
          entry.dup
        end
      end

      def all
        @lock.synchronize { @entries.values.map(&:dup) }
      end

      # Pending entries and failed ones whose retry is due, by stream and version.
      def pending(now: Time.now.utc)
        @lock.synchronize do
          due = @entries.values.select { |entry| entry.due?(now) }
          due.each_with_index.sort_by { |entry, index| [entry.stream_id, entry.version, index] }.map { |entry, _| entry.dup }
        end
      end

      # Claims the entry for one relay: returns the locked entry, or nil when another relay
      # claimed (or finished) it first.
      def lock(entry, locked_at: Time.now.utc)
        update(entry) do |current|
          next false unless current.due?(locked_at.getutc)

          current.status = :locked
          current.locked_at = locked_at.getutc
        end
      end

      def mark_delivered(entry, delivered_at: Time.now.utc)
        update(entry) do |current|
          current.status = :delivered
          current.delivered_at = delivered_at.getutc
          current.locked_at = nil
          current.error = nil
          current.next_attempt_at = nil
        end
      end

      # Counts the attempt; the entry stays retryable, at `retry_at` (nil: at once).
      def mark_failed(entry, error:, retry_at: nil)
        failed(entry, :failed, error, retry_at)
      end

      # Counts the attempt and dead-letters the entry: the relay's call once max_attempts failed.
      def mark_dead(entry, error:)
        failed(entry, :dead, error, nil)
      end

      # Entries locked by a relay that died (locked before `older_than`) are due again;
      # returns them.
      def recover_stale_locks(older_than: Time.now.utc)
        @lock.synchronize do
          stale = @entries.values.select { |entry| entry.status == :locked && entry.locked_at < older_than }
          stale.map do |entry|
            entry.status = entry.attempts.positive? ? :failed : :pending
            entry.locked_at = nil
            entry.dup
          end
        end
      end

      def reset!
        @lock.synchronize { @entries.clear }
        nil
      end

      private

      def failed(entry, status, error, retry_at)
        update(entry) do |current|
          current.attempts += 1
          current.status = status
          current.error = error.to_s
          current.locked_at = nil
          current.next_attempt_at = retry_at&.getutc
        end
      end

      # Applies the block to the stored entry; a block returning false means "not claimed".
      def update(entry)
        @lock.synchronize do
          current = @entries[entry.id]
          return nil if current.nil? || yield(current) == false

          current.dup
        end
      end
    end
  end
end
