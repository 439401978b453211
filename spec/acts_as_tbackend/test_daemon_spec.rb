# frozen_string_literal: true

require "spec_helper"
require "open3"
require "stringio"
require "tmpdir"

# The testing API an app gets from the installed gem: `tbackend-testd` found or built into
# a per-user cache, and ActsAsTbackend::TestDaemon with its fault knobs.
RSpec.describe ActsAsTbackend::TestDaemon do
  include TbackendSpec::ClientHelpers

  let(:root) { File.expand_path("../..", __dir__) }
  let(:target_dir) { ENV["CARGO_TARGET_DIR"].to_s.empty? ? File.join(root, "target") : ENV.fetch("CARGO_TARGET_DIR") }

  def with_env(values)
    saved = values.keys.to_h { |name| [name, ENV.fetch(name, nil)] }
    values.each { |name, value| ENV[name] = value }
    yield
  ensure
    saved.each { |name, value| ENV[name] = value }
  end

  describe ActsAsTbackend::TestDaemon::Binary do
    # cargo builds into our own target dir (already built by `rake compile`): the cache
    # logic is what is under test, not a 2-minute compile.
    around { |example| with_env("CARGO_TARGET_DIR" => target_dir, "TBACKEND_TESTD_BIN" => nil) { example.run } }

    it "builds the daemon into <cache>/<version>-<source hash>/ on first use, then reuses it" do
      Dir.mktmpdir("testd-cache") do |cache|
        out = StringIO.new
        binary = described_class.cached(cache_root: cache, out: out)
        key = "#{ActsAsTbackend::VERSION}-#{described_class.source_digest[0, 16]}"
        expect(binary).to eq(File.join(cache, key, "tbackend-testd"))
        expect(File.executable?(binary)).to be(true)
        expect(out.string).to match(/building tbackend-testd with cargo into #{Regexp.escape(File.dirname(binary))}/)
        expect(out.string).to match(/built tbackend-testd in \d+s/)
        built_at = File.mtime(binary)

        again = StringIO.new
        expect(described_class.cached(cache_root: cache, out: again)).to eq(binary)
        expect(again.string).to be_empty
        expect(File.mtime(binary)).to eq(built_at)

        ActsAsTbackend::TestDaemon.start(binary: binary) do |daemon|
          expect(daemon.request({ "op" => "ping" })).to eq("ok" => true, "pong" => true)
        end
      end
    end

    it "lets concurrent first uses build once and all get a whole binary" do
      Dir.mktmpdir("testd-cache") do |cache|
        script = "require 'acts_as_tbackend/test_daemon/binary'; " \
                 "puts ActsAsTbackend::TestDaemon::Binary.cached(cache_root: ARGV[0])"
        runs = Array.new(3) do
          Thread.new { Open3.capture3(RbConfig.ruby, "-I", File.join(root, "lib"), "-e", script, cache) }
        end
        results = join_all(runs, 300)
        expect(results.map { |_, _, status| status }).to all(be_success)
        paths = results.map { |stdout, _, _| stdout.chomp }.uniq
        expect(paths.size).to eq(1)
        expect(results.sum { |_, stderr, _| stderr.scan("building tbackend-testd").size }).to eq(1)
        expect(Dir.children(File.dirname(paths.first))).to eq(["tbackend-testd"]) # no partial file left
        ActsAsTbackend::TestDaemon.start(binary: paths.first) { |daemon| expect(daemon.port).to be > 0 }
      end
    end

    it "takes TBACKEND_TESTD_BIN first, then the checkout's release build" do
      with_env("TBACKEND_TESTD_BIN" => "/opt/testd") { expect(described_class.path).to eq("/opt/testd") }
      expect(described_class.path).to eq(File.join(target_dir, "release", "tbackend-testd"))
    end

    it "says what to do when cargo is missing" do
      Dir.mktmpdir("testd-cache") do |cache|
        with_env("CARGO" => File.join(cache, "no-cargo")) do
          expect { described_class.cached(cache_root: cache, out: StringIO.new) }
            .to raise_error(described_class::BuildError, /`.*no-cargo` not found.*TBACKEND_TESTD_BIN/m)
        end
      end
    end
  end

  it "ships exe/tbackend-testd, which runs the daemon" do
    out, status = Open3.capture2e(File.join(root, "exe", "tbackend-testd"), "--help")
    expect(status).to be_success
    expect(out).to include("tbackend-testd [OPTIONS]")
  end

  describe "fault knobs, seen by a real client" do
    around do |example|
      described_class.start(pool_size: 4) do |daemon|
        @daemon = daemon
        example.run
      end
    end

    attr_reader :daemon

    let(:client) { client_for(daemon, request_timeout: 2.0) }

    after { ActsAsTbackend.reset! }

    it "delay(ms) holds every answer back, reset_faults ends it" do
      expect(client.ping[:status]).to eq("ok")
      daemon.delay(400)
      elapsed, result = timed { client.ping }
      expect(result[:status]).to eq("ok")
      expect(elapsed).to be >= 0.35
      expect(daemon.status.dig("faults", "delay_ms")).to eq(400)
      daemon.reset_faults
      expect(daemon.status.dig("faults", "delay_ms")).to eq(0)
    end

    it "stall leaves a sent write without an answer (timeout_unknown)" do
      expect(client.ping[:status]).to eq("ok")
      daemon.stall
      expect(client.write_fact_once(fact(unique), timeout: 0.3)[:status]).to eq("timeout_unknown")
      expect(daemon.status.dig("faults", "stall")).to eq("before_exec")
    end

    it "refuse_connections makes a new connection fail (unavailable) until turned off" do
      daemon.refuse_connections
      expect(client.ping[:status]).to eq("unavailable")
      daemon.refuse_connections(false)
      expect(eventually(5) { client.ping[:status] == "ok" }).to be(true)
    end

    it "close_after(n) answers n requests, then closes the connection on the next without executing it" do
      expect(client.ping[:status]).to eq("ok")
      daemon.close_after(1)
      first = fact(unique)
      second = fact(unique)
      expect(client.write_fact_once(first)[:status]).to eq("committed_acked")
      expect(client.write_fact_once(second)[:ok]).to be(false)
      expect(daemon.status.dig("faults", "answer_faults_applied")).to eq(1)
      expect(client.latest_for(store: "specs", key: second["key"])[:response]).to eq(ok: true, fact: nil)
    end

    it "raises ControlError for a knob the daemon refuses, changing nothing" do
      expect { daemon.set(delay_ms: -1) }.to raise_error(described_class::ControlError, /refused set/)
      expect(daemon.status.dig("faults", "delay_ms")).to eq(0)
    end

    it "kill! and restart come back on the same port" do
      port = daemon.port
      daemon.kill!
      expect(client.ping[:status]).to eq("unavailable")
      daemon.restart
      expect(daemon.port).to eq(port)
      expect(eventually(5) { client.ping[:status] == "ok" }).to be(true)
    end
  end

  describe "profiles" do
    after { ActsAsTbackend.reset! }

    it "profile: :real runs at the real daemon's pace, and the client reads its three-part answers" do
      described_class.start(profile: :real) do |daemon|
        expect(daemon.status).to include("profile" => "real", "request_cpu_us" => be_positive)
        client = client_for(daemon, request_timeout: 2.0)
        written = fact(unique)
        expect(client.write_fact_once(written)[:status]).to eq("committed_acked")
        read = client.latest_for(store: written["store"], key: written["key"])
        expect(read.dig(:response, :fact, :id)).to eq(written["id"])
      end
    end

    it "takes TBACKEND_TESTD_PROFILE when no option names one, and is fast otherwise" do
      with_env("TBACKEND_TESTD_PROFILE" => "real") do
        described_class.start { |daemon| expect(daemon.status["profile"]).to eq("real") }
        described_class.start(profile: :fast) { |daemon| expect(daemon.status["profile"]).to eq("fast") }
      end
      with_env("TBACKEND_TESTD_PROFILE" => nil) do
        described_class.start { |daemon| expect(daemon.status).to include("profile" => "fast", "request_cpu_us" => 0) }
      end
    end
  end

  it "stops the daemon after the block even when the block raises" do
    pid = nil
    expect do
      described_class.start do |daemon|
        pid = daemon.pid
        raise "boom"
      end
    end.to raise_error(RuntimeError, "boom")
    expect { Process.kill(0, pid) }.to raise_error(Errno::ESRCH)
  end
end
