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
      "app/domain/warehouse/reserve_stock.rb" => <<~RUBY,
        module Warehouse
          class ReserveStock
            CALLS = []
            def call(event) = CALLS << [self.class.object_id, event.order_id]
          end
        end
      RUBY
      "config/initializers/tcb.rb" => <<~RUBY
        # The setup from docs/tcb.md (its domain modules and stores).
        require "acts_as_tbackend/tcb"

        module DomainRuntime
          def self.setup!
            TCB.reset!(graceful_shutdown_time: 10.0)
            TCB.domain_modules = [Sales, Warehouse]
            TCB.configure do |c|
              c.event_bus =
                if Rails.env.test?
                  TCB::EventBus.new(sync: true)
                else
                  TCB::EventBus.new(max_queue_size: 10_000, shutdown_timeout: 30.0,
                                    handle_signals: Rails.env.production?)
                end
              c.event_store = TCB::EventStore::InMemory.new
            end
          end
        end

        Rails.application.config.to_prepare { DomainRuntime.setup! }
      RUBY
    }
  end

  it "wires the handlers at boot, and again with the reloaded classes after a reload" do
    Dir.mktmpdir("tcb-rails") do |root|
      files.each do |path, content|
        FileUtils.mkdir_p(File.dirname(File.join(root, path)))
        File.write(File.join(root, path), content)
      end
      out, status = run_ruby(<<~RUBY, timeout: 60)
        ENV["RAILS_ENV"] = "development"
        require "rails"
        require "acts_as_tbackend/tcb"
        class TcbApp < Rails::Application
          config.root = #{root.inspect}
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
      expect(status).to be_success, out
      expect(out.lines.last).to eq("[[1], [2], true, true, true, 1, 1]\n")
    end
  end
end
