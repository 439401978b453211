# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 14: `rake tbackend:verify[Model]` shows progress and a summary table, exits 1 on
# drift, repairs with REPAIR=1 and prints JSON with FORMAT=json.
RSpec.describe "rake tbackend:verify" do
  include TbackendSpec::ClientHelpers

  include_context "rails app with a daemon"

  def env(extra = {})
    { "TBACKEND_TEST_PORT" => daemon.port.to_s }.merge(extra)
  end

  def verify(extra = {})
    TbackendSpec::RailsApp.rake(app, "tbackend:verify[Order]", env: env(extra))
  end

  it "exits 1 on drift with a table, prints JSON, repairs with REPAIR=1, then exits 0 in sync" do
    TbackendSpec::RailsApp.load_schema(app, env: env)
    in_app(<<~RUBY, env: env)
      30.times { |i| Order.create!(number: "V-\#{i}", status: "new") }
      Order.find(3).update_columns(status: "sneaky")
      Order.insert_all([{ id: 100, number: "V-100", status: "bulk", created_at: Time.now, updated_at: Time.now }])
      Order.where(id: 4).delete_all
    RUBY

    out, status = verify
    expect(status.exitstatus).to eq(1), out
    expect(out).to match(%r{\[#+\] 30/30 100% \d+ rows/s ETA 00:00:00})
    expect(out).to include("tbackend:verify Order (store orders): DRIFT")
    expect(out).to match(/^  checked +30 *$/).and match(/^  missing +1  100$/).and match(/^  stale +1  3$/)
      .and match(/^  orphaned +1  orders:4$/)

    out, status = verify("FORMAT" => "json")
    expect(status.exitstatus).to eq(1), out
    json = JSON.parse(out[out.index("{\n")..])
    expect(json).to include("in_sync" => false, "complete" => true, "checked" => 30, "missing" => [100], "stale" => [3],
                            "orphaned" => ["orders:4"], "counts" => { "missing" => 1, "stale" => 1, "orphaned" => 1 })

    out, status = verify("REPAIR" => "1")
    expect(status).to be_success, out
    expect(out).to include("drift found and repaired").and match(/^  repaired +3  written=3 replayed=0 failed=0$/)

    out, status = verify
    expect(status).to be_success, out
    expect(out).to include("tbackend:verify Order (store orders): in sync")
  end

  it "exits 1 with INCOMPLETE, never in sync, when the daemon is down" do
    TbackendSpec::RailsApp.load_schema(app, env: env)
    in_app("3.times { |i| Order.create!(number: \"D-\#{i}\", status: 'new') }", env: env)
    out, status = verify("TBACKEND_TEST_PORT" => closed_port.to_s)
    expect(status.exitstatus).to eq(1), out
    expect(out).to match(/INCOMPLETE: unavailable while finding the ledger's highest seq: /)
    expect(out).not_to include("in sync")
  end
end
