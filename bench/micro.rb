# frozen_string_literal: true

# Costs that are not throughput: a call while the breaker is open (it must not touch a
# socket), and a 1,000-fact batch from one thread against the native load client on
# the same connection with the same pipelining depth. Paired over alternating rounds.
#
#   ruby bench/micro.rb [ROUNDS=5]
require_relative "support"

ROUNDS = Integer(ARGV[0] || 5)

def breaker_open_cost
  config = ActsAsTbackend::Config.new
  config.port = 1 # nothing listens there: connects are refused
  config.breaker_threshold = 1
  config.breaker_cooldown = 600.0
  client = ActsAsTbackend::Client.new(config)
  client.ping
  raise "breaker did not open" unless client.ping[:status] == "circuit_open"

  n = 100_000
  started = Bench.now
  n.times { client.ping }
  (Bench.now - started) / n * 1e6
ensure
  client&.shutdown
end

def batch_run(client, store, round)
  facts = Array.new(1000) { |i| Bench.fact(store, "batch:#{round}:#{i}", i) }
  started = Bench.now
  results = client.write_facts_once(facts)
  elapsed = Bench.now - started
  raise "batch failed: #{results.reject { |r| r[:ok] }.first}" unless results.all? { |r| r[:ok] }

  1000 / elapsed
end

daemon = Bench.start_daemon(pool_size: 16)
config = ActsAsTbackend::Config.new
config.port = daemon.port
client = ActsAsTbackend::Client.new(config)
client.ping
# A batch takes ~15 ms, so one scheduling hiccup moves it by a third: each round takes
# the median of several batches on each side before pairing them.
BATCHES = 5
ratios = Array.new(ROUNDS) do |round|
  gem = Bench.median(Array.new(BATCHES) { |b| batch_run(client, "micro_g#{round}", "#{round}:#{b}") })
  rust = Bench.median(Array.new(BATCHES) do |b|
    Bench.rust_load("rust", port: daemon.port, conns: 1, depth: 64, seconds: nil, count: 1000,
                            store: "micro_r#{round}_#{b}").rate
  end)
  [gem, rust]
end
client.shutdown
daemon.stop

cost = breaker_open_cost
puts format("open-breaker call: %.2f µs (target <= 5 µs: %s)", cost, cost <= 5 ? "meets" : "MISSES")
gem_rates = ratios.map(&:first)
rust_rates = ratios.map(&:last)
batch = ratios.map { |g, r| g / r }
puts format("1,000-fact batch from one thread: gem %.0f facts/s, rust (1 conn, depth 64) %.0f facts/s",
            Bench.median(gem_rates), Bench.median(rust_rates))
puts format("  ratio %.2f (%.2f..%.2f) over %d rounds (target >= 0.9: %s)", Bench.median(batch), batch.min, batch.max,
            ROUNDS, Bench.median(batch) >= 0.9 ? "meets" : "MISSES")
