# frozen_string_literal: true

require "digest"

module TbackendSpec
  # Mirror.build_fact as it was written in Ruby before it became one native call
  # (src/record.rs), kept as the oracle the native one must equal: Sanitizer.call,
  # `respond_to?` for updated_at and valid_time, the content digest of the canonical JSON,
  # Fact.derive_id and Fact.build.
  module RubyBuildFact
    DEFAULT_DENYLIST = %w[
      password password_confirmation encrypted_password token access_token api_key secret secret_key
    ].freeze

    module_function

    def build_fact(record:, store:, event_type:, only: nil, except: nil, denylist: nil, tombstone: false, valid_time: nil,
                   key: nil)
      attributes = sanitize(record.attributes, only: only, except: except, denylist: denylist)
      id = ActsAsTbackend::Fact.derive_id(store: store, record_id: record.id, event_type: event_type,
                                          source_version: source_version(record, attributes))
      ActsAsTbackend::Fact.build(
        id: id, store: store, key: key || "#{store}:#{record.id}",
        value: tombstone ? { "_tombstone" => true } : attributes,
        valid_time: valid_time || (record.valid_time if record.respond_to?(:valid_time)),
        causation: "#{store}:#{record.id}:#{event_type}", producer: ActsAsTbackend.config.producer
      )
    end

    def sanitize(attributes, only: nil, except: nil, denylist: nil)
      sanitized = attributes.to_h.transform_keys(&:to_s)
      if only
        keep = names(only)
        sanitized.select! { |name, _| keep.include?(name) }
      elsif except
        drop = names(except)
        sanitized.reject! { |name, _| drop.include?(name) }
      end
      denied = denylist_names(denylist)
      sanitized.reject! { |name, _| denied.include?(name) } unless denied.empty?
      sanitized
    end

    def denylist_names(denylist)
      case denylist
      when nil, false then []
      when true then DEFAULT_DENYLIST
      else names(denylist)
      end
    end

    def names(list)
      Array(list).map(&:to_s)
    end

    def source_version(record, attributes)
      updated_at = record.updated_at if record.respond_to?(:updated_at)
      updated_at.nil? ? content_digest(attributes) : updated_at
    end

    def content_digest(attributes)
      Digest::SHA256.hexdigest(ActsAsTbackend::Fact.to_json(canonical(attributes)))
    end

    def canonical(value)
      case value
      when Hash then value.map { |k, v| [k.to_s, canonical(v)] }.sort_by(&:first).to_h
      when Array then value.map { |v| canonical(v) }
      else value
      end
    end
  end
end
