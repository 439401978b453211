# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 4, Rails: the Railtie reads config/tbackend.yml and config.x.tbackend, attaches
# the log subscriber, and `rake tbackend:health` gates deploys with its exit status.
RSpec.describe "ActsAsTbackend::Railtie" do
  include TbackendSpec::ClientHelpers
  include_context "rails app"

  it "applies config/tbackend.yml for Rails.env, with config.x.tbackend on top" do
    out = in_app("c = ActsAsTbackend.config; puts [c.port, c.producer, c.request_timeout, c.errors].inspect",
                 env: { "TBACKEND_TEST_PORT" => "7555" })
    expect(out.lines.last.strip).to eq('[7555, "dummy-from-yaml", 1.5, []]')

    out = in_app("puts ActsAsTbackend.config.producer", env: { "X_TBACKEND_PRODUCER" => "from-x" })
    expect(out.lines.last.strip).to eq("from-x")
  end

  # Issue 10: development, test and parallel test workers wrote `orders:<id>` into one
  # daemon; tbackend_history showed development facts inside a spec.
  describe "store_prefix, keeping environments apart" do
    def prefix_in(env, code = "")
      out = in_app("#{code}\nputs ActsAsTbackend.config.store_prefix.inspect", env: env)
      out.lines.last.strip
    end

    it "defaults to test_ in the test environment, per parallel_tests process and per Rails test worker" do
      default = { "FIXTURE_DEFAULT_STORE_PREFIX" => "1" }
      expect(prefix_in(default)).to eq('"test_"')
      expect(prefix_in(default.merge("TEST_ENV_NUMBER" => "3"))).to eq('"test3_"')
      fork_hook = 'require "active_support/test_case"
        ActiveSupport::Testing::Parallelization.after_fork_hooks.each { |hook| hook.call(2) }'
      expect(prefix_in(default, fork_hook)).to eq('"test_2_"')
    end

    it "keeps store names as they are in development, and an explicit setting always wins" do
      expect(prefix_in({ "RAILS_ENV" => "development" })).to eq("nil")
      explicit = { "FIXTURE_DEFAULT_STORE_PREFIX" => "1", "TBACKEND_STORE_PREFIX" => "ci-7_" }
      expect(prefix_in(explicit)).to eq('"ci-7_"')
      fork_hook = 'require "active_support/test_case"
        ActiveSupport::Testing::Parallelization.after_fork_hooks.each { |hook| hook.call(2) }'
      expect(prefix_in(explicit, fork_hook)).to eq('"ci-7_"')
      expect(prefix_in({ "FIXTURE_DEFAULT_STORE_PREFIX" => "1", "TBACKEND_STORE_PREFIX" => "" })).to eq('""')
      expect(prefix_in({})).to eq('""') # the fixture's config/tbackend.yml says ""
    end
  end

  it "turns a bad setting into a config_error the health check reports, without stopping the boot" do
    out = in_app("h = ActsAsTbackend.health; puts [h[:status], h[:error]].inspect", env: { "X_TBACKEND_BOGUS" => "1" })
    expect(out.lines.last).to include('"config_error"', "bogus_setting: unknown setting")
  end

  it "logs client calls through Rails.logger with names and statuses, never values" do
    TbackendSpec::TestDaemon.with do |d|
      log = File.join(app, "test.log")
      in_app(<<~RUBY, env: { "TBACKEND_TEST_PORT" => d.port.to_s, "RAILS_LOG" => log })
        fact = ActsAsTbackend::Fact.build(id: "log-1", store: "logged", key: "k", value: { "card" => "4111-secret" })
        ActsAsTbackend.client.write_fact_once(fact)
      RUBY
      text = File.read(log)
      expect(text).to match(/TBackend write_fact_once \([\d.]+ms\) store=logged id=log-1 durability=accepted/)
      expect(text).to include("status=committed_acked")
      expect(text).not_to include("4111-secret")
    end
  end

  describe "rake tbackend:health" do
    it "prints the report and exits 0 when the daemon answers" do
      TbackendSpec::TestDaemon.with do |d|
        out, status = TbackendSpec::RailsApp.rake(app, "tbackend:health", env: { "TBACKEND_TEST_PORT" => d.port.to_s })
        expect(status).to be_success, out
        expect(out).to include('"status": "ok"')
      end
    end

    it "exits non-zero when the daemon is down" do
      out, status = TbackendSpec::RailsApp.rake(app, "tbackend:health", env: { "TBACKEND_TEST_PORT" => closed_port.to_s })
      expect(status).not_to be_success
      expect(out).to include('"status": "down"')
    end
  end

  it "rake tbackend:tail[store] prints a store's facts in seq order, resumable" do
    TbackendSpec::TestDaemon.with do |d|
      client_for(d)
      ids = Array.new(5) { |i| "tail-#{i}" }
      ids.each { |id| ActsAsTbackend.client.write_fact_once(fact(id, store: "tailed")) }
      out, status = TbackendSpec::RailsApp.rake(app, "tbackend:tail[tailed,2]",
                                                env: { "TBACKEND_TEST_PORT" => d.port.to_s, "LIMIT" => "3" })
      expect(status).to be_success, out
      printed = out.lines.filter_map { |line| JSON.parse(line) if line.start_with?("{") }
      expect(printed.map { |f| f["id"] }).to eq(ids.last(3))
      expect(out).to include("resume with after_seq=5")
    ensure
      ActsAsTbackend.reset!
    end
  end
end
