# frozen_string_literal: true

require "io/wait"
require "json"
require "socket"
require "timeout"
require "zlib"

module ActsAsTbackend
  class TestDaemon
    # The TBackend frame (4-byte big-endian length, JSON body, CRC-32), written in plain
    # Ruby on purpose: it talks to the daemon's control port without the native extension,
    # and specs that check the native codec must not depend on it.
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
end
