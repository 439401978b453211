# frozen_string_literal: true

require "rbconfig"
require "tmpdir"

module TbackendSpec
  # Shared by spec/async: the module's async writer aimed at a test daemon, and Ruby
  # processes of their own (the crash and at_exit specs need real processes).
  module AsyncHelpers
    LIB = File.expand_path("../../lib", __dir__)

    # Configures the module for `daemon` with fast retries (plus any setting) and
    # returns the memoised writer.
    def async_writer_for(daemon, **settings)
      ActsAsTbackend.configure do |c|
        c.port = daemon.port
        c.request_timeout = 0.5
        c.retry_base_backoff = 0.01
        c.retry_max_backoff = 0.1
        settings.each { |name, value| c.public_send(:"#{name}=", value) }
      end
      ActsAsTbackend.async_writer
    end

    def stall(daemon)
      daemon.control({ "op" => "set", "stall" => "before_exec" })
    end

    def unstall(daemon)
      daemon.control({ "op" => "clear" })
    end

    # `fact id => [seq_id, key]` for the whole store; fails on a duplicate id.
    def stored(store)
      answer = ActsAsTbackend.client.facts_by_seq(store: store, after_seq: 0, timeout: 10)
      raise "read-back failed: #{answer.inspect}" unless answer[:ok]

      facts = answer[:response][:facts]
      ids = facts.map { |f| f[:id] }
      expect(ids.tally.select { |_, n| n > 1 }).to be_empty, "a fact id is stored twice"
      facts.to_h { |f| [f[:id], [f[:seq_id], f[:key]]] }
    end

    # A Ruby process running `script` with the gem loaded; its stdout is a pipe.
    def spawn_ruby(script, env = {})
      reader, writer = IO.pipe
      pid = Process.spawn(env, RbConfig.ruby, "-I", LIB, "-e", script, out: writer, err: %i[child out])
      writer.close
      [pid, reader]
    end

    # The next line the process prints, within `seconds`.
    def read_line(io, seconds)
      raise "no output within #{seconds}s" unless io.wait_readable(seconds)

      io.gets or raise "the process exited early"
    end

    def wait_exit(pid, seconds)
      deadline = monotonic + seconds
      loop do
        _, status = Process.waitpid2(pid, Process::WNOHANG)
        return status if status
        raise "process #{pid} still running after #{seconds}s" if monotonic > deadline

        sleep 0.02
      end
    end
  end
end

RSpec.shared_context "async spec" do
  include_context "client spec"
  include TbackendSpec::AsyncHelpers

  # Before the client spec's reset!: a writer left waiting on a stalled daemon must not
  # cost every example the full exit flush.
  after { ActsAsTbackend.shutdown_async_writer(timeout: 0.2) }

  # A scratch directory for the example (`@dir`) and a test daemon whose data lives in it,
  # so a kill! and restart keep what it stored.
  def self.with_daemon_in_tmpdir(prefix)
    around do |example|
      Dir.mktmpdir(prefix) do |dir|
        @dir = dir
        TbackendSpec::TestDaemon.with(data_dir: File.join(dir, "daemon")) do |d|
          @daemon = d
          example.run
        end
      end
    end
  end
end
