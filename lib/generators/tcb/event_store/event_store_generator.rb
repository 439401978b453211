# frozen_string_literal: true

require_relative "../domain_generator_base"

module ActsAsTbackend
  module TcbGenerators
    # `rails g tcb:event_store payments/charges capture:charge_id,amount`: the domain module,
    # its command handlers and the migration of its event table.
    class EventStoreGenerator < DomainGeneratorBase
      include Numbering

      namespace "tcb:event_store"
      desc "Creates a TCB domain module with persisted events: module, command handlers, events migration."

      class_option :skip_migration, type: :boolean, default: false, desc: "Skip the events migration"

      def create_events_migration
        return if options[:skip_migration]

        migration_template "events_migration.rb.tt", "db/migrate/create_#{table_name}.rb"
      end

      private

      def persistence?
        true
      end

      def table_name
        "#{table_prefix}_events"
      end
    end
  end
end
