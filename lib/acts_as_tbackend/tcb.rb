# frozen_string_literal: true

# The domain runtime for Rails teams: the public API of the tcb gem 0.6.2 (code written
# for it runs unchanged) without its defects, with TBackend as one of its event stores.
# See docs/tcb.md.

if defined?(TCB) && !(TCB.is_a?(Module) && TCB.const_defined?(:ACTS_AS_TBACKEND_RUNTIME, false))
  where = Object.const_source_location(:TCB)&.join(":") || "an unknown file"
  raise LoadError, "acts_as_tbackend/tcb cannot define the module TCB: TCB is already defined by #{where} " \
                   "(probably the tcb gem). Load either the tcb gem or acts_as_tbackend/tcb, not both."
end

require "monitor"
require "securerandom"

# The runtime's namespace. Its own name is "TCB": stream ids, table names and handler
# strings are derived from Module#name.
module TCB
  ACTS_AS_TBACKEND_RUNTIME = true
  # The tcb API version this runtime implements.
  VERSION = "0.6.2"
end

require_relative "tcb/errors"
require_relative "tcb/context"
require_relative "tcb/stream_id"
require_relative "tcb/domain_context"
require_relative "tcb/envelope"
require_relative "tcb/handles_events"
require_relative "tcb/configuration"
require_relative "tcb/event_store/in_memory"
require_relative "tcb/outbox_entry"
require_relative "tcb/outbox_store/in_memory"
require_relative "tcb/instrumentation"
require_relative "tcb/outbox_table_check"
require_relative "tcb/recorder"
require_relative "tcb/runtime"

# Parts loaded on first use.
module TCB
  autoload :EventBus, "acts_as_tbackend/tcb/event_bus"
  autoload :SubscriberInvocationFailed, "acts_as_tbackend/tcb/event_bus"
  autoload :EventBusShutdown, "acts_as_tbackend/tcb/event_bus"
  autoload :EventBusQueuePressure, "acts_as_tbackend/tcb/event_bus"
  autoload :EventQuery, "acts_as_tbackend/tcb/queries"
  autoload :CorrelationQuery, "acts_as_tbackend/tcb/queries"
  autoload :OutboxRelay, "acts_as_tbackend/tcb/outbox_relay"
  autoload :MinitestHelpers, "acts_as_tbackend/tcb/minitest_helpers"
  autoload :RSpecMatchers, "acts_as_tbackend/tcb/rspec_matchers"
  autoload :RSpecHelpers, "acts_as_tbackend/tcb/rspec_matchers"

  # Stores that need ActiveRecord or the TBackend client load on first use.
  module EventStore
    autoload :ActiveRecord, "acts_as_tbackend/tcb/event_store/active_record"
    autoload :TBackend, "acts_as_tbackend/tcb/event_store/tbackend"
    autoload :Unavailable, "acts_as_tbackend/tcb/event_store/tbackend"
    autoload :JsonCodec, "acts_as_tbackend/tcb/event_store/json_codec"
  end

  # Outbox stores, one instance per domain module with ensure_reaction.
  module OutboxStore
    autoload :ActiveRecord, "acts_as_tbackend/tcb/outbox_store/active_record"
  end
end
