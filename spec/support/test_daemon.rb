# frozen_string_literal: true

require "socket"
require "timeout"
require "tmpdir"
require "zlib"

module TbackendSpec
  # Runs crates/tbackend-testd on a free loopback port for a spec and always stops it.
  # `control` drives the daemon's fault knobs (see crates/tbackend-testd/README.md).
  class TestDaemon
    ROOT = File.expand_path("../..", __dir__)
    READY_TIMEOUT = 20

    @running = []
    @running_lock = Mutex.new

    class << self
      def binary
        ENV.fetch("TBACKEND_TESTD_BIN") do
          target = ENV["CARGO_TARGET_DIR"].to_s.empty? ? File.join(ROOT, "target") : ENV.fetch("CARGO_TARGET_DIR", nil)
          File.join(target, "release", "tbackend-testd")
        end
      end

      def start(**options)
        new(**options).start
      end

      # Starts a daemon for the block and stops it afterwards, whatever happens.
      def with(**options)
        daemon = start(**options)
        yield daemon
      ensure
        daemon&.stop
      end

      def stop_all
        @running_lock.synchronize { @running.dup }.each(&:stop)
      end

      def register(daemon)
        @running_lock.synchronize { @running << daemon unless @running.include?(daemon) }
      end

      def forget(daemon)
        @running_lock.synchronize { @running.delete(daemon) }
      end
    end

    attr_reader :host, :port, :control_port, :pid, :data_dir, :options

    def initialize(data_dir: nil, port: 0, **options)
      raise "test daemon not built: #{self.class.binary} (run `rake compile`)" unless File.executable?(self.class.binary)

      @data_dir = data_dir
      @port = port
      @options = options
      @host = "127.0.0.1"
    end

    def start
      args = [self.class.binary, "--host", host, "--port", port.to_s, "--control-port", "0"]
      args += ["--data-dir", data_dir] if data_dir
      options.each do |flag, value|
        name = "--#{flag.to_s.tr('_', '-')}"
        next if value == false

        args += value == true ? [name] : [name, value.to_s]
      end
      @stdout, writer = IO.pipe
      @pid = Process.spawn(*args, out: writer, err: File::NULL, pgroup: true)
      writer.close
      self.class.register(self)
      read_ready_line
      self
    end

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

    # One request on the control port.
    def control(request)
      FramedSocket.open(host, control_port) { |sock| sock.request(request) }
    end

    # One request on the daemon's own port, on a fresh connection.
    def request(request)
      FramedSocket.open(host, port) { |sock| sock.request(request) }
    end

    private

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

  # The TBackend frame, written in plain Ruby on purpose: specs that check the native
  # codec must not depend on it.
  class FramedSocket
    def self.open(host, port, timeout: 5)
      sock = new(Socket.tcp(host, port, connect_timeout: timeout), timeout)
      yield sock
    ensure
      sock&.close
    end

    def initialize(socket, timeout)
      @socket = socket
      @timeout = timeout
    end

    def request(object)
      write_frame(JSON.generate(object))
      JSON.parse(read_frame)
    end

    def write_frame(body)
      body = body.b
      @socket.write([body.bytesize].pack("N") + body + [Zlib.crc32(body)].pack("N"))
    end

    def read_frame
      length = read_exactly(4).unpack1("N")
      body = read_exactly(length)
      crc = read_exactly(4).unpack1("N")
      raise "bad CRC from daemon" unless crc == Zlib.crc32(body)

      body.force_encoding(Encoding::UTF_8)
    end

    def close
      @socket.close unless @socket.closed?
    end

    private

    def read_exactly(count)
      buffer = +""
      while buffer.bytesize < count
        raise Timeout::Error, "no answer within #{@timeout}s" unless @socket.wait_readable(@timeout)

        chunk = @socket.read_nonblock(count - buffer.bytesize, exception: false)
        raise EOFError, "daemon closed the connection" if chunk.nil?
        next if chunk == :wait_readable

        buffer << chunk
      end
      buffer
    end
  end
end
