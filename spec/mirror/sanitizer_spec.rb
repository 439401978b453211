# frozen_string_literal: true

require "spec_helper"

RSpec.describe ActsAsTbackend::Sanitizer do
  let(:attributes) do
    { id: 1, "status" => "new", total: 10, password: "p", "api_key" => "k", token: "t", note: "n" }
  end

  it "stringifies top-level keys and returns a new Hash, leaving the input alone" do
    input = { id: 1, nested: { inner: 1 } }
    out = described_class.call(input)
    expect(out).to eq("id" => 1, "nested" => { inner: 1 })
    expect(out).not_to equal(input)
    expect(input).to eq(id: 1, nested: { inner: 1 })
  end

  it "keeps only the `only` keys (Symbols or Strings)" do
    expect(described_class.call(attributes, only: [:status, "total"])).to eq("status" => "new", "total" => 10)
  end

  it "drops the `except` keys" do
    expect(described_class.call(attributes, except: %i[password api_key token note total]))
      .to eq("id" => 1, "status" => "new")
  end

  it "lets `only` win over `except`" do
    expect(described_class.call(attributes, only: %i[status note], except: %i[status])).to eq("status" => "new", "note" => "n")
  end

  it "applies the default denylist for `denylist: true`, after `only`" do
    out = described_class.call(attributes, only: %i[status password api_key], denylist: true)
    expect(out).to eq("status" => "new")
    expect(described_class.call(attributes, denylist: true).keys).to eq(%w[id status total note])
  end

  it "names the 0.2 default denylist" do
    expect(described_class::DEFAULT_DENYLIST).to eq(
      %w[password password_confirmation encrypted_password token access_token api_key secret secret_key]
    )
  end

  it "takes an Array as the denylist" do
    expect(described_class.call(attributes, except: %i[password api_key token], denylist: [:note, "total"]))
      .to eq("id" => 1, "status" => "new")
  end

  it "drops nothing for denylist nil or false" do
    expect(described_class.call(attributes, denylist: false).size).to eq(attributes.size)
    expect(described_class.call(attributes, denylist: nil).size).to eq(attributes.size)
  end
end
