# frozen_string_literal: true

require "securerandom"
require "socket"

module TbackendSpec
  # Shared by the client specs (spec/client): facts with unique ids, clients aimed at a
  # test daemon, clocks, bounded thread joins and the read-back checks that prove every
  # answer reached the request it belongs to.
  module ClientHelpers
    # Every status a client call may return (the 0.2 gem's, plus config_error).
    SOFT_STATUSES = %w[
      ok committed_acked idempotent_replay duplicate_fact_id_conflict rejected_before_commit error
      unavailable timeout_unknown circuit_open disabled config_error
    ].freeze
    RESULT_KEYS = %i[ok status committed retryable response error].freeze

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # Seconds the block took, and its value.
    def timed
      started = monotonic
      value = yield
      [monotonic - started, value]
    end

    # A String-keyed fact, as Fact.build makes it.
    def fact(id, store: "specs", key: nil, value: nil)
      ActsAsTbackend::Fact.build(id: id, store: store, key: key || "key:#{id}", value: value.nil? ? { "id" => id } : value)
    end

    def unique(prefix = "f")
      "#{prefix}-#{SecureRandom.hex(6)}"
    end

    # Configures the module client for `daemon` (plus any setting) and returns it.
    def client_for(daemon, **settings)
      ActsAsTbackend.configure do |c|
        c.port = daemon.port
        c.request_timeout = 2.0
        settings.each { |name, value| c.public_send(:"#{name}=", value) }
      end
      ActsAsTbackend.client
    end

    # A Config built like the module's, with these settings, and a Client of its own.
    def config_with(**settings)
      ActsAsTbackend::Config.new.tap do |c|
        settings.each { |name, value| c.public_send(:"#{name}=", value) }
      end
    end

    # A loopback port nothing listens on: connecting to it is refused at once.
    def closed_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    def daemon_status(daemon)
      daemon.control({ "op" => "status" })
    end

    # Joins every thread within `seconds` overall; a thread still running fails the
    # example instead of hanging the suite.
    def join_all(threads, seconds)
      deadline = monotonic + seconds
      threads.each do |t|
        left = deadline - monotonic
        raise "thread #{t.inspect} still running after #{seconds}s" unless t.join([left, 0].max)
      end
      threads.map(&:value)
    end

    # Polls until the block is truthy or `seconds` pass; returns the last value.
    def eventually(seconds, interval: 0.02)
      deadline = monotonic + seconds
      loop do
        value = yield
        return value if value || monotonic > deadline

        sleep interval
      end
    end

    # The soft-result shape every call must have, whatever happened.
    def expect_soft_result(result)
      expect(result).to be_a(Hash)
      expect(result.keys).to include(*RESULT_KEYS)
      expect(SOFT_STATUSES).to include(result[:status]), result.inspect
      expect(result[:error]).to be_nil.or(be_a(String))
    end

    # `seq_id => fact id` for the whole store, read back in one facts_by_seq.
    def ids_by_seq(client, store)
      answer = client.facts_by_seq(store: store, after_seq: 0, timeout: 10)
      raise "read-back failed: #{answer.inspect}" unless answer[:ok]

      answer[:response][:facts].to_h { |f| [f[:seq_id], f[:id]] }
    end

    # Every successful write `[id, result]` must name, in its seq_id, the fact with
    # that id: an answer handed to another caller shows up as a mismatch here.
    def expect_writes_match_read_back(client, store, writes)
      by_seq = ids_by_seq(client, store)
      expect(by_seq.values.tally.select { |_, n| n > 1 }).to be_empty, "an id is stored twice"
      mismatched = writes.filter_map do |id, result|
        next unless result[:ok]

        seq = result.dig(:response, :seq_id)
        [id, seq, by_seq[seq]] unless by_seq[seq] == id
      end
      expect(mismatched).to be_empty, "answers that belong to another request: #{mismatched.first(5).inspect}"
      by_seq
    end
  end
end

# `include_context "client spec"`: the helpers, and every client shut down afterwards.
RSpec.shared_context "client spec" do
  include TbackendSpec::ClientHelpers

  # `with_daemon(**options)`: a test daemon for each example, as `daemon`, always stopped.
  def self.with_daemon(**options)
    around do |example|
      TbackendSpec::TestDaemon.with(**options) do |d|
        @daemon = d
        example.run
      end
    end
  end

  attr_reader :daemon

  after { ActsAsTbackend.reset! }
end
