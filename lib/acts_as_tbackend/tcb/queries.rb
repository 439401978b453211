# frozen_string_literal: true

module TCB
  # `TCB.read(Orders).stream(42).between_versions(5, 20).to_a`: an immutable builder; each
  # step returns a new query. Without `.stream(id)` it names no stream, so it reads nothing
  # (`[]`, no batch), as in tcb 0.6.2.
  class EventQuery
    def initialize(store, domain_module, stream_id: nil, from_version: nil, to_version: nil, occurred_after: nil,
                   as_of: nil)
      @store = store
      @domain_module = domain_module
      @context = DomainContext.from_module(domain_module)
      @stream_id = stream_id
      @from_version = from_version
      @to_version = to_version
      @occurred_after = occurred_after
      @as_of = as_of
      freeze
    end

    def stream(id)
      with(stream_id: StreamId.build(@context.to_s, id).to_s)
    end

    def from_version(version)
      with(from_version: version)
    end

    def to_version(version)
      with(to_version: version)
    end

    # Both bounds included.
    def between_versions(from, to)
      with(from_version: from, to_version: to)
    end

    # Strictly after `time`.
    def occurred_after(time)
      with(occurred_after: time)
    end

    # What the store knew at `time`: events recorded later are not seen. Only a temporal
    # store (TCB::EventStore::TBackend) knows that; the others keep no history of when they
    # learnt what, so asking them raises ArgumentError here rather than answering wrongly.
    def as_of(time)
      unless point_in_time_reads?
        raise ArgumentError, "#{@store.class}: point-in-time reads (as_of) need the TBackend store " \
                             "(c.event_store = TCB::EventStore::TBackend.new); this store keeps no history"
      end

      with(as_of: time)
    end

    def to_a
      read(from_version: @from_version, to_version: @to_version)
    end

    # The newest n events, oldest first.
    def last(count)
      read(from_version: @from_version, to_version: @to_version, limit: count, order: :desc).reverse
    end

    # Keyset pagination on version: each batch is one read from the last version seen, so
    # memory stays flat however long the stream. An Enumerator of batches without a block.
    def in_batches(of: 1000, from_version: nil, to_version: nil)
      raise ArgumentError, "of: must be a positive Integer" unless of.is_a?(Integer) && of.positive?
      return enum_for(:in_batches, of: of, from_version: from_version, to_version: to_version) unless block_given?

      cursor = [from_version, @from_version].compact.max
      upper = [to_version, @to_version].compact.min
      loop do
        batch = read(from_version: cursor, to_version: upper, limit: of)
        break if batch.empty?

        yield batch
        break if batch.size < of

        cursor = batch.last.version + 1
      end
      self
    end

    private

    def with(**changes)
      self.class.new(@store, @domain_module, stream_id: @stream_id, from_version: @from_version, to_version: @to_version,
                                             occurred_after: @occurred_after, as_of: @as_of, **changes)
    end

    def point_in_time_reads?
      @store.method(:read).parameters.any? { |type, name| (%i[key keyreq].include?(type) && name == :as_of) || type == :keyrest }
    end

    # `as_of:` only when asked for, so stores without point-in-time reads keep working.
    def read(**options)
      return [] unless @stream_id

      options[:as_of] = @as_of if @as_of
      @store.read(@stream_id, occurred_after: @occurred_after, **options)
    end
  end

  # Every event of one correlation id across domain modules, ordered by occurred_at.
  class CorrelationQuery
    def initialize(store, correlation_id, domain_modules, occurred_after: nil, occurred_before: nil)
      @store = store
      @correlation_id = correlation_id
      @domain_modules = Array(domain_modules)
      @occurred_after = occurred_after
      @occurred_before = occurred_before
      freeze
    end

    # Strictly after `time`.
    def occurred_after(time)
      with(occurred_after: time)
    end

    # Strictly before `time`.
    def occurred_before(time)
      with(occurred_before: time)
    end

    def between(from, to)
      with(occurred_after: from, occurred_before: to)
    end

    def to_a
      found = @domain_modules.flat_map do |mod|
        @store.read_by_correlation(@correlation_id, context: DomainContext.from_module(mod).to_s,
                                                    occurred_after: @occurred_after, occurred_before: @occurred_before)
      end
      found.each_with_index.sort_by { |envelope, index| [envelope.occurred_at, index] }.map(&:first)
    end

    private

    def with(**changes)
      self.class.new(@store, @correlation_id, @domain_modules, occurred_after: @occurred_after,
                                                               occurred_before: @occurred_before, **changes)
    end
  end
end
