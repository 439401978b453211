# frozen_string_literal: true

module TCB
  # The correlation and causation ids of the work running in this thread (fiber). Every
  # change goes through `with`, which restores the previous ids when its block ends, so a
  # nested reaction or dispatch never wipes the ids of the code that called it.
  module Context
    KEY = :__tcb_context__
    Ids = Struct.new(:correlation_id, :causation_id, keyword_init: true)
    EMPTY = Ids.new.freeze

    module_function

    def current
      Thread.current[KEY] || EMPTY
    end

    def correlation_id
      current.correlation_id
    end

    def causation_id
      current.causation_id
    end

    def with(correlation_id:, causation_id:)
      previous = Thread.current[KEY]
      Thread.current[KEY] = Ids.new(correlation_id: correlation_id, causation_id: causation_id).freeze
      yield
    ensure
      Thread.current[KEY] = previous
    end

    # The ids a handler reacting to `envelope` runs with: the chain's correlation, and the
    # envelope itself as the cause.
    def for_reaction(envelope, &block)
      with(correlation_id: envelope.correlation_id, causation_id: envelope.event_id, &block)
    end
  end
end
