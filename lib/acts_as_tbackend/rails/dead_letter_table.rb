# frozen_string_literal: true

module ActsAsTbackend
  # The app's `tbackend_dead_letters` table (`rails generate acts_as_tbackend:dead_letters`),
  # where DeadLetters keeps MirrorRetryJob's dead letters when the app has it: one place
  # for every host and worker. Rows hold DeadLetters' record fields; `fact` as JSON.
  module DeadLetterTable
    NAME = "tbackend_dead_letters"

    module_function

    # Asked on every use (dead letters are rare): a table migrated while the app runs counts.
    def exists?
      defined?(::ActiveRecord::Base) && model.connection.data_source_exists?(NAME)
    rescue StandardError
      false
    end

    # ActsAsTbackend::DeadLetterRecord, defined on first use so a plain
    # `require "acts_as_tbackend"` never loads ActiveRecord.
    def model
      return ActsAsTbackend::DeadLetterRecord if ActsAsTbackend.const_defined?(:DeadLetterRecord, false)

      ActsAsTbackend.const_set(:DeadLetterRecord, Class.new(::ActiveRecord::Base) { self.table_name = NAME })
    end

    # false when there is no table or the row could not be written: the caller keeps the
    # record elsewhere.
    def insert(rec)
      return false unless exists?

      model.create!(
        fact_id: rec["id"], store: rec["store"], fact_key: rec["key"], status: rec["status"], reason: rec["reason"],
        error: rec["error"], attempts: rec["attempts"], durability: rec["durability"], via: rec["via"],
        fact: JSON.generate(rec["fact"]), created_at: Time.at(rec["at"])
      )
      true
    rescue StandardError
      false
    end

    # [row id, record] pairs, oldest first.
    def records
      return [] unless exists?

      model.order(:id).map do |row|
        [row.id, {
          "at" => row.created_at.to_f, "reason" => row.reason, "status" => row.status, "error" => row.error,
          "attempts" => row.attempts, "store" => row.store, "key" => row.fact_key, "id" => row.fact_id,
          "durability" => row.durability, "fact" => JSON.parse(row.fact), "via" => row.via
        }]
      end
    end

    def delete(ids)
      model.where(id: ids).delete_all
    end
  end
end
