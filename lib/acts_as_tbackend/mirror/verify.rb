# frozen_string_literal: true

require "digest"
require "json"
require "acts_as_tbackend/mirror/mirror"

module ActsAsTbackend
  module Mirror
    # `ActsAsTbackend.verify(Model)`: proves the ledger holds every row's current state and
    # nothing the table does not, in two streaming passes whose memory is bounded by
    # `batch_size`, never by the table:
    #
    # 1. Rows, in primary-key order, `batch_size` at a time. Each row's fact is built as
    #    the macro builds it (Mirror.build_fact with the model's store, key, `if:`/`unless:`
    #    and sanitizer options) and compared with the key's latest fact, read for the
    #    whole batch in one pipelined `latest_for_many`: no fact is `missing`; a latest
    #    fact whose value_hash differs from the hash of the value the mirror would send
    #    now (so `10` vs `10.0`, a time's or a BigDecimal's serialisation all count, and
    #    a tombstone over a live row too) is `stale`.
    # 2. The ledger, by `facts_by_seq` windows of `batch_size` seqs up to a high-water mark
    #    taken when the pass starts. A key whose row is gone is read with `latest_for` and
    #    counted as `orphaned` only in the window that holds its latest fact (so once, with
    #    no set of keys kept across windows), and only if that fact is not a tombstone.
    #    Gap-safe: seq order is not visibility order (docs/protocol.md §8), so a window
    #    with a missing seq is read again once `grace` has passed since the mark (a gap
    #    still there is a burned seq); that waits at most once per run. Facts written
    #    after the mark are concurrent writes, left to the next verify.
    #
    # `repair: true` writes, for each missing or stale row, the fact the mirror would write
    # now, and a tombstone for each orphaned key. Its id is derived (event type "repair")
    # from the value's hash and the id of the latest fact it supersedes: it can never
    # collide with a fact of another value (the legacy id of a row changed by
    # update_columns, whose updated_at did not move, would be a
    # duplicate_fact_id_conflict), and a repair repeated over the same ledger only replays.
    #
    # A read that fails (daemon down, timeout) stops the verify: the report is incomplete,
    # says how far it got, and is never `in_sync?`.
    class Verify
      EVENT_TYPE = "repair"
      # Ids and keys kept per list in the report; the counts go on past it.
      LIMIT = 100
      ATTEMPTS = 5
      # Seconds after which a seq not yet visible is taken as burned (as Tail's grace).
      GRACE = 2.0

      # `checked`: rows compared; `missing`/`stale`: row ids, `orphaned`: ledger keys (the
      # first LIMIT of each; `counts` has the totals); `skipped`: rows the macro's
      # `if:`/`unless:` leave out; `repaired`: written/replayed/failed (repair: true);
      # `complete`: both passes ran to the end; `error`: why not, and how far it got.
      # `max_rows_held`/`max_keys_held`: the most rows (pass 1) and ledger facts (pass 2)
      # held at once.
      class Report
        attr_reader :model, :store, :missing, :stale, :orphaned, :counts, :repaired
        attr_accessor :checked, :skipped, :complete, :error, :last_id, :scanned_seq, :high_water, :max_rows_held,
                      :max_keys_held

        def initialize(model:, store:, limit: LIMIT)
          @model = model
          @store = store
          @limit = limit
          @checked = 0
          @skipped = 0
          @missing = []
          @stale = []
          @orphaned = []
          @counts = { missing: 0, stale: 0, orphaned: 0 }
          @repaired = nil
          @complete = false
          @max_rows_held = 0
          @max_keys_held = 0
        end

        def add(list, item)
          @counts[list] += 1
          items = public_send(list)
          items << item if items.size < @limit
        end

        def repairing!
          @repaired = { written: 0, replayed: 0, failed: 0 }
        end

        def drift?
          @counts.values.any?(&:positive?)
        end

        # Complete, and nothing missing, stale or orphaned. An incomplete run never is.
        def in_sync?
          complete && !drift?
        end

        def to_h
          { model: model, store: store, in_sync: in_sync?, complete: complete, checked: checked, skipped: skipped,
            counts: counts.dup, missing: missing.dup, stale: stale.dup, orphaned: orphaned.dup, repaired: repaired&.dup,
            error: error, last_id: last_id, scanned_seq: scanned_seq, high_water: high_water }
        end
      end

      # What a failed ledger read stops the verify with.
      class Stopped < StandardError; end

      # A destroyed row, as far as the ledger remembers it: the id and the last state, for
      # Mirror.build_fact to make its tombstone.
      Gone = Struct.new(:id, :attributes)

      # `orphans: false` skips pass 2 (the backfill's short verify of what it covered).
      # `progress`: an object with `start(total)` and `advance(count)` (the rake task's
      # Backfill::Progress).
      def initialize(model, scope: nil, repair: false, batch_size: 1_000, orphans: true, progress: nil,
                     client: ActsAsTbackend.client, timeout: nil, grace: GRACE)
        raise ArgumentError, "#{model.name} does not call acts_as_tbackend" unless model.respond_to?(:tbackend_options)

        @model = model
        @options = model.tbackend_options
        @scope = scope || model.all
        @repair = repair
        @batch_size = Integer(batch_size)
        raise ArgumentError, "batch_size must be positive" unless @batch_size.positive?

        @orphans = orphans
        @progress = progress
        @client = client
        @timeout = timeout
        @grace = Float(grace)
        @store = @options.store
        @primary_key = model.primary_key
      end

      def call
        report = Report.new(model: @model.name, store: @store)
        report.repairing! if @repair
        high_water = @orphans ? high_water_mark : nil
        check_rows(report)
        scan_ledger(report, high_water) if @orphans
        report.complete = true
        report
      rescue Stopped => e
        report.error = e.message
        report
      ensure
        publish(report) if report
      end

      private

      # ---- pass 1: rows ----

      def check_rows(report)
        @progress&.start(@scope.count, unit: "rows")
        after = nil
        loop do
          rows = next_rows(after)
          break if rows.empty?

          report.max_rows_held = [report.max_rows_held, rows.size].max
          check_batch(rows, report)
          after = rows.last.public_send(@primary_key)
          report.last_id = after
          @progress&.advance(rows.size)
        end
      end

      def next_rows(after)
        scope = @scope.reorder(@primary_key => :asc).limit(@batch_size)
        scope = scope.where(@model.arel_table[@primary_key].gt(after)) unless after.nil?
        scope.to_a
      end

      def check_batch(rows, report)
        facts = rows.filter_map do |row|
          next [row, build(row)] if @options.mirror?(row)

          report.skipped += 1
          nil
        end
        latest = read_latest(facts.map { |_, fact| fact["key"] }, report)
        repairs = []
        facts.zip(latest).each do |(row, fact), current|
          report.checked += 1
          list = if current.nil? then :missing
                 elsif current[:value_hash] != Fact.value_hash(fact["value"]) then :stale
                 end
          next unless list

          report.add(list, row.id)
          repairs << repair_fact(fact, row.id, current) if @repair
        end
        write_repairs(repairs, report)
      end

      def build(row)
        @options.fact_for(row, EVENT_TYPE)
      end

      # ---- pass 2: the ledger ----

      # The highest seq visible now. Seqs count from 1 with only small gaps, so a window
      # of batch_size seqs with no fact lies past the end: windows at doubling offsets
      # find one, a bisection narrows it to one window, and steps after the last fact
      # seen find the end. O(log n) reads of at most batch_size facts each.
      def high_water_mark
        found = ->(after) { read_facts(after, after + @batch_size, "finding the ledger's highest seq").last&.fetch(:seq_id) }
        low = 0
        high = @batch_size
        while found.call(high)
          low = high
          high *= 2
        end
        while high - low > @batch_size
          middle = (low + high) / 2
          found.call(middle) ? low = middle : high = middle
        end
        mark = low
        while (last = found.call(mark))
          mark = last
        end
        @marked_at = monotonic
        mark
      end

      def scan_ledger(report, high_water)
        report.high_water = high_water
        report.scanned_seq = 0
        @progress&.start(high_water, unit: "seqs")
        after = 0
        while after < high_water
          upto = [after + @batch_size, high_water].min
          facts = settled(read_facts(after, upto), after, upto)
          report.max_keys_held = [report.max_keys_held, facts.size].max
          find_orphans(facts, after, upto, report)
          @progress&.advance(upto - after)
          report.scanned_seq = after = upto
        end
      end

      # The window's facts, read again if a seq is missing while it may still become
      # visible: before `grace` has passed since the mark was taken.
      def settled(facts, after, upto)
        return facts if facts.size == upto - after

        wait = @marked_at + @grace - monotonic
        return facts unless wait.positive?

        sleep(wait)
        read_facts(after, upto)
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end

      # Keys in the window whose row is gone, counted where their latest fact lies.
      def find_orphans(facts, after, upto, report)
        by_key = facts.group_by { |fact| fact[:key] }
        candidates = rowless(by_key)
        return if candidates.empty?

        latest = read_latest(candidates, report)
        tombstones = []
        candidates.zip(latest).each do |key, current|
          next if current.nil? || !(after < current[:seq_id] && current[:seq_id] <= upto)
          next if current[:value].is_a?(Hash) && current[:value][:_tombstone] == true

          report.add(:orphaned, key)
          tombstones << tombstone_fact(key, current) if @repair
        end
        write_repairs(tombstones, report)
      end

      # The keys of `by_key` that no row mirrors now: the row named by the fact's
      # causation ("store:id:event", what Mirror.build_fact writes) or default key is
      # gone, or mirrors under another key.
      def rowless(by_key)
        ids = by_key.transform_values { |facts| record_id(facts.last) }
        rows = @model.unscoped.where(@primary_key => ids.values.compact.uniq).to_a
        keys = rows.to_h { |row| [row.id.to_s, @options.key_for(row)] }
        by_key.keys.reject { |key| ids[key] && keys[ids[key]] == key }
      end

      def record_id(fact)
        prefix = "#{@store}:"
        causation = fact[:causation].to_s
        return causation.delete_prefix(prefix).sub(/:[^:]*\z/, "") if causation.start_with?(prefix)
        return fact[:key].delete_prefix(prefix) if !@options.custom_key? && fact[:key].start_with?(prefix)

        nil
      end

      # ---- reads ----

      # The latest fact of each key (nil: none), or Stopped.
      def read_latest(keys, report)
        return [] if keys.empty?

        results = @client.latest_for_many(store: @store, keys: keys, timeout: @timeout)
        failed = results.find { |result| !result[:ok] }
        stop!(failed, report) if failed
        results.map { |result| result.dig(:response, :fact) }
      end

      def read_facts(after, upto, doing = "reading seqs #{after + 1}..#{upto}")
        result = @client.facts_by_seq(store: @store, after_seq: after, until_seq: upto, timeout: @timeout)
        stop!(result, nil, doing) unless result[:ok]
        result.dig(:response, :facts) || []
      end

      def stop!(result, report, doing = nil)
        where = if report.nil? || report.scanned_seq.nil?
                  doing || "checking rows after #{@primary_key} #{report&.last_id.inspect}"
                else
                  "scanning the ledger after seq #{report.scanned_seq}"
                end
        raise Stopped, "#{result[:status]} while #{where}: #{result[:error]}"
      end

      def publish(report)
        Instrumentation.publish(:verify, model: report.model, store: report.store, checked: report.checked,
                                         **report.counts, complete: report.complete, in_sync: report.in_sync?,
                                         repaired: report.repaired)
      end
    end

    # Repair: the facts a repair writes, and their writing.
    class Verify
      private

      # The mirror's fact, under an id derived from its value and the fact it supersedes.
      def repair_fact(fact, record_id, current)
        version = Digest::SHA256.hexdigest(JSON.generate([Fact.value_hash(fact["value"]), current&.fetch(:id)]))
        fact.merge("id" => Fact.derive_id(store: @store, record_id: record_id, event_type: EVENT_TYPE,
                                          source_version: version))
      end

      def tombstone_fact(key, current)
        value = current[:value].is_a?(Hash) ? current[:value] : {}
        gone = Gone.new(record_id(current) || key, value.transform_keys(&:to_s))
        fact = Mirror.build_fact(record: gone, store: @store, event_type: EVENT_TYPE, key: key, tombstone: true)
        repair_fact(fact, gone.id, current)
      end

      # Retries what may not have landed (a retry of the same id replays).
      def write_repairs(facts, report)
        return if facts.empty?

        ATTEMPTS.times do |attempt|
          break if facts.empty?

          sleep(0.05 * (2**attempt) * rand) if attempt.positive?
          facts = tally_repairs(facts, @client.write_facts_once(facts, durability: @options.durability), report)
        end
        report.repaired[:failed] += facts.size
      end

      # Counts what landed; returns the facts worth another attempt.
      def tally_repairs(facts, results, report)
        facts.zip(results).filter_map do |fact, result|
          case result[:status]
          when "committed_acked" then report.repaired[:written] += 1
          when "idempotent_replay" then report.repaired[:replayed] += 1
          when *Client::RETRY_SAFE_STATUSES then next fact
          else report.repaired[:failed] += 1
          end
          nil
        end
      end
    end

    class Verify
      # The rake task's summary table and exit status.
      class Summary
        def initialize(report)
          @report = report
        end

        # In sync, or every drift repaired.
        def ok?
          return false unless @report.complete
          return true unless @report.drift?

          repaired = @report.repaired
          !repaired.nil? && repaired[:failed].zero? &&
            repaired[:written] + repaired[:replayed] == @report.counts.values.sum
        end

        def to_s
          r = @report
          rows = [["checked", r.checked, nil], ["skipped", r.skipped, "left out by if:/unless:"]]
          rows += r.counts.map { |name, count| [name.to_s, count, sample(r.public_send(name), count)] }
          rows << ["repaired", r.repaired.values.sum, r.repaired.map { |k, v| "#{k}=#{v}" }.join(" ")] if r.repaired
          table = rows.map { |name, count, detail| format("  %-9<n>s %9<c>d  %<d>s", n: name, c: count, d: detail).rstrip }
          ["tbackend:verify #{r.model} (store #{r.store}): #{verdict}", *table].join("\n")
        end

        private

        def verdict
          return "INCOMPLETE: #{@report.error}" unless @report.complete
          return "in sync" unless @report.drift?

          ok? ? "drift found and repaired" : "DRIFT"
        end

        def sample(items, count)
          return nil if count.zero?

          shown = items.map(&:to_s).join(", ")
          count > items.size ? "#{shown}, … (#{count - items.size} more)" : shown
        end
      end
    end
  end
end
