# frozen_string_literal: true

require "json"
require "fileutils"
require "digest"

module ActsAsTbackend
  # `rake tbackend:backfill[Model]`: mirrors a model's existing rows, in primary-key order,
  # in batches written with pipelined `write_facts_once`. Each batch's facts are built
  # exactly as the macro builds them (store, key, sanitizing, `if:`/`unless:`), with event
  # type "backfill" and the row's updated_at in the id, so running it again — after an
  # interruption, or for good measure — replays instead of duplicating.
  #
  # A checkpoint file records the last primary key whose batch fully landed; a new run
  # resumes after it (RESTART=1 starts over). A batch that still has retryable failures
  # after `attempts` tries stops the run there, checkpoint intact: nothing is skipped.
  #
  # The checkpoint is keyed by database, table and (wire) store, in its file name and its
  # content: one written against a development database, or before a `db:reset`, must
  # never make a run skip rows (it once printed `done: written=0` and exited 0). A
  # checkpoint past the table's highest id, or written for other data, is refused
  # (CheckpointMismatch); a table-only checkpoint of older versions is ignored, with a
  # note, and the run starts over (a re-run only replays).
  class Backfill
    EVENT_TYPE = "backfill"

    # Rows the closing verify samples: the first SAMPLE_ROWS of SAMPLE_WINDOWS windows spread
    # over the ids the run covered (its first and last batch included).
    SAMPLE_WINDOWS = 10
    SAMPLE_ROWS = 100

    # `verified`: the closing verify's report (nil when no row was covered).
    Summary = Struct.new(:written, :replayed, :skipped, :failed, :last_id, :complete, :verified, keyword_init: true) do
      # Everything landed and the sample found no drift.
      def ok?
        complete && failed.zero? && (verified.nil? || verified.in_sync?)
      end
    end

    def initialize(model, batch_size: 1000, checkpoint: nil, restart: false, attempts: 5, io: $stderr,
                   client: ActsAsTbackend.client)
      raise ArgumentError, "#{model.name} does not call acts_as_tbackend" unless model.respond_to?(:tbackend_options)

      @model = model
      @options = model.tbackend_options
      @batch_size = Integer(batch_size)
      @attempts = attempts
      @client = client
      @identity = identity
      @checkpoint = checkpoint || default_checkpoint
      @progress = Progress.new(io)
      FileUtils.rm_f(@checkpoint) if restart
    end

    # Raises CheckpointMismatch (before writing anything) when the checkpoint was written
    # for other rows. Ends with a short verify of a sample of the rows it covered.
    def run
      summary = Summary.new(written: 0, replayed: 0, skipped: 0, failed: 0, last_id: load_checkpoint, complete: false)
      started_after = summary.last_id
      @progress.start(remaining(summary.last_id))
      loop do
        rows = next_batch(summary.last_id)
        break summary.complete = true if rows.empty?

        break unless write_batch(rows, summary)

        summary.last_id = rows.last.public_send(@model.primary_key)
        save_checkpoint(summary.last_id)
        @progress.advance(rows.size)
      end
      summary.verified = verify_sample(started_after, summary.last_id)
      summary
    ensure
      @progress.finish(summary)
    end

    private

    def next_batch(after_id)
      key = @model.primary_key
      scope = @model.unscoped.order(key => :asc).limit(@batch_size)
      scope = scope.where(@model.arel_table[key].gt(after_id)) unless after_id.nil?
      scope.to_a
    end

    # ActsAsTbackend.verify (rows only: the store may hold other tables' history) over up
    # to SAMPLE_WINDOWS * SAMPLE_ROWS rows of (after_id, last_id].
    def verify_sample(after_id, last_id)
      return nil if last_id.nil? || last_id == after_id

      require "acts_as_tbackend/mirror/verify"
      table = @model.arel_table[@model.primary_key]
      covered = @model.unscoped.where(table.lteq(last_id))
      covered = covered.where(table.gt(after_id)) unless after_id.nil?
      ids = sample_starts(covered, after_id, last_id).flat_map do |start|
        covered.where(table.gteq(start)).order(@model.primary_key => :asc).limit(SAMPLE_ROWS).pluck(@model.primary_key)
      end
      Mirror::Verify.new(@model, scope: @model.unscoped.where(@model.primary_key => ids.uniq), orphans: false,
                                 batch_size: @batch_size, client: @client).call
    end

    # Evenly spaced ids for an Integer key; else the covered range's first rows only.
    def sample_starts(covered, after_id, last_id)
      first = covered.minimum(@model.primary_key)
      return [first] unless first.is_a?(Integer) && last_id.is_a?(Integer)

      step = [(last_id - first + 1) / SAMPLE_WINDOWS, 1].max
      starts = (0...SAMPLE_WINDOWS).map { |i| first + (i * step) }
      (starts + [[last_id - SAMPLE_ROWS + 1, after_id.to_i + 1, first].max]).uniq
    end

    def remaining(after_id)
      scope = @model.unscoped
      scope = scope.where(@model.arel_table[@model.primary_key].gt(after_id)) unless after_id.nil?
      scope.count
    end

    # True when every fact landed (inserted, replayed) or failed for good; false when
    # retryable failures outlived the attempts.
    def write_batch(rows, summary)
      facts = rows.filter_map { |row| build(row, summary) }
      @attempts.times do |attempt|
        sleep(0.05 * (2**attempt) * rand) if attempt.positive?
        results = @client.write_facts_once(facts, durability: @options.durability)
        facts = tally(facts, results, summary)
        return true if facts.empty?
      end
      summary.failed += facts.size
      @progress.note("stopping: #{facts.size} facts still failing after #{@attempts} attempts; re-run to resume")
      false
    end

    def build(row, summary)
      unless @options.mirror?(row)
        summary.skipped += 1
        return nil
      end
      @options.fact_for(row, EVENT_TYPE)
    end

    # Counts what landed; returns the facts worth another attempt.
    def tally(facts, results, summary)
      facts.zip(results).filter_map do |fact, result|
        case result[:status]
        when "committed_acked" then summary.written += 1
        when "idempotent_replay" then summary.replayed += 1
        when *Client::RETRY_SAFE_STATUSES then next fact
        else
          summary.failed += 1
          @progress.note("fact #{fact['id']}: #{result[:status]}")
        end
        nil
      end
    end

    # Where this run's data lives: the database (adapter, host, port, name; never a
    # password), the table and the store as sent (store_prefix included).
    def identity
      db = @model.connection_db_config.configuration_hash
      database = [db[:adapter], db[:host], db[:port], db[:database] || db[:url]&.sub(%r{//[^@/]*@}, "//")]
      { "database" => database.compact.join(":"), "table" => @model.table_name,
        "store" => @client.wire_store(@options.store) }
    end

    def default_checkpoint
      digest = Digest::SHA256.hexdigest(JSON.generate(@identity))[0, 12]
      File.join(Dir.pwd, "tmp", "tbackend_backfill", "#{@identity['table']}.#{@identity['store']}.#{digest}.json")
    end

    def load_checkpoint
      legacy = File.join(File.dirname(@checkpoint), "#{@model.table_name}.json")
      ignore(legacy) if !File.file?(@checkpoint) && File.file?(legacy)
      return nil unless File.file?(@checkpoint)

      saved = JSON.parse(File.read(@checkpoint))
      return ignore(@checkpoint) if (saved.keys & @identity.keys).empty?

      check_identity!(saved)
      saved.fetch("last_id").tap { |last_id| check_reachable!(last_id) }
    end

    # Starting over is safe (a re-run only replays); skipping rows is not.
    def ignore(path)
      @progress.note("ignoring #{path}: it names no database or store; starting from the first row")
      nil
    end

    def check_identity!(saved)
      return if @identity.all? { |name, value| saved[name] == value }

      raise CheckpointMismatch, "checkpoint #{@checkpoint} was written for #{saved.slice(*@identity.keys).inspect}, " \
                                "not #{@identity.inspect}; nothing was written. RESTART=1 starts over"
    end

    # A last_id past the highest id: the rows it covered are not these (db:reset, a
    # restored dump, another database under the same name).
    def check_reachable!(last_id)
      highest = @model.unscoped.maximum(@model.primary_key)
      return if !highest.nil? && last_id <= highest

      raise CheckpointMismatch, "checkpoint #{@checkpoint} says last_id=#{last_id}, but #{@model.name}'s highest " \
                                "#{@model.primary_key} is #{highest.inspect}: it was written for other rows " \
                                "(db:reset? another database?); nothing was written. RESTART=1 starts over"
    end

    # Written to a temp file and renamed: a crash leaves the old checkpoint or the new.
    def save_checkpoint(last_id)
      FileUtils.mkdir_p(File.dirname(@checkpoint))
      temp = "#{@checkpoint}.tmp"
      File.write(temp, JSON.generate(@identity.merge("model" => @model.name, "last_id" => last_id,
                                                     "at" => Time.now.utc.iso8601)))
      File.rename(temp, @checkpoint)
    end

    # A progress bar with rate and ETA on a terminal; a line every few seconds otherwise.
    class Progress
      WIDTH = 30
      LOG_EVERY = 5.0

      def initialize(io, label: "tbackend:backfill")
        @io = io
        @label = label
        @tty = io.respond_to?(:tty?) && io.tty?
      end

      # `unit` names what is counted (rows, or seqs for a verify's ledger pass).
      def start(total, unit: "rows")
        @unit = unit
        @total = total
        @done = 0
        @started = now
        @last_line = 0.0
      end

      def advance(count)
        @done += count
        return unless @tty || now - @last_line >= LOG_EVERY || @done >= @total

        @last_line = now
        @io.print(@tty ? "\r#{line}" : "#{line}\n")
      end

      def note(message)
        @io.puts("#{"\n" if @tty}#{@label} #{message}")
      end

      def finish(summary)
        return unless summary

        @io.print("\n") if @tty
        @io.puts("tbackend:backfill #{summary.complete ? 'done' : 'stopped'}: written=#{summary.written} " \
                 "replayed=#{summary.replayed} skipped=#{summary.skipped} failed=#{summary.failed} " \
                 "last_id=#{summary.last_id.inspect}")
        verified(summary.verified)
      end

      def verified(report)
        return if report.nil?

        counts = report.counts.map { |name, count| "#{name}=#{count}" }.join(" ")
        @io.puts("tbackend:backfill verified a sample: checked=#{report.checked} #{counts}" \
                 "#{" error=#{report.error}" if report.error}#{' (drift: run rake tbackend:verify)' unless report.in_sync?}")
      end

      private

      def line
        fraction = @total.zero? ? 1.0 : [@done.fdiv(@total), 1.0].min
        elapsed = [now - @started, 1e-6].max
        rate = @done / elapsed
        eta = rate.positive? ? (@total - @done) / rate : 0
        bar = ("#" * (fraction * WIDTH).round).ljust(WIDTH, ".")
        format("[%<bar>s] %<done>d/%<total>d %<pct>3d%% %<rate>d %<unit>s/s ETA %<eta>s",
               bar: bar, done: @done, total: @total, pct: (fraction * 100).floor, rate: rate, unit: @unit, eta: clock(eta))
      end

      def clock(seconds)
        seconds = seconds.round
        format("%<h>02d:%<m>02d:%<s>02d", h: seconds / 3600, m: seconds % 3600 / 60, s: seconds % 60)
      end

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
