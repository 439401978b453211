# frozen_string_literal: true

require "rails/railtie"
require "yaml"
require "erb"

module ActsAsTbackend
  # Rails wiring with no app code: settings from config/tbackend.yml and
  # `config.x.tbackend`, the `acts_as_tbackend` macro on every model, log lines for the
  # notifications, and the rake tasks. Fork safety needs nothing here: the Process._fork
  # hook (fork_safety.rb) gives every Puma worker, Sidekiq process or Spring child fresh
  # connections by itself.
  #
  # Precedence, lowest first: ENV, config/tbackend.yml (the section for Rails.env),
  # `config.x.tbackend`, then config/initializers (`ActsAsTbackend.configure`).
  class Railtie < Rails::Railtie
    initializer "acts_as_tbackend.settings", before: :load_config_initializers do |app|
      Railtie.apply_settings(Railtie.settings_for(app))
      Railtie.default_store_prefix(Rails.env)
    end

    # Rails' parallel test workers (`parallelize`, forked) each get their own prefix.
    initializer "acts_as_tbackend.parallel_tests" do
      ActiveSupport.on_load(:active_support_test_case) do
        ActiveSupport::Testing::Parallelization.after_fork_hook { |worker| Railtie.parallel_worker(worker) }
      end
    end

    initializer "acts_as_tbackend.log_subscriber" do
      require "acts_as_tbackend/rails/log_subscriber"
      ActsAsTbackend::LogSubscriber.attach_to :acts_as_tbackend
    end

    initializer "acts_as_tbackend.active_record" do
      ActiveSupport.on_load(:active_record) { require "acts_as_tbackend/extension" }
    end

    # With a spool, server processes start the writer at boot, so segments left by a
    # crashed process are adopted and delivered even before this one writes anything.
    # Rake tasks, consoles, runners and generators never do: they must not start
    # delivering (or holding) another process's facts as a side effect.
    config.after_initialize do
      ActsAsTbackend.async_writer if ActsAsTbackend.config.spool_path && Railtie.server_process?
    end

    rake_tasks do
      load File.expand_path("tasks/tbackend.rake", __dir__)
    end

    class << self
      # YAML (with ERB) for the current environment, then `config.x.tbackend` on top.
      def settings_for(app)
        settings = {}
        path = app.root.join("config", "tbackend.yml")
        settings.merge!(yaml_settings(path, Rails.env)) if path.file?
        settings.merge!(x_settings(app.config.x.tbackend))
        settings
      end

      # Puma (single or cluster), `rails server`, a Sidekiq server, or any process that sets
      # TBACKEND_SERVER_PROCESS=1 (Unicorn, Passenger, a custom runner).
      def server_process?
        return ENV["TBACKEND_SERVER_PROCESS"] == "1" if ENV.key?("TBACKEND_SERVER_PROCESS")

        # Puma's program name is its executable's path at first, then its process title
        # ("puma 5.6.5 (tcp://0.0.0.0:3000) [app]", "puma: cluster worker 0: …").
        puma = File.basename($PROGRAM_NAME.split.first.to_s).start_with?("puma")
        return true if defined?(::Rails::Server) || puma

        (defined?(::Sidekiq) && ::Sidekiq.respond_to?(:server?) && ::Sidekiq.server?) || false
      end

      # Keeping environments apart: in the test environment, unless a store_prefix was
      # given (ENV, YAML, config.x; an initializer, later, wins too), stores are
      # `test_<store>`, `test<TEST_ENV_NUMBER>_<store>` under parallel_tests. Development
      # and production keep their store names: an app moving over keeps its ledgers.
      def default_store_prefix(env)
        config = ActsAsTbackend.config
        return unless env.to_s == "test" && config.store_prefix.nil?

        @default_store_prefix = "test#{ENV.fetch('TEST_ENV_NUMBER', '')}_"
        config.store_prefix = @default_store_prefix
        ActsAsTbackend.reset!
      end

      # In Rails' forked test worker `worker`: `<default>_<worker>_`, unless the prefix in
      # force is not the one default_store_prefix chose.
      def parallel_worker(worker)
        config = ActsAsTbackend.config
        return unless @default_store_prefix && config.store_prefix.equal?(@default_store_prefix)

        @default_store_prefix = "#{@default_store_prefix}#{Integer(worker)}_"
        config.store_prefix = @default_store_prefix
        ActsAsTbackend.reset!
      end

      # A bad setting does not stop the app from booting: it lands in `config.errors`,
      # so `health` (and `rake tbackend:health` in a deploy) reports `config_error`.
      def apply_settings(settings)
        return if settings.empty?

        config = ActsAsTbackend.config
        settings.each do |name, value|
          setter = :"#{name}="
          unless Config::SETTINGS.key?(name.to_sym)
            config.errors << "#{name}: unknown setting (known: #{Config::SETTINGS.keys.join(', ')})"
            next
          end
          config.public_send(setter, value)
        rescue ConfigurationError => e
          config.errors << "#{name}: #{e.message}"
        end
        ActsAsTbackend.reset!
      end

      private

      def yaml_settings(path, env)
        all = YAML.safe_load(ERB.new(path.read).result, aliases: true) || {}
        section = all.is_a?(Hash) ? all[env.to_s] : nil
        section.is_a?(Hash) ? section.transform_keys(&:to_sym) : {}
      end

      def x_settings(options)
        hash = options.respond_to?(:to_h) ? options.to_h : {}
        hash.transform_keys(&:to_sym)
      end
    end
  end
end
