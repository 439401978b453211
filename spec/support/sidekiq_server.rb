# frozen_string_literal: true

require "fileutils"
require "rbconfig"
require "securerandom"
require "socket"
require "tmpdir"
require_relative "client_helpers"
require_relative "rails_app"

module TbackendSpec
  # A real Sidekiq server process (the `sidekiq` CLI) running the fixture Rails app
  # (spec/fixtures/rails_app, with ActiveJob's sidekiq adapter and config/sidekiq.yml), and
  # the Redis it needs: REDIS_URL when set (bin/test-debian13 starts one), else a
  # redis-server of our own on a free loopback port. Every process started here is stopped
  # here, within bounded time.
  class SidekiqServer
    # A TERM gives Sidekiq its shutdown timeout (config/sidekiq.yml: 5 s) to finish jobs.
    STOP_TIMEOUT = 30
    REDIS_TIMEOUT = 10

    class << self
      include ClientHelpers

      # What is missing to run a Sidekiq server here, or nil.
      def missing
        missing = []
        missing << "the sidekiq gem (Debian: ruby-sidekiq)" unless sidekiq_version
        missing << "redis-server (Debian: redis-server), or REDIS_URL" unless redis_url || redis_server
        missing.empty? ? nil : missing.join(" and ")
      end

      def sidekiq_version
        Gem::Specification.find_by_name("sidekiq").version
      rescue Gem::MissingSpecError
        nil
      end

      # Yields a Redis URL for the block: REDIS_URL, or a private redis-server (no
      # persistence, loopback only) that is stopped when the block ends.
      def with_redis(&block)
        return yield redis_url if redis_url

        Dir.mktmpdir("tbackend-redis") { |dir| with_redis_server(dir, &block) }
      end

      # Starts `sidekiq` in the app directory with `env` (see RailsApp.env).
      def start(app, env)
        new(app, env).start
      end

      # Stops a process and its group: TERM, then KILL after `seconds`. Returns its status.
      def stop_process(pid, seconds)
        signal("TERM", pid)
        reap(pid, seconds) || (signal("KILL", -pid) && reap(pid, 5))
      end

      def signal(name, pid)
        Process.kill(name, pid)
        true
      rescue Errno::ESRCH
        true
      end

      # The process's status once it exits within `seconds`, else nil.
      def reap(pid, seconds)
        deadline = monotonic + seconds
        loop do
          _, status = Process.waitpid2(pid, Process::WNOHANG)
          return status if status
          return nil if monotonic > deadline

          sleep 0.02
        end
      rescue Errno::ECHILD
        true
      end

      private

      def redis_url
        url = ENV.fetch("REDIS_URL", "")
        url unless url.empty?
      end

      def redis_server
        ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |dir| File.join(dir, "redis-server") }
           .find { |path| File.executable?(path) }
      end

      def with_redis_server(dir)
        port = closed_port
        log = File.join(dir, "redis.log")
        pid = Process.spawn(redis_server, "--bind", "127.0.0.1", "--port", port.to_s, "--save", "", "--appendonly", "no",
                            "--dir", dir, "--logfile", log, out: File::NULL, err: File::NULL, pgroup: true)
        begin
          wait_for_redis(port, pid, log)
          yield "redis://127.0.0.1:#{port}/0"
        ensure
          stop_process(pid, 10)
        end
      end

      def wait_for_redis(port, pid, log)
        deadline = monotonic + REDIS_TIMEOUT
        until redis_ping(port)
          raise "redis-server exited:\n#{File.read(log) if File.exist?(log)}" if reap(pid, 0)
          raise "redis-server not ready within #{REDIS_TIMEOUT}s" if monotonic > deadline

          sleep 0.02
        end
      end

      def redis_ping(port)
        Socket.tcp("127.0.0.1", port, connect_timeout: 1) do |sock|
          sock.write("PING\r\n")
          sock.wait_readable(1) && sock.readpartial(16).start_with?("+PONG")
        end
      rescue SystemCallError, EOFError
        false
      end
    end

    attr_reader :pid, :log_path, :rails_log_path

    def initialize(app, env)
      @app = app
      @env = env
      @log_path = File.join(app, "sidekiq.log")
      @rails_log_path = File.join(app, "sidekiq-rails.log")
    end

    def start
      env = RailsApp.env({ "RAILS_LOG" => rails_log_path }.merge(@env))
      @pid = Process.spawn(env, RbConfig.ruby, "-S", "sidekiq", "-e", "test", "-r", ".", "-C", "config/sidekiq.yml",
                           chdir: @app, out: [log_path, "a"], err: %i[child out], pgroup: true)
      self
    end

    def alive?
      return false unless @pid

      status = self.class.reap(@pid, 0)
      @pid = nil if status
      !status
    end

    # A clean shutdown (TERM); KILL only if it hangs.
    def stop
      return unless @pid

      self.class.stop_process(@pid, STOP_TIMEOUT)
      @pid = nil
    end

    # `kill -9`: no shutdown at all. Returns the exit status.
    def kill!
      self.class.signal("KILL", @pid)
      status = self.class.reap(@pid, 10)
      @pid = nil
      status
    end

    # Sidekiq's output and the app's log, for failure messages.
    def log
      [log_path, rails_log_path].select { |path| File.exist?(path) }.map { |path| File.read(path) }.join("\n").lines.last(80).join
    end
  end
end

# `include_context "sidekiq"`: the "rails app" context, a Redis for each example (as
# `redis_url`), and `sidekiq_env` / `with_sidekiq` to run Sidekiq server processes in the
# app. Skipped when sidekiq or Redis is missing, except on the Debian 13 leg
# (TBACKEND_D13=1), which ships both: there a missing one fails the example.
RSpec.shared_context "sidekiq" do
  include_context "rails app"

  around do |example|
    missing = TbackendSpec::SidekiqServer.missing
    if missing
      raise "the Sidekiq specs need #{missing}" if ENV["TBACKEND_D13"] == "1"

      skip "needs #{missing}"
    end
    TbackendSpec::SidekiqServer.with_redis do |url|
      @redis_url = url
      example.run
    end
  end

  attr_reader :redis_url

  # The env of the app's processes for `daemon`, Sidekiq client or server: jobs go through
  # Redis on a queue of this example's own (nothing else in a shared Redis runs them),
  # and the Railtie decides by itself whether the process is a server.
  def sidekiq_env(daemon, extra = {})
    @queue_prefix ||= "tbackend-spec-#{SecureRandom.hex(4)}"
    {
      "ACTIVE_JOB_ADAPTER" => "sidekiq", "ACTIVE_JOB_QUEUE_PREFIX" => @queue_prefix, "REDIS_URL" => redis_url,
      "TBACKEND_TEST_PORT" => daemon.port.to_s, "TBACKEND_SERVER_PROCESS" => nil
    }.merge(extra)
  end

  def start_sidekiq(env)
    TbackendSpec::SidekiqServer.start(app, env)
  end

  # A Sidekiq server for the block, stopped afterwards whatever happens.
  def with_sidekiq(env)
    sidekiq = start_sidekiq(env)
    yield sidekiq
  ensure
    sidekiq&.stop
  end
end
