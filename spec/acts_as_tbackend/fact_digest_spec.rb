# frozen_string_literal: true

require "spec_helper"
require "digest"

RSpec.describe "ActsAsTbackend::Fact.derive_id format: :digest" do
  def digest_id(**args)
    ActsAsTbackend::Fact.derive_id(format: :digest, **args)
  end

  # The README's specification, written independently of the native code.
  def reference(store, parts, event_type, token)
    field = lambda { |s|
      s = s.to_s.encode("UTF-8")
      [s.bytesize].pack("Q>") + s.b
    }
    msg = "acts_as_tbackend/fact-id/v1\0".b + field.call(store) + field.call(event_type) + field.call(token) +
          [parts.size].pack("Q>") + parts.map(&field).join.b
    "tbf1-#{Digest::SHA256.hexdigest(msg)}"
  end

  # [store, record_id, event_type, source_version, expected id]: the README's vectors,
  # reached from the Ruby values an app passes.
  vectors = [
    ["orders", 42, "order.accepted", Time.at(1_780_387_174, 500_000_000, :nsec),
     "tbf1-ded3880e79f03a235bb6d0d3e9c5ecc4ee618f7e5119f1ab583f889c06ceb84d"],
    ["orders", "a:b", "create", Time.at(100), "tbf1-ec3584d9f65edcf01562f1fb5539c58fef45a5a7f9118d444a219fba8923d9c3"],
    ["orders", "a", "b:create", Time.at(100), "tbf1-121f2279f060c3bb9d3b77d2e19677aa5bce88bb5556ce80376c74a1f2d1a0cf"],
    ["orders", %w[a b], "create", Time.at(100), "tbf1-78e862c1054bc1d076183a48af5eb70e18d36a59ff43d7fa581b6bdb508526af"],
    ["s", 1, "e", Time.at(-2, 500_000_000, :nsec), "tbf1-0b4468f6a8eb402a9c9da53b6df9a91dbb1bb6772ce0cabf0e913fccab7fe9dd"],
    ["orders", 42, "update", nil, "tbf1-e04d7d9e580f441d0e66bc6ce9f14ffb293fa2d12823e2d39d1eda10208e970e"],
    ["orders", 42, "update", 17, "tbf1-346ba16deb3bbb3e9e497c152440698a070bed6d99956cfe3e631b12222118ce"],
    ["Orders-v2", "ключ/ü", "créé", "2026-07-03T10:00:00Z",
     "tbf1-56b3e66415691f8201320449423517f950ff716bee574560fbec0c40cb87d2a6"],
    ["line_items", [1, 2], "update", Time.at(1_780_387_174, 123_456_789, :nsec),
     "tbf1-9a828fd89c4d5cdb1f5f750eb1f12cf3bd951d39381f636a8dd5357fee9e28f8"]
  ]

  vectors.each do |store, record_id, event_type, version, expected|
    it "derives #{expected} for #{store}/#{record_id.inspect}/#{event_type}" do
      expect(digest_id(store: store, record_id: record_id, event_type: event_type, source_version: version))
        .to eq(expected)
    end
  end

  it "matches the README's Ruby specification" do
    expect(digest_id(store: "orders", record_id: [7, "x:y"], event_type: "e", source_version: 3))
      .to eq(reference("orders", %w[7 x:y], "e", "3"))
  end

  it "has a fixed length and tells apart what the legacy join confuses" do
    ids = [["a:b", "create"], ["a", "b:create"], [%w[a b], "create"]].map do |record_id, event|
      digest_id(store: "orders", record_id: record_id, event_type: event, source_version: 1)
    end
    expect(ids.uniq.size).to eq(3)
    expect(ids.map(&:size).uniq).to eq([69])
  end

  it "is independent of the time zone" do
    t = Time.at(1_700_000_000, 5, :usec)
    ids = [t.utc, t.getlocal("-08:00")].map { |v| digest_id(store: "s", record_id: 1, event_type: "e", source_version: v) }
    expect(ids.uniq.size).to eq(1)
  end

  it "is chosen by config.id_format when no format: is given" do
    ActsAsTbackend.configure { |c| c.id_format = :digest }
    expect(ActsAsTbackend::Fact.derive_id(store: "orders", record_id: 42, event_type: "update", source_version: 17))
      .to eq("tbf1-346ba16deb3bbb3e9e497c152440698a070bed6d99956cfe3e631b12222118ce")
    expect(ActsAsTbackend::Fact.derive_id(store: "orders", record_id: 42, event_type: "update", source_version: 17,
                                          format: :legacy)).to eq("orders:42:update:17")
  end

  it "refuses an unknown format" do
    expect { ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e", source_version: 1, format: :md5) }
      .to raise_error(ArgumentError)
  end
end
