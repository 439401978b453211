# frozen_string_literal: true

require "spec_helper"
require_relative "support/mirror_models"

# Options are checked when the model class loads, so a typo fails at boot, not on the
# first write in production.
RSpec.describe "acts_as_tbackend: macro options" do
  include_context "mirror model spec"
  let(:adapter) { :sqlite }

  def model(**options)
    Class.new(ActiveRecord::Base) do
      self.table_name = "mirror_orders"
      acts_as_tbackend(**options)
    end
  end

  it "is installed on ActiveRecord::Base by acts_as_tbackend/extension" do
    expect(ActiveRecord::Base).to respond_to(:acts_as_tbackend)
  end

  it "rejects an unknown option, a bad store name, a bad durability and a key/if that cannot be called" do
    expect { model(stor: "x") }.to raise_error(ArgumentError, /unknown option\(s\) :stor/)
    expect { model(store: "bad name!") }.to raise_error(ArgumentError)
    expect { model(durability: "fsync") }.to raise_error(ArgumentError, /durability/)
    expect { model(key: 42) }.to raise_error(ArgumentError, /key/)
    expect { model(if: 1) }.to raise_error(ArgumentError, /if/)
  end

  it "defaults the store to the table name and takes durability as a Symbol" do
    klass = model(durability: :durable)
    expect(klass.tbackend_options.store).to eq("mirror_orders")
    expect(klass.tbackend_options.durability).to eq("durable")
  end

  it "needs every `if:` of an Array, and no `unless:` of one" do
    klass = model(store: "conditions", if: [-> { status != "draft" }, ->(o) { o.total.to_i.positive? }],
                  unless: [:archived_status?])
    klass.define_method(:archived_status?) { status == "archived" }
    klass.create!(status: "draft", total: 1)
    klass.create!(status: "open", total: 0)
    klass.create!(status: "archived", total: 1)
    klass.create!(status: "open", total: 1)
    expect(facts_in("conditions").map { |f| f[:value][:status] }).to eq(["open"])
  end

  it "sends valid_time when the model has one" do
    klass = model(store: "valid_times")
    klass.define_method(:valid_time) { Time.utc(2026, 7, 3) }
    klass.create!(status: "x")
    expect(facts_in("valid_times").first[:valid_time]).to eq(Time.utc(2026, 7, 3).to_f)
  end
end
