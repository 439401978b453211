# frozen_string_literal: true

require "securerandom"

# `it_behaves_like "a TCB outbox store"` with `let(:outbox_store)`, the store of
# TCB::Lint::Orders (`YourOutboxStore.new(TCB::Lint::Orders)`), empty at the start of each
# example. `concurrent: false` skips the racing relays (an in-memory SQLite has one
# connection).
# rubocop:disable Metrics/BlockLength -- RSpec groups, exempt in spec/ too
RSpec.shared_examples "a TCB outbox store" do |concurrent: true|
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
    expect([entry.status, entry.attempts, entry.locked_at, entry.delivered_at, entry.error, entry.next_attempt_at])
      .to eq([:pending, 0, nil, nil, nil, nil])
    expect(entry.created_at).to be_within(5).of(Time.now.utc)
    expect(entry.created_at).to be_utc
    expect(outbox_store.all.map(&:id)).to eq([entry.id])
    expect(outbox_store.pending.map(&:id)).to eq([entry.id])
  end

  it "lists pending entries oldest first" do
    entries = Array.new(3) { insert_entry }

    expect(outbox_store.pending.map(&:id)).to eq(entries.map(&:id))
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

    it "dead-letters the entry without retry_at: never pending, never claimed" do
      entry = outbox_store.lock(insert_entry, locked_at: now)

      dead = outbox_store.mark_failed(entry, error: "gave up")

      expect([dead.status, dead.attempts, dead.next_attempt_at]).to eq([:dead, 1, nil])
      expect(outbox_store.pending(now: now + 86_400)).to be_empty
      expect(outbox_store.lock(entry, locked_at: now + 86_400)).to be_nil
    end
  end

  describe "recover_stale_locks" do
    it "releases locks older than the cutoff, and only those" do
      stale = outbox_store.lock(insert_entry, locked_at: now - 600)
      fresh = outbox_store.lock(insert_entry, locked_at: now)
      retried = insert_entry
      outbox_store.mark_failed(outbox_store.lock(retried, locked_at: now - 900), error: "x", retry_at: now - 800)
      outbox_store.lock(retried, locked_at: now - 700)

      expect(outbox_store.recover_stale_locks(older_than: now - 60)).to eq(2)

      expect([find(stale).status, find(stale).locked_at]).to eq([:pending, nil])
      expect(find(fresh).status).to eq(:locked)
      expect([find(retried).status, find(retried).attempts]).to eq([:failed, 1])
      expect(outbox_store.pending(now: now).map(&:id)).to match_array([stale.id, retried.id])
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
