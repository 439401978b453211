# frozen_string_literal: true

require "spec_helper"
require "acts_as_tbackend/tcb"
require "acts_as_tbackend/tcb/lint"
require "acts_as_tbackend/tcb/event_store/json_codec"
require "active_record"
require "tmpdir"

# Connections of the store specs live on abstract classes of their own (the stores take
# `base_class:`), so these specs never switch ActiveRecord::Base under other suites.
module TcbStoresSpec
  PG_DATABASE = "tcb_stores"

  class SqliteRecord < ActiveRecord::Base
    self.abstract_class = true
  end

  # A file database: every thread gets its own connection, as in a real app.
  class SqliteFileRecord < ActiveRecord::Base
    self.abstract_class = true
  end

  class PgRecord < ActiveRecord::Base
    self.abstract_class = true
  end

  module_function

  # `connected?` is no guide: an abstract class without a connection of its own answers
  # for ActiveRecord::Base's (another suite's in-memory SQLite, say) until it has one.
  def connect(base_class)
    @connected ||= {}
    return base_class.connection if @connected[base_class] && base_class.connected?

    config = case base_class.name
             when "TcbStoresSpec::SqliteRecord" then TbackendSpec::Database.config_for(:sqlite)
             when "TcbStoresSpec::SqliteFileRecord"
               { adapter: "sqlite3", database: File.join(Dir.mktmpdir("tcb-stores"), "stores.sqlite3"), pool: 10,
                 timeout: 10_000 }
             else TbackendSpec::Database.config_for(:postgresql, database: PG_DATABASE)
             end
    base_class.establish_connection(config)
    @connected[base_class] = true
    base_class.connection
  end

  # Fresh tables for `modules` (events and/or outbox) on `base_class`'s database.
  def create_tables(base_class, modules, events: true, outbox: true)
    connection = connect(base_class)
    modules.each do |mod|
      context = TCB::DomainContext.from_module(mod)
      if events
        connection.drop_table(context.events_table, if_exists: true)
        TCB::EventStore::ActiveRecord.create_table(mod, connection: connection)
      end
      if outbox
        connection.drop_table(context.outbox_table, if_exists: true)
        TCB::OutboxStore::ActiveRecord.create_table(mod, connection: connection)
      end
    end
    forget_schema(connection)
  end

  # A table dropped and made again (the tcb 0.6.2 specs reuse these names with other
  # column types) must not meet PostgreSQL statements prepared for the old one.
  def forget_schema(connection)
    connection.schema_cache.clear!
    connection.clear_cache!
  end
end
