# frozen_string_literal: true

require_relative "tcb_helper"

RSpec.describe "TCB loading and naming" do
  it "is a real module whose own name is TCB, and names modules nested in it from that name" do
    expect(TCB).to be_an_instance_of(Module)
    expect(TCB.name).to eq("TCB")
    stub_const("TCB::Billing", Module.new)
    expect(TCB::DomainContext.from_module(TCB::Billing).to_s).to eq("tcb/billing")
    expect(TCB::VERSION).to eq("0.6.2")
  end

  it "refuses to load over another TCB, naming where that one comes from" do
    out, status = run_ruby(<<~RUBY)
      module TCB; end # stands in for the tcb gem
      begin
        require "acts_as_tbackend/tcb"
      rescue LoadError => e
        puts e.message
        exit 3
      end
    RUBY
    expect(status.exitstatus).to eq(3), out
    expect(out).to include("TCB is already defined by -e:1").and include("tcb gem")
  end

  describe TCB::DomainContext do
    it "underscores CamelCase, keeps acronyms one word and joins namespaces with /" do
      {
        "Payments::Charges" => "payments/charges",
        "HTTPGateway" => "http_gateway",
        "Billing::HTTPGateway::V2Hooks" => "billing/http_gateway/v2_hooks",
        "OrderV2" => "order_v2",
        "Orders" => "orders"
      }.each do |name, context|
        stub_const(name, Module.new)
        expect(described_class.from_module(Object.const_get(name)).to_s).to eq(context), name
      end
    end

    it "derives table names with the documented separators and suffixes" do
      stub_const("Payments::Charges", Module.new)
      context = described_class.from_module(Payments::Charges)
      expect([context.table_prefix, context.events_table, context.outbox_table, context.domain_module])
        .to eq(["payments__charges", "payments__charges_events", "payments__charges_outbox", Payments::Charges])
      expect([described_class::NAMESPACE_SEPARATOR, described_class::TABLE_SEPARATOR, described_class::TABLE_SUFFIX,
              described_class::OUTBOX_SUFFIX]).to eq(["/", "__", "_events", "_outbox"])
    end

    it "rejects anonymous modules, which have no stable name" do
      expect { described_class.from_module(Module.new) }.to raise_error(ArgumentError, /anonymous/)
    end
  end

  describe TCB::StreamId do
    it "builds, parses on the first | and prints context|id" do
      stream = described_class.build("orders", 42)
      expect([stream.context, stream.id, stream.to_s]).to eq(["orders", "42", "orders|42"])
      parsed = described_class.parse("orders|a|b")
      expect([parsed.context, parsed.id]).to eq(%w[orders a|b])
      expect(described_class.parse("orders|42")).to eq(stream)
    end

    it "builds from a domain module" do
      stub_const("HTTPGateway", Module.new)
      expect(described_class.build(HTTPGateway, "x").to_s).to eq("http_gateway|x")
    end

    it "raises ArgumentError on an empty or missing part" do
      ["|42", "orders|", "orders", ""].each do |bad|
        expect { described_class.parse(bad) }.to raise_error(ArgumentError), bad
      end
    end
  end

  describe TCB::Envelope do
    let(:event_class) { Struct.new(:email, :version) }

    it "wraps an event with a new UUID, a UTC time and no stream" do
      envelope = described_class.wrap(event_class.new("a@example.com", 3), correlation_id: "c", causation_id: "k")
      expect(envelope.event_id).to match(/\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/)
      expect(envelope.occurred_at).to be_utc
      expect([envelope.stream_id, envelope.version, envelope.correlation_id, envelope.causation_id]).to eq([nil, nil, "c", "k"])
      expect(described_class.wrap(envelope)).to be(envelope)
    end

    it "is equal to another envelope only with the same event_id, even for equal events" do
      event = event_class.new("a@example.com", 1)
      first = described_class.wrap(event)
      second = described_class.wrap(event)
      expect(first).not_to eq(second)
      expect([first, second].uniq.size).to eq(2)
      same = described_class.new(**first.to_h)
      expect(same).to eq(first)
      expect(same.hash).to eq(first.hash)
    end

    it "answers the event's readers, so README-style block handlers (|event| event.email) work" do
      envelope = described_class.wrap(event_class.new("a@example.com", 7))
      expect(envelope.email).to eq("a@example.com")
      expect(envelope).to respond_to(:email)
      expect(envelope.version).to be_nil # its own fields win
      expect { envelope.nope }.to raise_error(NoMethodError)
      expect(Array(envelope)).to eq([envelope]) # conversions are not delegated
      expect(envelope).not_to respond_to(:to_a)
    end
  end

  it "handles events and commands that are Structs or plain classes (Ruby 3.1 has no Data)" do
    plain_event = Class.new do
      attr_reader :id

      def initialize(id) = @id = id
      def ==(other) = other.class == self.class && other.id == id
    end
    stub_const("Shop::ItemAdded", plain_event)
    stub_const("Shop::Add", Struct.new(:id) { def validate! = nil })
    handler = Class.new { def call(command) = TCB.publish(*TCB.record(events: [Shop::ItemAdded.new(command.id)])) }
    stub_const("Shop::AddHandler", handler)
    Shop.include(TCB::Domain)
    Shop.persist(Shop.events(Shop::ItemAdded, stream_id_from_event: :id))
    Shop.handle(Shop::Add, Shop.with(Shop::AddHandler))
    configure_tcb(Shop)

    expect { TCB.dispatch(Shop::Add.new(7)) }.to have_published(Shop::ItemAdded.new(7))
    expect(TCB.read(Shop).stream(7).to_a.map(&:event)).to eq([Shop::ItemAdded.new(7)])
  end
end
