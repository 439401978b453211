# frozen_string_literal: true

require "open3"

module TbackendSpec
  # Real databases for the ActiveRecord specs: SQLite in memory, and PostgreSQL from
  # Debian's server via bin/test-postgres (this checkout's private cluster, see the
  # script), unless TBACKEND_PG_URL points at one already. Specs call `Database.connect(:sqlite)` or
  # `Database.connect(:postgresql, database: "mirror")` in a before block; each suite area
  # passes its own database name so their tables never collide. The connection is
  # process-wide (ActiveRecord::Base): a spec that switches adapters switches everyone's.
  module Database
    ROOT = File.expand_path("../..", __dir__)

    module_function

    ADAPTERS = %i[sqlite postgresql].freeze

    # The URL of database `name` on the test cluster, created on first use.
    def postgres_url(name = "acts_as_tbackend_test")
      @postgres_urls ||= {}
      @postgres_urls[name] ||= begin
        base = ENV.fetch("TBACKEND_PG_URL") { start_postgres }
        create_database(base, name)
        base.sub(%r{/[^/]*\z}, "/#{name}")
      end
    end

    def start_postgres
      out, status = Open3.capture2e(File.join(ROOT, "bin", "test-postgres"))
      raise "bin/test-postgres failed:\n#{out}" unless status.success?

      out.lines.last.strip
    end

    def create_database(base_url, name)
      require "pg"
      PG.connect(base_url).tap do |conn|
        exists = conn.exec_params("SELECT 1 FROM pg_database WHERE datname = $1", [name]).ntuples.positive?
        conn.exec("CREATE DATABASE #{conn.quote_ident(name)}") unless exists
      rescue PG::DuplicateDatabase
        nil # another process created it first
      ensure
        conn.close
      end
    end

    # `database:` names the PostgreSQL database (SQLite is always a fresh in-memory one
    # per connection).
    def config_for(adapter, database: "acts_as_tbackend_test")
      case adapter.to_sym
      when :sqlite then { adapter: "sqlite3", database: ":memory:" }
      when :postgresql then { adapter: "postgresql", url: postgres_url(database), pool: 40 }
      else raise ArgumentError, "unknown adapter #{adapter.inspect}"
      end
    end

    def connect(adapter, database: "acts_as_tbackend_test")
      require "active_record"
      key = [adapter.to_sym, database]
      return ActiveRecord::Base.connection if @current == key && ActiveRecord::Base.connected?

      ActiveRecord::Base.establish_connection(config_for(adapter, database: database))
      @current = key
      ActiveRecord::Base.connection
    end
  end
end
