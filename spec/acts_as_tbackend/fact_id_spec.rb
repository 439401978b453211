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

    it "writes an Integer id as Integer#to_s does (in C for a Fixnum) and asks one an app redefined" do
      ids = [0, -7, (2**62) - 1, 2**62, -(2**64)].map do |id|
        ActsAsTbackend::Fact.derive_id(store: "s", record_id: id, event_type: "e", source_version: 1)
      end
      expect(ids).to eq(["s:0:e:1", "s:-7:e:1", "s:#{(2**62) - 1}:e:1", "s:#{2**62}:e:1", "s:#{-(2**64)}:e:1"])
      expect(in_fork("v") { Integer.class_eval { def to_s(*) = "n" } }).to eq("s:n:e:v")
    end

    # The id of record 1 for `source_version`, derived in a child after `change`, so that
    # a redefinition dies with the child.
    def in_fork(source_version, &change)
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        change.call
        writer.write(ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e",
                                                    source_version: source_version))
        writer.close
        exit!(0)
      end
      writer.close
      Process.wait(pid)
      reader.read
    ensure
      reader&.close
    end

    # A plain Time is read in C (issue 13); these pin that it reads what to_i and usec say.
    describe "a Time's microseconds" do
      def version_of(time)
        ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e", source_version: time)
                            .delete_prefix("s:1:e:")
      end

      it "floor as to_i and usec do, before 1970 and below a nanosecond too" do
        times = [Time.at(-1, 500_000, :usec), Time.at(Rational(-3, 2)), Time.at(Rational(1, 3)),
                 Time.at(1_700_000_000, Rational(1_999_999, 1000), :nsec), Time.at(0), Time.at(-86_401, 1, :nsec),
                 Time.at(253_402_300_799, 999_999_999, :nsec).utc, Time.at(1_700_000_000.25).getlocal("-03:30")]
        expect(times.map { |t| version_of(t) }).to eq(times.map { |t| ((t.to_i * 1_000_000) + t.usec).to_s })
        expect(version_of(Time.at(Rational(-3, 2)))).to eq("-1500000")
      end

      it "asks a subclass of Time" do
        stamp = Class.new(Time) { def usec = 7 }.at(10, 5, :usec)
        expect(version_of(stamp)).to eq("10000007")
      end

      it "asks Time itself once an app redefines usec" do
        expect(in_fork(Time.at(10, 5, :usec)) { Time.class_eval { def usec = 7 } }).to eq("s:1:e:10000007")
      end
    end
  end
end
