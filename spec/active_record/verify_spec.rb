# frozen_string_literal: true

require "spec_helper"
require "bigdecimal"
require "stringio"
require "tmpdir"
require "acts_as_tbackend/rails/backfill"
require "acts_as_tbackend/mirror/verify"
require_relative "support/mirror_models"

# Issue 14: ActsAsTbackend.verify proves the ledger holds every row's current state and
# nothing else, and repair: true converges it. Drift is made behind the macro's back, as
# apps make it: update_columns, insert_all, delete, and a fact that was dead-lettered.
module TbackendSpec
  module VerifyModels
    def self.schema!
      ActiveRecord::Base.connection.create_table(:verify_orders, force: true) do |t|
        t.string :status
        t.integer :total
        t.decimal :amount, precision: 10, scale: 2
        t.datetime :paid_at
        t.timestamps
      end
      [Order, AsyncOrder, KeyedOrder].each(&:reset_column_information)
    end

    class Order < ActiveRecord::Base
      self.table_name = "verify_orders"
      acts_as_tbackend store: "verify_orders"
    end

    # A key of its own and a condition: keys map back to rows through the causation.
    class KeyedOrder < ActiveRecord::Base
      self.table_name = "verify_orders"
      acts_as_tbackend store: "keyed_orders", key: ->(order) { "order:#{order.status}" }, unless: -> { total.nil? },
                       only: %i[id status total]
    end

    # The same rows and store, mirrored through the async writer (whose permanent
    # failures are dead-lettered).
    class AsyncOrder < ActiveRecord::Base
      self.table_name = "verify_orders"
      acts_as_tbackend store: "verify_orders", async: true
    end
  end
end

RSpec.describe "ActsAsTbackend.verify" do
  include TbackendSpec::ClientHelpers

  let(:model) { TbackendSpec::VerifyModels::Order }
  let(:store) { "verify_orders" }
  let(:epoch) { Time.utc(2026, 1, 1) }

  around do |example|
    Dir.mktmpdir("tbackend-verify") do |dir|
      @dir = dir
      TbackendSpec::TestDaemon.with do |d|
        @daemon = d
        example.run
      end
    end
  ensure
    ActsAsTbackend.reset!
  end

  attr_reader :daemon, :dir

  def seed(count, first: 1)
    (first...(first + count)).each_slice(10_000) do |ids|
      model.insert_all(ids.map do |id|
        { id: id, status: "new", total: 10, amount: BigDecimal("10.50"), paid_at: epoch + id, created_at: epoch,
          updated_at: epoch }
      end)
    end
    # Explicit ids leave PostgreSQL's sequence behind: the macro's creates follow them.
    model.connection.reset_pk_sequence!(model.table_name) if model.connection.respond_to?(:reset_pk_sequence!)
  end

  def backfill
    ActsAsTbackend::Backfill.new(model, batch_size: 2_000, io: StringIO.new,
                                        checkpoint: File.join(dir, "checkpoint-#{SecureRandom.hex(4)}.json")).run
  end

  def key(id)
    "#{store}:#{id}"
  end

  # A fact written straight into the ledger, later than anything the mirror wrote (not in
  # the future: latest_for reads as of now).
  def write_by_hand(id, value, key:, at: Time.now)
    fact = ActsAsTbackend::Fact.build(id: id, store: store, key: key, value: value, transaction_time: at)
    result = ActsAsTbackend.client.write_fact_once(fact)
    raise "hand write failed: #{result.inspect}" unless result[:ok]
  end

  def facts_in_store
    ActsAsTbackend.client.facts_by_seq(store: store)[:response][:facts]
  end

  TbackendSpec::Database::ADAPTERS.each do |adapter_name|
    context "on #{adapter_name}" do
      before do
        TbackendSpec::Database.connect(adapter_name, database: "verify_specs")
        TbackendSpec::VerifyModels.schema!
        client_for(daemon, spool_path: File.join(dir, "spool"))
      end

      it "finds exactly the drift made behind the macro's back, repairs it, and a second verify is clean" do
        seed(1_990)
        expect(backfill.written).to eq(1_990)
        # Ten through the macro, one of them destroyed (its tombstone is no orphan).
        made = Array.new(10) { |i| model.create!(status: "macro", total: i, amount: BigDecimal("1.25"), paid_at: epoch) }
        made.last.destroy!
        expect(ActsAsTbackend.verify(model)).to be_in_sync

        model.find(5).update_columns(status: "sneaky")                        # stale: updated_at unchanged
        model.insert_all([2_001, 2_002, 2_003].map { |id| { id: id, status: "bulk", created_at: epoch, updated_at: epoch } })
        model.where(id: 7).delete_all                                         # orphaned
        ten = model.find(9).tbackend_fact(event_type: "x")["value"].merge("total" => 10.0)
        write_by_hand("float-9", ten, key: key(9)) # stale: 10.0 is not 10
        # A change whose fact was dead-lettered: its id was taken by another value.
        taken_at = epoch + 3_600
        write_by_hand(ActsAsTbackend::Fact.derive_id(store: store, record_id: 3_000, event_type: "create",
                                                     source_version: taken_at),
                      { "taken" => true }, key: key(3_000), at: epoch)
        TbackendSpec::VerifyModels::AsyncOrder.create!(id: 3_000, status: "lost", created_at: taken_at,
                                                       updated_at: taken_at)
        expect(ActsAsTbackend.async_writer.flush(timeout: 10)).to be(true)
        expect(ActsAsTbackend::DeadLetters.entries.map { |e| e.record["key"] }).to eq([key(3_000)])

        events = []
        subscription = ActiveSupport::Notifications.subscribe("verify.acts_as_tbackend") { |*, payload| events << payload }
        report = ActsAsTbackend.verify(model)
        ActiveSupport::Notifications.unsubscribe(subscription)
        expect(report.missing).to eq([2_001, 2_002, 2_003])
        expect(report.stale).to eq([5, 9, 3_000])
        expect(report.orphaned).to eq([key(7)])
        expect(report.counts).to eq(missing: 3, stale: 3, orphaned: 1)
        expect(report.checked).to eq(model.count)
        expect(report).to have_attributes(complete: true, in_sync?: false, repaired: nil)
        expect(events).to eq([{ model: model.name, store: store, checked: model.count, missing: 3, stale: 3, orphaned: 1,
                                complete: true, in_sync: false, repaired: nil }])

        before = facts_in_store.size
        repaired = ActsAsTbackend.verify(model, repair: true)
        expect(repaired.counts).to eq(missing: 3, stale: 3, orphaned: 1)
        expect(repaired.repaired).to eq(written: 7, replayed: 0, failed: 0)
        added = facts_in_store.drop(before)
        expect(added.map { |f| f[:causation].split(":").last }.uniq).to eq(["repair"])
        expect(added.find { |f| f[:key] == key(7) }[:value]).to eq(_tombstone: true)
        expect(added.find { |f| f[:key] == key(5) }[:value]).to include(status: "sneaky")

        again = ActsAsTbackend.verify(model, repair: true)
        expect(again).to be_in_sync
        expect(again.repaired).to eq(written: 0, replayed: 0, failed: 0)
        expect(facts_in_store.size).to eq(before + 7)
      end

      it "derives repair ids from the content: a repair whose answers were lost replays on retry, never conflicts" do
        seed(50)
        backfill
        model.find(3).update_columns(status: "sneaky", total: 11)
        model.where(id: 4).delete_all
        lossy = SimpleDelegator.new(ActsAsTbackend.client)
        lost = 0
        lossy.define_singleton_method(:write_facts_once) do |facts, **options|
          results = __getobj__.write_facts_once(facts, **options)
          next results unless lost.zero?

          lost = results.size
          results.map { { ok: false, status: "timeout_unknown", committed: nil, retryable: true, response: nil, error: "lost" } }
        end
        report = ActsAsTbackend::Mirror::Verify.new(model, repair: true, client: lossy).call
        expect(lost).to eq(1) # the stale row's fact, then the orphan's tombstone (another batch)
        expect(report.repaired).to eq(written: 1, replayed: 1, failed: 0)
        expect(ActsAsTbackend.verify(model)).to be_in_sync
      end

      it "ends a backfill with a verify of a sample of what it covered, which catches a row changed meanwhile" do
        seed(2_500)
        racing = SimpleDelegator.new(ActsAsTbackend.client)
        changed = model
        # An app change that skips callbacks, right after its row's batch landed.
        racing.define_singleton_method(:write_facts_once) do |facts, **options|
          __getobj__.write_facts_once(facts, **options).tap do
            changed.where(id: 1).update_all(status: "raced") if facts.any? { |f| f["key"] == "verify_orders:1" }
          end
        end
        io = StringIO.new
        summary = ActsAsTbackend::Backfill.new(model, batch_size: 1_000, io: io, client: racing,
                                                      checkpoint: File.join(dir, "sample.json")).run
        expect(summary).to have_attributes(complete: true, failed: 0, written: 2_500)
        expect(summary.verified).to have_attributes(stale: [1], missing: [], in_sync?: false)
        expect(summary.verified.checked).to be_between(1_000, 1_100)
        expect(summary).not_to be_ok
        expect(io.string).to include("tbackend:backfill verified a sample: checked=#{summary.verified.checked} " \
                                     "missing=0 stale=1 orphaned=0 (drift: run rake tbackend:verify)")
      end

      it "reads a window again when a seq in it is not visible yet: an orphan whose fact is late is still found" do
        seed(10)
        backfill
        daemon.control({ "op" => "set", "visibility_lag" => { "every" => 1, "lag_ms" => 1_000, "store" => store } })
        late = model.create!(status: "late")    # seq 11, invisible for a second
        daemon.control({ "op" => "set", "visibility_lag" => nil })
        model.create!(status: "seen")           # seq 12, visible at once
        model.where(id: late.id).delete_all
        report = ActsAsTbackend.verify(model, batch_size: 100)
        expect(report).to have_attributes(in_sync?: false, high_water: 12, orphaned: [key(late.id)])

        expect(ActsAsTbackend.verify(model, repair: true, batch_size: 100).repaired).to include(written: 1, failed: 0)
        expect(ActsAsTbackend.verify(model, batch_size: 100)).to be_in_sync
      end

      it "stops with a soft failure naming how far it got when the daemon goes down, never in sync" do
        seed(300)
        backfill
        model.where(id: 250).delete_all
        calls = 0
        down = daemon
        watcher = SimpleDelegator.new(ActsAsTbackend.client)
        watcher.define_singleton_method(:latest_for_many) do |**options|
          calls += 1
          down.stop if calls == 2
          __getobj__.latest_for_many(**options)
        end
        report = ActsAsTbackend::Mirror::Verify.new(model, batch_size: 100, client: watcher).call
        expect(report).to have_attributes(complete: false, in_sync?: false, checked: 100, last_id: 100)
        expect(report.error).to match(/\A(unavailable|timeout_unknown) while checking rows after id 100: /)
      end
    end
  end

  context "with a key: option and unless: (sqlite)" do
    let(:keyed) { TbackendSpec::VerifyModels::KeyedOrder }

    before do
      TbackendSpec::Database.connect(:sqlite, database: "verify_specs")
      TbackendSpec::VerifyModels.schema!
      client_for(daemon)
    end

    it "maps keys back to rows by causation: a re-keyed row leaves an orphan and a missing key; skipped rows are not checked" do
      rows = Array.new(6) { |i| keyed.create!(status: "s#{i}", total: i) }
      keyed.create!(status: "unmirrored", total: nil)
      expect(ActsAsTbackend.verify(keyed)).to have_attributes(in_sync?: true, checked: 6, skipped: 1)

      rows[1].update_columns(status: "renamed") # its key moves: order:s1 is orphaned, order:renamed missing
      rows[2].update!(total: 20)                # order:s2 has facts in two windows: counted once
      keyed.where(id: rows[2].id).delete_all    # order:s2 orphaned
      rows[3].destroy!                          # a tombstone: no orphan
      ActsAsTbackend.client.write_fact_once(
        ActsAsTbackend::Fact.build(id: "dead-#{rows[4].id}", store: "keyed_orders", key: "order:s4",
                                   value: ActsAsTbackend::Mirror::TOMBSTONE.dup, causation: "keyed_orders:#{rows[4].id}:x")
      )
      report = ActsAsTbackend.verify(keyed, batch_size: 2)
      expect(report).to have_attributes(checked: 4, skipped: 1, missing: [rows[1].id], stale: [rows[4].id],
                                        orphaned: %w[order:s1 order:s2])
      expect(ActsAsTbackend.verify(keyed, repair: true, batch_size: 2).repaired).to eq(written: 4, replayed: 0, failed: 0)
      expect(ActsAsTbackend.verify(keyed, batch_size: 2)).to be_in_sync

      # Changed again behind the macro's back, updated_at unchanged: an id from updated_at
      # would be the first repair's, with another value (a duplicate_fact_id_conflict).
      rows[1].update_columns(total: 77)
      expect(ActsAsTbackend.verify(keyed, repair: true, batch_size: 2).repaired).to eq(written: 1, replayed: 0, failed: 0)
      expect(ActsAsTbackend.verify(keyed, batch_size: 2)).to be_in_sync
    end
  end

  context "at 100k rows (sqlite)", :large do
    before do
      TbackendSpec::Database.connect(:sqlite, database: "verify_specs")
      TbackendSpec::VerifyModels.schema!
      client_for(daemon, request_timeout: 30)
    end

    it "holds at most batch_size rows and ledger facts at once, and finds the drift" do
      seed(100_000)
      expect(backfill.written).to eq(100_000)
      model.where(id: [10, 50_000]).delete_all
      model.where(id: 99_999).update_all(status: "bulk")
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      # Each facts_by_seq window makes the daemon scan the whole store: fewer, larger
      # windows keep this example near 30 s on a loaded 2-core machine.
      report = ActsAsTbackend.verify(model, batch_size: 5_000)
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      warn format("verify of 100k rows: %.1fs", elapsed)
      expect(report).to have_attributes(complete: true, checked: 99_998, missing: [], stale: [99_999],
                                        orphaned: [key(10), key(50_000)], high_water: 100_000)
      expect(report.max_rows_held).to eq(5_000)
      expect(report.max_keys_held).to eq(5_000)
    end
  end
end
