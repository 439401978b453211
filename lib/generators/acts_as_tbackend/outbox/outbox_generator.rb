# frozen_string_literal: true

require "rails/generators"
require "rails/generators/active_record"

module ActsAsTbackend
  module Generators
    # `bin/rails generate acts_as_tbackend:outbox`: an app-owned outbox — a table written in
    # the same transaction as the business rows, its model, and a job that flushes due
    # intents through OutboxFlusher with backoff, an attempt limit and a dead letter.
    class OutboxGenerator < Rails::Generators::Base
      include ::ActiveRecord::Generators::Migration

      source_root File.expand_path("templates", __dir__)

      class_option :table, type: :string, default: "tbackend_outbox_intents", desc: "Table name"

      def create_migration_file
        migration_template "migration.rb.tt", "db/migrate/create_#{table_name}.rb"
      end

      def create_model
        template "model.rb.tt", "app/models/#{model_name.underscore}.rb"
      end

      def create_job
        template "job.rb.tt", "app/jobs/#{model_name.underscore.sub(/_intent\z/, '')}_flush_job.rb"
      end

      private

      def table_name
        options[:table]
      end

      def model_name
        table_name.singularize.camelize
      end

      def job_name
        "#{model_name.sub(/Intent\z/, '')}FlushJob"
      end

      # Decided here, not in the generated code: `rails new --minimal` apps have no
      # ApplicationJob, and the job must load there.
      def job_parent_class
        File.exist?(File.join(destination_root, "app/jobs/application_job.rb")) ? "ApplicationJob" : "ActiveJob::Base"
      end

      def migration_version
        "[#{::ActiveRecord::VERSION::MAJOR}.#{::ActiveRecord::VERSION::MINOR}]"
      end
    end
  end
end
