# frozen_string_literal: true

# Store lint: the shared RSpec examples every TCB event store and outbox store passes
# (in-memory, ActiveRecord on SQLite and PostgreSQL, TBackend). Run them against your
# own adapter:
#
#   require "acts_as_tbackend/tcb/lint"
#
#   RSpec.describe MyEventStore do
#     it_behaves_like "a TCB event store" do
#       let(:store) { MyEventStore.new }
#     end
#   end
#
# The examples use the domain modules in TCB::Lint::DOMAIN_MODULES (persistent stores
# need their tables or stores: see docs/tcb-stores.md) and fresh stream ids, so they run
# on a store that already holds data.
raise LoadError, "acts_as_tbackend/tcb/lint needs RSpec: require it from your spec helper" unless defined?(RSpec)

require "acts_as_tbackend/tcb"
require_relative "lint/domain"
require_relative "lint/event_store"
require_relative "lint/outbox_store"
