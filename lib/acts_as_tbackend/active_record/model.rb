# frozen_string_literal: true

require "acts_as_tbackend/active_record/options"
require "acts_as_tbackend/active_record/pending_change"

module ActsAsTbackend
  # The `acts_as_tbackend` macro (extension.rb extends ActiveRecord::Base with it).
  # Named Model, not ActiveRecord: an `ActsAsTbackend::ActiveRecord` constant would shadow
  # ::ActiveRecord for every line of code written inside `module ActsAsTbackend`.
  module Model
    # Mirrors every create, update (a save that changed something, or a touch) and
    # destroy (as a tombstone) after the outermost transaction commits; nothing of a
    # rolled-back transaction or savepoint. See docs/mirror.md.
    #
    #   acts_as_tbackend store: "orders", except: %i[created_at updated_at], denylist: true,
    #                    key: ->(order) { "order:#{order.number}" }, if: :mirrored?, async: true
    def acts_as_tbackend(**options)
      settings = Options.new(self, **options)
      if method_defined?(:tbackend_key) && respond_to?(:tbackend_options)
        # A subclass (or a second call) changes the options; the callbacks stay single.
        self.tbackend_options = settings
        return settings
      end

      class_attribute :tbackend_options, instance_accessor: false
      self.tbackend_options = settings
      extend ClassMethods
      include InstanceMethods
      after_create { PendingChange.capture(self, self.class.tbackend_options, "create") }
      after_update { PendingChange.capture(self, self.class.tbackend_options, "update") if saved_changes? }
      after_touch { PendingChange.capture(self, self.class.tbackend_options, "update") }
      after_destroy { PendingChange.capture(self, self.class.tbackend_options, "destroy") }
      settings
    end

    # Reads for debugging and audit screens. They never raise: a failure, a disabled
    # connector or an unknown record read as "no facts".
    module ClassMethods
      # Every fact the mirror wrote for the record (a record, or its id), oldest first: an
      # Array of fact Hashes as the daemon returns them (Symbol keys), [] when none.
      def tbackend_history(record_or_id)
        key = tbackend_key_for(record_or_id)
        key ? Mirror.history(store: tbackend_options.store, key: key) : []
      end

      # The newest fact for the record (as of `as_of`), a fact Hash, or nil.
      def tbackend_latest_for(record_or_id, as_of: nil)
        key = tbackend_key_for(record_or_id)
        key ? Mirror.latest(store: tbackend_options.store, key: key, as_of: as_of) : nil
      end

      # The key the mirror writes for a record or an id. With a custom `key:` an id is
      # looked up first (nil if there is no such row: pass the record itself to read a
      # destroyed one's history).
      def tbackend_key_for(record_or_id)
        options = tbackend_options
        return options.key_for(record_or_id) if record_or_id.is_a?(self)
        return Mirror.default_key(options.store, record_or_id) unless options.custom_key?

        record = unscoped.find_by(primary_key => record_or_id)
        record && options.key_for(record)
      rescue StandardError
        nil
      end
    end

    # Per-record helpers, configured by the macro.
    module InstanceMethods
      def tbackend_key
        self.class.tbackend_options.key_for(self)
      end

      def tbackend_history
        self.class.tbackend_history(self)
      end

      def tbackend_latest(as_of: nil)
        self.class.tbackend_latest_for(self, as_of: as_of)
      end

      # The fact the mirror would write for this record now, for an app-owned job or
      # outbox.
      def tbackend_fact(event_type:, tombstone: false, valid_time: nil)
        self.class.tbackend_options.fact_for(self, event_type, tombstone: tombstone, valid_time: valid_time)
      end

      # Writes that fact now, synchronously, through Mirror.mirror! (a soft result).
      def mirror_tbackend(event_type:, tombstone: false, valid_time: nil, durability: nil)
        options = self.class.tbackend_options
        Mirror.mirror!(record: self, store: options.store, event_type: event_type, key: tbackend_key,
                       tombstone: tombstone, valid_time: valid_time, durability: durability || options.durability,
                       only: options.only, except: options.except, denylist: options.denylist)
      end
    end
  end
end
