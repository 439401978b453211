# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 3, "Tests": the daemon is SIGKILLed and restarted (same port, same data) while 12
# threads write. Every call returns a soft result, service resumes by itself, and a
# write_fact_once_safe retry of every id settles it exactly once.
RSpec.describe "ActsAsTbackend::Client across a daemon kill and restart" do
  include_context "client spec"

  it "returns soft results during the outage, recovers by itself, and a safe retry stores every id exactly once" do
    Dir.mktmpdir("tbackend-restart") do |dir|
      TbackendSpec::TestDaemon.with(data_dir: dir) do |d|
        client = client_for(d, request_timeout: 0.5, breaker_cooldown: 0.3)
        expect(client.ping[:status]).to eq("ok")
        stop = false
        writers = Array.new(12) do |t|
          Thread.new do
            results = []
            raised = []
            i = 0
            until stop || i >= 2_000
              id = "restart-#{t}-#{i}"
              i += 1
              begin
                results << [id, client.write_fact_once(fact(id, store: "restart"))]
              rescue Exception => e # rubocop:disable Lint/RescueException
                raised << "#{e.class}: #{e.message}"
              end
              sleep 0.001
            end
            [results, raised]
          end
        end

        sleep 0.3
        d.kill!
        sleep 0.4
        d.restart
        # Service resumes with no help: no reset!, no reconnect call.
        resumed = eventually(5) { client.ping[:status] == "ok" }
        sleep 0.2
        stop = true
        outcomes = join_all(writers, 30)
        expect(resumed).to be(true), "no ok ping within 5 s of the restart: #{client.stats.inspect}"

        raised = outcomes.flat_map(&:last)
        expect(raised).to be_empty
        results = outcomes.flat_map(&:first)
        results.each { |_, r| expect_soft_result(r) }
        tally = results.map { |_, r| r[:status] }.tally
        expect(tally.keys - %w[committed_acked unavailable timeout_unknown circuit_open]).to be_empty, tally.inspect
        expect(tally["committed_acked"]).to be > 100
        expect(tally.values_at("unavailable", "timeout_unknown", "circuit_open").compact.sum).to be > 0, tally.inspect

        acked = results.select { |_, r| r[:status] == "committed_acked" }
        acked_before = acked.to_h.transform_values { |r| r.dig(:response, :seq_id) }
        settled = results.map do |id, _|
          [id, client.write_fact_once_safe(fact(id, store: "restart"), attempts: 5, backoff: 0.02)]
        end
        expect(settled.map { |_, r| r[:status] }.uniq - %w[committed_acked idempotent_replay]).to be_empty
        # A fact acknowledged before the kill survived it: its retry is a replay of the same seq.
        settled.each do |id, r|
          next unless acked_before.key?(id)

          expect(r).to include(status: "idempotent_replay")
          expect(r.dig(:response, :seq_id)).to eq(acked_before[id])
        end

        by_seq = expect_writes_match_read_back(client, "restart", settled)
        expect(by_seq.values.sort).to eq(results.map(&:first).sort)
      end
    end
  end
end
