# frozen_string_literal: true

module TCB
  # The persistence half of TCB.record: appends each persisted event to its stream and
  # inserts the outbox rows, all in one unit of work, and returns one envelope per event
  # in the order given (matched by position, never by ==: equal events are distinct facts).
  class Recorder
    def initialize(config, within:, expected_version:)
      @config = config
      @within = within
      @expected_version = expected_version
    end

    def call(events)
      context = Context.current
      envelopes = Array.new(events.size)
      by_stream = group_by_stream(events, envelopes, context)
      check_expected_version!(by_stream)
      unless by_stream.empty?
        store = @config.event_store || raise(ConfigurationError, "persisted events need an event store: set c.event_store")
        in_transaction(store) { persist(store, by_stream, envelopes, context) }
      end
      envelopes
    end

    private

    # { stream_id => [[index, event], ...] }; events no module persists get their envelope now.
    def group_by_stream(events, envelopes, context)
      events.each_with_index.with_object({}) do |(event, index), streams|
        registration = @config.persist_registration_for(event.class)
        if registration
          stream_id = StreamId.build(registration.domain_module, event.public_send(registration.stream_id_from_event)).to_s
          (streams[stream_id] ||= []) << [index, event]
        else
          envelopes[index] = Envelope.wrap(event, correlation_id: context.correlation_id, causation_id: context.causation_id)
        end
      end
    end

    def check_expected_version!(by_stream)
      return if @expected_version.nil? || by_stream.size == 1

      raise ArgumentError, "expected_version: guards exactly one stream; these events go to " \
                           "#{by_stream.empty? ? 'no persisted stream' : by_stream.keys.join(', ')}"
    end

    # The blocks given to `transaction` take no arguments: ActiveRecord 7.1+ yields its
    # transaction object to them, which a lambda (or a method's &block of one) refuses.
    def in_transaction(store, &block)
      persist_in_store = store.respond_to?(:transaction) ? proc { store.transaction { block.call } } : block
      @within.respond_to?(:transaction) ? @within.transaction { persist_in_store.call } : persist_in_store.call
    end

    def persist(store, by_stream, envelopes, context)
      occurred_at = Time.now.utc
      by_stream.each do |stream_id, indexed|
        appended = store.append(stream_id: stream_id, events: indexed.map(&:last), occurred_at: occurred_at,
                                correlation_id: context.correlation_id, causation_id: context.causation_id,
                                expected_version: @expected_version)
        indexed.each_with_index { |(index, _), position| envelopes[index] = appended.fetch(position) }
      end
      insert_outbox_rows(envelopes.compact.select(&:stream_id))
    end

    def insert_outbox_rows(envelopes)
      envelopes.each do |envelope|
        @config.outbox_registrations_for(envelope.event.class).each do |registration|
          @config.outbox_store_for(registration.domain_module).insert(
            event_id: envelope.event_id, stream_id: envelope.stream_id, version: envelope.version,
            handler_class: registration.handler_class.name
          )
        end
      end
    end
  end
end
