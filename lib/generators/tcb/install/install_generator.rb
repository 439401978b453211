# frozen_string_literal: true

require_relative "../support"

module ActsAsTbackend
  module TcbGenerators
    # `rails g tcb:install`: config/initializers/tcb.rb.
    class InstallGenerator < Rails::Generators::Base
      namespace "tcb:install"
      source_root TEMPLATES
      desc "Creates config/initializers/tcb.rb, which wires TCB at boot and after every reload."

      class_option :comments, type: :boolean, default: true, desc: "Inline guidance comments (--no-comments)"

      def self.exit_on_failure?
        true
      end

      def create_initializer
        template "initializer.rb.tt", "config/initializers/tcb.rb"
      end

      private

      def comments?
        options.fetch(:comments, true)
      end
    end
  end
end
