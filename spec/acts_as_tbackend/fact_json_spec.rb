# frozen_string_literal: true

require "spec_helper"
require "bigdecimal"
require "date"
require "open3"

RSpec.describe "ActsAsTbackend::Fact.to_json (the native JSON encoder)" do
  def encode(value, **opts)
    ActsAsTbackend::Fact.to_json(value, **opts)
  end

  it "encodes the core types natively, as the daemon reads them" do
    value = { "s" => "tëxt \"q\" \\ \n\t\u0001", :sym => :val, 1 => [1, -2, 2**70, 1.5, 10.0, -0.0, 1e20, nil, true, false],
              "nested" => { "empty" => {}, "list" => [] } }
    json = encode(value)
    expect(json.encoding).to eq(Encoding::UTF_8)
    expect(JSON.parse(json)).to eq(JSON.parse(JSON.generate(value)))
    expect(json).to include('"sym":"val"', '"1":[1,-2,1180591620717411303424,1.5,10.0,-0.0,')
  end

  it "keeps integers and floats apart (the daemon conflicts 10 with 10.0)" do
    expect(encode({ "total" => 10 })).to eq('{"total":10}')
    expect(encode({ "total" => 10.0 })).to eq('{"total":10.0}')
  end

  it "encodes any other object exactly as JSON.generate in this process does" do
    custom = Class.new do
      def to_json(*) = '{"custom":[1,2]}'
    end
    values = [Time.utc(2026, 1, 2, 3, 4, 5), Date.new(2026, 1, 2), BigDecimal("1.25"), custom.new, Struct.new(:a).new(1),
              Rational(1, 3)]
    values.each do |v|
      expect(JSON.parse(encode({ "v" => v }))).to eq(JSON.parse(JSON.generate({ "v" => v }))), v.inspect
    end
  end

  it "follows ActiveSupport's encoding when the app loads it, like the 0.2 gem's JSON.generate" do
    script = <<~RUBY
      require "active_support"
      require "active_support/core_ext/object/json"
      require "active_support/time"
      require "acts_as_tbackend"
      value = { "at" => Time.utc(2026, 1, 2, 3, 4, 5), "zone" => Time.utc(2026, 1, 2).in_time_zone("Tokyo"),
                "big" => BigDecimal("1.25"), "date" => Date.new(2026, 1, 2) }
      same = JSON.parse(ActsAsTbackend::Fact.to_json(value)) == JSON.parse(JSON.generate(value))
      puts(same ? "same" : "differs: \#{ActsAsTbackend::Fact.to_json(value)} vs \#{JSON.generate(value)}")
    RUBY
    out, status = Open3.capture2e(RbConfig.ruby, "-I", File.expand_path("../../lib", __dir__), "-e", script)
    expect(status).to be_success, out
    expect(out.strip).to eq("same")
  end

  it "rejects NaN and Infinity, naming where they are" do
    expect { encode({ "a" => [1, Float::NAN] }) }.to raise_error(ActsAsTbackend::InvalidFact, /value\["a"\]\[1\]: .*NaN/i)
    expect { encode({ "a" => -Float::INFINITY }) }.to raise_error(ActsAsTbackend::InvalidFact, /infinit/i)
    # A key is named as it was written: escaped text and a Symbol's name come back whole.
    expect { encode({ "q\"\né" => { b: Float::NAN } }) }
      .to raise_error(ActsAsTbackend::InvalidFact, /value\["q\\"\\né"\]\["b"\]: .*NaN/i)
  end

  it "rejects invalid UTF-8 and transcodes other encodings" do
    expect { encode({ "a" => "ok\xFF".dup.force_encoding("UTF-8") }) }
      .to raise_error(ActsAsTbackend::InvalidFact, /invalid UTF-8/)
    expect { encode({ "ok\xFF".dup.force_encoding("BINARY") => 1 }) }.to raise_error(ActsAsTbackend::InvalidFact)
    expect(encode("caf\xE9".dup.force_encoding("ISO-8859-1"))).to eq('"café"')
  end

  it "rejects cyclic structures instead of recursing forever" do
    cyclic = { "a" => [] }
    cyclic["a"] << cyclic
    expect { encode(cyclic) }.to raise_error(ActsAsTbackend::InvalidFact, /cyclic/)
  end

  it "allows the same object twice when it is not a cycle" do
    shared = { "x" => 1 }
    expect(encode([shared, shared])).to eq('[{"x":1},{"x":1}]')
  end

  it "rejects nesting deeper than 100 levels" do
    deep = 101.times.reduce(1) { |inner, _| [inner] }
    expect { encode(deep) }.to raise_error(ActsAsTbackend::InvalidFact, /nested deeper/)
  end

  it "rejects values over the size cap before anything is sent" do
    expect { encode({ "blob" => "x" * 2000 }, max_bytes: 1024) }.to raise_error(ActsAsTbackend::InvalidFact, /1024 bytes/)
    expect(encode({ "blob" => "x" * 1000 }, max_bytes: 1024).bytesize).to be < 1024
  end

  it "turns an error raised by a foreign to_json into a clear InvalidFact" do
    broken = Class.new do
      def to_json(*) = raise(IOError, "nope")
    end
    expect { encode({ "v" => broken.new }) }.to raise_error(ActsAsTbackend::InvalidFact, /cannot be encoded as JSON: nope/)
    liar = Class.new do
      def to_json(*) = "{not json"
    end
    expect { encode({ "v" => liar.new }) }.to raise_error(ActsAsTbackend::InvalidFact, /invalid JSON/)
  end
end
