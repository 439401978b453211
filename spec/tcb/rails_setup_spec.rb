# frozen_string_literal: true

require_relative "tcb_helper"
require "tmpdir"
require "fileutils"

# Boots a real Rails app (Zeitwerk, reloading on) in a subprocess with the setup
# docs/tcb.md documents, and checks the handlers are wired at boot and after a reload.
RSpec.describe "The documented Rails setup" do
  let(:files) do
    {
      "app/domain/sales.rb" => <<~RUBY,
        module Sales
          include TCB::Domain

          OrderPlaced = Struct.new(:order_id)
          PlaceOrder = Struct.new(:order_id) do
            def validate! = nil
          end

          persist events(OrderPlaced, stream_id_from_event: :order_id)
          handle PlaceOrder, with(PlaceOrderHandler)
          on OrderPlaced, react_with(Warehouse::ReserveStock)

          def self.place!(order_id:) = TCB.dispatch(PlaceOrder.new(order_id))
        end
      RUBY
      "app/domain/sales/place_order_handler.rb" => <<~RUBY,
        module Sales
          class PlaceOrderHandler
            def call(command) = TCB.publish(*TCB.record(events: [OrderPlaced.new(command.order_id)]))
          end
        end
      RUBY
      "app/domain/warehouse.rb" => "module Warehouse\nend\n",
      "app/domain/warehouse/reserve_stock.rb" => <<~RUBY
        module Warehouse
          class ReserveStock
            CALLS = []
            def call(event) = CALLS << [self.class.object_id, event.order_id]
          end
        end
      RUBY
    }
  end

  # docs/tcb.md's setup, as `rails g tcb:install` writes it.
  let(:documented_initializer) do
    <<~RUBY
      require "acts_as_tbackend/tcb"

      Rails.application.config.to_prepare do
        TCB.reset!(graceful_shutdown_time: Rails.env.production? ? 10.0 : nil)
        TCB.domain_modules = [Sales, Warehouse]
        TCB.configure do |c|
          c.event_bus = Rails.env.test? ? TCB::EventBus.new(sync: true) : TCB::EventBus.new(shutdown_timeout: 30.0)
          c.event_store = TCB::EventStore::InMemory.new
        end
      end
    RUBY
  end

  # tcb 0.6.2's generator section: the modules are set in to_prepare after the
  # infrastructure is configured (environment files), so they are wired by TCB.domain_modules=.
  let(:tcb_initializer) do
    <<~RUBY
      require "acts_as_tbackend/tcb"

      Rails.application.config.to_prepare do
        TCB.reset!
        TCB.configure do |c|
          c.event_bus = TCB::EventBus.new(handle_signals: false, shutdown_timeout: 10.0)
          c.event_store = TCB::EventStore::InMemory.new
        end
        TCB.domain_modules = [Sales, Warehouse]
      end
    RUBY
  end

  # Boots the app in development (reloading on), dispatches, reloads, dispatches again.
  let(:app_script) do
    <<~'RUBY'
      ENV["RAILS_ENV"] = "development"
      require "rails"
      require "acts_as_tbackend/tcb"
      class TcbApp < Rails::Application
        config.root = APP_ROOT
        config.eager_load = false
        config.cache_classes = false
        config.autoloader = :zeitwerk
        config.logger = Logger.new(File::NULL)
        config.secret_key_base = "x" * 64
        config.active_support.deprecation = :silence
      end
      Rails.application.initialize!
      def wait_for
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
        sleep 0.01 until yield || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      end

      Sales.place!(order_id: 1)
      wait_for { Warehouse::ReserveStock::CALLS.any? } # async bus in development
      first = Warehouse::ReserveStock::CALLS.dup
      old_class = Warehouse::ReserveStock.object_id

      Rails.application.reloader.reload!
      Sales.place!(order_id: 2)
      wait_for { Warehouse::ReserveStock::CALLS.any? }
      second = Warehouse::ReserveStock::CALLS.dup
      # The old bus's dispatcher ends once it wakes from the reset!: one thread is left.
      bus_threads = -> { Thread.list.count { |t| t.name == "tcb-event-bus" && t.alive? } }
      wait_for { bus_threads.call == 1 }
      buses = bus_threads.call
      puts [first.map(&:last), second.map(&:last), first.first.first == old_class,
            second.first.first == Warehouse::ReserveStock.object_id, old_class != Warehouse::ReserveStock.object_id,
            TCB.read(Sales).stream(2).to_a.size, buses].inspect
    RUBY
  end

  def boot_and_reload(initializer)
    Dir.mktmpdir("tcb-rails") do |root|
      files.merge("config/initializers/tcb.rb" => initializer).each do |path, content|
        FileUtils.mkdir_p(File.dirname(File.join(root, path)))
        File.write(File.join(root, path), content)
      end
      out, status = run_ruby("APP_ROOT = #{root.inspect}\n#{app_script}", timeout: 60)
      expect(status).to be_success, out
      out.lines.last
    end
  end

  it "wires the handlers at boot, and again with the reloaded classes after a reload" do
    expect(boot_and_reload(documented_initializer)).to eq("[[1], [2], true, true, true, 1, 1]\n")
  end

  it "does so with tcb 0.6.2's setup too: modules set after configure, kept across reset!" do
    expect(boot_and_reload(tcb_initializer)).to eq("[[1], [2], true, true, true, 1, 1]\n")
  end
end
