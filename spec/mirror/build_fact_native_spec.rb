# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_helpers"
require_relative "support/ruby_build_fact"
require_relative "support/build_fact_models"

# Mirror.build_fact is one native call (src/record.rs) that must build exactly the fact
# its Ruby original built (spec/mirror/support/ruby_build_fact.rb): same id, key, value,
# valid_time, causation and producer, the same error where that raised, for ActiveRecord
# records of every shape (columns left out by `select`, a virtual valid_time, overridden
# readers, respond_to? or valid_time methods) and for plain objects, under many option
# sets and both id formats.
RSpec.describe "ActsAsTbackend::Mirror.build_fact (native) against its Ruby original" do
  include TbackendSpec::MirrorHelpers

  def active_records
    models = TbackendSpec::BuildFactModels
    item = models::Item.create!(name: "item", total: "19.995", qty: 3, ratio: 0.25, flag: true,
                                born_on: Date.new(2024, 2, 29), payload: models::PAYLOAD, password: "p", api_key: "k")
    models::Note.create!(body: "note", payload: models::PAYLOAD)
    models::Event.create!(name: "timed", valid_time: Time.utc(2026, 5, 6, 7, 8, 9))
    models::Event.create!(name: "untimed")
    virtual = models::VIRTUAL_VALID_TIME
    [item, models::Item.new(name: "unsaved"), models::Item.select(:id, :name).first,
     models::Item.select("*", virtual).first, models::Item.select(:id, :name, virtual).first,
     models::Note.first, models::Note.select(:id).first, *models::Event.all, models::Event.select(:id, :updated_at).first,
     models::AliasedItem.first, models::TimedItem.first, models::PrivateTimeItem.first, models::ShyItem.first,
     models::PinnedItem.first, models::PinnedItem.select(:id).first]
  end

  def plain_records
    at = Time.at(1_780_387_174, 123_456_789, :nsec)
    [plain_record(1, { id: 1, "status" => "new", password: "x", nested: { b: 1, a: [{ d: 1, c: 2 }] } }),
     plain_record([7, "x:y"], { "a" => 1 }),
     plain_record(2, [[:status, "pairs"], ["total", 2]]),
     plain_record(3, { 1 => "integer key", nil => "nil key", status: "s" }),
     timed_record(4, { "a" => 1 }, at), timed_record(5, { "a" => 1 }, nil), timed_record(6, { "a" => 1 }, 17),
     timed_record(7, { "a" => 1 }, "v2"), timed_record(8, { "a" => 1 }, DateTime.new(2026, 1, 2, 3, 4, 5.5r, "+02:00")),
     valid_time_record(9, { "a" => 1 }, at, 100), valid_time_record(10, { "a" => 1 }, at, "2026-07-03"),
     valid_time_record(11, { "a" => 1 }, at, "not a time"),
     dynamic(id: 12, attributes: { "a" => Float::NAN }),
     dynamic(id: 13, attributes: { "a" => 1 }, updated_at: at, valid_time: Date.new(2026, 1, 1)),
     plain_record(14, nil), plain_record(15, 42)]
  end

  def dynamic(**fields)
    TbackendSpec::BuildFactModels::DynamicRecord.new(fields)
  end

  options = {
    only: [nil, [:name], "name", %w[id name total payload], :body, [:id, "payload", 1], [], %i[status a]],
    except: [nil, %i[created_at updated_at], "payload", [:password, nil]],
    denylist: [nil, true, false, %w[name], :api_key],
    tombstone: [false, true, nil],
    valid_time: [nil, 5, "2026-01-01T00:00:00Z", false, Time.utc(2026, 1, 1), "garbage"],
    key: [nil, "custom", :sym, 42, false],
    store: ["items", :items_sym, "bad name!"],
    event_type: ["create", :update]
  }.freeze
  define_method(:option_sets) do |count, rng|
    Array.new(count) { options.transform_values { |choices| choices[rng.rand(choices.size)] } }
  end

  # The fact without its transaction_time (the wall clock), with its key order and its
  # value's; or the error (its message without what error_highlight adds: the line).
  def outcome
    fact = yield
    [fact.except("transaction_time"), fact.keys, fact["value"].keys]
  rescue StandardError => e
    [e.class, e.message.lines.first]
  end

  def expect_same(records, sets)
    compared = 0
    %w[legacy digest].each do |format|
      ActsAsTbackend.config.id_format = format
      records.each do |record|
        sets.each do |options|
          native = outcome { ActsAsTbackend::Mirror.build_fact(record: record, **options) }
          ruby = outcome { TbackendSpec::RubyBuildFact.build_fact(record: record, **options) }
          expect(native).to eq(ruby), "#{format} #{record.inspect} #{options.inspect}"
          compared += 1
        end
      end
    end
    compared
  end

  TbackendSpec::Database::ADAPTERS.each do |adapter|
    context "ActiveRecord records on #{adapter}" do
      before do
        TbackendSpec::Database.connect(adapter, database: "build_fact_specs")
        TbackendSpec::BuildFactModels.schema!
        ActsAsTbackend.config.producer = "shop"
      end

      it "build the same fact (or raise the same error) as the Ruby original did" do
        seed = Random.new_seed % 1_000_000
        records = active_records
        expect(expect_same(records, option_sets(40, Random.new(seed)))).to eq(records.size * 80), "seed #{seed}"
      end

      it "build it without asking the record respond_to? for updated_at or valid_time" do
        record = active_records.first
        asked = []
        trace = TracePoint.new(:call) { |tp| asked << tp.method_id if tp.method_id == :respond_to? && tp.self.equal?(record) }
        fact = trace.enable { ActsAsTbackend::Mirror.build_fact(record: record, store: "items", event_type: "create") }
        expect(asked).to eq([])
        expect(fact["id"]).to eq(TbackendSpec::RubyBuildFact.build_fact(record: record, store: "items",
                                                                        event_type: "create")["id"])
      end

      it "tell valid_time right after a column is added to a model already mirrored" do
        record = active_records.first
        ActsAsTbackend::Mirror.build_fact(record: record, store: "items", event_type: "create")
        items = TbackendSpec::BuildFactModels::Item
        ActiveRecord::Base.connection.add_column(:bf_items, :valid_time, :datetime)
        items.reset_column_information
        items.update_all(valid_time: Time.utc(2030, 1, 1))
        fact = ActsAsTbackend::Mirror.build_fact(record: items.first, store: "items", event_type: "create")
        expect(fact["valid_time"]).to eq(Time.utc(2030, 1, 1).to_f)
      end
    end
  end

  it "builds the same fact as the Ruby original for plain objects" do
    seed = Random.new_seed % 1_000_000
    records = plain_records
    expect(expect_same(records, option_sets(60, Random.new(seed)))).to eq(records.size * 120), "seed #{seed}"
  end

  it "sanitizes as the Ruby original, for every kind of list" do
    attributes = { id: 1, "status" => "new", 1 => "one", nil => "nil", password: "p", token: "t" }
    lists = [nil, false, true, [], [:status], "status", :id, [1], [nil], 1, [:status, "id", 1], %w[password], { id: 1 }]
    lists.product(lists, lists).each do |only, except, denylist|
      expect(ActsAsTbackend::Sanitizer.call(attributes, only: only, except: except, denylist: denylist))
        .to eq(TbackendSpec::RubyBuildFact.sanitize(attributes, only: only, except: except, denylist: denylist)),
            [only, except, denylist].inspect
    end
  end
end
