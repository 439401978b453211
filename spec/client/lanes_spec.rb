# frozen_string_literal: true

require "spec_helper"

# Issue 3, "Connections: few, pipelined, shared by all threads": the daemon never sees
# more connections than lanes, however many threads call, and answers matched in order
# reach exactly the request they belong to.
RSpec.describe "ActsAsTbackend::Client lanes" do
  include_context "client spec"

  with_daemon

  def threads_count = 12
  def writes_per_thread = 200

  # 12 threads × 200 writes, each thread also reading back one of its own keys now and
  # then: returns [[id, write result], …] and the mismatched reads.
  def hammer(client, store)
    threads = Array.new(threads_count) do |t|
      Thread.new do
        writes = []
        wrong_reads = []
        writes_per_thread.times do |i|
          id = "lane-#{t}-#{i}"
          writes << [id, client.write_fact_once(fact(id, store: store, key: "k:#{id}"))]
          next unless (i % 10).zero?

          read = client.latest_for(store: store, key: "k:#{id}")
          wrong_reads << [id, read] unless read.dig(:response, :fact, :id) == id
        end
        [writes, wrong_reads]
      end
    end
    outcomes = join_all(threads, 60)
    [outcomes.flat_map(&:first), outcomes.flat_map(&:last)]
  end

  it "sends 12 threads × 200 writes over one daemon connection with the default config, each answer to its own request" do
    ActsAsTbackend.configure { |c| c.port = daemon.port }
    client = ActsAsTbackend.client
    expect(ActsAsTbackend.config.pool_size).to eq(1)

    writes, wrong_reads = hammer(client, "lanes")
    expect(writes.size).to eq(threads_count * writes_per_thread)
    expect(writes.map { |_, r| r[:status] }.tally).to eq("committed_acked" => threads_count * writes_per_thread)
    expect(wrong_reads).to be_empty

    status = daemon_status(daemon)
    expect(status["connections_accepted"]).to eq(1)
    expect(status["connections_open"]).to be <= 1

    seqs = writes.map { |_, r| r.dig(:response, :seq_id) }
    expect(seqs.uniq.size).to eq(seqs.size)
    by_seq = expect_writes_match_read_back(client, "lanes", writes)
    expect(by_seq.size).to eq(threads_count * writes_per_thread)
    expect(client.stats[:connections_opened]).to eq(1)
  end

  it "never opens more daemon connections than pool_size lanes (pool_size 2, 12 threads)" do
    client = client_for(daemon, pool_size: 2)
    writes, wrong_reads = hammer(client, "lanes2")
    expect(wrong_reads).to be_empty
    expect(writes.map { |_, r| r[:status] }.uniq).to eq(["committed_acked"])
    expect(daemon_status(daemon)["connections_accepted"]).to be <= 2
    expect(client.stats[:lanes].size).to eq(2)
    expect_writes_match_read_back(client, "lanes2", writes)
  end

  it "keeps a slow request on one lane from stalling calls another lane can serve" do
    client = client_for(daemon, pool_size: 2, request_timeout: 5)
    client.ping
    # A facts_by_seq over a store big enough to be slow would do; a raw `exec_delay_ms`
    # applies to every request, so hold one lane with a stalled call instead.
    daemon.control({ "op" => "set", "delay_ms" => 600 })
    slow = Thread.new { client.ping }
    sleep 0.1
    daemon.control({ "op" => "set", "delay_ms" => 0 })
    elapsed, fast = timed { client.write_fact_once(fact(unique)) }
    expect(fast[:status]).to eq("committed_acked")
    expect(elapsed).to be < 0.3
    expect(join_all([slow], 5).first[:status]).to eq("ok")
  end
end
