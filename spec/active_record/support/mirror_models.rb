# frozen_string_literal: true

require "active_record"
require "acts_as_tbackend/extension"
require_relative "../../mirror/support/mirror_helpers"

module TbackendSpec
  # The models of the ActiveRecord mirror specs, one per macro option set, and a schema
  # rebuilt before each example on SQLite or PostgreSQL (database "mirror_specs").
  module MirrorModels
    DATABASE = "mirror_specs"
    ADAPTERS = TbackendSpec::Database::ADAPTERS

    def self.schema!
      db = ActiveRecord::Base.connection
      db.create_table(:mirror_orders, force: true) do |t|
        t.string :status
        t.integer :total
        t.timestamps
      end
      db.create_table(:mirror_notes, force: true) { |t| t.string :body }
      db.create_table(:mirror_accounts, force: true) do |t|
        %i[email password api_key token].each { |name| t.string name }
        t.timestamps
      end
      db.create_table(:mirror_widgets, force: true) do |t|
        t.string :sku
        t.boolean :mirrored, default: true
        t.boolean :archived, default: false
        t.timestamps
      end
    end

    # The model classes outlive a switch of adapter: their column types and cached find
    # statements (SQLite's `?` placeholders) must be rebuilt for the new one.
    def self.connect(adapter)
      TbackendSpec::Database.connect(adapter, database: DATABASE)
      schema!
      models.each do |model|
        model.reset_column_information
        model.initialize_find_by_cache
      end
    end

    def self.models
      constants.map { |name| const_get(name) }.select { |value| value.is_a?(Class) && value < ActiveRecord::Base }
    end

    class Order < ActiveRecord::Base
      self.table_name = "mirror_orders"
      acts_as_tbackend
    end

    # The same table without the macro: what a create costs the app without us.
    class PlainOrder < ActiveRecord::Base
      self.table_name = "mirror_orders"
    end

    # Another class on the same table, with an option set of its own (and a store of its own).
    class OnlyOrder < ActiveRecord::Base
      self.table_name = "mirror_orders"
      acts_as_tbackend store: "orders_only", only: %i[id status]
    end

    class ExceptOrder < ActiveRecord::Base
      self.table_name = "mirror_orders"
      acts_as_tbackend store: "orders_except", except: %i[created_at updated_at total]
    end

    class DurableOrder < ActiveRecord::Base
      self.table_name = "mirror_orders"
      acts_as_tbackend store: "orders_durable", durability: :durable
    end

    # A subclass that declares the macro again: its own store, callbacks not doubled.
    class SpecialOrder < Order
      acts_as_tbackend store: "special_orders"
    end

    class AsyncOrder < ActiveRecord::Base
      self.table_name = "mirror_orders"
      acts_as_tbackend store: "orders_async", async: true
    end

    class SyncOrder < ActiveRecord::Base
      self.table_name = "mirror_orders"
      acts_as_tbackend store: "orders_sync", async: false
    end

    # No updated_at: ids come from the content digest.
    class Note < ActiveRecord::Base
      self.table_name = "mirror_notes"
      acts_as_tbackend store: "notes"
    end

    class Account < ActiveRecord::Base
      self.table_name = "mirror_accounts"
      acts_as_tbackend store: "accounts", denylist: true
    end

    class EmailDeniedAccount < ActiveRecord::Base
      self.table_name = "mirror_accounts"
      acts_as_tbackend store: "accounts_listed", denylist: %w[email], only: %i[id email password]
    end

    class Widget < ActiveRecord::Base
      self.table_name = "mirror_widgets"
      acts_as_tbackend store: "widgets", key: ->(widget) { "widget:#{widget.sku}" }, if: :mirrored?, unless: -> { archived? }
    end

    class KeyedWidget < ActiveRecord::Base
      self.table_name = "mirror_widgets"
      acts_as_tbackend store: "widgets_keyed", key: :sku_key

      def sku_key
        "sku/#{sku}"
      end
    end

    # `if:` that raises: the app's save must not notice.
    class BrokenWidget < ActiveRecord::Base
      self.table_name = "mirror_widgets"
      acts_as_tbackend store: "widgets_broken", if: ->(_widget) { raise "condition bug" }
    end

    # Another record's after_commit that raises.
    class Bomb < ActiveRecord::Base
      self.table_name = "mirror_notes"
      after_commit { raise "after_commit bug" }
    end
  end
end

# `include_context "mirror model spec"` in a `context` per adapter (`adapter` names it):
# helpers, a test daemon per example (`daemon`, the client aimed at it) and the schema.
RSpec.shared_context "mirror model spec" do
  include TbackendSpec::ClientHelpers
  include TbackendSpec::MirrorHelpers

  around do |example|
    TbackendSpec::TestDaemon.with do |d|
      @daemon = d
      example.run
    end
  end

  attr_reader :daemon

  def models
    TbackendSpec::MirrorModels
  end

  before do
    TbackendSpec::MirrorModels.connect(adapter)
    client_for(daemon)
  end

  after { ActsAsTbackend.reset! }

  # Every fact of a store, in seq order. `polling: true` (inside `eventually`, while the
  # daemon comes back) answers nil for a failed read instead of raising.
  def facts_in(store, polling: false)
    answer = ActsAsTbackend.client.facts_by_seq(store: store, after_seq: 0)
    return answer[:response][:facts] if answer[:ok]
    return nil if polling

    raise "read-back failed: #{answer.inspect}"
  end

  def event_types(store)
    facts_in(store).map { |fact| fact[:causation].split(":").last }
  end
end
