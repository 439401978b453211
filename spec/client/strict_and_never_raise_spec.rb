# frozen_string_literal: true

require "spec_helper"
require "zlib"

# Issue 3, "Never raise, never leak": strict mode raises transport failures only, as
# ActsAsTbackend::TransportError subclasses that say they may be retried; without strict
# no client call raises, whatever the config, the value or the daemon's answer.
RSpec.describe "ActsAsTbackend::Client strict mode and never-raise" do
  include_context "client spec"

  # A complete, valid frame around `body` (for the daemon's `garbage` answer fault).
  def frame_hex(body)
    body = body.b
    ([body.bytesize].pack("N") + body + [Zlib.crc32(body)].pack("N")).unpack1("H*")
  end

  describe "strict: true" do
    it "raises ConnectionError for a refused connect, with the soft result in #result and retryable? true" do
      ActsAsTbackend.configure do |c|
        c.port = closed_port
        c.strict = true
      end
      expect { ActsAsTbackend.client.ping }.to raise_error(ActsAsTbackend::ConnectionError) { |error|
        expect(error).to be_a(ActsAsTbackend::TransportError)
        expect(error).to be_a(ActsAsTbackend::Error)
        expect(error.retryable?).to be(true)
        expect(error.result).to include(status: "unavailable", ok: false, committed: nil, retryable: true)
        expect(error.message).to start_with("ActsAsTbackend::ConnectionError: ")
      }
      expect { ActsAsTbackend.client.write_fact_once(fact(unique)) }.to raise_error(ActsAsTbackend::ConnectionError)
      expect { ActsAsTbackend.client.write_fact_once_safe(fact(unique), backoff: 0.001) }
        .to raise_error(ActsAsTbackend::ConnectionError) { |e| expect(e.result[:attempt_count]).to eq(2) }
    end

    it "raises CircuitOpenError once the breaker is open" do
      ActsAsTbackend.configure do |c|
        c.port = closed_port
        c.strict = true
        c.breaker_threshold = 1
        c.breaker_cooldown = 30
      end
      expect { ActsAsTbackend.client.ping }.to raise_error(ActsAsTbackend::ConnectionError)
      expect { ActsAsTbackend.client.latest_for(store: "specs", key: "k") }.to raise_error(ActsAsTbackend::CircuitOpenError) { |e|
        expect(e.retryable?).to be(true)
        expect(e.result).to include(status: "circuit_open")
        expect(e.message).to end_with("TBackend circuit breaker open for 127.0.0.1:#{ActsAsTbackend.config.port}")
      }
    end

    context "with a daemon" do
      with_daemon(max_inflight: 1)

      let(:client) { client_for(daemon, strict: true, request_timeout: 0.3) }

      it "raises TimeoutError for a stalled answer, with the timeout_unknown result" do
        client.ping
        daemon.control({ "op" => "set", "stall" => true })
        expect { client.write_fact_once(fact(unique)) }.to raise_error(ActsAsTbackend::TimeoutError) { |e|
          expect(e.retryable?).to be(true)
          expect(e.result).to include(status: "timeout_unknown", ok: false, committed: nil, retryable: nil)
        }
      end

      it "keeps domain errors soft: conflict, overload, invalid values, daemon errors" do
        id = unique
        expect(client.write_fact_once(fact(id, value: 1))[:status]).to eq("committed_acked")
        expect(client.write_fact_once(fact(id, value: 2))[:status]).to eq("duplicate_fact_id_conflict")
        expect(client.write_fact_once(fact(unique, value: { "x" => Float::NAN }))).to include(status: "error", retryable: false)

        daemon.control({ "op" => "set", "exec_delay_ms" => 300 })
        holder = Thread.new { daemon.request({ "op" => "ping" }) }
        sleep 0.1
        expect(client.write_fact_once(fact(unique))[:status]).to eq("rejected_before_commit")
        holder.join
      end
    end
  end

  describe "non-strict: nothing raises" do
    it "answers every call with config_error for an unusable config (TBACKEND_PORT=abc), naming the variable" do
      config = ActsAsTbackend::Config.from_env({ "TBACKEND_PORT" => "abc", "TBACKEND_REQUEST_TIMEOUT" => "-1" })
      client = ActsAsTbackend::Client.new(config)
      results = [
        client.ping, client.write_fact_once(fact(unique)), client.write_fact_once_safe(fact(unique)),
        client.latest_for(store: "specs", key: "k"), client.facts_for(store: "specs"), client.facts_by_seq(store: "specs"),
        *client.write_facts_once([fact(unique), fact(unique)])
      ]
      results.each do |result|
        expect(result).to include(ok: false, status: "config_error", retryable: false)
        expect(result[:error]).to start_with("ActsAsTbackend::ConfigurationError: ")
        expect(result[:error]).to include("TBACKEND_PORT", "abc", "TBACKEND_REQUEST_TIMEOUT")
      end
      expect(client.health).to include(ok: false, status: "config_error")
      expect(client.tail(store: "specs").poll).to eq([])
      client.shutdown
    end

    it "reads a bad TBACKEND_PORT from ENV without raising at config or call time" do
      saved = ENV.fetch("TBACKEND_PORT", nil)
      ENV["TBACKEND_PORT"] = "abc"
      ActsAsTbackend.instance_variable_set(:@config, nil)
      expect(ActsAsTbackend.client.ping).to include(status: "config_error")
      expect(ActsAsTbackend.health).to include(status: "config_error")
    ensure
      saved ? ENV["TBACKEND_PORT"] = saved : ENV.delete("TBACKEND_PORT")
    end

    context "with a daemon" do
      with_daemon

      let(:client) { client_for(daemon, request_timeout: 0.5) }

      it "answers a value it cannot send (NaN, Infinity, invalid UTF-8, oversize, bad store) " \
         "with a soft non-retryable error naming the problem, sending nothing" do
        client.ping
        before = daemon_status(daemon)["requests_received"]
        cases = {
          /NaN/ => fact(unique, value: { "total" => Float::NAN }),
          /infinit/i => fact(unique, value: [1, -Float::INFINITY]),
          /UTF-8/ => fact(unique, value: { "name" => (+"caf\xC3").force_encoding(Encoding::UTF_8) }),
          /cap|too large|bytes/i => fact(unique, value: "x" * (ActsAsTbackend::Native::DEFAULT_MAX_REQUEST_BYTES + 1)),
          /store/i => fact(unique).merge("store" => "not a store!")
        }
        cases.each do |problem, bad|
          [client.write_fact_once(bad), client.write_fact_once_safe(bad), client.write_facts_once([bad]).first].each do |r|
            expect(r).to include(ok: false, status: "error", retryable: false)
            expect(r[:error]).to match(problem)
            expect(r[:error]).to start_with("ActsAsTbackend::InvalidFact: ")
          end
        end
        expect(client.write_fact_once("not a hash")).to include(status: "error", retryable: false)
        expect(client.latest_for(store: "bad store", key: "k")).to include(status: "error", retryable: false)
        expect(daemon_status(daemon)["requests_received"]).to eq(before)
        expect(client.ping[:status]).to eq("ok")
      end

      {
        "garbage (a header announcing ~3.7 GB)" => { "kind" => "garbage" },
        "a bad CRC" => { "kind" => "bad_crc" },
        "a close before the answer" => { "kind" => "close" },
        "a close mid-frame" => { "kind" => "close_mid_frame" }
      }.each do |name, fault|
        it "answers #{name} as timeout_unknown, then works on a fresh connection" do
          expect(client.ping[:status]).to eq("ok")
          daemon.control({ "op" => "set", "answer_fault" => fault })
          elapsed, broken = timed { client.write_fact_once(fact(unique)) }
          expect(broken).to include(ok: false, status: "timeout_unknown", committed: nil, retryable: nil)
          expect(broken[:error]).to start_with("ActsAsTbackend::TimeoutError: ")
          expect(elapsed).to be < 0.45 # detected, not waited out
          id = unique
          expect(client.write_fact_once(fact(id))[:status]).to eq("committed_acked")
          expect(client.latest_for(store: "specs", key: "key:#{id}").dig(:response, :fact, :id)).to eq(id)
        end
      end

      it "answers a well-framed answer that is not a JSON object as timeout_unknown" do
        client.ping
        ["[1,2]", '"pong"', "42", "null"].each do |body|
          daemon.control({ "op" => "set", "answer_fault" => { "kind" => "garbage", "hex" => frame_hex(body) } })
          expect(client.ping).to include(ok: false, status: "timeout_unknown"), body
        end
        expect(client.ping[:status]).to eq("ok")
      end

      it "answers an answer without `ok` as error (ok false, committed and retryable nil)" do
        client.ping
        daemon.control({ "op" => "set", "answer_fault" => { "kind" => "garbage", "hex" => frame_hex('{"pong":true}') } })
        expect(client.ping).to include(ok: false, status: "error", committed: nil, retryable: nil)
      end

      it "never raises while other threads call ActsAsTbackend.reset! (calls get soft results)" do
        client_for(daemon, request_timeout: 0.5)
        stop = false
        callers = Array.new(6) do |t|
          Thread.new do
            seen = Hash.new(0)
            errors = []
            n = 0
            until stop
              n += 1
              begin
                c = ActsAsTbackend.client
                r = n.even? ? c.ping : c.write_fact_once(fact("race-#{t}-#{n}"))
                soft = r.is_a?(Hash) && TbackendSpec::ClientHelpers::SOFT_STATUSES.include?(r[:status])
                seen[soft ? r[:status] : r.inspect] += 1
              rescue Exception => e # rubocop:disable Lint/RescueException
                errors << "#{e.class}: #{e.message}"
              end
            end
            [seen, errors]
          end
        end
        resets = 0
        deadline = monotonic + 1.0
        while monotonic < deadline
          ActsAsTbackend.reset!
          resets += 1
          sleep 0.002
        end
        stop = true
        outcomes = join_all(callers, 10)
        expect(outcomes.flat_map(&:last)).to be_empty
        statuses = outcomes.map(&:first).reduce { |a, b| a.merge(b) { |_, x, y| x + y } }
        expect(statuses.keys - %w[ok committed_acked unavailable timeout_unknown]).to be_empty
        expect(statuses.fetch("ok", 0) + statuses.fetch("committed_acked", 0)).to be > 100
        expect(resets).to be > 50
        expect(ActsAsTbackend.client.ping[:status]).to eq("ok")
      end

      it "answers a call on a client that was shut down as unavailable (\"client is shut down\")" do
        old = client
        expect(old.ping[:status]).to eq("ok")
        ActsAsTbackend.reset!
        result = old.write_fact_once(fact(unique))
        expect(result).to include(ok: false, status: "unavailable", retryable: true)
        expect(result[:error]).to match(/ConnectionError: .*shut down/)
        expect(ActsAsTbackend.client.ping[:status]).to eq("ok")
      end
    end
  end
end
