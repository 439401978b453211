# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_models"

# What the mirror adds to a create, counted in Ruby objects allocated on the calling
# thread: a count does not move with the machine's load, so a change that makes the
# request path allocate more fails here instead of in a benchmark (bench/request_path.rb
# has the CPU times). The ceilings are today's counts plus a little headroom; lower them
# when the path gets cheaper.
RSpec.describe "acts_as_tbackend: allocations per create" do
  include TbackendSpec::AppLog

  # Objects allocated per call of the block, after a warm-up, with GC off while counting.
  # Ruby counts every thread's allocations: the fewest of three counts is the calling
  # thread's, without what a thread of the process (ActiveRecord's reaper, Ruby 3.3's
  # Timeout watcher) allocated meanwhile.
  def allocations_per_call(count = 50, &block)
    3.times { |i| block.call(-i - 1) }
    Array.new(3) { allocations_of(count, &block) }.min
  end

  def allocations_of(count, &block)
    GC.disable
    before = GC.stat(:total_allocated_objects)
    count.times(&block)
    (GC.stat(:total_allocated_objects) - before) / count.to_f
  ensure
    GC.enable
  end

  def per_create(model)
    allocations_per_call { |i| model.create!(status: "order #{i}", total: i) }
  end

  TbackendSpec::MirrorModels::ADAPTERS.each do |adapter_name|
    context "on #{adapter_name}" do
      let(:adapter) { adapter_name }
      include_context "mirror model spec"

      it "adds at most 35 (async) and 37 (sync) objects to a create (31–33 and 34.5–36 today, fewer on Rails 7.2)" do
        plain = per_create(models::PlainOrder)
        async = per_create(models::AsyncOrder)
        sync = per_create(models::SyncOrder)
        expect(ActsAsTbackend.async_writer.flush(timeout: 10)).to be(true)
        # Every sync create was mirrored: three of warm-up, three counts of 50.
        expect(facts_in("orders_sync").size).to eq(3 + (3 * 50))
        puts "allocations per create on #{adapter}: plain #{plain.round(1)}, async +#{(async - plain).round(1)}, " \
             "sync +#{(sync - plain).round(1)}"
        expect(async - plain).to be <= 35
        expect(sync - plain).to be <= 37
      end

      # Whether a save changed something is asked with saved_changes?, not by building
      # the saved_changes Hash for a yes or no (21 µs against 4.5 on Rails 6.1; 12–14
      # objects). An unchanged save still runs the update callbacks the macro adds.
      it "adds at most 35 objects to an update (31–32 today, 27–29 on Rails 7.2) and 13 to one that changed nothing (12; 5)" do
        plain_order = models::PlainOrder.create!(status: "new", total: 1)
        async_order = models::AsyncOrder.create!(status: "new", total: 1)
        plain = allocations_per_call { |i| plain_order.update!(total: i + 10) }
        async = allocations_per_call { |i| async_order.update!(total: i + 10) }
        plain_unchanged = allocations_per_call { plain_order.update!(total: 5) }
        async_unchanged = allocations_per_call { async_order.update!(total: 5) }
        expect(ActsAsTbackend.async_writer.flush(timeout: 10)).to be(true)
        puts "allocations per update on #{adapter}: plain #{plain.round(1)}, async +#{(async - plain).round(1)}, " \
             "unchanged +#{(async_unchanged - plain_unchanged).round(1)}"
        expect(async - plain).to be <= 35
        expect(async_unchanged - plain_unchanged).to be <= 13
      end

      # The Railtie's log subscriber on a production logger writes no line for a save
      # that succeeds, so it makes no event for one (two were made: mirror, enqueue).
      it "allocates no more with the log subscriber on a production (info) logger; a debug logger's lines cost" do
        bare = [per_create(models::AsyncOrder), per_create(models::SyncOrder)]
        quiet = loud = nil
        app_log(level: :info) { quiet = [per_create(models::AsyncOrder), per_create(models::SyncOrder)] }
        app_log(level: :debug) { loud = per_create(models::AsyncOrder) }
        puts "allocations per create on #{adapter}, bare / info log / debug log: async #{bare[0].round(1)} / " \
             "#{quiet[0].round(1)} / #{loud.round(1)}, sync #{bare[1].round(1)} / #{quiet[1].round(1)}"
        expect(quiet[0]).to be <= bare[0] + 1
        expect(quiet[1]).to be <= bare[1] + 1
        expect(loud).to be > bare[0] + 10
      end
    end
  end

  context "the client" do
    include TbackendSpec::ClientHelpers

    around { |example| TbackendSpec::TestDaemon.with { |d| (@daemon = d) && example.run } }
    after { ActsAsTbackend.reset! }

    def fact(id)
      { "id" => id, "store" => "allocs", "key" => "k", "value" => { "n" => 1 }, "transaction_time" => 1.0,
        "schema_version" => 1 }
    end

    it "allocates a handful of objects per write_fact_once and per fact of write_facts_once" do
      client = client_for(@daemon)
      one = allocations_per_call { |i| client.write_fact_once(fact("one-#{i}")) }
      batch = allocations_per_call(5) { |i| client.write_facts_once(Array.new(100) { |j| fact("b-#{i}-#{j}") }) } / 100
      puts "allocations: write_fact_once #{one.round(1)}, write_facts_once #{batch.round(1)} per fact"
      # 3 of them are the spec's own (the fact and value Hashes, the id String); today the
      # counts are 6.8 and 6.9 (the result Hash, the answer Hash, its durability String).
      expect(one).to be <= 7.5
      expect(batch).to be <= 7.5
    end

    # Facts built beforehand: what is counted is the client's own, whole objects.
    it "allocates per call only what it returns: 3 per write, 2 more for the attempts of write_fact_once_safe" do
      client = client_for(@daemon)
      facts = Array.new(300) { |i| fact("own-#{i}") }
      one = allocations_per_call(100) { |i| client.write_fact_once(facts[i]) }
      replay = allocations_per_call(100) { |i| client.write_fact_once(facts[i]) }
      safe = allocations_per_call(100) { |i| client.write_fact_once_safe(facts[100 + i]) }
      client.write_fact_once(fact("read").merge("key" => "read", "value" => { "n" => 1, "note" => "x" }))
      read = allocations_per_call { client.latest_for(store: "allocs", key: "read") }
      puts "allocations: write_fact_once #{one.round(2)} (replayed #{replay.round(2)}), " \
           "write_fact_once_safe #{safe.round(2)}, latest_for #{read.round(2)}"
      # The result Hash, the answer Hash and its durability String (was 4: the lookup of
      # the fact's store made a String each time); the half is headroom for the odd
      # object of the lane's own.
      expect(one).to be <= 3.5
      expect(replay).to be <= 3.5
      # Plus the attempts Array and one attempt's Hash (was 9: the two keys and the
      # attempt's status were made as Strings each time).
      expect(safe).to be <= 5.5
      # The result, answer, fact and value Hashes and the answer's Strings: 9; was 15,
      # when every key of the fact made a String to find its Symbol.
      expect(read).to be <= 9.5
    end

    it "allocates no more per write with the log subscriber on a production (info) logger" do
      client = client_for(@daemon)
      facts = Array.new(200) { |i| fact("logged-#{i}") }
      bare = allocations_per_call(100) { |i| client.write_fact_once(facts[i]) }
      quiet = nil
      app_log(level: :info) { quiet = allocations_per_call(100) { |i| client.write_fact_once(facts[100 + i]) } }
      expect(quiet).to be <= bare + 0.5
    end
  end
end
