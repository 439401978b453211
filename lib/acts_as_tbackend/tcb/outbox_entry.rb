# frozen_string_literal: true

module TCB
  # One delivery owed to one `ensure_reaction` handler for one persisted event.
  #
  # status: :pending (never tried), :locked (a relay is delivering it), :delivered,
  # :failed (the last attempt raised; due again at next_attempt_at), :dead (failed
  # max_attempts times; never tried again until an operator resets it).
  OutboxEntry = Struct.new(
    :id, :event_id, :stream_id, :version, :handler_class, :status, :locked_at, :delivered_at, :error,
    :created_at, :attempts, :next_attempt_at,
    keyword_init: true
  ) do
    def pending?
      status == :pending
    end

    def delivered?
      status == :delivered
    end

    def failed?
      status == :failed
    end

    def dead?
      status == :dead
    end

    # Pending, or failed and due for its next attempt.
    def due?(now)
      pending? || (failed? && (next_attempt_at.nil? || next_attempt_at <= now))
    end
  end

  OutboxEntry::STATUSES = %i[pending locked delivered failed dead].freeze
end
