# frozen_string_literal: true

module ActsAsTbackend
  # Chooses which attributes of a record reach the ledger. `only` wins over `except`; the
  # denylist applies after both, so a secret never slips through an `only` list.
  module Sanitizer
    DEFAULT_DENYLIST = %w[
      password password_confirmation encrypted_password token access_token api_key secret secret_key
    ].freeze

    module_function

    # A new Hash with String top-level keys; the input is never modified. `denylist: true`
    # means DEFAULT_DENYLIST, an Array names the keys to drop, nil/false drops none.
    def call(attributes, only: nil, except: nil, denylist: nil)
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
    private_class_method :denylist_names, :names
  end
end
