# frozen_string_literal: true

require "timeout"
require_relative "test_daemon/binary"
require_relative "test_daemon/framed_socket"

module ActsAsTbackend
  # Runs tbackend-testd, the gem's test double of the TBackend daemon, on a free loopback
  # port, and turns its fault knobs. Part of the testing API: needs no native extension.
  #
  #   ActsAsTbackend::TestDaemon.start(data_dir: dir, auth: true) do |daemon|
  #     ActsAsTbackend.configure { |c| c.port = daemon.port }
  #     daemon.delay(300)            # every answer 300 ms late
  #     daemon.reset_faults
  #   end                            # stopped, whatever happened in the block
  #
  # Options become daemon flags (`pool_size: 4` is `--pool-size 4`, `auth: true` is
  # `--auth`); see `tbackend-testd --help`. `binary:` overrides Binary.path.
  # `profile: :real` makes it as slow as the real daemon, in the same ways (for
  # benchmarks); the default, `:fast` (or $TBACKEND_TESTD_PROFILE), is for tests.
  class TestDaemon
    READY_TIMEOUT = 20

    # A control request the daemon refused (an unknown knob, a wrong type).
    class ControlError < StandardError; end

    @running = []
    @running_lock = Mutex.new

    class << self
      def binary
        Binary.path
      end

      # Starts a daemon. With a block, yields it and stops it afterwards, whatever happens,
      # and returns the block's value.
      def start(**options, &block)
        daemon = new(**options).start
        return daemon unless block

        begin
          yield daemon
        ensure
          daemon.stop
        end
      end

      def with(**options, &block)
        start(**options, &block)
      end

      # Stops every daemon this process started and has not stopped (also run at exit).
      def stop_all
        @running_lock.synchronize { @running.select { |daemon| daemon.owner_pid == Process.pid } }.each(&:stop)
      end

      def register(daemon)
        @running_lock.synchronize { @running << daemon unless @running.include?(daemon) }
      end

      def forget(daemon)
        @running_lock.synchronize { @running.delete(daemon) }
      end
    end

    attr_reader :host, :port, :control_port, :pid, :data_dir, :options, :binary, :owner_pid

    def initialize(data_dir: nil, port: 0, binary: nil, **options)
      @binary = binary || self.class.binary
      raise Binary::BuildError, "no tbackend-testd executable at #{@binary}" unless File.executable?(@binary)

      @data_dir = data_dir
      @port = port
      @options = options
      @host = "127.0.0.1"
    end

    def start
      @stdout, writer = IO.pipe
      @pid = Process.spawn(*command, out: writer, err: File::NULL, pgroup: true)
      @owner_pid = Process.pid
      writer.close
      self.class.register(self)
      read_ready_line
      self
    end

    # SIGTERM, then SIGKILL if it has not exited within 5 s.
    def stop
      return unless @pid

      signal(:TERM)
      reap(5) || (signal(:KILL) && reap(5))
      cleanup
    end

    # SIGKILL: no shutdown, the log stays as the OS has it.
    def kill!
      signal(:KILL)
      reap(5)
      cleanup
    end

    # Starts again on the same port and data dir (after kill! or stop).
    def restart
      stop if @pid
      start
    end

    def alive?
      return false unless @pid

      Process.kill(0, @pid)
      true
    rescue Errno::ESRCH
      false
    end

    # One raw request on the control port; returns the answer Hash (crates/tbackend-testd/README.md).
    def control(request)
      FramedSocket.open(host, control_port) { |sock| sock.request(request) }
    end

    # One request on the daemon's own port, on a fresh connection.
    def request(request)
      FramedSocket.open(host, port) { |sock| sock.request(request) }
    end

    # Sets any fault fields at once (`set(delay_ms: 50, fail_durable_sync: true)`).
    def set(**fields)
      checked_control({ "op" => "set", **fields.transform_keys(&:to_s) })
    end

    # Every answer is written `milliseconds` late.
    def delay(milliseconds)
      set(delay_ms: milliseconds)
    end

    # Requests are read and never answered: `:before_exec` (not executed, the default),
    # `:after_exec` (executed, the answer dropped), or `:off`.
    def stall(mode = :before_exec)
      set(stall: mode.to_s)
    end

    # The data port refuses connections (true) or listens again (false); open
    # connections keep working.
    def refuse_connections(refuse = true) # rubocop:disable Style/OptionalBooleanParameter -- the knob reads as a switch
      set(refuse_connections: refuse)
    end

    # After `count` more answers, the next request is not executed and its connection is
    # closed without an answer.
    def close_after(count)
      set(answer_fault: { "kind" => "close", "after" => count, "count" => 1, "execute" => false })
    end

    # Clears every fault (a refused port listens again).
    def reset_faults
      checked_control({ "op" => "clear" })
    end

    # Shuts down every open data connection; returns how many.
    def drop_connections
      checked_control({ "op" => "drop_connections" }).fetch("dropped")
    end

    # Counters and the current faults, as the control port reports them.
    def status
      checked_control({ "op" => "status" })
    end

    private

    def command
      args = [binary, "--host", host, "--port", port.to_s, "--control-port", "0"]
      args += ["--data-dir", data_dir] if data_dir
      options.each do |flag, value|
        next if value == false || value.nil?

        name = "--#{flag.to_s.tr('_', '-')}"
        args += value == true ? [name] : [name, value.to_s]
      end
      args
    end

    def checked_control(request)
      answer = control(request)
      raise ControlError, "tbackend-testd refused #{request['op']}: #{answer['error']}" unless answer["ok"]

      answer
    end

    def read_ready_line
      line = Timeout.timeout(READY_TIMEOUT) { @stdout.gets }
      raise "tbackend-testd exited before it was ready" unless line

      fields = line.split.drop(2).to_h { |pair| pair.split("=", 2) }
      @port = Integer(fields.fetch("port"), 10)
      @control_port = Integer(fields.fetch("control_port"), 10)
    rescue Timeout::Error
      stop
      raise "tbackend-testd did not report ready within #{READY_TIMEOUT}s"
    end

    def signal(name)
      Process.kill(name, @pid)
      true
    rescue Errno::ESRCH
      true
    end

    def reap(seconds)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
      loop do
        return true if Process.waitpid(@pid, Process::WNOHANG)
        return false if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.01
      end
    rescue Errno::ECHILD
      true
    end

    def cleanup
      @stdout&.close
      @stdout = nil
      @pid = nil
      self.class.forget(self)
    end
  end
end

# A test run that ends without stopping its daemons (an interrupted suite) leaves none
# behind. A forked child inherits this hook but stops only daemons it started.
at_exit { ActsAsTbackend::TestDaemon.stop_all }
