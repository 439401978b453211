# frozen_string_literal: true

require "active_record"
require "acts_as_tbackend/extension"

module Demo
  # An ActiveRecord model mirroring into TBackend: create/update/destroy, a rollback that
  # mirrors nothing, and — with `async: true` — the daemon going down while orders are
  # committed, everything arriving once it is back. Returns true when all of it held.
  module ActiveRecordMirror
    module_function

    # The summary of the verify that ends the run (ActsAsTbackend::Mirror::Verify::Summary).
    def summary
      @summary
    end

    def run(daemon:, say:)
      ActiveRecord::Base.establish_connection(adapter: "sqlite3", database: ":memory:")
      ActiveRecord::Schema.verbose = false
      ActiveRecord::Schema.define do
        create_table(:demo_invoices) do |t|
          t.string :number
          t.string :status
          t.integer :total_cents
          t.timestamps
        end
      end
      store = "demo_invoices_#{Process.pid}"
      invoice_class = Class.new(ActiveRecord::Base) do
        self.table_name = "demo_invoices"
        def self.name = "DemoInvoice"
      end
      invoice_class.acts_as_tbackend(store: store, except: %i[created_at updated_at])
      lifecycle(invoice_class, say) & rollback(invoice_class, store, say) & outage(invoice_class, store, daemon, say) &
        verify(invoice_class, say)
    end

    # Every row against the ledger: nothing missing, stale or orphaned.
    def verify(invoice_class, say)
      say.call("ActiveRecord: ActsAsTbackend.verify compares every row with the ledger")
      require "acts_as_tbackend/mirror/verify"
      report = ActsAsTbackend.verify(invoice_class)
      @summary = ActsAsTbackend::Mirror::Verify::Summary.new(report)
      puts "  checked #{report.checked} rows: #{report.in_sync? ? 'in sync' : report.counts.inspect} (summary below)"
      report.in_sync?
    end

    def lifecycle(invoice_class, say)
      say.call("ActiveRecord: create, update, destroy are mirrored after each commit")
      invoice = invoice_class.create!(number: "INV-1", status: "draft", total_cents: 1200)
      invoice.update!(status: "sent")
      invoice_class.transaction do
        invoice.update!(status: "paid")
        invoice_class.transaction(requires_new: true) { invoice.update!(total_cents: 1250) }
      end
      invoice.destroy!
      history = invoice_class.tbackend_history(invoice)
      history.each { |fact| puts "  #{fact[:key]}  #{fact[:value].inspect}" }
      history.map { |fact| fact[:value][:status] || "tombstone" } == %w[draft sent paid paid tombstone]
    end

    def rollback(invoice_class, store, say)
      say.call("ActiveRecord: a rolled-back transaction mirrors nothing")
      before = count(store)
      invoice_class.transaction do
        invoice_class.create!(number: "INV-2", status: "draft", total_cents: 1)
        raise ActiveRecord::Rollback
      end
      after = count(store)
      puts "  facts in #{store}: #{before} before, #{after} after the rollback"
      before == after
    end

    def outage(invoice_class, store, daemon, say)
      return true unless daemon

      say.call("ActiveRecord, async: true — the daemon is down while 200 invoices are committed")
      invoice_class.acts_as_tbackend(store: store, except: %i[created_at updated_at], async: true)
      daemon.kill!
      started = monotonic
      200.times { |i| invoice_class.create!(number: "A-#{i}", status: "draft", total_cents: i) }
      per_commit = (monotonic - started) / 200 * 1e6
      writer = ActsAsTbackend.async_writer
      puts "  200 commits, #{per_commit.round} µs each with TBackend down; queued: #{writer.stats[:queued]}"
      daemon.restart
      delivered = writer.flush(timeout: 30)
      mirrored = invoice_class.where("number LIKE 'A-%'").count { |row| invoice_class.tbackend_latest_for(row) }
      puts "  daemon back: flushed=#{delivered}, invoices with their fact in TBackend: #{mirrored}/200 " \
           "(#{writer.stats.slice(:delivered, :retries).inspect})"
      delivered && mirrored == 200
    end

    def count(store)
      ActsAsTbackend.client.facts_by_seq(store: store).dig(:response, :facts)&.size.to_i
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
