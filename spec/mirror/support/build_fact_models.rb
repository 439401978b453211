# frozen_string_literal: true

require "active_record"

module TbackendSpec
  # The records of spec/mirror/build_fact_native_spec.rb: ActiveRecord models of every
  # shape the mirror must tell `updated_at` and `valid_time` on, and a plain object that
  # answers respond_to? through respond_to_missing?.
  module BuildFactModels
    PAYLOAD = { "b" => 1, "a" => [{ "z" => 1.5, "y" => nil }, "x"], "c" => { "k" => [true, false] } }.freeze
    VIRTUAL_VALID_TIME = "'2026-07-03' AS valid_time"

    class Item < ActiveRecord::Base
      self.table_name = "bf_items"
    end

    # No updated_at: ids from the content digest.
    class Note < ActiveRecord::Base
      self.table_name = "bf_notes"
    end

    # A valid_time column.
    class Event < ActiveRecord::Base
      self.table_name = "bf_events"
    end

    class AliasedItem < ActiveRecord::Base
      self.table_name = "bf_items"
      alias_attribute :valid_time, :created_at
    end

    class TimedItem < ActiveRecord::Base
      self.table_name = "bf_items"
      def valid_time = created_at
    end

    class PrivateTimeItem < ActiveRecord::Base
      self.table_name = "bf_items"

      private

      def valid_time = created_at
    end

    # Its own respond_to?: the mirror must ask it.
    class ShyItem < ActiveRecord::Base
      self.table_name = "bf_items"
      def respond_to?(name, include_all = false) = name.to_s == "updated_at" ? false : super # rubocop:disable Style/OptionalBooleanParameter
    end

    # Its own updated_at reader over the column.
    class PinnedItem < ActiveRecord::Base
      self.table_name = "bf_items"
      def updated_at = Time.utc(2000, 1, 2, 3, 4, 5, 678_901)
    end

    # Answers respond_to? through respond_to_missing?, as OpenStruct does.
    class DynamicRecord
      def initialize(fields)
        @fields = fields
      end

      def respond_to_missing?(name, include_all = false) = @fields.key?(name) || super

      def method_missing(name, *args)
        @fields.key?(name) ? @fields.fetch(name) : super
      end
    end

    def self.schema!
      db = ActiveRecord::Base.connection
      db.create_table(:bf_items, force: true) { |t| item_columns(t) }
      db.create_table(:bf_notes, force: true) do |t|
        t.string :body
        t.json :payload
      end
      db.create_table(:bf_events, force: true) do |t|
        t.string :name
        t.datetime :valid_time
        t.timestamps
      end
      constants.map { |name| const_get(name) }.select { |c| c.is_a?(Class) && c < ActiveRecord::Base }
               .each(&:reset_column_information)
    end

    def self.item_columns(table)
      table.string :name
      table.decimal :total, precision: 12, scale: 3
      table.integer :qty
      table.float :ratio
      table.boolean :flag
      table.date :born_on
      table.json :payload
      table.string :password
      table.string :api_key
      table.timestamps
    end
  end
end
