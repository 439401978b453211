# frozen_string_literal: true

require_relative "../support"

module ActsAsTbackend
  module TcbGenerators
    # `rails g tcb:outbox payments/charges`: the outbox table of a domain module and the job
    # that relays it.
    class OutboxGenerator < Rails::Generators::NamedBase
      include DomainNaming
      include Numbering

      namespace "tcb:outbox"
      source_root TEMPLATES
      desc "Creates the outbox migration and relay job of a TCB domain module."

      class_option :skip_migration, type: :boolean, default: false, desc: "Skip the outbox migration"
      class_option :comments, type: :boolean, default: true, desc: "Inline guidance comments (--no-comments)"

      def self.exit_on_failure?
        true
      end

      def create_outbox_migration
        return if options[:skip_migration]

        migration_template "outbox_migration.rb.tt", "db/migrate/create_#{table_name}.rb"
      end

      # tcb 0.6.2's job name and path (`invoicing` → InvoicingOutboxJob in
      # app/jobs/invoicing_outbox_job.rb, `payments/charges` → Payments::ChargesOutboxJob), so
      # regenerating over a tcb app replaces its job instead of adding a second one.
      def create_relay_job
        create_file "app/jobs/#{domain_file_path}_outbox_job.rb",
                    ruby_file(render_template("outbox_relay_job.rb.tt"), module_parts[0...-1])
      end

      private

      def table_name
        "#{table_prefix}_outbox"
      end

      def job_class_name
        "#{module_name}OutboxJob"
      end

      def job_class_basename
        "#{module_parts.last}OutboxJob"
      end
    end
  end
end
