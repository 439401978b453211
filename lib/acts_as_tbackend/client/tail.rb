# frozen_string_literal: true

module ActsAsTbackend
  # A gap-safe tail over `facts_by_seq`. The daemon assigns a seq before a fact becomes
  # visible, so a reader that moves to "highest seq seen" misses facts (docs/protocol.md §8:
  # 4.7% with 8 writers). This tail advances only over an unbroken run of seqs, re-reads
  # a gap until `grace` has passed (then accepts it: a failed log append burns a seq for
  # good), and never yields a seq twice.
  #
  #   tail = ActsAsTbackend.client.tail(store: "orders", after_seq: saved_cursor)
  #   tail.each { |fact| handle(fact); save_cursor(fact[:seq_id]) }   # polls forever
  #   tail.poll                                                        # one poll
  class Tail
    include Enumerable

    attr_reader :store, :last_result

    def initialize(client, store:, after_seq: 0, grace: 2.0, poll_interval: 0.25, timeout: nil)
      @client = client
      @store = store.to_s
      @wire_store = client.wire_store(@store)
      @poll_interval = Float(poll_interval)
      @timeout = timeout
      @cursor = Native::TailCursor.new(Integer(after_seq), Float(grace))
      # Released by the cursor but not yet handed out (each(limit:) stopped mid-poll).
      @pending = []
    end

    # Every seq up to here has been yielded or given up: persist it to resume.
    def after_seq
      @pending.empty? ? @cursor.after_seq : @pending.first[:seq_id] - 1
    end

    # Seqs accepted as permanently missing.
    def skipped
      @cursor.skipped
    end

    # One poll: the facts it releases, in seq order (Symbol keys). Never raises for a
    # daemon problem: the facts are then empty and `last_result` tells why. One poll at a
    # time: during another thread's poll of this tail it raises ConcurrentUseError.
    def poll
      unless @pending.empty?
        facts = @pending
        @pending = []
        return facts
      end
      @last_result, facts = @client.native_call { |native| native.tail_poll(@cursor, @wire_store, @timeout) }
      facts || []
    end

    # Yields facts as they become safe to process; polls every `poll_interval` when idle.
    # Runs until the block breaks (or `limit` facts were yielded).
    def each(limit: nil)
      return enum_for(:each, limit: limit) unless block_given?

      yielded = 0
      loop do
        @pending = poll if @pending.empty?
        sleep @poll_interval if @pending.empty?
        until @pending.empty?
          # Dropped only once the block is done with it: a fact whose handler raised is
          # yielded again by the next each, and after_seq never covers it.
          yield @pending.first
          @pending.shift
          yielded += 1
          return self if limit && yielded >= limit
        end
      end
    end
  end
end
