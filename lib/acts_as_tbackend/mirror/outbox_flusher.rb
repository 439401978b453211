# frozen_string_literal: true

module ActsAsTbackend
  # One write attempt for an outbox intent, mapped to what the app's worker does next.
  # No table, no job, no retry loop: the app owns those. Retrying `unknown` is safe — the
  # fact id is deterministic, so a write that did land answers `replay`.
  #
  # | client status                                  | flush status | terminal | retryable |
  # |------------------------------------------------|--------------|----------|-----------|
  # | committed_acked                                | inserted     | true     | false     |
  # | idempotent_replay                              | replay       | true     | false     |
  # | duplicate_fact_id_conflict                     | conflict     | true     | false     |
  # | timeout_unknown                                | unknown      | false    | true      |
  # | unavailable, circuit_open, rejected_before_commit, or any truthy `retryable` | retryable | false | true |
  # | anything else                                  | failed       | true     | false     |
  module OutboxFlusher
    TERMINAL = {
      "committed_acked" => "inserted",
      "idempotent_replay" => "replay",
      "duplicate_fact_id_conflict" => "conflict"
    }.freeze
    # The other retry-safe statuses of ActsAsTbackend::STATUSES (timeout_unknown is `unknown`).
    RETRYABLE_STATUSES = (Client::RETRY_SAFE_STATUSES - %w[timeout_unknown]).freeze
    SUCCESS = %w[inserted replay].freeze

    module_function

    # `intent_or_hash`: an OutboxIntent or its `to_h` (a malformed one raises
    # ArgumentError). Returns `{ok:, status:, terminal:, retryable:, intent:, result:}`,
    # `intent` carrying the attempt.
    def flush(intent_or_hash, client: ActsAsTbackend.client, durability: nil, timeout: nil)
      intent = intent_or_hash.is_a?(OutboxIntent) ? intent_or_hash : OutboxIntent.from_h(intent_or_hash)
      result = write(client, intent.fact, durability, timeout)
      status = flush_status(result)
      terminal = !%w[unknown retryable].include?(status)
      { ok: SUCCESS.include?(status), status: status, terminal: terminal, retryable: !terminal,
        intent: intent.record_result(result), result: result }
    end

    def flush_status(result)
      status = result[:status].to_s
      return TERMINAL[status] if TERMINAL.key?(status)
      return "unknown" if status == "timeout_unknown"
      return "retryable" if RETRYABLE_STATUSES.include?(status) || result[:retryable]

      "failed"
    end

    # Strict mode raises transport failures; a flush reports them like any other.
    def write(client, fact, durability, timeout)
      client.write_fact_once(fact, durability: durability, timeout: timeout)
    rescue TransportError => e
      e.result || Client.error_result(e)
    end
    private_class_method :write
  end
end
