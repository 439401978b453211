# frozen_string_literal: true

module TCB
  # Part of `configure`: every module with `ensure_reaction` whose outbox lives in an
  # ActiveRecord table must have that table. Without it the first TCB.record of the event
  # failed long after boot (`relation "sales_outbox" does not exist`), naming neither the
  # module nor the fix.
  #
  # The check stands aside where the table cannot be there yet and that is expected: no
  # database to ask (assets:precompile in a build, db:create), migrations pending
  # (db:migrate itself boots the app), or a `rails generate` run (the very command that
  # makes the migration boots the app too). Those cases are logged, not raised.
  module OutboxTableCheck
    module_function

    def call(outbox_stores, logger)
      outbox_stores.each do |domain_module, store|
        model = active_record_model(store)
        check(domain_module, model, logger) if model
      end
    end

    def active_record_model(store)
      return unless defined?(::ActiveRecord::Base) && store.respond_to?(:model)

      model = store.model
      model if model.is_a?(Class) && model < ::ActiveRecord::Base
    end

    def check(domain_module, model, logger)
      table = model.table_name
      model.connection_pool.with_connection do |connection|
        next if connection.data_source_exists?(table)

        if (reason = excuse(connection))
          logger.warn("[TCB] #{missing(domain_module, table)} (not raised: #{reason})")
          next
        end

        raise ConfigurationError, "#{missing(domain_module, table)}: run `bin/rails generate tcb:outbox " \
                                  "#{DomainContext.from_module(domain_module)}` and `bin/rails db:migrate`"
      end
    rescue ::ActiveRecord::ConnectionNotEstablished, ::ActiveRecord::NoDatabaseError => e
      logger.warn("[TCB] could not check the outbox table #{table} of #{domain_module}: #{e.class}: #{e.message}")
    end

    def missing(domain_module, table)
      "#{domain_module} declares ensure_reaction, but its outbox table #{table} does not exist"
    end

    def excuse(connection)
      return "a Rails generator is running" if defined?(::Rails::Generators)

      "migrations are pending" if migration_context(connection)&.needs_migration?
    end

    # Rails 7.1+ keeps the migration context on the pool; 6.1 on the connection.
    def migration_context(connection)
      pool = connection.pool
      return pool.migration_context if pool.respond_to?(:migration_context)

      connection.migration_context if connection.respond_to?(:migration_context)
    end
  end
end
