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
end
