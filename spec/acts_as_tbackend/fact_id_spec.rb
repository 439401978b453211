# frozen_string_literal: true

require "spec_helper"
require "date"

RSpec.describe "ActsAsTbackend::Fact.derive_id" do
  def source_version(spec)
    case spec.fetch("kind")
    when "time"
      ns = spec.fetch("epoch_ns")
      Time.at(ns.div(1_000_000_000), ns % 1_000_000_000, :nsec).localtime(spec.fetch("utc_offset_s"))
    when "integer", "string", "float" then spec.fetch("value")
    when "nil" then nil
    else raise "unknown kind #{spec['kind']}"
    end
  end

  describe "the :legacy format (the 0.2 gem, byte for byte)" do
    vectors = JSON.parse(File.read(fixture_file("tbackend", "legacy_fact_ids.json"))).fetch("cases")

    it "has vectors to check" do
      expect(vectors.size).to be >= 12
    end

    vectors.each do |vector|
      it "derives #{vector.fetch('expected_id')}" do
        id = ActsAsTbackend::Fact.derive_id(
          store: vector.fetch("store"), record_id: vector.fetch("record_id"),
          event_type: vector.fetch("event_type"), source_version: source_version(vector.fetch("source_version"))
        )
        expect(id).to eq(vector.fetch("expected_id"))
      end
    end

    it "is the default format" do
      expect(ActsAsTbackend.config.id_format).to eq("legacy")
      expect(ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e", source_version: 2)).to eq("s:1:e:2")
    end

    it "ignores the time zone and truncates nanoseconds" do
      utc = Time.at(1_700_000_000, 123_456_789, :nsec).utc
      tokyo = utc.getlocal("+09:00")
      ids = [utc, tokyo].map do |t|
        ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e", source_version: t)
      end
      expect(ids).to all(eq("s:1:e:1700000000123456"))
    end

    it "treats anything with usec and to_i as a time (TimeWithZone, DateTime with ActiveSupport)" do
      stamp = Struct.new(:to_i, :usec).new(10, 5)
      expect(ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e", source_version: stamp))
        .to eq("s:1:e:10000005")
    end
  end
end
