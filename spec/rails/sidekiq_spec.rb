# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 10, Sidekiq as Rails teams run it: the `sidekiq` CLI boots the fixture app
# (ActiveJob's sidekiq adapter, Redis on loopback) as a real server process. Runs wherever
# sidekiq and redis-server are installed (Debian 12: 6.4, Debian 13: 7.3); `rspec --tag
# sidekiq` runs these alone.
RSpec.describe "A Sidekiq server process", :sidekiq do
  include_context "sidekiq"

  # How long the daemon stays down while MirrorRetryJobs retry: at least 3 minutes on the
  # Debian 13 leg; elsewhere 30 s, which already outlasts the ~20 s in which 10 attempts at
  # 0.05 s base backoff (and a 1 s scheduler poll) ran out when an outage spent attempts.
  let(:outage_seconds) do
    Float(ENV.fetch("TBACKEND_SPEC_OUTAGE_SECONDS") { ENV["TBACKEND_D13"] == "1" ? 180 : 30 })
  end

  around do |example|
    Dir.mktmpdir("tbackend-sidekiq") do |dir|
      @dir = dir
      example.run
    end
  ensure
    ActsAsTbackend.reset!
  end

  let(:spool) { File.join(@dir, "spool").tap { |path| FileUtils.mkdir_p(path) } }

  # The store's committed facts in the daemon.
  def stored(daemon, store)
    answer = client_for(daemon).facts_by_seq(store: store, after_seq: 0, timeout: 10)
    raise "read-back failed: #{answer.inspect}" unless answer[:ok]

    answer[:response][:facts]
  end

  # `fact id => how many times it is stored`.
  def stored_ids(daemon, store)
    stored(daemon, store).map { |f| f[:id] }.tally
  end

  def stored_keys(daemon, store)
    stored(daemon, store).map { |f| f[:key] }
  end

  # Sleeps `seconds`, failing at once if the Sidekiq process dies or gives a fact up meanwhile.
  def keep_running(sidekiq, seconds)
    deadline = monotonic + seconds
    while monotonic < deadline
      expect(sidekiq).to be_alive, "sidekiq exited:\n#{sidekiq.log}"
      expect(dead_letters(sidekiq)).to be_empty
      sleep [deadline - monotonic, 1].min.clamp(0, 1)
    end
  end

  def log_lines(sidekiq, pattern)
    File.exist?(sidekiq.rails_log_path) ? File.foreach(sidekiq.rails_log_path).grep(pattern) : []
  end

  def dead_letters(sidekiq)
    log_lines(sidekiq, /dead letter/).first(3)
  end

  def performed(sidekiq)
    log_lines(sidekiq, /Performing ActsAsTbackend::MirrorRetryJob/).size
  end

  it "runs MirrorRetryJobs that deliver their facts, and a daemon outage of minutes gives none of them up" do
    TbackendSpec::TestDaemon.with(data_dir: File.join(@dir, "daemon")) do |d|
      env = sidekiq_env(d, "TBACKEND_FAILURE_POLICY" => "enqueue_retry", "TBACKEND_RETRY_BACKEND" => "active_job")
      TbackendSpec::RailsApp.load_schema(app, env: env)
      with_sidekiq(env) do |sidekiq|
        # Daemon up: jobs another process enqueues deliver their facts.
        in_app(<<~RUBY, env: env)
          20.times do |i|
            fact = ActsAsTbackend::Fact.build(id: "job-\#{i}", store: "jobs", key: "k\#{i % 4}", value: { "i" => i })
            ActsAsTbackend::MirrorRetryJob.enqueue_fact(fact)
          end
        RUBY
        delivered = eventually(60, interval: 0.2) { stored_ids(d, "jobs").size == 20 }
        expect(delivered).to be(true), "jobs not delivered:\n#{sidekiq.log}"
        expect(stored_ids(d, "jobs")).to eq(Array.new(20) { |i| ["job-#{i}", 1] }.to_h)

        # Daemon down: each order's mirror write fails and becomes a job, which Sidekiq
        # keeps retrying for the whole outage.
        performed_before = performed(sidekiq)
        d.kill!
        out = in_app("ids = Array.new(50) { |i| Order.create!(number: \"outage-\#{i}\").id }; puts JSON.generate(ids)", env: env)
        order_ids = JSON.parse(out.lines.last)
        keep_running(sidekiq, outage_seconds)
        performed_during = performed(sidekiq) - performed_before
        expect(performed_during).to be >= order_ids.size, "the jobs did not run during the outage"

        # Each job comes back within retry_max_backoff (30 s) of its last run.
        d.restart
        expected_keys = order_ids.map { |id| "orders:#{id}" }
        done = eventually(120, interval: 0.5) do
          stored_keys(d, "orders").size >= expected_keys.size || dead_letters(sidekiq).any?
        end
        expect(dead_letters(sidekiq)).to be_empty
        expect(done).to be(true), "not delivered after the outage:\n#{sidekiq.log}"
        expect(stored_keys(d, "orders")).to match_array(expected_keys)
        expect(stored_ids(d, "orders").select { |_, n| n > 1 }).to be_empty, "a fact stored twice"
      end
    end
  end

  it "is recognised by the Railtie as a server: its spool writer starts at boot and delivers an orphaned segment" do
    leave_orphaned_segment(spool)
    TbackendSpec::TestDaemon.with do |d|
      env = sidekiq_env(d, "TBACKEND_SPOOL_PATH" => spool)
      # A process with Sidekiq loaded only as a client (eager loading pulls in the adapter)
      # is no server: it leaves the segment alone.
      out = in_app(<<~RUBY, env: env.merge("RAILS_EAGER_LOAD" => "1"))
        puts [defined?(Sidekiq::Client) && !Sidekiq.server?, ActsAsTbackend.instance_variable_get(:@async_writer).nil?].inspect
      RUBY
      expect(out.lines.last.strip).to eq("[true, true]")

      with_sidekiq(env) do |sidekiq|
        delivered = eventually(60, interval: 0.2) { stored_ids(d, "spooled").size == 50 }
        expect(delivered).to be(true), "orphaned segment not delivered:\n#{sidekiq.log}"
      end
      expect_delivered_once(d)
    end
  end

  it "loses and duplicates nothing when the Sidekiq process is killed with kill -9 mid-delivery" do
    total = 3000
    leave_orphaned_segment(spool, store: "crash", count: total, keys: 20)
    TbackendSpec::TestDaemon.with(data_dir: File.join(@dir, "daemon")) do |d|
      # Slow answers, so the delivery is still running when the axe falls.
      d.control({ "op" => "set", "delay_ms" => 2 })
      env = sidekiq_env(d, "TBACKEND_SPOOL_PATH" => spool)
      first = start_sidekiq(env)
      begin
        started = eventually(60, interval: 0.05) { stored_ids(d, "crash").size >= 200 }
        expect(started).to be(true), "delivery did not start:\n#{first.log}"
        expect(first.kill!.termsig).to eq(Signal.list["KILL"])
      ensure
        first.stop
      end
      delivered_before = stored_ids(d, "crash").size
      expect(delivered_before).to be < total
      expect(Dir[File.join(spool, "*.spool")]).not_to be_empty

      d.control({ "op" => "clear" })
      with_sidekiq(env) do |sidekiq|
        delivered = eventually(90, interval: 0.2) { stored_ids(d, "crash").size >= total }
        expect(delivered).to be(true), "not everything delivered after the restart:\n#{sidekiq.log}"
      end
      expect_delivered_once(d, store: "crash", count: total)
      expect(File.exist?(File.join(spool, "dead-letter.jsonl"))).to be(false)
    end
  end
end
