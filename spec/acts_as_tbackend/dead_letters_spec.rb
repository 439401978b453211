# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 10: the dead-letter file is written by MirrorRetryJob, by the native async writer
# (beside the spool) and rewritten by a replay, in several processes at once; nothing
# appended while a replay rewrites it may be lost.
RSpec.describe ActsAsTbackend::DeadLetters do
  around do |example|
    Dir.mktmpdir("tbackend-dead-letters") do |dir|
      @dir = dir
      example.run
    end
  end

  def config(**settings)
    ActsAsTbackend::Config.new.tap { |c| settings.each { |name, value| c.public_send(:"#{name}=", value) } }
  end

  def keep(id, config)
    fact = ActsAsTbackend::Fact.build(id: id, store: "dl", key: "k", value: { "id" => id })
    described_class.record(fact, status: "duplicate_fact_id_conflict", error: nil, attempts: 1, reason: "conflict",
                                 config: config)
  end

  it "keeps the file beside the spool by default, else dead_letter_path, else tmp/tbackend under the app" do
    expect(described_class.path(config(spool_path: "/s"))).to eq("/s/dead-letter.jsonl")
    expect(described_class.path(config(spool_path: "/s", dead_letter_path: "/d.jsonl"))).to eq("/d.jsonl")
    expect(described_class.paths(config(spool_path: "/s", dead_letter_path: "/d.jsonl")))
      .to eq(["/d.jsonl", "/s/dead-letter.jsonl"])
    expect(described_class.path(config)).to eq(File.join(Dir.pwd, "tmp/tbackend/dead-letter.jsonl"))
  end

  it "loses no append made while a replay rewrites the file (appends and the rewrite share a flock)" do
    cfg = config(dead_letter_path: File.join(@dir, "nested", "dead-letter.jsonl"))
    200.times { |i| keep("old-#{i}", cfg) }
    writers = Array.new(4) do |t|
      Thread.new { 100.times { |i| keep("new-#{t}-#{i}", cfg) } }
    end
    olds = described_class.entries(cfg).select { |e| e.record["id"].start_with?("old-") }
    olds.each_slice(10) { |slice| described_class.remove(slice) }
    writers.each(&:join)

    ids = described_class.entries(cfg).map { |e| e.record["id"] }
    expect(ids.grep(/\Aold-/)).to eq([])
    expect(ids.grep(/\Anew-/).size).to eq(400)
    expect(File.stat(cfg.dead_letter_path).mode & 0o777).to eq(0o600)
  end

  it "never lists, replays or removes a torn line" do
    cfg = config(dead_letter_path: File.join(@dir, "dead-letter.jsonl"))
    keep("whole", cfg)
    File.write(cfg.dead_letter_path, "{\"id\":\"tor", mode: "a")
    entries = described_class.entries(cfg)
    expect(entries.map { |e| e.record["id"] }).to eq(["whole"])
    described_class.remove(entries)
    expect(File.read(cfg.dead_letter_path)).to eq("{\"id\":\"tor\n")
  end
end
