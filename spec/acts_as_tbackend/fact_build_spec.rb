# frozen_string_literal: true

require "spec_helper"
require "open3"
require "date"
require "bigdecimal"

RSpec.describe "ActsAsTbackend::Fact.build" do
  let(:base) { { id: "orders:1:create:1", store: "orders", key: "orders:1", value: { "status" => "open" } } }

  def build(**overrides)
    ActsAsTbackend::Fact.build(**base, **overrides)
  end

  it "returns a String-keyed Hash in the 0.2 gem's shape, optional fields only when given" do
    fact = build(transaction_time: 100)
    expect(fact).to eq("id" => "orders:1:create:1", "store" => "orders", "key" => "orders:1",
                       "value" => { "status" => "open" }, "transaction_time" => 100.0, "schema_version" => 1)
    expect(fact.keys).to eq(%w[id store key value transaction_time schema_version])
  end

  it "adds valid_time, causation and producer when given, with store and key as strings" do
    fact = build(store: :orders, key: 42, valid_time: 5, causation: "cmd-1", producer: "rails", schema_version: 3)
    expect(fact).to include("store" => "orders", "key" => "42", "valid_time" => 5.0, "causation" => "cmd-1",
                            "producer" => "rails", "schema_version" => 3)
    expect(fact.keys.last(3)).to eq(%w[valid_time causation producer])
  end

  it "stamps transaction_time with now when none is given" do
    before = Time.now.to_f
    stamped = build.fetch("transaction_time")
    expect(stamped).to be_a(Float).and be_between(before - 1, Time.now.to_f + 1)
  end

  describe "valid_time (0.2 turned a String into garbage and raised on a Date)" do
    it "accepts Time, DateTime, Date, Numeric and ISO-8601 Strings" do
      at = Time.utc(2026, 7, 3, 10, 0, 0.5r)
      expected = at.to_f
      inputs = [at, at.getlocal("+03:00"), DateTime.new(2026, 7, 3, 13, 0, 0.5r, "+03:00"), expected,
                Rational(at.to_r), BigDecimal(at.to_r, 20), "2026-07-03T10:00:00.5Z", "2026-07-03T12:00:00.500+02:00",
                "2026-07-03 10:00:00.5z"]
      inputs.each do |input|
        expect(build(valid_time: input).fetch("valid_time")).to be_within(1e-6).of(expected), input.inspect
      end
    end

    it "reads a Date (and a date-only String) as midnight UTC, whatever the machine's zone" do
      midnight = Time.utc(2026, 7, 3).to_f
      expect(build(valid_time: Date.new(2026, 7, 3)).fetch("valid_time")).to eq(midnight)
      expect(build(valid_time: "2026-07-03").fetch("valid_time")).to eq(midnight)
    end

    it "accepts a Time in a plain Ruby process that never loaded the date library" do
      script = <<~RUBY
        require "acts_as_tbackend"
        abort "date is loaded" if defined?(Date)
        print ActsAsTbackend::Fact.build(id: "i", store: "s", key: "k", value: {}, valid_time: Time.at(100.5))["valid_time"]
      RUBY
      out, status = Open3.capture2e(RbConfig.ruby, "-I", File.expand_path("../../lib", __dir__), "-e", script)
      expect(status).to be_success, out
      expect(out).to eq("100.5")
    end

    it "reads a DateTime without a deprecation warning from ActiveSupport 7.2's to_time" do
      script = <<~RUBY
        require "active_support"
        require "active_support/time"
        require "acts_as_tbackend"
        at = DateTime.new(2026, 7, 3, 13, 0, 0.5r, "+03:00")
        print ActsAsTbackend::Fact.build(id: "i", store: "s", key: "k", value: {}, valid_time: at)["valid_time"]
      RUBY
      out, status = Open3.capture2e(RbConfig.ruby, "-I", File.expand_path("../../lib", __dir__), "-e", script)
      expect(status).to be_success, out
      expect(out).to eq(Time.utc(2026, 7, 3, 10, 0, 0.5r).to_f.to_s)
    end

    it "raises a clear ArgumentError for anything else" do
      ["yesterday", "2026-07-03T10:00:00", "2026-02-30", Float::NAN, Float::INFINITY, Object.new, [1]].each do |bad|
        expect { build(valid_time: bad) }.to raise_error(ActsAsTbackend::InvalidFact, /valid_time/), bad.inspect
      end
      expect(ActsAsTbackend::InvalidFact.ancestors).to include(ArgumentError)
    end

    it "applies the same rules to transaction_time" do
      expect(build(transaction_time: "1970-01-01T00:01:40Z").fetch("transaction_time")).to eq(100.0)
      expect { build(transaction_time: "soon") }.to raise_error(ActsAsTbackend::InvalidFact, /transaction_time/)
    end
  end

  describe "store names" do
    it "refuses names the daemon would reject or silently fail to persist" do
      ["", "has space", "dot.name", "slash/name", "ünï", "a:b", "x" * 201].each do |bad|
        expect { build(store: bad) }.to raise_error(ActsAsTbackend::InvalidFact, /store/i), bad.inspect
      end
    end

    it "accepts letters, digits, underscore and dash up to 200 bytes" do
      %w[orders Orders-v2 spark_lead_signals 0].push("x" * 200).each do |good|
        expect(build(store: good).fetch("store")).to eq(good)
        expect(ActsAsTbackend::Fact.validate_store_name!(good)).to be(true)
      end
    end
  end

  it "refuses schema versions outside 0..4294967295 and non-String ids" do
    expect { build(schema_version: -1) }.to raise_error(ActsAsTbackend::InvalidFact, /schema_version/)
    expect { build(schema_version: 2**32) }.to raise_error(ActsAsTbackend::InvalidFact, /schema_version/)
    expect { build(id: 5) }.to raise_error(ActsAsTbackend::InvalidFact, /id must be a String/)
  end
end
