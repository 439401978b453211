# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 14: a backfill must never do nothing silently. Its checkpoint is keyed by database,
# table and store; one that cannot belong to the table's rows is refused (exit 1, nothing
# written) instead of printing `done: written=0`.
RSpec.describe "rake tbackend:backfill checkpoints" do
  include TbackendSpec::ClientHelpers

  include_context "rails app with a daemon"

  def env(database = "dummy")
    { "TBACKEND_TEST_PORT" => daemon.port.to_s, "DATABASE_URL" => "sqlite3:#{File.join(app, 'db', "#{database}.sqlite3")}" }
  end

  # Rows with ids 1..count; each database gets its own updated_at, as real ones would.
  def seed(count, database = "dummy")
    in_app(<<~RUBY, env: env(database))
      now = Time.utc(2026, 1, #{database == 'dummy' ? 1 : 2})
      Order.insert_all(#{count}.times.map { |i| { id: i + 1, number: "C-\#{i}", status: "new", created_at: now, updated_at: now } })
    RUBY
  end

  def backfill(database = "dummy", extra = {})
    TbackendSpec::RailsApp.rake(app, "tbackend:backfill[Order]", env: env(database).merge(extra))
  end

  def summary(output)
    line = output.lines.grep(/tbackend:backfill (done|stopped):/).last or raise "no summary in:\n#{output}"
    line.scan(/(\w+)=(\d+)/).to_h.transform_values(&:to_i)
  end

  def checkpoints
    Dir[File.join(app, "tmp", "tbackend_backfill", "*.json")].map { |path| JSON.parse(File.read(path)) }
  end

  def stored
    client_for(daemon).facts_by_seq(store: "orders")[:response][:facts].size
  end

  before do
    %w[dummy other].each { |database| TbackendSpec::RailsApp.load_schema(app, env: env(database)) }
  end

  it "refuses a checkpoint past the table's highest id (as after db:reset), writing nothing, and RESTART=1 runs" do
    seed(30)
    out, status = backfill
    expect(status).to be_success, out
    expect(summary(out)).to include("written" => 30, "last_id" => 30)
    expect(out).to include("tbackend:backfill verified a sample: checked=30 missing=0 stale=0 orphaned=0\n")

    in_app("Order.delete_all", env: env)
    seed(10)
    written_before = stored
    out, status = backfill
    expect(status.exitstatus).to eq(1), out
    expect(out).to include("tbackend:backfill refused: checkpoint", "says last_id=30", "highest id is 10",
                           "RESTART=1 starts over")
    expect(out).not_to match(/done:/)
    expect(stored).to eq(written_before)

    out, status = backfill("dummy", "RESTART" => "1")
    expect(status).to be_success, out
    expect(summary(out)).to include("replayed" => 10, "failed" => 0, "last_id" => 10)
  end

  it "keeps one checkpoint per database: a run against another database starts from its own first row" do
    seed(30)
    expect(backfill.last).to be_success
    seed(40, "other")
    out, status = backfill("other")
    expect(status).to be_success, out
    expect(summary(out)).to include("written" => 40, "last_id" => 40)
    expect(checkpoints.map { |c| [c["database"].split("/").last, c["table"], c["store"], c["last_id"]] })
      .to contain_exactly(["dummy.sqlite3", "orders", "orders", 30], ["other.sqlite3", "orders", "orders", 40])
  end

  it "refuses a CHECKPOINT file written for another database" do
    seed(30)
    expect(backfill.last).to be_success
    path = Dir[File.join(app, "tmp", "tbackend_backfill", "*.json")].first
    seed(40, "other")
    out, status = backfill("other", "CHECKPOINT" => path)
    expect(status.exitstatus).to eq(1), out
    expect(out).to include("was written for", "dummy.sqlite3", "other.sqlite3")
  end

  it "ignores, and says so, a table-only checkpoint of an older version: it starts over" do
    seed(10)
    dir = File.join(app, "tmp", "tbackend_backfill")
    FileUtils.mkdir_p(dir)
    File.write(File.join(dir, "orders.json"), JSON.generate("model" => "Order", "last_id" => 20_305))
    out, status = backfill
    expect(status).to be_success, out
    expect(out).to include("ignoring #{File.join(dir, 'orders.json')}: it names no database or store")
    expect(summary(out)).to include("written" => 10, "last_id" => 10)
  end
end
