# frozen_string_literal: true

require "json"
require "socket"
require "timeout"
require "zlib"

module Bench
  # The 0.2 gem's design, rebuilt as the baseline the benchmarks compare against: one
  # blocking socket per thread from a pool, `Timeout.timeout` around every request (a
  # thread per call), JSON.generate / JSON.parse in Ruby, CRC in Ruby (Zlib). It is
  # written to be as fast as that design allows, so the ratios are fair.
  class NaiveClient
    def initialize(host:, port:, pool_size:, request_timeout: 2.0)
      @host = host
      @port = port
      @request_timeout = request_timeout
      @pool = Queue.new
      @created = 0
      @max = pool_size
      @lock = Mutex.new
    end

    def write_fact_once(fact, durability: "accepted")
      request({ "op" => "write_fact_once", "fact" => fact, "durability" => durability })
    end

    def ping
      request({ "op" => "ping" })
    end

    def connections
      @created
    end

    def close
      @pool.size.times { @pool.pop(true).close }
    rescue ThreadError
      nil
    end

    private

    def request(payload)
      socket = checkout
      begin
        Timeout.timeout(@request_timeout) do
          body = JSON.generate(payload)
          socket.write([body.bytesize].pack("N") << body << [Zlib.crc32(body)].pack("N"))
          length = socket.read(4).unpack1("N")
          answer = socket.read(length)
          raise IOError, "bad CRC" unless socket.read(4).unpack1("N") == Zlib.crc32(answer)

          JSON.parse(answer, symbolize_names: true)
        end
      rescue StandardError
        socket.close
        socket = nil
        raise
      ensure
        @pool.push(socket) if socket
      end
    end

    def checkout
      @pool.pop(true)
    rescue ThreadError
      grow = @lock.synchronize { @created < @max && (@created += 1) }
      return connect if grow

      @pool.pop
    end

    def connect
      socket = Socket.tcp(@host, @port, connect_timeout: 1.0)
      socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      socket
    end
  end
end
