# frozen_string_literal: true

require "spec_helper"
require "tmpdir"
require "rails/generators"
require "acts_as_tbackend/tcb"
require "generators/tcb/install/install_generator"
require "generators/tcb/event_store/event_store_generator"
require "generators/tcb/domain/domain_generator"
require "generators/tcb/outbox/outbox_generator"
require_relative "../stores/store_helpers"

module TcbGeneratorsSpec
  # The scaffold's commented example event: a Data class where the Ruby has them (3.2+).
  SCAFFOLD_EVENT_CLASS =
    defined?(::Data) && ::Data.respond_to?(:define) ? "Data.define(:id)" : "Struct.new(:id, keyword_init: true)"
  # The reaction a developer adds to the generated Payments::Charges.
  NOTIFY_LEDGER = <<~RUBY
    # frozen_string_literal: true

    module Payments
      module Charges
        class NotifyLedger
          def call(event)
            puts "LEDGER \#{event.charge_id} \#{event.amount}"
          end
        end
      end
    end
  RUBY
end

# The tcb:* generators (0.6.2 emitted invalid migrations for namespaced modules and facades
# that published commands as events), run in-process for their output and in
# the spec Rails app (spec/fixtures/rails_app) to migrate SQLite and PostgreSQL, boot,
# dispatch through the facades and relay the outbox with the generated job.
RSpec.describe "tcb generators" do
  around do |example|
    Dir.mktmpdir("tcb-generators") do |dir|
      @root = dir
      example.run
    end
  end

  attr_reader :root

  def generate(name, *args)
    Rails::Generators.invoke(name, [*args, "--quiet"], destination_root: root)
  end

  def read(path)
    File.read(File.join(root, path))
  end

  def files
    Dir.glob("**/*", base: root).select { |path| File.file?(File.join(root, path)) }.sort
  end

  def migration(suffix)
    paths = Dir[File.join(root, "db/migrate/*_#{suffix}.rb")]
    expect(paths.size).to eq(1), "expected one *_#{suffix}.rb, got #{paths.inspect}"
    paths.first
  end

  def compiles?(source)
    RubyVM::InstructionSequence.compile(source)
    true
  end

  describe "tcb:event_store" do
    it "writes the domain module, a handler per command and a migration for a namespaced module" do
      generate("tcb:event_store", "payments/charges", "capture:charge_id,amount", "refund:charge_id,reason")

      expect(files).to eq([
                            "app/domain/payments/charges.rb", "app/domain/payments/charges/capture_handler.rb",
                            "app/domain/payments/charges/refund_handler.rb",
                            File.basename(migration("create_payments__charges_events")).prepend("db/migrate/")
                          ])
      domain = read("app/domain/payments/charges.rb")
      expect(domain).to include("module Payments\n  module Charges\n    include TCB::Domain\n",
                                "def self.capture!(charge_id:, amount:)\n      " \
                                "TCB.dispatch(Capture.new(charge_id: charge_id, amount: amount))",
                                "handle Capture, with(CaptureHandler)", "handle Refund, with(RefundHandler)",
                                "# persist events(")
      expect(domain).not_to include("TCB.publish")
      expect(read("app/domain/payments/charges/capture_handler.rb")).to include("class CaptureHandler\n      def call(command)",
                                                                                "TCB.record(", "TCB.publish(*events)")
      source = File.read(migration("create_payments__charges_events"))
      # Rails loads the class named like the file: a "::" in it (tcb 0.6.2) never loads.
      expect(source).to include("class CreatePaymentsChargesEvents < " \
                                "ActiveRecord::Migration[#{ActiveRecord::Migration.current_version}]",
                                "create_table :payments__charges_events do |t|")
      (files.select { |f| f.end_with?(".rb") }).each { |f| expect(compiles?(read(f))).to be(true), f }
    end

    it "keeps acronyms of a CamelCase name and derives the table like TCB::DomainContext" do
      stub_const("HTTPGateway", Module.new)
      generate("tcb:event_store", "HTTPGateway", "ping:host")

      expect(read("app/domain/http_gateway.rb")).to start_with("# frozen_string_literal: true\n\nmodule HTTPGateway\n")
      expect(File.read(migration("create_http_gateway_events")))
        .to include("class CreateHttpGatewayEvents ",
                    "create_table :#{TCB::DomainContext.from_module(HTTPGateway).events_table} do")
    end

    it "honours --skip-domain, --skip-migration and --no-comments" do
      generate("tcb:event_store", "orders", "place:order_id", "--skip-domain")
      expect(files).to eq([File.basename(migration("create_orders_events")).prepend("db/migrate/")])

      generate("tcb:event_store", "billing", "charge:invoice_id", "--skip-migration", "--no-comments")
      expect(files.grep(/billing/)).to eq(["app/domain/billing.rb", "app/domain/billing/charge_handler.rb"])
      bare = read("app/domain/billing.rb")
      expect(bare.lines.grep(/^\s*#/).map(&:strip)).to eq(["# frozen_string_literal: true",
                                                           "# persist events(SomethingHappened, stream_id_from_event: :id)"])
    end

    it "gives long contexts index names PostgreSQL does not truncate" do
      generate("tcb:event_store", "fulfilment/international_shipments/customs_declarations", "file:id")

      names = File.read(migration("create_fulfilment__international_shipments__customs_declarations_events"))
                  .scan(/name: "([^"]+)"/).flatten
      expect(names.size).to eq(3)
      expect(names.map(&:bytesize)).to all(be <= 63)
      expect(names.uniq.size).to eq(3)
    end

    it "refuses a malformed command" do
      expect { generate("tcb:event_store", "orders", "place:order id") }.to raise_error(SystemExit)
        .and output(/invalid attribute "order id"/).to_stderr
    end
  end

  describe "tcb:domain" do
    it "writes a pub/sub module whose facade dispatches each command to its handler, with no persistence" do
      generate("tcb:domain", "notifications", "send_welcome_email:user_id,email", "ping")

      domain = read("app/domain/notifications.rb")
      expect(domain).to include("def self.send_welcome_email!(user_id:, email:)\n    TCB.dispatch(SendWelcomeEmail.new(",
                                "def self.ping!\n    TCB.dispatch(Ping.new)\n",
                                "handle SendWelcomeEmail, with(SendWelcomeEmailHandler)")
      expect(domain).not_to include("persist", "TCB.publish(")
      expect(files).to eq(%w[app/domain/notifications.rb app/domain/notifications/ping_handler.rb
                             app/domain/notifications/send_welcome_email_handler.rb])
    end

    # The file and class names tcb 0.6.2's own generator test expects.
    it "names files, the module, commands and handlers as tcb 0.6.2 does" do
      generate("tcb:domain", "notifications", "send_welcome_email:user_id,email", "send_verification_sms:user_id,phone")

      expect(files).to eq(%w[app/domain/notifications.rb app/domain/notifications/send_verification_sms_handler.rb
                             app/domain/notifications/send_welcome_email_handler.rb])
      expect(read("app/domain/notifications.rb")).to include("module Notifications\n", "SendWelcomeEmail = ",
                                                             "SendVerificationSms = ", "user_id is required",
                                                             "email is required")
      expect(read("app/domain/notifications/send_welcome_email_handler.rb"))
        .to include("module Notifications\n  class SendWelcomeEmailHandler\n    def call(command)")
      expect(read("app/domain/notifications/send_verification_sms_handler.rb")).to include("class SendVerificationSmsHandler")
      expect(Dir[File.join(root, "db/migrate/*.rb")]).to be_empty
    end
  end

  describe "tcb:install" do
    it "writes an initializer that wires TCB in to_prepare, and the module generators list their modules in it" do
      generate("tcb:install")
      generate("tcb:event_store", "payments/charges", "capture:charge_id", "--skip-migration")
      generate("tcb:domain", "notifications", "ping")
      generate("tcb:domain", "notifications", "ping", "--force")

      initializer = read("config/initializers/tcb.rb")
      expect(initializer).to include("Rails.application.config.to_prepare do", "TCB.reset!", "TCB.configure do |c|",
                                     "TCB.domain_modules = [\n    Notifications,\n    Payments::Charges,\n  ]\n")
      expect(compiles?(initializer)).to be(true)
    end
  end

  describe "tcb:outbox" do
    it "writes the outbox migration and a relay job that hands the relay configured stores" do
      FileUtils.mkdir_p(File.join(root, "app/jobs"))
      File.write(File.join(root, "app/jobs/application_job.rb"), "class ApplicationJob < ActiveJob::Base\nend\n")
      generate("tcb:outbox", "payments/charges")

      expect(File.read(migration("create_payments__charges_outbox"))).to include("class CreatePaymentsChargesOutbox ",
                                                                                 "create_table :payments__charges_outbox do")
      job = read("app/jobs/payments/charges_outbox_job.rb")
      expect(job).to include("module Payments\n  class ChargesOutboxJob < ApplicationJob",
                             "outbox_store: TCB.config.outbox_store_for(Payments::Charges)",
                             "event_store: TCB.config.event_store")
      expect(compiles?(job)).to be(true)
    end

    # Issue 10: `rails new --minimal` apps have no ApplicationJob.
    it "bases the relay job on ActiveJob::Base when the app has no ApplicationJob" do
      generate("tcb:outbox", "payments/charges")

      job = read("app/jobs/payments/charges_outbox_job.rb")
      expect(job).to include("  class ChargesOutboxJob < ActiveJob::Base\n")
      expect(job).not_to include("ApplicationJob")
    end

    # The file and class names tcb 0.6.2's own generator test expects: regenerating over a
    # tcb app replaces its job (and whatever schedules it by name keeps working).
    it "names the migration and the job as tcb 0.6.2 does" do
      FileUtils.mkdir_p(File.join(root, "app/jobs"))
      File.write(File.join(root, "app/jobs/application_job.rb"), "class ApplicationJob < ActiveJob::Base\nend\n")
      generate("tcb:outbox", "invoicing")

      expect(files - ["app/jobs/application_job.rb"])
        .to eq(["app/jobs/invoicing_outbox_job.rb", File.basename(migration("create_invoicing_outbox")).prepend("db/migrate/")])
      expect(File.read(migration("create_invoicing_outbox"))).to include("class CreateInvoicingOutbox ",
                                                                         "create_table :invoicing_outbox do")
      job = read("app/jobs/invoicing_outbox_job.rb")
      expect(job).to start_with("# frozen_string_literal: true\n\nclass InvoicingOutboxJob < ApplicationJob\n")
      expect(job).to include("TCB::OutboxRelay.new(", "TCB.config.event_store", "outbox_store_for(Invoicing)")
      expect(compiles?(job)).to be(true)
    end
  end

  it "creates through its migrations the same tables as the stores' create_table" do
    stub_const("TcbDriftCheck", Module.new)
    generate("tcb:event_store", "TcbDriftCheck", "--skip-domain")
    generate("tcb:outbox", "TcbDriftCheck")
    connection = TcbStoresSpec.connect(TcbStoresSpec::SqliteRecord)
    shape = lambda do |table|
      [connection.columns(table).map { |c| [c.name, c.sql_type, c.null, c.default] },
       connection.indexes(table).map { |i| [i.name, i.columns, i.unique] }.sort]
    end
    helpers = { "events" => TCB::EventStore::ActiveRecord, "outbox" => TCB::OutboxStore::ActiveRecord }

    helpers.each do |kind, store_class|
      table = "tcb_drift_check_#{kind}"
      migration_class = "CreateTcbDriftCheck#{kind.capitalize}"
      connection.drop_table(table, if_exists: true)
      load migration("create_#{table}")
      ActiveRecord::Migration.suppress_messages { Object.const_get(migration_class).new.exec_migration(connection, :up) }
      generated = shape.call(table)
      connection.drop_table(table)
      store_class.create_table(TcbDriftCheck, connection: connection)
      expect(shape.call(table)).to eq(generated)
      connection.drop_table(table)
    ensure
      Object.send(:remove_const, migration_class) if Object.const_defined?(migration_class)
    end
  end

  describe "in a Rails app" do
    around do |example|
      Dir.mktmpdir("tcb-app") do |dir|
        @app = TbackendSpec::RailsApp.create(dir)
        example.run
      end
    end

    def in_app(code, env: {})
      out, status = TbackendSpec::RailsApp.boot_and_run(@app, code, env: { "RAILS_ENV" => "development" }.merge(env))
      expect(status).to be_success, out
      out
    end

    def edit(path, from, to)
      file = File.join(@app, path)
      source = File.read(file)
      expect(source).to include(from)
      File.write(file, source.sub(from, to))
    end

    # What a developer does after generating: an event, its persistence and an outbox
    # reaction, the handler recording it, and the outbox store configured.
    def fill_in_scaffold
      edit("app/domain/payments/charges.rb", "# SomethingHappened = #{TcbGeneratorsSpec::SCAFFOLD_EVENT_CLASS}",
           "Captured = Struct.new(:charge_id, :amount, keyword_init: true)")
      edit("app/domain/payments/charges.rb", "# persist events(SomethingHappened, stream_id_from_event: :id)",
           "persist events(Captured, stream_id_from_event: :charge_id)\n    on Captured, ensure_reaction(NotifyLedger)")
      edit("app/domain/payments/charges/capture_handler.rb",
           "# events = TCB.record(events: [SomethingHappened.new(id: command.charge_id)], within: ApplicationRecord)",
           "events = TCB.record(events: [Captured.new(charge_id: command.charge_id, amount: command.amount)], " \
           "within: ApplicationRecord)")
      edit("app/domain/payments/charges/capture_handler.rb", "# TCB.publish(*events)", "TCB.publish(*events)")
      File.write(File.join(@app, "app/domain/payments/charges/notify_ledger.rb"), TcbGeneratorsSpec::NOTIFY_LEDGER)
      edit("config/initializers/tcb.rb", "# c.outbox_store_class = TCB::OutboxStore::ActiveRecord",
           "c.outbox_store_class = TCB::OutboxStore::ActiveRecord")
    end

    scenario = <<~RUBY
      ActiveRecord::Migration.verbose = false
      connection = ActiveRecord::Base.connection
      %w[payments__charges_events payments__charges_outbox].each { |t| connection.drop_table(t, if_exists: true) }
      #{TbackendSpec::RailsApp::MIGRATE_FROM_SCRATCH.chomp}
      puts "TABLES \#{%w[payments__charges_events payments__charges_outbox].map { |t| connection.table_exists?(t) }.inspect}"

      Notifications::SendWelcomeEmailHandler.prepend(Module.new do
        def call(command)
          puts "WELCOME \#{command.user_id} \#{command.email}"
        end
      end)
      Notifications.send_welcome_email!(user_id: 7, email: "ada@example.org")
      begin
        Notifications.send_welcome_email!(user_id: nil, email: "x@example.org")
      rescue ArgumentError => e
        puts "INVALID \#{e.message}"
      end

      Payments::Charges.capture!(charge_id: "ch_1", amount: 500)
      puts "EVENTS \#{TCB.read(Payments::Charges).stream("ch_1").to_a.map { |e| [e.version, e.event.class.name, e.event.amount] }.inspect}"
      puts "MODEL \#{Payments::Charges::EventRecord.table_name}"
      Payments::ChargesOutboxJob.perform_now
      puts "OUTBOX \#{TCB.config.outbox_store_for(Payments::Charges).all.map(&:status).inspect}"
    RUBY

    it "generates a relay job that loads in an app without ApplicationJob" do
      File.delete(File.join(@app, "app/jobs/application_job.rb"))
      in_app(<<~RUBY)
        require "rails/generators"
        Rails.application.load_generators
        Rails::Generators.invoke("tcb:outbox", ["payments/charges", "--quiet"], destination_root: Rails.root.to_s, behavior: :invoke)
      RUBY

      out = in_app("puts Payments::ChargesOutboxJob.superclass.name; puts defined?(ApplicationJob).inspect")
      expect(out.lines.last(2).map(&:strip)).to eq(%w[ActiveJob::Base nil])
    end

    TbackendSpec::Database::ADAPTERS.each do |adapter|
      it "migrates, boots wired, dispatches through the facades and relays the outbox with the generated job (#{adapter})" do
        in_app(<<~RUBY)
          require "rails/generators"
          Rails.application.load_generators
          [["tcb:install"], ["tcb:event_store", "payments/charges", "capture:charge_id,amount"], ["tcb:outbox", "payments/charges"],
           ["tcb:domain", "notifications", "send_welcome_email:user_id,email"]].each do |name, *args|
            Rails::Generators.invoke(name, [*args, "--quiet"], destination_root: Rails.root.to_s, behavior: :invoke)
          end
        RUBY
        fill_in_scaffold
        env = adapter == :postgresql ? { "DATABASE_URL" => TbackendSpec::Database.postgres_url(TcbStoresSpec::PG_DATABASE) } : {}

        lines = in_app(scenario, env: env).lines.map(&:strip)

        expect(lines).to include("TABLES [true, true]", "WELCOME 7 ada@example.org", "INVALID user_id is required",
                                 'EVENTS [[1, "Payments::Charges::Captured", 500]]', "MODEL payments__charges_events",
                                 "LEDGER ch_1 500", "OUTBOX [:delivered]")
      end
    end
  end
end
