# frozen_string_literal: true

module ActsAsTbackend
  module Model
    # One captured change of a record, enlisted in the ActiveRecord transaction it
    # happened in, the way a record enlists for after_commit. ActiveRecord then decides
    # its fate: a released savepoint hands it to the parent transaction, the outermost
    # commit calls `committed!` (exactly once), any rollback that covers it calls
    # `rolledback!`. The fact is built when the change is saved, so it holds the state
    # that was written even if the object changes again before the commit.
    #
    # The same on Rails 6.1 to 7.2. Rails 7.2's public `current_transaction.after_commit`
    # is not used: its callbacks run after every record's after_commit, and not at all
    # once one of those raised, though the transaction did commit; an enlisted change is
    # told `committed!(should_run_callbacks: false)` then and is still written.
    class PendingChange
      # Captures the change of `record` and enlists it. Never raises: a change that
      # cannot become a fact (a raising `if:`, a NaN) is enlisted as its soft error and
      # reported through the failure policy after the commit, like a failed write.
      def self.capture(record, options, event_type)
        return unless ActsAsTbackend.enabled?

        change = build(record, options, event_type)
        enlist(record.class.connection, change) if change
      end

      # nil when `if:`/`unless:` skip the change.
      def self.build(record, options, event_type)
        return unless options.mirror?(record)

        new(options, event_type, fact: options.fact_for(record, event_type, tombstone: event_type == "destroy"))
      rescue StandardError => e
        new(options, event_type, failure: Client.error_result(e))
      end

      # The current transaction asked once: what `transaction_open?` and
      # `add_transaction_record` would each look up again (Rails 6.1 to 7.2).
      def self.enlist(connection, change)
        transaction = connection.current_transaction
        if transaction.open?
          transaction.add_record(change)
        else
          change.committed!
        end
      end

      attr_reader :fact, :event_type

      def initialize(options, event_type, fact: nil, failure: nil)
        @store = options.store
        @durability = options.durability
        @async = options.async?
        @event_type = event_type
        @fact = fact
        @failure = failure
        @settled = false
      end

      # The outermost transaction committed. `should_run_callbacks: false` means another
      # record's after_commit raised first: the change is committed all the same, so it is
      # still written, but nothing may be raised from there.
      def committed!(should_run_callbacks: true)
        deliver(raise_failures: should_run_callbacks)
      end

      def rolledback!(force_restore_state: false, should_run_callbacks: true) # rubocop:disable Lint/UnusedMethodArgument
        @settled = true
        nil
      end

      def before_committed!; end

      def trigger_transactional_callbacks?
        true
      end

      private

      # Only MirrorFailure (the raise_in_test policy) ever leaves this method.
      def deliver(raise_failures:)
        return if @settled

        @settled = true
        result = @failure || write
        # The policy has nothing to do with a success: no context Hash, no policy lookup.
        return result if FailurePolicy.success?(result)

        FailurePolicy.apply(result, context: { store: @store, event_type: @event_type }, fact: @fact,
                                    durability: @durability)
      rescue MirrorFailure
        raise if raise_failures
      rescue StandardError
        nil # a failure report that itself failed (a closed $stderr): the app's commit stands
      end

      def write
        Mirror.write(@fact, store: @store, event_type: @event_type, durability: @durability, async: @async)
      rescue TransportError => e
        e.result || Client.error_result(e)
      rescue StandardError => e
        Client.error_result(e)
      end
    end
  end
end
