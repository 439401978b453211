# frozen_string_literal: true

require_relative "store_helpers"

module JsonCodecSpec
  KeywordStruct = Struct.new(:id, :tags, keyword_init: true)
  PositionalStruct = Struct.new(:id, :amount)
  Money = Struct.new(:cents, :currency, keyword_init: true)

  # Keyword initializer, attributes from to_h.
  class KeywordEvent
    attr_reader :id, :price

    def initialize(id:, price: nil)
      @id = id
      @price = price
    end

    def to_h
      { id: id, price: price }
    end

    def ==(other)
      other.class == self.class && other.to_h == to_h
    end
  end

  # Positional initializer, no to_h: attributes are its instance variables.
  class PositionalEvent
    attr_reader :id, :note

    def initialize(id, note = nil)
      @id = id
      @note = note
    end

    def ==(other)
      other.class == self.class && [other.id, other.note] == [id, note]
    end
  end

  # No initializer arguments at all: restored through its instance variables.
  class BareEvent
    attr_accessor :id

    def ==(other)
      other.class == self.class && other.id == id
    end
  end

  Renamed = Struct.new(:id, :full_name, :currency, keyword_init: true)
end

RSpec.describe TCB::EventStore::JsonCodec do
  subject(:codec) { described_class.new }

  def round_trip(event)
    dumped = JSON.parse(JSON.generate(codec.dump(event)))
    codec.load(dumped["type"], dumped["schema_version"], dumped["data"])
  end

  before do
    [JsonCodecSpec::KeywordStruct, JsonCodecSpec::PositionalStruct, JsonCodecSpec::Money, JsonCodecSpec::KeywordEvent,
     JsonCodecSpec::PositionalEvent, JsonCodecSpec::BareEvent].each { |klass| codec.register(klass) }
  end

  it "dumps the type, the schema version and JSON data" do
    expect(codec.dump(JsonCodecSpec::PositionalStruct.new("a", 3)))
      .to eq("type" => "JsonCodecSpec::PositionalStruct", "schema_version" => 1, "data" => { "id" => "a", "amount" => 3 })
  end

  it "reads back keyword and positional Structs, keyword and positional classes, and bare objects" do
    bare = JsonCodecSpec::BareEvent.new.tap { |event| event.id = 7 }
    [
      JsonCodecSpec::KeywordStruct.new(id: 1, tags: %w[a b]),
      JsonCodecSpec::PositionalStruct.new("x", 2.5),
      JsonCodecSpec::KeywordEvent.new(id: "k", price: nil),
      JsonCodecSpec::PositionalEvent.new("p", "fragile"),
      bare
    ].each { |event| expect(round_trip(event)).to eq(event) }
  end

  it "keeps the Ruby types JSON has no type for, at any depth" do
    values = {
      "symbol" => :eur, "time" => Time.at(1_780_000_000, 123_456_789, :nsec).utc,
      "zoned" => Time.new(2026, 1, 2, 3, 4, 5, "+02:00"),
      "date" => Date.new(2026, 2, 28), "datetime" => DateTime.new(2026, 2, 28, 10, 30, 15.5r),
      "decimal" => BigDecimal("1234567890.0123456789"), "symbol_keys" => { a: 1, 2 => [:b] },
      "tag_lookalike" => { "$tcb" => "sym", "v" => "not a symbol" }, "nested" => [{ "deep" => [Date.new(2026, 1, 1)] }]
    }
    event = JsonCodecSpec::KeywordStruct.new(id: 1, tags: values)

    back = round_trip(event)

    expect(back).to eq(event)
    expect(back.tags["time"].nsec).to eq(123_456_789)
    expect(back.tags["decimal"]).to be_a(BigDecimal)
    expect(back.tags["tag_lookalike"]).to eq("$tcb" => "sym", "v" => "not a symbol")
  end

  it "carries nested objects of registered classes" do
    event = JsonCodecSpec::KeywordEvent.new(id: 1, price: JsonCodecSpec::Money.new(cents: 995, currency: :eur))

    expect(round_trip(event)).to eq(event)
  end

  it "refuses to write an unregistered event class or nested object, naming it" do
    expect { codec.dump(JsonCodecSpec::Renamed.new(id: 1)) }
      .to raise_error(described_class::UnknownType, /cannot serialize JsonCodecSpec::Renamed: it is not a registered event class/)
    expect { codec.dump(JsonCodecSpec::KeywordEvent.new(id: 1, price: Object.new)) }
      .to raise_error(described_class::UnknownType, /cannot serialize a Object inside an event/)
  end

  it "refuses to read a type nobody registered, instead of resolving any constant" do
    expect { codec.load("Kernel", 1, {}) }.to raise_error(described_class::UnknownType, /"Kernel" is not registered/)
  end

  it "refuses a type name registered for another class" do
    expect { codec.register(JsonCodecSpec::Renamed, type: "JsonCodecSpec::Money") }
      .to raise_error(ArgumentError, /already registered for JsonCodecSpec::Money/)
    expect { codec.register(Struct.new(:a)) }.to raise_error(ArgumentError, /anonymous/)
  end

  describe "schema versions" do
    before do
      codec.register(JsonCodecSpec::Renamed, schema_version: 3)
      codec.upcast(JsonCodecSpec::Renamed.name, from: 1) { |data| { "id" => data["id"], "full_name" => data["name"] } }
      codec.upcast(JsonCodecSpec::Renamed.name, from: 2) { |data| data.merge("currency" => "EUR") }
    end

    it "writes the registered version and upcasts older data step by step" do
      expect(codec.dump(JsonCodecSpec::Renamed.new(id: 1, full_name: "A", currency: "USD"))["schema_version"]).to eq(3)
      expect(codec.load("JsonCodecSpec::Renamed", 1, { "id" => 1, "name" => "Ada" }))
        .to eq(JsonCodecSpec::Renamed.new(id: 1, full_name: "Ada", currency: "EUR"))
      expect(codec.load("JsonCodecSpec::Renamed", 2, { id: 2, full_name: "Bo" }))
        .to eq(JsonCodecSpec::Renamed.new(id: 2, full_name: "Bo", currency: "EUR"))
    end

    it "upcasts nested objects from the version they were written at" do
      event = JsonCodecSpec::KeywordEvent.new(id: 1, price: JsonCodecSpec::Money.new(cents: 5))
      written = JSON.parse(JSON.generate(codec.dump(event)))
      codec.register(JsonCodecSpec::Money, schema_version: 2, type: "JsonCodecSpec::Money")
      codec.upcast("JsonCodecSpec::Money", from: 1) { |data| data.merge("currency" => "EUR") }

      expect(codec.load(written["type"], written["schema_version"], written["data"]).price)
        .to eq(JsonCodecSpec::Money.new(cents: 5, currency: "EUR"))
    end

    it "refuses data newer than the code, and a gap in the upcasters" do
      expect do
        codec.load("JsonCodecSpec::Renamed", 4, {})
      end.to raise_error(described_class::UnknownType, /newer than the registered 3/)
      codec.register(JsonCodecSpec::PositionalStruct, schema_version: 2)
      expect { codec.load("JsonCodecSpec::PositionalStruct", 1, {}) }
        .to raise_error(described_class::UnknownType, /no upcaster for JsonCodecSpec::PositionalStruct from schema_version 1/)
    end
  end
end
