# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Issue 4, generators: acts_as_tbackend:install writes an initializer listing every
# setting; acts_as_tbackend:outbox writes a migration, a model and a flushing job that
# really run — on SQLite and PostgreSQL — and deliver, retry and dead-letter.
RSpec.describe "acts_as_tbackend generators" do
  include TbackendSpec::ClientHelpers
  include_context "rails app"

  def generate(name, *args)
    in_app(<<~RUBY)
      require "rails/generators"
      Rails.application.load_generators
      Rails::Generators.invoke(#{name.inspect}, #{args.inspect}, destination_root: Rails.root.to_s, behavior: :invoke)
    RUBY
  end

  describe "acts_as_tbackend:install" do
    it "describes every setting the gem reads, with its default and ENV variable" do
      require "generators/acts_as_tbackend/install/install_generator"
      descriptions = ActsAsTbackend::Generators::InstallGenerator::DESCRIPTIONS
      expect(descriptions.keys).to match_array(ActsAsTbackend::Config::SETTINGS.keys)

      generate("acts_as_tbackend:install")
      initializer = File.read(File.join(app, "config/initializers/tbackend.rb"))
      ActsAsTbackend::Config::SETTINGS.each do |name, (default, env, _type)|
        expect(initializer).to include("# config.#{name} = #{default.inspect}", "(ENV #{env})")
      end
      # Everything commented out: the app boots with the generated file and changes nothing.
      out = in_app("puts ActsAsTbackend.config.errors.inspect")
      expect(out.lines.last.strip).to eq("[]")
    end
  end

  describe "acts_as_tbackend:outbox" do
    run_job = <<~RUBY
      ActiveRecord::Migration.verbose = false
      load "db/schema.rb"
      # A PostgreSQL database outlives the example: start from no outbox at all.
      ActiveRecord::Base.connection.drop_table(:tbackend_outbox_intents, if_exists: true)
      #{TbackendSpec::RailsApp::MIGRATE_FROM_SCRATCH.chomp}
      order = Order.create!(number: "A-1", status: "new")
      Order.transaction do
        order.update!(status: "paid")
        TbackendOutboxIntent.enqueue!(record: order, store: "outboxed", event_type: "update")
      end
      TbackendOutboxIntent.enqueue_fact!(ActsAsTbackend::Fact.build(id: "conflicting", store: "outboxed", key: "k", value: { "v" => 2 }))
      TbackendOutboxFlushJob.perform_now
      TbackendOutboxIntent.order(:id).each do |row|
        puts [row.fact_id, row.attempts, row.last_status, !row.delivered_at.nil?, !row.dead_at.nil?, !row.next_attempt_at.nil?].inspect
      end
    RUBY

    # Issue 10: `rails new --minimal` apps have no ApplicationJob; the generated job must load there.
    it "generates a job on ActiveJob::Base in an app without ApplicationJob, and it loads" do
      File.delete(File.join(app, "app/jobs/application_job.rb"))
      generate("acts_as_tbackend:outbox")
      job = File.read(File.join(app, "app/jobs/tbackend_outbox_flush_job.rb"))
      expect(job).to include("class TbackendOutboxFlushJob < ActiveJob::Base\n")
      expect(job).not_to include("ApplicationJob")
      out = in_app("puts TbackendOutboxFlushJob.superclass.name; puts defined?(ApplicationJob).inspect")
      expect(out.lines.last(2).map(&:strip)).to eq(%w[ActiveJob::Base nil])
    end

    TbackendSpec::Database::ADAPTERS.each do |adapter|
      it "creates a table, model and job that deliver, retry with backoff and dead-letter (#{adapter})" do
        generate("acts_as_tbackend:outbox")
        expect(Dir[File.join(app, "db/migrate/*_create_tbackend_outbox_intents.rb")].size).to eq(1)
        expect(File.read(File.join(app, "app/jobs/tbackend_outbox_flush_job.rb")))
          .to include("class TbackendOutboxFlushJob < ApplicationJob\n")
        env = adapter == :postgresql ? { "DATABASE_URL" => TbackendSpec::Database.postgres_url("rails_generators") } : {}

        TbackendSpec::TestDaemon.with do |d|
          client_for(d)
          ActsAsTbackend.client.write_fact_once(fact("conflicting", store: "outboxed", value: { "v" => 1 }))
          out = in_app(run_job, env: env.merge("TBACKEND_TEST_PORT" => d.port.to_s))
          rows = out.lines.last(2).map { |line| eval(line) } # rubocop:disable Security/Eval
          expect(rows[0]).to match([start_with("outboxed:1:update:"), 1, "inserted", true, false, false])
          expect(rows[1]).to eq(["conflicting", 1, "conflict", false, true, false])
          expect(ids_by_seq(ActsAsTbackend.client, "outboxed").values).to include(rows[0][0])
        ensure
          ActsAsTbackend.reset!
        end

        down = in_app(run_job.sub('"A-1"', '"A-2"'), env: env.merge("TBACKEND_TEST_PORT" => closed_port.to_s))
        last = eval(down.lines.last) # rubocop:disable Security/Eval
        expect(last).to eq(["conflicting", 1, "retryable", false, false, true])
      end
    end
  end
end
