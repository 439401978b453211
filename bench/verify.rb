# frozen_string_literal: true

# Verify rows/s against backfill rows/s on the same table: SQLite in memory, N rows
# mirrored by a backfill, then verified (rows only, then with the orphan scan).
#
#   ruby bench/verify.rb [ROWS=20000] [BATCH_SIZE=1000]
#
# Starts tbackend-testd through Bench.start_daemon (the real profile by default).
require_relative "support"
require "active_record"
require "stringio"
require "tmpdir"
require "acts_as_tbackend/extension"
require "acts_as_tbackend/rails/backfill"
require "acts_as_tbackend/mirror/verify"

ROWS = Integer(ARGV[0] || 20_000)
BATCH = Integer(ARGV[1] || 1_000)

ActiveRecord::Base.establish_connection(adapter: "sqlite3", database: ":memory:")
ActiveRecord::Schema.verbose = false
ActiveRecord::Schema.define do
  create_table(:bench_orders) do |t|
    t.string :status
    t.integer :total
    t.decimal :amount, precision: 10, scale: 2
    t.timestamps
  end
end

class BenchOrder < ActiveRecord::Base
  acts_as_tbackend store: "bench_orders"
end

def timed
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  value = yield
  [Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, value]
end

daemon = Bench.start_daemon(pool_size: 16)
begin
  ActsAsTbackend.configure do |c|
    c.port = daemon.port
    c.request_timeout = 30
  end
  now = Time.utc(2026, 1, 1)
  (1..ROWS).each_slice(10_000) do |ids|
    BenchOrder.insert_all(ids.map { |i| { id: i, status: "new", total: i, amount: "1.50", created_at: now, updated_at: now } })
  end
  Dir.mktmpdir do |dir|
    backfill, = timed do
      ActsAsTbackend::Backfill.new(BenchOrder, batch_size: BATCH, io: StringIO.new,
                                               checkpoint: File.join(dir, "checkpoint.json")).run
    end
    rows_only, report = timed { ActsAsTbackend.verify(BenchOrder, batch_size: BATCH, orphans: false) }
    raise "not in sync: #{report.to_h}" unless report.in_sync?

    full, report = timed { ActsAsTbackend.verify(BenchOrder, batch_size: BATCH) }
    raise "not in sync: #{report.to_h}" unless report.in_sync?

    puts format("%<rows>d rows, batch %<batch>d", rows: ROWS, batch: BATCH)
    puts format("  backfill                 %8.0f rows/s (%.1f s)", ROWS / backfill, backfill)
    puts format("  verify, rows only        %8.0f rows/s (%.1f s)", ROWS / rows_only, rows_only)
    puts format("  verify, with orphan scan %8.0f rows/s (%.1f s)", ROWS / full, full)
  end
ensure
  ActsAsTbackend.reset!
  daemon.stop
end
