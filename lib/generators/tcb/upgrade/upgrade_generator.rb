# frozen_string_literal: true

require_relative "../support"

module ActsAsTbackend
  module TcbGenerators
    # `rails g tcb:upgrade payments/charges`: the optional migration for tables made by tcb
    # 0.6.2's generators. The stores work on those tables as they are; this adds the columns
    # tcb lacked (events: schema_version, created_at; outbox: attempts, next_attempt_at).
    class UpgradeGenerator < Rails::Generators::NamedBase
      include DomainNaming
      include Numbering

      namespace "tcb:upgrade"
      source_root TEMPLATES
      desc "Adds the columns tcb 0.6.2's tables lack (schema versions, outbox backoff). Optional."

      class_option :comments, type: :boolean, default: true, desc: "Inline guidance comments (--no-comments)"

      def self.exit_on_failure?
        true
      end

      def create_upgrade_migration
        migration_template "upgrade_migration.rb.tt", "db/migrate/upgrade_#{table_prefix}_tcb_tables.rb"
      end

      private

      def events_table
        "#{table_prefix}_events"
      end

      def outbox_table
        "#{table_prefix}_outbox"
      end

      # index_name's table.
      def table_name
        outbox_table
      end
    end
  end
end
