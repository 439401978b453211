# frozen_string_literal: true

require "spec_helper"
require "bigdecimal"
require "date"
require_relative "../mirror/support/mirror_helpers"
require_relative "../mirror/support/ruby_build_fact"

# The native record fact (src/record.rs) and the native writing of non-core values
# (src/json.rs), in this file so `rake spec:gc_stress` runs them with a GC at every
# allocation: a Ruby object they hold while calling back into Ruby must survive it.
# spec/mirror/build_fact_native_spec.rb compares them with the Ruby original at length.
RSpec.describe "ActsAsTbackend::Mirror.build_fact and Fact.to_json, native (GC-safe)" do
  include TbackendSpec::MirrorHelpers

  let(:at) { Time.at(1_780_387_174, 123_456_789, :nsec) }

  def same_fact(record, **options)
    native = ActsAsTbackend::Mirror.build_fact(record: record, **options)
    ruby = TbackendSpec::RubyBuildFact.build_fact(record: record, **options)
    expect(native.except("transaction_time")).to eq(ruby.except("transaction_time"))
    expect(native.keys).to eq(ruby.keys)
    native
  end

  it "builds the Ruby original's fact: sanitized, digested, keyed, tombstoned" do
    nested = { z: [{ b: 1, a: Date.new(2024, 2, 29) }], "y" => BigDecimal("1.5"), x: Time.at(0).utc }
    record = plain_record(1, { id: 1, "status" => "s", password: "p", nested: nested })
    same_fact(record, store: "s", event_type: "create", denylist: true, only: [:id, "nested", 7])
    same_fact(timed_record([7, "x:y"], { "a" => 1, :b => 2 }, at), store: :s, event_type: :update, except: :b, key: 42)
    same_fact(valid_time_record(2, [[:a, 1]], nil, "2026-07-03"), store: "s", event_type: "destroy", tombstone: true)
  end

  it "writes Time, Date, DateTime, BigDecimal and Rational as JSON.generate does" do
    values = [at, at.getlocal("-03:30"), Date.new(2024, 2, 29), DateTime.new(2026, 1, 2, 3, 4, 5.5r, "+05:45"),
              BigDecimal("-1e-30"), Rational(1, 3)]
    expect(ActsAsTbackend::Fact.to_json({ "v" => values })).to eq(JSON.generate({ "v" => values }))
  end
end
