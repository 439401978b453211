# frozen_string_literal: true

require "fileutils"
require "open3"
require "rbconfig"

module TbackendSpec
  # The tiny Rails app in spec/fixtures/rails_app, copied into a scratch directory and run
  # in subprocesses: a Rails app boots once per process, so every scenario (railtie
  # settings, rake tasks, generators, Puma) gets a process of its own.
  module RailsApp
    FIXTURE = File.expand_path("../fixtures/rails_app", __dir__)
    LIB = File.expand_path("../../lib", __dir__)
    # No subprocess outlives a stuck boot or task.
    TIMEOUT = 120
    # Ruby for `boot_and_run`: runs every migration in db/migrate on a database where none is
    # recorded as run, through the public task (ActiveRecord::SchemaMigration stopped being a
    # model in Rails 7.1).
    MIGRATE_FROM_SCRATCH = <<~RUBY
      ActiveRecord::Base.connection.drop_table(:schema_migrations, if_exists: true)
      ENV["VERBOSE"] = "false"
      ActiveRecord::Tasks::DatabaseTasks.migrate
    RUBY

    module_function

    def create(dir)
      FileUtils.cp_r(File.join(FIXTURE, "."), dir)
      dir
    end

    def env(extra = {})
      { "ACTS_AS_TBACKEND_LIB" => LIB, "RAILS_ENV" => "test", "RUBYOPT" => nil }.merge(extra)
    end

    # [output, Process::Status] of `ruby *args` in the app directory.
    def run(dir, *args, env: {})
      Open3.capture2e(self.env(env), "timeout", TIMEOUT.to_s, RbConfig.ruby, *args, chdir: dir)
    end

    # Boots the app and runs `code` in it.
    def boot_and_run(dir, code, env: {})
      run(dir, "-e", "require './config/environment'\n#{code}", env: env)
    end

    def rake(dir, *tasks, env: {})
      run(dir, "-S", "rake", *tasks, env: env)
    end

    # Creates the app's tables (db/schema.rb) in the database DATABASE_URL names.
    def load_schema(dir, env: {})
      out, status = boot_and_run(dir, "ActiveRecord::Migration.verbose = false; load 'db/schema.rb'", env: env)
      raise "schema load failed:\n#{out}" unless status.success?
    end
  end
end

# `include_context "rails app"`: a fresh copy of the app for each example, as `app`, and
# `in_app(code, env:)`, which boots it, runs `code` and fails the example on a non-zero exit.
RSpec.shared_context "rails app" do
  include TbackendSpec::ClientHelpers

  around do |example|
    Dir.mktmpdir("tbackend-rails-app") do |dir|
      @app = TbackendSpec::RailsApp.create(dir)
      example.run
    end
  end

  attr_reader :app

  def in_app(code, env: {})
    out, status = TbackendSpec::RailsApp.boot_and_run(app, code, env: env)
    expect(status).to be_success, out
    out
  end

  # Enqueues `count` facts ("<store>-<i>", on `keys` keys) into the spool at `spool` with the
  # daemon unreachable, and exits without flushing, as after a crash: the segment is orphaned.
  def leave_orphaned_segment(spool, store: "spooled", count: 50, keys: 5)
    env = { "TBACKEND_SPOOL_PATH" => spool, "TBACKEND_TEST_PORT" => closed_port.to_s }
    in_app(<<~RUBY, env: env)
      writer = ActsAsTbackend.async_writer
      #{count}.times do |i|
        fact = ActsAsTbackend::Fact.build(id: "#{store}-\#{i}", store: "#{store}", key: "k\#{i % #{keys}}", value: { "i" => i })
        raise "not enqueued" unless writer.enqueue(fact)[:status] == "enqueued"
      end
      exit!(0)
    RUBY
  end

  # Every fact leave_orphaned_segment made is stored once, each key's in enqueue order.
  def expect_delivered_once(daemon, store: "spooled", count: 50)
    facts = client_for(daemon).facts_by_seq(store: store, after_seq: 0, timeout: 10)[:response][:facts]
    expect(facts.map { |f| f[:id] }).to match_array(Array.new(count) { |i| "#{store}-#{i}" })
    by_key = facts.group_by { |f| f[:key] }.transform_values { |list| list.map { |f| f[:value][:i] } }
    by_key.each_value { |values| expect(values).to eq(values.sort) } # per-key order survives the spool
  end
end

# `include_context "rails app with a daemon"`: the app, and a test daemon for the example
# as `daemon` (the module client reset afterwards), for the rake task specs.
RSpec.shared_context "rails app with a daemon" do
  include_context "rails app"

  around do |example|
    TbackendSpec::TestDaemon.with do |d|
      @daemon = d
      example.run
    end
  ensure
    ActsAsTbackend.reset!
  end

  attr_reader :daemon
end
