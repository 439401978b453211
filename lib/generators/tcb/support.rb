# frozen_string_literal: true

require "rails/generators"
require "rails/generators/named_base"
require "rails/generators/migration"
require "active_support/core_ext/string/inflections"
require "digest"
require "erb"

module ActsAsTbackend
  # The `tcb:*` Rails generators (tcb 0.6.2's, fixed). They live outside the TCB namespace on
  # purpose: loading a generator must never define `TCB` ahead of the runtime, whose own
  # name the runtime checks.
  module TcbGenerators
    TEMPLATES = File.expand_path("templates", __dir__)

    # A command from the command line, `place_order:order_id,customer`.
    class Command
      IDENTIFIER = /\A[a-z_][a-z0-9_]*\z/i

      attr_reader :name, :attributes

      def self.parse(argument)
        name, list = argument.to_s.split(":", 2)
        raise Thor::Error, "invalid command #{argument.inspect}: expected name:attr,attr" unless name&.match?(IDENTIFIER)

        attributes = list.to_s.split(",").map(&:strip).reject(&:empty?)
        bad = attributes.grep_v(IDENTIFIER)
        raise Thor::Error, "invalid attribute #{bad.first.inspect} in #{argument.inspect}" if bad.any?

        new(name.underscore, attributes)
      end

      def initialize(name, attributes)
        @name = name
        @attributes = attributes
      end

      def class_name
        name.camelize
      end

      def handler_class_name
        "#{class_name}Handler"
      end

      def handler_file_name
        "#{name}_handler"
      end

      def facade_method
        "#{name}!"
      end

      # `order_id:, customer:` for the facade's signature.
      def keyword_parameters
        attributes.map { |a| "#{a}:" }.join(", ")
      end

      # `order_id: order_id, customer: customer` for the command's constructor.
      def keyword_arguments
        attributes.map { |a| "#{a}: #{a}" }.join(", ")
      end
    end

    # What every generator taking a domain module NAME derives from it. NAME may be given
    # as `payments/charges` or `Payments::Charges`; a CamelCase name keeps its acronyms
    # (`HTTPGateway`), a lower-case one is camelized.
    module DomainNaming
      def module_name
        @module_name ||= name.split(%r{::|/}).map { |part| part.match?(/\A[A-Z]/) ? part : part.camelize }.join("::")
      end

      def module_parts
        module_name.split("::")
      end

      # The TCB context: `::` → `/`, acronym-aware underscore (`HTTPGateway` → `http_gateway`),
      # exactly as TCB::DomainContext derives it from the module at run time.
      def tcb_context
        module_name.underscore
      end

      def table_prefix
        tcb_context.gsub("/", "__")
      end

      def domain_file_path
        tcb_context
      end

      # `module A` … `module B` around `body`, each level indented by two spaces.
      def wrap_in_modules(body, parts = module_parts)
        lines = body.lines
        parts.reverse_each do |part|
          lines = ["module #{part}\n", *lines.map { |l| l.strip.empty? ? "\n" : "  #{l}" }, "end\n"]
        end
        lines.join
      end

      # Data.define where the generating Ruby has it (3.2+); keyword Structs elsewhere.
      def value_class(attributes)
        symbols = attributes.map { |a| ":#{a}" }
        return "Class.new" if symbols.empty? && !data_available?

        if data_available?
          "Data.define(#{symbols.join(', ')})"
        else
          "Struct.new(#{[*symbols, 'keyword_init: true'].join(', ')})"
        end
      end

      def data_available?
        defined?(::Data) && ::Data.respond_to?(:define)
      end

      # `command.order_id`, or a placeholder for a command without attributes.
      def example_source(command)
        command.attributes.empty? ? "..." : "command.#{command.attributes.first}"
      end

      def comments?
        options.fetch(:comments, true)
      end

      # PostgreSQL cuts identifiers at 63 bytes: a long context gets a digest so that its
      # index names stay valid and distinct.
      def index_name(suffix)
        name = "index_#{table_name}_#{suffix}"
        name.bytesize <= 63 ? name : "index_#{Digest::SHA256.hexdigest(table_name)[0, 16]}_#{suffix}"
      end

      # Decided at generation time, so the generated code stays plain: `rails new
      # --minimal` apps have no ApplicationJob, and the job must load there too.
      def job_parent_class
        File.exist?(File.join(destination_root, "app/jobs/application_job.rb")) ? "ApplicationJob" : "ActiveJob::Base"
      end

      def render_template(template)
        ERB.new(File.read(File.join(TEMPLATES, template)), trim_mode: "-").result(binding)
      end

      # A Ruby source file: the magic comment, then `body` inside the module's namespace
      # (or inside `parts`).
      def ruby_file(body, parts = module_parts)
        "# frozen_string_literal: true\n\n#{wrap_in_modules(body, parts)}"
      end
    end

    # Migrations numbered like ActiveRecord's (UTC timestamps, strictly increasing within
    # one run) without loading ActiveRecord into the generator.
    module Numbering
      def self.included(base)
        base.include Rails::Generators::Migration
        base.extend ClassMethods
      end

      # The hook Rails::Generators::Migration expects of its includer.
      module ClassMethods
        def next_migration_number(dirname)
          [Time.now.utc.strftime("%Y%m%d%H%M%S").to_i, current_migration_number(dirname) + 1].max.to_s
        end
      end

      def migration_version
        require "active_record"
        "[#{::ActiveRecord::Migration.current_version}]"
      end
    end
  end
end
