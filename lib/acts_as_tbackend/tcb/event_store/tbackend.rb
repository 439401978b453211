# frozen_string_literal: true

require "acts_as_tbackend"
require "time"
require_relative "appending"
require_relative "selecting"
require_relative "json_codec"
require_relative "tbackend/ledger"

module TCB
  module EventStore
    # The TBackend daemon could not be reached (or did not answer) while reading or
    # appending: nothing was appended, or — `outcome_unknown?` — the append may have been
    # stored and a read of the stream tells. Domain writes raise this instead of being
    # dropped silently, unlike the record mirror, which stays soft.
    class Unavailable < TCB::Error
      attr_reader :result

      def initialize(message, result: nil)
        super(message)
        @result = result
      end

      def outcome_unknown?
        result.is_a?(Hash) && result[:status] == "timeout_unknown"
      end
    end

    # The event store on the TBackend temporal ledger, through the native client.
    #
    # Layout (see docs/tcb-stores.md):
    # - one TBackend store per domain context, `<prefix>-<context with / as __>`
    #   (`tcb-payments__charges`); the key of every fact is the stream id;
    # - one fact per append (a *commit*) holding its events, so a multi-event append is
    #   atomic; its id is derived from the stream and the commit's first version
    #   (`Fact.derive_id(..., format: :digest)`), so two writers that both append version
    #   n collide on the id: the daemon answers a conflict to the second, which becomes
    #   WrongExpectedVersion, while a retry of the very same commit is an idempotent replay;
    # - valid_time = occurred_at; transaction_time increases along each stream, which is
    #   what `as_of:` reads (what the ledger knew at that time) rely on;
    # - a second store per context, `<events store>-index`, maps event ids and correlation
    #   ids to commits. Index facts are written *before* their commit, so a commit never
    #   lacks its index; an entry whose commit lost the race is ignored on read, because
    #   every lookup is checked against the stream itself.
    class TBackend
      # Facts' schema_version: the layout of a commit's value.
      COMMIT_FORMAT = 1
      # Appends without expected_version retry when another writer took the version they
      # read as next (or when the daemon did not show the newest commit yet), after a short
      # random pause so that racing writers stop colliding.
      APPEND_ATTEMPTS = 50
      RETRY_PAUSE = 0.002
      # How far before its index entry a commit may carry a transaction_time (wall clocks
      # step back); bounds the stream reads a lookup needs.
      CLOCK_SLACK = 60.0
      PREFIX_FORMAT = /\A[A-Za-z0-9_]+\z/

      attr_reader :codec, :store_prefix

      # `client`: an ActsAsTbackend::Client or Connection; nil uses ActsAsTbackend.client at
      # each call (so a reconfigured or forked process uses the current one).
      def initialize(client: nil, store_prefix: "tcb", codec: JsonCodec.new, durability: nil, attempts: 3, timeout: nil)
        unless store_prefix.to_s.match?(PREFIX_FORMAT)
          raise ArgumentError, "store_prefix must match #{PREFIX_FORMAT.source} (\"-\" separates the parts), " \
                               "got #{store_prefix.inspect}"
        end

        @ledger = Ledger.new(client: client, durability: durability, attempts: attempts, timeout: timeout)
        @store_prefix = store_prefix.to_s
        @codec = codec
        @lock = Mutex.new
        @store_names = {}
        @contexts = []
      end

      def client
        @ledger.client
      end

      def register_domain(domain_module)
        codec.register_domain(domain_module)
        events_store(DomainContext.from_module(domain_module).to_s)
      end

      # The TBackend store holding a context's commits ("payments/charges" → "tcb-payments__charges").
      def events_store(context)
        context = context.to_s
        @lock.synchronize do
          @store_names[context] ||= begin
            name = "#{store_prefix}-#{context.gsub(DomainContext::NAMESPACE_SEPARATOR, DomainContext::TABLE_SEPARATOR)}"
            ActsAsTbackend::Fact.validate_store_name!(name)
            @contexts << context
            name
          end
        end
      end

      def index_store(context)
        "#{events_store(context)}-index"
      end

      def append(stream_id:, events:, occurred_at: Time.now, correlation_id: nil, causation_id: nil, expected_version: nil)
        stream = StreamId.parse(stream_id.to_s)
        occurred_at = occurred_at.getutc.floor(6)
        attempt = 0
        loop do
          attempt += 1
          head = head_of(stream)
          Appending.check_expected_version!(stream, head[:version], expected_version)
          return [] if events.empty?

          envelopes = Appending.build_envelopes(stream, events, after_version: head[:version], occurred_at: occurred_at,
                                                                correlation_id: correlation_id, causation_id: causation_id)
          return envelopes if write_commit(stream, envelopes, head)

          if expected_version.nil? && attempt < APPEND_ATTEMPTS
            sleep(rand * RETRY_PAUSE * [attempt, 5].min)
            next
          end

          raise WrongExpectedVersion.new(stream_id: stream.to_s, expected_version: expected_version,
                                         actual_version: [head_of(stream)[:version], head[:version] + 1].max)
        end
      end

      # `as_of:` answers from what the ledger knew at that moment: commits whose
      # transaction_time is later are not seen.
      def read(stream_id, from_version: nil, to_version: nil, occurred_after: nil, limit: nil, order: :asc, as_of: nil)
        Selecting.check_order!(order)

        stream = StreamId.parse(stream_id.to_s)
        envelopes = commits(stream, as_of: as_of).flat_map { |commit| commit_envelopes(commit) }
        Selecting.stream(envelopes, from_version: from_version, to_version: to_version, occurred_after: occurred_after,
                                    limit: limit, order: order)
      end

      # One read of the context's index, then one read per stream the chain touched.
      def read_by_correlation(correlation_id, context:, occurred_after: nil, occurred_before: nil)
        entries = index_entries(context.to_s, "correlation:#{correlation_id}")
        chain = verified_envelopes(context.to_s, entries)
        Selecting.correlation_chain(chain, correlation_id: correlation_id.to_s, occurred_after: occurred_after,
                                           occurred_before: occurred_before)
      end

      # Event ids carry no context: they are looked up in the index of every context this
      # store has registered (TCB.configure registers each persisting module) or used.
      def read_by_event_ids(event_ids)
        wanted = event_ids.map(&:to_s).uniq
        known_contexts.each_with_object({}) do |context, found|
          missing = wanted - found.keys
          break found if missing.empty?

          entries = missing.flat_map { |event_id| index_entries(context.to_s, "event:#{event_id}") }
          verified_envelopes(context.to_s, entries).each do |envelope|
            found[envelope.event_id] = envelope if missing.include?(envelope.event_id)
          end
        end
      end

      # For apps that moved their events over from another store (an ActiveRecord one):
      # the stream here against the same stream in `with`, version by version. `missing`:
      # versions only `with` has; `extra`: versions only the ledger has; `differing`:
      # versions whose event (its class and attributes), occurred_at (to the microsecond)
      # or correlation id differ. Event and causation ids are not compared: `append` gives
      # moved events ids of their own. Raises as `read` does when the daemon cannot answer: a stream
      # that could not be read is never reported in sync.
      def compare(stream_id, with:)
        ours = by_version(read(stream_id))
        theirs = by_version(with.read(stream_id))
        both = ours.keys & theirs.keys
        differing = both.reject { |version| same_envelope?(ours[version], theirs[version]) }
        report = { stream_id: stream_id.to_s, checked: (ours.keys | theirs.keys).size,
                   missing: (theirs.keys - ours.keys).sort, extra: (ours.keys - theirs.keys).sort, differing: differing.sort }
        report.merge(in_sync: report.values_at(:missing, :extra, :differing).all?(&:empty?))
      end

      private

      COMPARED = %i[event correlation_id].freeze

      def by_version(envelopes)
        envelopes.to_h { |envelope| [envelope.version, envelope] }
      end

      def same_envelope?(ours, theirs)
        COMPARED.all? { |name| ours.public_send(name) == theirs.public_send(name) } &&
          ours.occurred_at&.floor(6) == theirs.occurred_at&.floor(6)
      end

      def known_contexts
        @lock.synchronize { @contexts.dup }
      end

      # The stream's last version and the transaction_time of its last commit.
      def head_of(stream)
        fact = @ledger.latest(events_store(stream.context), stream.to_s)
        return { version: 0, transaction_time: 0.0 } unless fact

        value = fact[:value]
        { version: value[:first_version] + value[:events].size - 1, transaction_time: fact[:transaction_time] }
      end

      def commits(stream, as_of: nil, since: nil)
        @ledger.facts(events_store(stream.context), stream.to_s, since: since, as_of: as_of)
               .sort_by { |fact| fact[:value][:first_version] }
      end

      def commit_envelopes(fact)
        value = fact[:value]
        occurred_at = Time.iso8601(value[:occurred_at]).getutc
        value[:events].map do |event|
          Envelope.new(event: codec.load(event[:type], event[:schema_version], event[:data]), event_id: event[:event_id],
                       stream_id: value[:stream_id], version: event[:version], occurred_at: occurred_at,
                       correlation_id: value[:correlation_id], causation_id: value[:causation_id])
        end
      end

      # True when the commit is stored (inserted, or replayed by a retry); false when
      # another commit holds its first version.
      def write_commit(stream, envelopes, head)
        write_index(stream, envelopes)
        # Strictly after the head's: the latest commit by transaction_time is the last one
        # by version, whatever the writers' clocks say.
        transaction_time = [Time.now.to_f, head[:transaction_time] + 0.000001].max
        @ledger.write(commit_fact(stream, envelopes, transaction_time), "append to #{stream}")
      end

      def commit_fact(stream, envelopes, transaction_time)
        first = envelopes.first
        store = events_store(stream.context)
        value = {
          "stream_id" => stream.to_s, "first_version" => first.version,
          "occurred_at" => first.occurred_at.iso8601(6),
          "correlation_id" => first.correlation_id, "causation_id" => first.causation_id,
          "events" => envelopes.map { |e| codec.dump(e.event).merge("event_id" => e.event_id, "version" => e.version) }
        }
        ActsAsTbackend::Fact.build(id: commit_id(store, stream, first.version), store: store, key: stream.to_s, value: value,
                                   valid_time: first.occurred_at.to_r, transaction_time: transaction_time,
                                   causation: first.causation_id, schema_version: COMMIT_FORMAT, producer: "tcb")
      end

      def commit_id(store, stream, first_version)
        ActsAsTbackend::Fact.derive_id(store: store, record_id: stream.to_s, event_type: "tcb.commit",
                                       source_version: first_version, format: :digest)
      end

      # Entries for each event id, and one for the commit's correlation id, pipelined.
      # The commit an index entry points at, if it holds the events the entry names.
      def committed(by_first_version, pointer)
        commit = by_first_version[pointer[:first_version]]
        commit if commit && commit[:value][:events].map { |event| event[:event_id] } == pointer[:event_ids]
      end

      def write_index(stream, envelopes)
        store = index_store(stream.context)
        pointer = { "stream_id" => stream.to_s, "first_version" => envelopes.first.version,
                    "event_ids" => envelopes.map(&:event_id) }
        keys = envelopes.map { |envelope| "event:#{envelope.event_id}" }
        keys << "correlation:#{envelopes.first.correlation_id}" if envelopes.first.correlation_id
        facts = keys.map do |key|
          # One entry per key and commit: several commits share a correlation id.
          id = ActsAsTbackend::Fact.derive_id(store: store, record_id: key, event_type: "tcb.index",
                                              source_version: envelopes.first.event_id, format: :digest)
          ActsAsTbackend::Fact.build(id: id, store: store, key: key, value: pointer, schema_version: COMMIT_FORMAT,
                                     producer: "tcb")
        end
        @ledger.write_all(facts, "index of #{stream}")
      end

      def index_entries(context, key)
        @ledger.facts(index_store(context), key)
      end

      # The envelopes of the commits the index entries point at, keeping only commits that
      # really hold the indexed events (an entry whose commit lost its version is dropped).
      def verified_envelopes(context, entries)
        entries.group_by { |entry| entry[:value][:stream_id] }.flat_map do |stream_id, stream_entries|
          stream = StreamId.parse(stream_id)
          next [] unless stream.context == context

          since = stream_entries.map { |entry| entry[:transaction_time] }.min - CLOCK_SLACK
          by_first_version = commits(stream, since: since).to_h { |fact| [fact[:value][:first_version], fact] }
          stream_entries.filter_map { |entry| committed(by_first_version, entry[:value]) }.uniq.flat_map do |commit|
            commit_envelopes(commit)
          end
        end
      end
    end
  end
end
