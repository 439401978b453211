# frozen_string_literal: true

# What the mirror costs the request path: CPU per `create!` of a plain ActiveRecord model
# against the same model mirrored with `async: true` and synchronously, on SQLite and
# PostgreSQL; what the async writer's background delivery costs the process per fact, as
# creates come and in full rounds; what this machine charges a thread for waking; and
# what one `write_fact_once` costs against the native load client. CPU time, not wall
# time, so a shared machine moves the numbers less: the calling thread's CPU
# (CLOCK_THREAD_CPUTIME_ID) for the request path, the whole process's for delivery, and
# the native client's own CPU (a child process's rusage) for the ceiling. Paired ratios
# per round, medians over alternating rounds.
#
#   ruby bench/request_path.rb [ROUNDS=7] [CREATES=1000]
#   TBACKEND_BENCH_DATABASES=sqlite ruby bench/request_path.rb    # skip PostgreSQL
#   TBACKEND_BENCH_LOG=none ruby bench/request_path.rb            # bare ActiveRecord, no loggers
#
# Logging is set up as a Rails app in production has it (TBACKEND_BENCH_LOG=info, the
# default): ActiveRecord's and the gem's log subscribers attached to a logger at :info
# (Rails.logger; the Railtie attaches the gem's), writing nowhere. Both cost a create
# something even when they write no line, and a plain create pays ActiveRecord's part.
# PostgreSQL comes from TBACKEND_PG_URL or this checkout's bin/test-postgres cluster.
require_relative "support"
require "active_record"
require "acts_as_tbackend/extension"
require "acts_as_tbackend/rails/log_subscriber"
require "logger"
require "support/database"

ROUNDS = Integer(ARGV[0] || 7)
CREATES = Integer(ARGV[1] || 1000)
DATABASES = ENV.fetch("TBACKEND_BENCH_DATABASES", "sqlite,postgresql").split(",").map(&:to_sym)
LOG_LEVEL = ENV.fetch("TBACKEND_BENCH_LOG", "info")

unless LOG_LEVEL == "none"
  ActiveSupport::LogSubscriber.logger = ActiveRecord::Base.logger = Logger.new(File::NULL, level: LOG_LEVEL)
  ActsAsTbackend::LogSubscriber.attach_to :acts_as_tbackend
end

module RequestPath
  MODELS = { plain: nil, async: { async: true }, sync: { async: false } }.freeze

  module_function

  def thread_cpu
    Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  end

  def process_cpu
    Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
  end

  def define_models(adapter)
    ActiveRecord::Schema.verbose = false
    MODELS.to_h do |kind, mirror|
      table = "rp_#{kind}"
      ActiveRecord::Schema.define do
        create_table(table, force: true) do |t|
          t.string :name
          t.integer :quantity
          t.decimal :price, precision: 10, scale: 2
          t.timestamps
        end
      end
      model = Class.new(ActiveRecord::Base) { self.table_name = table }
      Object.send(:remove_const, "Rp#{kind.capitalize}") if Object.const_defined?("Rp#{kind.capitalize}")
      Object.const_set("Rp#{kind.capitalize}", model)
      model.acts_as_tbackend(store: "rp_#{adapter}_#{kind}", **mirror) if mirror
      [kind, model]
    end
  end

  def creates(model, count, from)
    count.times { |i| model.create!(name: "order #{from + i}", quantity: i, price: "19.99") }
  end

  # One round of one model: the calling thread's CPU per create, and the process's
  # (including the async writer's delivery, waited for by a flush).
  def round(kind, model, from)
    process_before = process_cpu
    thread_before = thread_cpu
    creates(model, CREATES, from)
    thread = (thread_cpu - thread_before) / CREATES
    ActsAsTbackend.async_writer.flush(timeout: 60) if kind == :async
    process = (process_cpu - process_before) / CREATES
    { thread: thread, process: process }
  end

  def measure(adapter)
    models = define_models(adapter)
    models.each { |kind, model| round(kind, model, 0) } # warm up: caches, connections, JIT of AR
    Array.new(ROUNDS) do |r|
      models.to_a.rotate(r).to_h { |kind, model| [kind, round(kind, model, (r + 1) * CREATES)] }
    end
  end

  # The calling thread's CPU per create of `model` run back to back, and run each after
  # the thread slept `pause` seconds: what this machine charges a thread for waking.
  def wake_penalty(model, count, pause)
    [nil, pause].map do |sleep_for|
      spent = 0.0
      count.times do |i|
        sleep(sleep_for) if sleep_for
        before = thread_cpu
        model.create!(name: "wake #{i}", quantity: i, price: "19.99")
        spent += thread_cpu - before
      end
      spent / count
    end
  end

  # The async writer's CPU per fact when facts come faster than it sends them (full
  # rounds, no linger): `count` facts enqueued back to back, then flushed.
  def flood_delivery(count, store)
    facts = Array.new(count) { |i| Bench.fact(store, "flood:#{store}:#{i}", i) }
    writer = ActsAsTbackend.async_writer
    process_before = process_cpu
    thread_before = thread_cpu
    facts.each { |fact| writer.enqueue(fact) }
    raise "flood not delivered" unless writer.flush(timeout: 60)

    ((process_cpu - process_before) - (thread_cpu - thread_before)) / count
  end

  # CPU per write of the native load client over one connection (child rusage).
  def native_cpu_per_write(port, depth:, count:, store:)
    before = Process.times
    rate = Bench.rust_load("rust", port: port, conns: 1, depth: depth, seconds: nil, count: count, store: store).rate
    after = Process.times
    [(after.cutime + after.cstime - before.cutime - before.cstime) / count, rate]
  end

  # CPU per write_fact_once from one thread (process CPU: the caller and the lane's reader).
  def bare_write(client, count, store)
    facts = Array.new(count) { |i| Bench.fact(store, "bare:#{store}:#{i}", i) }
    process_before = process_cpu
    started = Bench.now
    facts.each { |fact| raise "write failed" unless client.write_fact_once(fact)[:ok] }
    elapsed = Bench.now - started
    [(process_cpu - process_before) / count, count / elapsed]
  end
end

def us(seconds)
  format("%6.1f", seconds * 1e6)
end

def verdict(value, limit, at_most: true)
  met = at_most ? value <= limit : value >= limit
  format("%.2f  (target %s %.2f: %s)", value, at_most ? "<=" : ">=", limit, met ? "meets" : "MISSES")
end

# The median over rounds of a figure taken within each round.
def paired(rounds, &block)
  Bench.median(rounds.map(&block))
end

def report_database(adapter, daemon)
  TbackendSpec::Database.connect(adapter, database: "acts_as_tbackend_bench")
  rounds = RequestPath.measure(adapter)
  print_table(adapter, rounds)
  write_cpu, = RequestPath.bare_write(ActsAsTbackend.client, 2000, "rp_write_#{adapter}")
  async = paired(rounds) { |r| r[:async][:thread] / r[:plain][:thread] }
  sync = paired(rounds) { |r| (r[:sync][:thread] - write_cpu) / r[:plain][:thread] }
  puts "  async / plain, calling thread       #{verdict(async, 1.10)}"
  puts "  (sync - one write) / plain, thread  #{verdict(sync, 1.10)}"
  report_delivery(adapter, daemon, paired(rounds) { |r| r[:async][:process] - r[:async][:thread] })
end

# Context for the ratios above, which compare threads that wait with threads that do not
# (a sync save waits for the daemon; the writer sleeps through its linger window, the
# native client at depth 64 never does): on some virtual machines a thread that slept
# runs its next instructions much slower, and CPU time counts that.
def report_wake_penalty(model)
  back_to_back, after_sleep = RequestPath.wake_penalty(model, 300, 0.001)
  puts "  this machine: a plain create costs #{us(back_to_back)} µs back to back, #{us(after_sleep)} µs " \
       "after a 1 ms sleep (#{format('%.2f', after_sleep / back_to_back)}x)"
end

# The async writer's work off the calling thread, per fact, against the native client
# writing pipelined on one connection.
def report_delivery(adapter, daemon, delivery)
  native, = RequestPath.native_cpu_per_write(daemon.port, depth: 64, count: 20_000, store: "rp_native_#{adapter}")
  puts "  async delivery per fact (process - calling thread) #{us(delivery)} µs, native pipelined " \
       "#{us(native)} µs: ratio #{verdict(delivery / native, 1.4)}"
  flood = RequestPath.flood_delivery(20_000, "rp_flood_#{adapter}")
  puts "  the same in full rounds (20,000 facts enqueued back to back) #{us(flood)} µs: ratio " \
       "#{verdict(flood / native, 1.4)}"
end

def print_table(adapter, rounds)
  puts "\n#{adapter}: CPU per create, µs (median)   calling thread   whole process"
  RequestPath::MODELS.each_key do |kind|
    thread, process = %i[thread process].map { |field| Bench.median(rounds.map { |r| r[kind][field] }) }
    puts format("  %-6s %25s %15s", kind, us(thread), us(process))
  end
end

def report_bare_write(daemon)
  ratios = Array.new(ROUNDS) do |r|
    gem_cpu, gem_rate = RequestPath.bare_write(ActsAsTbackend.client, 5000, "rp_bare_#{r}")
    native_cpu, native_rate = RequestPath.native_cpu_per_write(daemon.port, depth: 1, count: 5000, store: "rp_nat_#{r}")
    [gem_cpu / native_cpu, gem_rate / native_rate]
  end
  puts "\nbare write_fact_once, one thread, one connection vs the native client (depth 1)"
  puts "  CPU per write ratio   #{verdict(Bench.median(ratios.map(&:first)), 1.4)}"
  puts "  throughput ratio      #{verdict(Bench.median(ratios.map(&:last)), 0.9, at_most: false)}"
end

require "tmpdir"

# The async writer spools, as a production app's should.
Dir.mktmpdir("request_path") do |spool|
  daemon = Bench.start_daemon(pool_size: 16)
  ActsAsTbackend.configure do |config|
    config.host = daemon.host
    config.port = daemon.port
    config.spool_path = spool
  end
  ActsAsTbackend.client.ping
  puts "rounds=#{ROUNDS} creates per round=#{CREATES} daemon=tbackend-testd profile=#{Bench::PROFILE} " \
       "log=#{LOG_LEVEL} (ActiveRecord's and the gem's log subscribers#{LOG_LEVEL == 'none' ? ' off' : ''})"
  DATABASES.each do |adapter|
    report_database(adapter, daemon)
    report_wake_penalty(Object.const_get("RpPlain"))
  end
  # The writer's idle connection would stop the daemon polling for the native client's
  # requests but not for the gem's (the real profile polls while no more connections are
  # open than cores): each side gets the daemon to itself.
  ActsAsTbackend.shutdown_async_writer
  report_bare_write(daemon)
ensure
  ActsAsTbackend.reset!
  daemon&.stop
end
