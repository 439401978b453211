# frozen_string_literal: true

# Checks the test daemon's `real` profile against the real daemon: the native load client
# writes one at a time over 1, 2 and 12 connections, in alternating rounds, and the rates
# and their same-round ratios are printed beside what the same client measured against the
# real daemon on this machine kind. The ratios matter more than the rates.
#
#   ruby bench/testd_profile.rb [ROUNDS=5] [SECONDS=1.5]
#   TBACKEND_BENCH_CPU_US=30 ruby bench/testd_profile.rb   # try another CPU per request
require_relative "support"

ROUNDS = Integer(ARGV[0] || 5)
SECONDS = Float(ARGV[1] || 1.5)
# writes/s of tbackend-load (one request in flight per connection) against the real
# daemon, 5 rounds on a 2-core machine (issue 13).
REAL_DAEMON = { 1 => 9_200..11_900, 2 => 15_900..19_400, 12 => 20_800..32_900 }.freeze
REAL_RATIOS = { [2, 1] => 1.65, [12, 2] => 1.6 }.freeze

cpu = ENV.fetch("TBACKEND_BENCH_CPU_US", nil)
daemon = Bench.start_daemon(pool_size: 16, **(cpu ? { request_cpu_us: Integer(cpu, 10) } : {}))
loads = File.read("/proc/loadavg").split.first(3).join(" ")
rounds = Array.new(ROUNDS) do |round|
  order = round.even? ? REAL_DAEMON.keys : REAL_DAEMON.keys.reverse
  order.to_h do |conns|
    [conns, Bench.rust_load("rust#{conns}x1", port: daemon.port, conns: conns, depth: 1, seconds: SECONDS,
                                              store: "profile_#{round}_#{conns}").rate]
  end
end
daemon.stop

puts "rounds=#{ROUNDS} seconds=#{SECONDS} load average before: #{loads}, after: " \
     "#{File.read('/proc/loadavg').split.first(3).join(' ')}"
puts format("%-6s %10s %17s %17s", "conns", "writes/s", "min..max", "real daemon")
REAL_DAEMON.each do |conns, real|
  rates = rounds.map { |r| r[conns] }
  puts format("%-6d %10.0f %8.0f..%-8.0f %8d..%-8d", conns, Bench.median(rates), rates.min, rates.max, real.min,
              real.max)
end
puts "\npaired same-round ratios (median, min..max)"
REAL_RATIOS.each do |(a, b), real|
  ratios = rounds.map { |r| r[a] / r[b] }
  puts format("  %2d : %-2d %5.2f  (%4.2f..%4.2f)  real daemon %.2f", a, b, Bench.median(ratios), ratios.min,
              ratios.max, real)
end
