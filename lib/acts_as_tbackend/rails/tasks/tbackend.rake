# frozen_string_literal: true

require "json"

namespace :tbackend do
  desc "Ping TBackend and print the health report as JSON; exits non-zero unless ok (for deploy checks)"
  task health: :environment do
    report = ActsAsTbackend.health
    puts JSON.pretty_generate(report)
    exit(1) unless report[:ok]
  end

  desc "Follow a store's facts in seq order (gap-safe) as JSON lines: tbackend:tail[store,after_seq]; LIMIT=n stops after n"
  task :tail, %i[store after_seq] => :environment do |_task, args|
    store = args[:store] or abort("usage: rake tbackend:tail[store,after_seq]")
    limit = ENV.fetch("LIMIT", nil)&.then { |n| Integer(n, 10) }
    tail = ActsAsTbackend.client.tail(store: store, after_seq: Integer(args[:after_seq] || 0, 10))
    $stdout.sync = true
    begin
      tail.each(limit: limit) { |fact| puts JSON.generate(fact) }
    rescue Interrupt
      nil
    ensure
      warn "tbackend:tail stopped; resume with after_seq=#{tail.after_seq}"
    end
  end

  desc "Mirror a model's existing rows in pipelined batches, resumable and safe to re-run: " \
       "tbackend:backfill[Model] (BATCH_SIZE=1000, RESTART=1 to start over)"
  task :backfill, %i[model] => :environment do |_task, args|
    model = args[:model] or abort("usage: rake tbackend:backfill[Model]")
    require "acts_as_tbackend/rails/backfill"
    begin
      summary = ActsAsTbackend::Backfill.new(
        model.constantize, batch_size: ENV.fetch("BATCH_SIZE", "1000"), restart: ENV["RESTART"] == "1",
                           checkpoint: ENV.fetch("CHECKPOINT", nil)
      ).run
    rescue ActsAsTbackend::CheckpointMismatch => e
      abort("tbackend:backfill refused: #{e.message}")
    end
    exit(1) unless summary.ok?
  end

  desc "Compare a model's rows with the ledger: tbackend:verify[Model] (BATCH_SIZE=1000); exits 1 on drift or an " \
       "incomplete run; REPAIR=1 repairs (exit 0 once all is repaired), FORMAT=json prints the report as JSON"
  task :verify, %i[model] => :environment do |_task, args|
    model = args[:model] or abort("usage: rake tbackend:verify[Model]")
    require "acts_as_tbackend/rails/backfill"
    require "acts_as_tbackend/mirror/verify"
    progress = ActsAsTbackend::Backfill::Progress.new($stderr, label: "tbackend:verify")
    report = ActsAsTbackend::Mirror::Verify.new(
      model.constantize, repair: ENV["REPAIR"] == "1", batch_size: ENV.fetch("BATCH_SIZE", "1000"), progress: progress
    ).call
    $stderr.print("\n") if $stderr.tty?
    if ENV["FORMAT"] == "json"
      puts JSON.pretty_generate(report.to_h)
    else
      puts ActsAsTbackend::Mirror::Verify::Summary.new(report).to_s
    end
    exit(1) unless ActsAsTbackend::Mirror::Verify::Summary.new(report).ok?
  end

  desc "List the facts given up for good, kept with their content (dead-letter table and files), one JSON " \
       "line each: id, store, status, reason, attempts, at, source"
  task dead_letters: :environment do
    entries = ActsAsTbackend::DeadLetters.entries
    entries.each { |entry| puts JSON.generate(entry.summary) }
    warn "#{entries.size} dead letter(s)"
  end

  namespace :dead_letters do
    desc "Send every dead letter again (write_fact_once); those stored (committed_acked, idempotent_replay) " \
         "are removed, the rest stay; exits 1 unless all were stored"
    task replay: :environment do
      outcomes = ActsAsTbackend::DeadLetters.replay
      outcomes.each { |entry, result| puts JSON.generate(entry.summary.merge(replay: result[:status])) }
      left = outcomes.count { |_, result| !ActsAsTbackend::DeadLetters::DELIVERED.include?(result[:status]) }
      warn "#{outcomes.size - left} replayed, #{left} kept"
      exit(1) unless left.zero?
    end
  end

  namespace :spool do
    desc "Show the async spool as JSON: facts pending (per segment), delivered and dead, the oldest pending " \
         "fact's age, segments held by a live process or orphaned, dead letters"
    task status: :environment do
      require "acts_as_tbackend/async/spool_status"
      report = ActsAsTbackend::SpoolStatus.new(ActsAsTbackend.config).call
      puts JSON.pretty_generate(report)
    end

    desc "Deliver what the spool holds now (orphaned segments included); exits 1 unless all settled " \
         "(TIMEOUT=60 seconds)"
    task flush: :environment do
      config = ActsAsTbackend.config
      abort "tbackend:spool:flush: spool_path is not set" if config.spool_path.nil?
      writer = ActsAsTbackend.async_writer
      settled = writer.flush(timeout: Float(ENV.fetch("TIMEOUT", "60")))
      stats = writer.stats
      puts JSON.pretty_generate(stats.merge(settled: settled))
      writer.shutdown(timeout: 1.0)
      exit(1) unless settled
    end
  end
end
