# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
$LOAD_PATH.unshift(File.expand_path("../spec", __dir__))
require "acts_as_tbackend"
require "json"
require "open3"
require "support/test_daemon"
require_relative "naive_client"

module Bench
  ROOT = File.expand_path("..", __dir__)
  LOAD_BIN = File.join(ENV.fetch("CARGO_TARGET_DIR", File.join(ROOT, "target")), "release", "tbackend-load")

  # Writes/s and latency percentiles of one run.
  Result = Struct.new(:label, :ops, :seconds, :latencies, :errors, :connections, keyword_init: true) do
    def rate
      ops / seconds
    end

    def percentile(pct)
      return Float::NAN if latencies.empty?

      sorted = latencies.sort
      sorted[[(sorted.size * pct / 100.0).ceil - 1, 0].max] * 1000.0
    end
  end

  # The test daemon's profile for every benchmark: `real` reproduces the real daemon's
  # measured speed (crates/tbackend-testd/README.md#profiles); `fast` is the one the tests use.
  PROFILE = ENV.fetch("TBACKEND_BENCH_PROFILE", "real")

  module_function

  # Starts tbackend-testd (ephemeral) in PROFILE and says so on stdout.
  def start_daemon(pool_size:, **options)
    daemon = TbackendSpec::TestDaemon.start(pool_size: pool_size, profile: PROFILE, **options)
    status = daemon.status
    puts "daemon: tbackend-testd profile=#{status.fetch('profile')} request_cpu_us=#{status.fetch('request_cpu_us')} " \
         "pool_size=#{pool_size}"
    daemon
  end

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def fact(store, id, index)
    { "id" => id, "store" => store, "key" => "k#{index % 1024}", "value" => { "n" => index, "pad" => "x" * 16 },
      "transaction_time" => 1_780_000_000.0 + index, "schema_version" => 1 }
  end

  # `threads` Ruby threads calling `write` (fact) -> truthy-ok for `seconds`.
  def ruby_load(label, threads:, seconds:, store:) # rubocop:disable Metrics/MethodLength
    stop_at = now + seconds
    counter = 0
    lock = Mutex.new
    started = now
    per_thread = Array.new(threads) do |t|
      Thread.new do
        latencies = []
        errors = 0
        i = 0
        while now < stop_at
          t0 = now
          ok = yield(fact(store, "#{label}:#{t}:#{i}", i))
          latencies << (now - t0)
          errors += 1 unless ok
          i += 1
        end
        lock.synchronize { counter += i }
        [latencies, errors]
      end
    end.map(&:value)
    Result.new(label: label, ops: counter, seconds: now - started, latencies: per_thread.flat_map(&:first),
               errors: per_thread.sum(&:last))
  end

  # The native Rust load client: the ceiling.
  def rust_load(label, port:, conns:, depth:, seconds:, store:, count: nil)
    args = [LOAD_BIN, "--port", port.to_s, "--conns", conns.to_s, "--depth", depth.to_s, "--op", "write_fact_once",
            "--store", store]
    args += count ? ["--count", count.to_s] : ["--duration", seconds.to_s]
    out, status = Open3.capture2e(*args)
    raise "tbackend-load failed: #{out}" unless status.success?

    parse_load(label, out)
  end

  def parse_load(label, out)
    fields = out.scan(/(\w+)=([\d.]+)/).to_h
    Result.new(label: label, ops: fields.fetch("requests").to_f, seconds: fields.fetch("elapsed_s").to_f,
               latencies: [], errors: fields.fetch("errors", "0").to_i).tap do |r|
      r.define_singleton_method(:percentile) { |pct| fields.fetch("p#{pct}_ms").to_f }
    end
  end

  def rss_kb(pid = Process.pid)
    File.read("/proc/#{pid}/status")[/VmRSS:\s+(\d+)/, 1].to_i
  end

  def peak_rss_kb(pid = Process.pid)
    File.read("/proc/#{pid}/status")[/VmHWM:\s+(\d+)/, 1].to_i
  end

  MALLOC_STATS = begin
    require "fiddle"
    Fiddle::Function.new(Fiddle::Handle::DEFAULT["malloc_stats"], [], Fiddle::TYPE_VOID)
  rescue Fiddle::DLError, LoadError
    nil
  end

  # Bytes glibc's malloc has handed out and not had back, over every arena (Ruby's and the
  # native layer's alike), or nil where malloc_stats is missing. Freed chunks parked in
  # the per-thread caches (tcache) count as in use: with many threads the figure creeps up
  # until those caches fill, which GLIBC_TUNABLES=glibc.malloc.tcache_count=0 turns off.
  def malloc_in_use_kb
    return nil unless MALLOC_STATS

    reader, writer = IO.pipe
    saved = $stderr.dup
    begin
      $stderr.reopen(writer)
      MALLOC_STATS.call # writes its report to fd 2
    ensure
      $stderr.reopen(saved)
      writer.close
    end
    reader.read[/Total \(incl\. mmap\):\s*system bytes\s*=\s*\d+\s*in use bytes\s*=\s*(\d+)/, 1]&.then { |b| b.to_i / 1024 }
  ensure
    reader&.close
  end

  def median(values)
    sorted = values.sort
    mid = sorted.size / 2
    sorted.size.odd? ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2.0
  end
end
