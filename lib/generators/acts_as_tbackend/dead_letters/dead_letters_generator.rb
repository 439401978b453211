# frozen_string_literal: true

require "rails/generators"
require "rails/generators/active_record"

module ActsAsTbackend
  module Generators
    # `bin/rails generate acts_as_tbackend:dead_letters`: the tbackend_dead_letters table.
    # With it, MirrorRetryJob keeps the facts it gives up in the app's database — one place
    # for every host and worker — instead of a file on the host that gave up;
    # `rake tbackend:dead_letters` lists and replays both.
    class DeadLettersGenerator < Rails::Generators::Base
      include ::ActiveRecord::Generators::Migration

      source_root File.expand_path("templates", __dir__)

      def create_migration_file
        migration_template "migration.rb.tt", "db/migrate/create_tbackend_dead_letters.rb"
      end

      private

      def migration_version
        "[#{::ActiveRecord::VERSION::MAJOR}.#{::ActiveRecord::VERSION::MINOR}]"
      end
    end
  end
end
