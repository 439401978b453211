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
end
