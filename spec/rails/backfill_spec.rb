# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 4: `rake tbackend:backfill[Model]` on 100k rows, killed mid-run and resumed from its
# checkpoint; every row ends up mirrored exactly once, and running it again only replays.
RSpec.describe "rake tbackend:backfill" do
  include TbackendSpec::ClientHelpers

  let(:rows) { 100_000 }

  include_context "rails app with a daemon"

  def env
    { "TBACKEND_TEST_PORT" => daemon.port.to_s, "BATCH_SIZE" => "2000" }
  end

  def checkpoint_id
    path = Dir[File.join(app, "tmp", "tbackend_backfill", "orders.orders.*.json")].first
    path && File.file?(path) ? JSON.parse(File.read(path))["last_id"] : nil
  end

  def summary(output)
    line = output.lines.grep(/tbackend:backfill (done|stopped):/).last or raise "no summary in:\n#{output}"
    line.scan(/(\w+)=(\d+)/).to_h.transform_values(&:to_i)
  end

  # Every fact in the store, read back in pages.
  def stored_facts(client)
    facts = []
    after = 0
    loop do
      page = client.facts_by_seq(store: "orders", after_seq: after, until_seq: after + 20_000, timeout: 30)
      raise "read-back failed: #{page[:status]}" unless page[:ok]

      batch = page[:response][:facts]
      break if batch.empty?

      facts.concat(batch.map { |f| f.slice(:id, :key) })
      after = batch.last[:seq_id]
    end
    facts
  end

  it "resumes after a kill -9 from its checkpoint, mirrors every row once, and replays on a re-run" do
    TbackendSpec::RailsApp.load_schema(app, env: env)
    in_app(<<~RUBY, env: env)
      now = Time.utc(2026, 1, 1)
      #{rows}.times.each_slice(10_000) do |slice|
        Order.insert_all(slice.map { |i| { number: "B-\#{i}", status: "new", created_at: now, updated_at: now } })
      end
    RUBY

    log = File.join(app, "backfill.log")
    pid = Process.spawn(TbackendSpec::RailsApp.env(env), RbConfig.ruby, "-S", "rake", "tbackend:backfill[Order]",
                        chdir: app, out: log, err: log)
    interrupted = eventually(120, interval: 0.01) { checkpoint_id.to_i >= 20_000 }
    Process.kill("KILL", pid)
    Process.wait(pid)
    expect(interrupted).to be_truthy, File.read(log)
    stopped_at = checkpoint_id
    expect(stopped_at).to be < rows

    out, status = TbackendSpec::RailsApp.rake(app, "tbackend:backfill[Order]", env: env)
    expect(status).to be_success, out
    resumed = summary(out)
    expect(resumed["written"] + resumed["replayed"]).to eq(rows - stopped_at)
    expect(resumed["failed"]).to eq(0)

    facts = stored_facts(client_for(daemon))
    expect(facts.size).to eq(rows)
    expect(facts.map { |f| f[:id] }.uniq.size).to eq(rows)
    expect(facts.map { |f| f[:key] }.uniq.size).to eq(rows)

    out, status = TbackendSpec::RailsApp.rake(app, "tbackend:backfill[Order]", env: env.merge("RESTART" => "1"))
    expect(status).to be_success, out
    expect(summary(out)).to include("written" => 0, "replayed" => rows, "failed" => 0)
    expect(out).to match(%r{\[#+\] 100000/100000 100% \d+ rows/s ETA 00:00:00})
  end
end
