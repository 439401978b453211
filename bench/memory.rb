# frozen_string_literal: true

# Memory of the Ruby process: peak RSS with 32 threads writing, and RSS after 1,000,000
# writes against RSS after the first 100,000 — flat unless the native layer leaks. Also
# malloc's bytes in use at each checkpoint: run it again with
# GLIBC_TUNABLES=glibc.malloc.tcache_count=0 and a leak is the only way that figure moves.
#
#   ruby bench/memory.rb [TOTAL=1_000_000]
require_relative "support"

TOTAL = Integer(ARGV[0] || 1_000_000)
THREADS = 32
CHECKPOINT = 100_000
abort "TOTAL must be at least #{2 * CHECKPOINT} to compare two checkpoints" if TOTAL < 2 * CHECKPOINT

daemon = Bench.start_daemon(pool_size: 16)
config = ActsAsTbackend::Config.new
config.port = daemon.port
client = ActsAsTbackend::Client.new(config)
baseline = Bench.rss_kb
done = 0
lock = Mutex.new
checkpoints = {}
per_thread = TOTAL / THREADS
started = Bench.now
Array.new(THREADS) do |t|
  Thread.new do
    per_thread.times do |i|
      # Fresh stores now and then keep the (ephemeral) daemon's memory, not ours, bounded.
      client.write_fact_once(Bench.fact("mem_#{i / 20_000}", "m:#{t}:#{i}", i))
      count = lock.synchronize { done += 1 }
      if (count % CHECKPOINT).zero?
        GC.start
        lock.synchronize { checkpoints[count] = [Bench.rss_kb, Bench.malloc_in_use_kb] }
      end
    end
  end
end.each(&:join)
elapsed = Bench.now - started
client.shutdown
daemon.stop

first = checkpoints.min_by(&:first)
last = checkpoints.max_by(&:first)
puts format("writes: %d from %d threads in %.1f s (%.0f/s)", done, THREADS, elapsed, done / elapsed)
puts format("RSS: baseline %d KiB, peak %d KiB", baseline, Bench.peak_rss_kb)
checkpoints.sort.each do |count, (rss, in_use)|
  puts format("  after %7d writes: RSS %d KiB, malloc in use %s KiB", count, rss, in_use || "?")
end
first_rss, first_malloc = first.last
last_rss, last_malloc = last.last
growth = last_rss - first_rss
puts format("RSS after %d vs after %d writes: %+d KiB (%+.1f%%) %s", last.first, first.first, growth,
            100.0 * growth / first_rss, growth.abs < first_rss * 0.1 ? "flat" : "GROWS")
if first_malloc && last_malloc
  puts format("malloc in use after %d vs after %d writes: %+d KiB (GLIBC_TUNABLES=glibc.malloc.tcache_count=0 " \
              "leaves out what per-thread caches hold)", last.first, first.first, last_malloc - first_malloc)
end
