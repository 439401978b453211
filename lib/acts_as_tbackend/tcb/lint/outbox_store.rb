# frozen_string_literal: true

require "securerandom"

# `it_behaves_like "a TCB outbox store"` with `let(:outbox_store)`, the store of
# TCB::Lint::Orders (`YourOutboxStore.new(TCB::Lint::Orders)`), empty at the start of each
# example. `concurrent: false` skips the racing relays (an in-memory SQLite has one
# connection); `backoff: false` is for a table without `attempts` and `next_attempt_at`
# (made by tcb 0.6.2's generator), whose failed entries are due again at once.
# rubocop:disable Metrics/BlockLength -- RSpec groups, exempt in spec/ too
RSpec.shared_examples "a TCB outbox store" do |concurrent: true, backoff: true|
  let(:now) { Time.now.utc.floor(6) }

  def insert_entry(handler = TCB::Lint::NotifyWarehouse, version: 1)
    outbox_store.insert(event_id: SecureRandom.uuid, stream_id: "tcb/lint/orders|#{SecureRandom.hex(4)}", version: version,
                        handler_class: handler)
  end

  def find(entry)
    outbox_store.all.find { |candidate| candidate.id == entry.id }
  end

  it "inserts pending entries with every field" do
    event_id = SecureRandom.uuid
    entry = outbox_store.insert(event_id: event_id, stream_id: "tcb/lint/orders|42", version: 3,
                                handler_class: TCB::Lint::NotifyBilling)

    expect(entry).to be_a(TCB::OutboxEntry)
    expect(entry.id).not_to be_nil
    expect([entry.event_id, entry.stream_id, entry.version, entry.handler_class])
      .to eq([event_id, "tcb/lint/orders|42", 3, "TCB::Lint::NotifyBilling"])
    expect([entry.status, entry.locked_at, entry.delivered_at, entry.error, entry.next_attempt_at])
      .to eq([:pending, nil, nil, nil, nil])
    expect(entry.attempts).to eq(0) if backoff
    expect(entry.created_at).to be_within(5).of(Time.now.utc)
    expect(entry.created_at).to be_utc
    expect(outbox_store.all.map(&:id)).to eq([entry.id])
    expect(outbox_store.pending.map(&:id)).to eq([entry.id])
  end

  it "gives every entry its own id" do
    ids = Array.new(3) { insert_entry.id }

    expect(ids.uniq.size).to eq(3)
  end

  it "lists pending entries by stream and version, the handlers of one event in insertion order" do
    event_ids = Array.new(4) { SecureRandom.uuid }
    add = lambda do |event_id, stream, version, handler = TCB::Lint::NotifyWarehouse|
      outbox_store.insert(event_id: event_id, stream_id: "tcb/lint/orders|#{stream}", version: version, handler_class: handler)
    end
    b2 = add.call(event_ids[0], "b", 2)
    a2 = add.call(event_ids[1], "a", 2)
    b1 = add.call(event_ids[2], "b", 1)
    a1_warehouse = add.call(event_ids[3], "a", 1)
    a1_billing = add.call(event_ids[3], "a", 1, TCB::Lint::NotifyBilling)

    expect(outbox_store.pending.map(&:id)).to eq([a1_warehouse, a1_billing, a2, b1, b2].map(&:id))
  end

  it "defaults every time keyword to now" do
    entry = insert_entry

    locked = outbox_store.lock(entry)
    expect(locked.locked_at).to be_within(5).of(Time.now.utc)
    delivered = outbox_store.mark_delivered(locked)
    expect(delivered.delivered_at).to be_within(5).of(Time.now.utc)

    stale = outbox_store.lock(insert_entry, locked_at: Time.now.utc - 1)
    expect(outbox_store.recover_stale_locks.map(&:id)).to eq([stale.id])
  end

  describe "lock" do
    it "claims a pending entry once: the second claim gets nil" do
      entry = insert_entry

      locked = outbox_store.lock(entry, locked_at: now)

      expect(locked.status).to eq(:locked)
      expect(locked.locked_at).to eq(now)
      expect(outbox_store.lock(entry, locked_at: now)).to be_nil
      expect(outbox_store.pending).to be_empty
    end

    it "does not claim a delivered entry" do
      entry = insert_entry
      outbox_store.mark_delivered(outbox_store.lock(entry, locked_at: now), delivered_at: now)

      expect(outbox_store.lock(entry, locked_at: now + 60)).to be_nil
    end
  end

  it "marks a delivery: never pending again, lock and error cleared" do
    entry = outbox_store.lock(insert_entry, locked_at: now)

    delivered = outbox_store.mark_delivered(entry, delivered_at: now + 1)

    expect([delivered.status, delivered.delivered_at, delivered.locked_at,
            delivered.error]).to eq([:delivered, now + 1, nil, nil])
    expect(find(entry).status).to eq(:delivered)
    expect(outbox_store.pending(now: now + 3600)).to be_empty
  end

  describe "mark_failed" do
    it "stores the error and leaves the entry retryable without retry_at" do
      entry = outbox_store.lock(insert_entry, locked_at: now)

      failed = outbox_store.mark_failed(entry, error: "warehouse down")

      expect([failed.status, failed.error, failed.locked_at, failed.next_attempt_at])
        .to eq([:failed, "warehouse down", nil, nil])
      expect(failed.attempts).to eq(1) if backoff
      expect(outbox_store.pending(now: now).map(&:id)).to eq([entry.id])
      expect(outbox_store.lock(entry, locked_at: now).status).to eq(:locked)
    end

    if backoff
      it "counts the attempt and makes the entry due again at retry_at" do
        entry = outbox_store.lock(insert_entry, locked_at: now)

        failed = outbox_store.mark_failed(entry, error: "RuntimeError: boom", retry_at: now + 30)

        expect([failed.status, failed.attempts, failed.error, failed.locked_at, failed.next_attempt_at])
          .to eq([:failed, 1, "RuntimeError: boom", nil, now + 30])
        expect(outbox_store.pending(now: now + 29)).to be_empty
        expect(outbox_store.lock(entry, locked_at: now + 29)).to be_nil
        expect(outbox_store.pending(now: now + 30).map(&:id)).to eq([entry.id])
        expect(outbox_store.lock(entry, locked_at: now + 30).status).to eq(:locked)
      end

      it "keeps counting attempts across retries" do
        entry = insert_entry
        3.times do |n|
          locked = outbox_store.lock(entry, locked_at: now + n)
          outbox_store.mark_failed(locked, error: "try #{n}", retry_at: now + n)
        end

        expect([find(entry).attempts, find(entry).error]).to eq([3, "try 2"])
      end
    else
      it "makes the entry due again at once whatever retry_at says (no backoff columns)" do
        entry = outbox_store.lock(insert_entry, locked_at: now)

        outbox_store.mark_failed(entry, error: "boom", retry_at: now + 30)

        expect(outbox_store.pending(now: now).map(&:id)).to eq([entry.id])
      end
    end
  end

  it "dead-letters with mark_dead: never pending, never claimed" do
    entry = outbox_store.lock(insert_entry, locked_at: now)

    dead = outbox_store.mark_dead(entry, error: "gave up")

    expect([dead.status, dead.error, dead.next_attempt_at]).to eq([:dead, "gave up", nil])
    expect(dead.attempts).to eq(1) if backoff
    expect(outbox_store.pending(now: now + 86_400)).to be_empty
    expect(outbox_store.lock(entry, locked_at: now + 86_400)).to be_nil
  end

  describe "recover_stale_locks" do
    it "releases locks older than the cutoff, and only those, and returns the entries released" do
      stale = outbox_store.lock(insert_entry, locked_at: now - 600)
      fresh = outbox_store.lock(insert_entry, locked_at: now)
      retried = insert_entry
      outbox_store.mark_failed(outbox_store.lock(retried, locked_at: now - 900), error: "x", retry_at: now - 800)
      outbox_store.lock(retried, locked_at: now - 700)

      recovered = outbox_store.recover_stale_locks(older_than: now - 60)

      expect(recovered).to all(be_a(TCB::OutboxEntry))
      expect(recovered.map(&:id)).to match_array([stale.id, retried.id])
      expect(recovered.map(&:locked_at)).to eq([nil, nil])
      expect([find(stale).status, find(stale).locked_at]).to eq([:pending, nil])
      expect(find(fresh).status).to eq(:locked)
      expect([find(retried).status, find(retried).attempts]).to eq([:failed, 1]) if backoff
      expect(outbox_store.pending(now: now).map(&:id)).to match_array([stale.id, retried.id])
      expect(outbox_store.recover_stale_locks(older_than: now - 60)).to eq([])
    end
  end

  if concurrent
    it "lets racing relays claim each entry exactly once" do
      entries = Array.new(30) { insert_entry }
      claims = Queue.new
      start = Queue.new
      relays = Array.new(4) do
        Thread.new do
          start.pop
          outbox_store.pending.each do |entry|
            locked = outbox_store.lock(entry, locked_at: Time.now.utc)
            claims << locked.id if locked
          end
        end
      end
      4.times { start << true }
      relays.each { |relay| expect(relay.join(60)).to be_truthy }

      claimed = Array.new(claims.size) { claims.pop }
      expect(claimed.tally.values.uniq).to eq([1])
      expect(claimed).to match_array(entries.map(&:id))
    end
  end
end
# rubocop:enable Metrics/BlockLength
