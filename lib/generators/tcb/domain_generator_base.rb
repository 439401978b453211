# frozen_string_literal: true

require_relative "support"

module ActsAsTbackend
  module TcbGenerators
    # tcb:event_store and tcb:domain: a domain module with its commands, a facade method and
    # a handler per command; subclasses add persistence.
    class DomainGeneratorBase < Rails::Generators::NamedBase
      include DomainNaming

      # Subclasses share one template directory (Rails would look beside each of them).
      def self.source_root(_path = nil)
        TEMPLATES
      end

      INITIALIZER = "config/initializers/tcb.rb"

      argument :command_specs, type: :array, default: [], banner: "command:attr,attr command:attr"
      class_option :skip_domain, type: :boolean, default: false, desc: "Skip the domain module and handlers"
      class_option :comments, type: :boolean, default: true, desc: "Inline guidance comments (--no-comments)"

      def self.exit_on_failure?
        true
      end

      def create_domain_module
        return if options[:skip_domain]

        create_file "app/domain/#{domain_file_path}.rb", ruby_file(render_template("domain_module.rb.tt"))
      end

      def create_command_handlers
        return if options[:skip_domain]

        commands.each do |command|
          @command = command
          create_file "app/domain/#{domain_file_path}/#{command.handler_file_name}.rb",
                      ruby_file(render_template("command_handler.rb.tt"))
        end
      end

      # Lists the module in the initializer tcb:install wrote, where TCB wires it at boot.
      def register_in_initializer
        return if options[:skip_domain]

        initializer = File.join(destination_root, INITIALIZER)
        return unless File.exist?(initializer)
        return if File.read(initializer).match?(/^\s*#{Regexp.escape(module_name)},$/)

        inject_into_file INITIALIZER, "    #{module_name},\n", after: /TCB\.domain_modules = \[\n/
      end

      private

      attr_reader :command

      def commands
        @commands ||= command_specs.map { |spec| Command.parse(spec) }
      end

      def persistence?
        false
      end

      def example_event
        "SomethingHappened"
      end
    end
  end
end
