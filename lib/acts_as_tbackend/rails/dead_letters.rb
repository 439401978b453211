# frozen_string_literal: true

require "json"
require "time"
require_relative "dead_letter_table"
require_relative "../async/dead_letter_file"

module ActsAsTbackend
  # Facts given up for good — by MirrorRetryJob (attempts exhausted, or a terminal answer
  # such as duplicate_fact_id_conflict) and by the native async writer — kept WITH their
  # content: `rake tbackend:dead_letters` lists them, `rake tbackend:dead_letters:replay`
  # sends them again and removes those the daemon stored.
  #
  # Where MirrorRetryJob keeps one: the app's `tbackend_dead_letters` table when it has one
  # (`rails generate acts_as_tbackend:dead_letters`; one place for every host and worker),
  # else the JSONL file `dead_letter_path`, by default `dead-letter.jsonl` beside the spool
  # (the file the native writer appends to, in the same record format) or, without a
  # spool, `tmp/tbackend/dead-letter.jsonl` under the app. Listing and replay read the
  # table, that file and the spool's file.
  #
  # One record: at (epoch seconds), reason (exhausted, conflict, error), status, error,
  # attempts, store, key, id, durability, fact (the fact itself), via (active_job; absent
  # from the native writer's). Every writer of a file holds `<file>.lock` (flock): an
  # append is one write, a replay rewrites the file through a rename.
  module DeadLetters
    # The native writer's file name beside the spool (tbackend-client's spool module).
    FILE_NAME = Native::SPOOL_DEAD_LETTER_FILE
    TABLE = DeadLetterTable::NAME
    # What a replay counts as stored: the entry is removed.
    DELIVERED = %w[committed_acked idempotent_replay].freeze

    # One kept fact. `source` is the file's path or TABLE; `ref` the file line or row id.
    Entry = Struct.new(:source, :ref, :record) do
      # What the list shows: never the fact's values.
      def summary
        {
          id: record["id"], store: record["store"], status: record["status"], reason: record["reason"],
          attempts: record["attempts"], at: Time.at(record["at"].to_f).utc.iso8601(3), source: source
        }
      end
    end

    module_function

    # Keeps `fact` (a String-keyed Hash, as sent: Client#wire_fact); returns where (TABLE or
    # the file's path). Raises only when neither the table nor the file could take it.
    def record(fact, status:, error:, attempts:, reason:, durability: nil, via: nil, config: ActsAsTbackend.config)
      rec = {
        "at" => Time.now.to_f, "reason" => reason, "status" => status, "error" => error, "attempts" => attempts,
        "store" => fact["store"], "key" => fact["key"], "id" => fact["id"], "durability" => durability,
        "fact" => fact, "via" => via
      }
      return TABLE if DeadLetterTable.insert(rec)

      file = path(config)
      DeadLetterFile.append(file, rec)
      file
    end

    # Every kept fact: the table's rows, then each file's lines in order.
    def entries(config = ActsAsTbackend.config)
      DeadLetterTable.records.map { |id, rec| Entry.new(TABLE, id, rec) } +
        paths(config).flat_map { |file| DeadLetterFile.records(file).map { |line, rec| Entry.new(file, line, rec) } }
    end

    # Sends every entry again with write_fact_once, exactly as it was sent the first time
    # (its store already carries any store_prefix: the default client applies none);
    # removes the ones stored (DELIVERED), keeps the rest. Returns [entry, result] pairs.
    def replay(client: nil, config: ActsAsTbackend.config)
      own = client.nil?
      client ||= Client.new(config.dup.tap { |unprefixed| unprefixed.store_prefix = "" })
      outcomes = replay_with(client, entries(config))
      remove(outcomes.select { |_, result| DELIVERED.include?(result[:status]) }.map(&:first))
      outcomes
    ensure
      client.shutdown if own && client
    end

    def replay_with(client, entries)
      entries.map do |entry|
        fact = entry.record["fact"]
        result = if fact.is_a?(Hash)
                   client.write_fact_once(fact, durability: entry.record["durability"])
                 else
                   { ok: false, status: "no_content", error: "the dead letter holds no fact" }
                 end
        [entry, result]
      end
    end

    # The file MirrorRetryJob writes when there is no table.
    def path(config = ActsAsTbackend.config)
      return config.dead_letter_path if config.dead_letter_path
      return spool_file(config) if config.spool_path

      File.join(app_root, "tmp", "tbackend", FILE_NAME)
    end

    # The native writer's dead-letter file, nil without a spool.
    def spool_file(config = ActsAsTbackend.config)
      config.spool_path && File.join(config.spool_path, FILE_NAME)
    end

    # The files listed and replayed: ours and the native writer's beside the spool.
    def paths(config = ActsAsTbackend.config)
      [path(config), spool_file(config)].compact.uniq
    end

    def app_root
      (::Rails.root if defined?(::Rails) && ::Rails.respond_to?(:root))&.to_s || Dir.pwd
    end

    def remove(entries)
      entries.group_by(&:source).each do |source, gone|
        source == TABLE ? DeadLetterTable.delete(gone.map(&:ref)) : DeadLetterFile.remove(source, gone.map(&:ref))
      end
    end
  end
end
