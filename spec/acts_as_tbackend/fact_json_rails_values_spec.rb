# frozen_string_literal: true

require "spec_helper"
require "open3"

# A record's Rails values (Time, ActiveSupport::TimeWithZone, Date, DateTime, BigDecimal)
# are not JSON core types: JSON.generate writes each as the JSON String of its `to_s`
# (json's own Object#to_json; ActiveSupport's to_json hands JSON.generate's calls back to
# it, so `as_json` and ActiveSupport's time settings never apply). The native encoder
# writes them so itself, without JSON.generate and the re-parse of its answer. Each
# example runs in a process of its own with ActiveSupport loaded, as in a Rails app, so
# what one redefines cannot leak into another.
RSpec.describe "ActsAsTbackend::Fact.to_json of Rails values" do
  lib = File.expand_path("../../lib", __dir__)
  identity = File.expand_path("support/json_identity.rb", __dir__)
  prelude = <<~RUBY
    require "active_support"
    require "active_support/core_ext/object/json"
    require "active_support/time"
    require "bigdecimal"
    require "acts_as_tbackend"
    Time.zone = "Tokyo"
    VALUES = [Time.utc(2026, 1, 2, 3, 4, 5.25r), Time.at(0).localtime("-03:30"), Time.zone.local(2024, 2, 29, 23, 59, 59),
              Time.utc(2026, 1, 2).in_time_zone("UTC"), Date.new(2024, 2, 29), DateTime.new(2026, 1, 2, 3, 4, 5, "+05:45"),
              BigDecimal("19.99"), BigDecimal("-1e-30")].freeze
    def same?(value) = ActsAsTbackend::Fact.to_json(value) == JSON.generate(value)
  RUBY

  define_method(:run_ruby) do |script|
    out, status = Open3.capture2e(RbConfig.ruby, "-I", lib, "-e", "#{prelude}\n#{script}")
    expect(status).to be_success, out
    out.lines.map(&:chomp)
  end

  it "writes them byte for byte as JSON.generate does, over random and edge values, whatever ActiveSupport's " \
     "use_standard_json_time_format and time_precision" do
    seed = Random.new_seed % 1_000_000
    out, status = Open3.capture2e(RbConfig.ruby, "-I", lib, identity, seed.to_s, "3000")
    expect(status).to be_success, out
    expect(out.strip).to eq("checked 6000"), "seed #{seed}: #{out}"
  end

  it "writes them without calling JSON.generate, to_json or as_json" do
    out = run_ruby(<<~RUBY)
      calls = []
      trace = TracePoint.new(:call, :c_call) do |tp|
        next unless %i[generate to_json as_json].include?(tp.method_id)

        calls << tp.method_id unless tp.defined_class == ActsAsTbackend::Fact.singleton_class
      end
      json = trace.enable { ActsAsTbackend::Fact.to_json({ "values" => VALUES }) }
      puts calls.inspect, json == JSON.generate({ "values" => VALUES })
    RUBY
    expect(out).to eq(["[]", "true"])
  end

  it "keeps an app's to_json override of one of them (JSON.generate calls it)" do
    out = run_ruby(<<~RUBY)
      class BigDecimal
        def to_json(*) = to_f.to_s
      end
      ActiveSupport::TimeWithZone.prepend(Module.new { def to_json(*) = %("zoned \#{utc.to_i}") })
      puts ActsAsTbackend::Fact.to_json([BigDecimal("19.99"), Time.zone.at(5), Time.at(5).utc])
      puts VALUES.all? { |value| same?(value) }
    RUBY
    expect(out).to eq(['[19.99,"zoned 5","1970-01-01 00:00:05 UTC"]', "true"])
  end

  it "keeps an app's to_s and Rails' Time::DATE_FORMATS[:default], read on every call as JSON.generate does" do
    out = run_ruby(<<~RUBY)
      first = ActsAsTbackend::Fact.to_json(VALUES)
      Time::DATE_FORMATS[:default] = "%d/%m/%Y %H:%M"
      Date::DATE_FORMATS[:default] = "%e %b %Y"
      class BigDecimal
        def to_s(*) = "decimal"
      end
      second = ActsAsTbackend::Fact.to_json(VALUES)
      puts first != second, second.include?('"decimal"'), second == JSON.generate(VALUES)
    RUBY
    expect(out).to eq(%w[true true true])
  end

  it "leaves a to_s that is not printable ASCII to JSON.generate, whose escaping and errors apply" do
    out = run_ruby(<<~'RUBY')
      class Date
        def to_s(*) = "caf\u00e9\n\u0001\"\\"
      end
      puts ActsAsTbackend::Fact.to_json(Date.new(2026, 1, 2)) == JSON.generate(Date.new(2026, 1, 2))
      class Date
        def to_s(*) = "bad \xff".dup.force_encoding("UTF-8")
      end
      begin
        ActsAsTbackend::Fact.to_json(Date.new(2026, 1, 2))
      rescue ActsAsTbackend::InvalidFact => e
        puts e.class
      end
    RUBY
    expect(out).to eq(%w[true ActsAsTbackend::InvalidFact])
  end

  it "asks JSON.generate when it is not json's own (Oj's mimic mode replaces it)" do
    out = run_ruby(<<~RUBY)
      module JSON
        def self.generate(*) = '"mimic"'
      end
      puts ActsAsTbackend::Fact.to_json([Time.at(0).utc, BigDecimal("1")])
    RUBY
    expect(out).to eq(['["mimic","mimic"]'])
  end
end
