# frozen_string_literal: true

require "spec_helper"
require "stringio"
require "rbconfig"
require "open3"
require "acts_as_tbackend/tcb"
require "tcb/rspec_helpers"

module TCBSpec
  LIB = File.expand_path("../../lib", __dir__)

  # Shared by the runtime specs: a logger they can read, TCB configured in one call, and
  # Ruby subprocesses for what must not happen in the rspec process (signals, a clashing
  # TCB, a Rails boot).
  module Helpers
    include TbackendSpec::ClientHelpers

    def log_io
      @log_io ||= StringIO.new
    end

    def test_logger
      Logger.new(log_io)
    end

    # Configures TCB with a sync bus and in-memory stores unless told otherwise.
    def configure_tcb(*modules, bus: TCB::EventBus.new(sync: true), store: TCB::EventStore::InMemory.new,
                      outbox_store_class: TCB::OutboxStore::InMemory)
      TCB.domain_modules = modules
      TCB.configure do |c|
        c.event_bus = bus
        c.event_store = store
        c.outbox_store_class = outbox_store_class
        c.logger = test_logger
      end
    end

    # Runs `script` in a fresh Ruby with lib on the load path; returns [output, status].
    def run_ruby(script, timeout: 30)
      Open3.popen2e(RbConfig.ruby, "-I", LIB, "-e", script) do |stdin, out, wait|
        stdin.close
        reader = Thread.new { out.read }
        unless wait.join(timeout)
          Process.kill(:KILL, wait.pid)
          raise "subprocess still running after #{timeout}s:\n#{reader.value}"
        end
        [reader.value, wait.value]
      end
    end
  end
end

RSpec.configure do |config|
  # The store and generator specs (spec/tcb/stores, spec/tcb/generators) set TCB up themselves.
  config.define_derived_metadata(file_path: %r{/spec/tcb/(?!stores/|generators/)}) { |metadata| metadata[:tcb] = true }
  config.include TCBSpec::Helpers, :tcb
  # Every example starts unconfigured and without domain modules (they outlive reset!,
  # and another example's may be gone); a leftover bus would leak a thread into the next.
  config.around(:each, :tcb) do |example|
    TCB.reset!
    TCB.domain_modules = []
    TCB.config.logger = Logger.new(StringIO.new)
    example.run
  ensure
    TCB.reset!
    TCB.domain_modules = []
  end
end
