# frozen_string_literal: true

module ActsAsTbackend
  # Chooses which attributes of a record reach the ledger. `only` wins over `except`; the
  # denylist applies after both, so a secret never slips through an `only` list.
  module Sanitizer
    DEFAULT_DENYLIST = %w[
      password password_confirmation encrypted_password token access_token api_key secret secret_key
    ].freeze

    module_function

    # A new Hash with String top-level keys (`attributes.to_h`, keys by `to_s`); the input
    # is never modified. A list is `Array(list)`, its names compared as their `to_s`.
    # `denylist: true` means DEFAULT_DENYLIST, an Array names the keys to drop, nil/false
    # drops none. Native (src/record.rs): Mirror.build_fact runs the same code.
    def call(attributes, only: nil, except: nil, denylist: nil)
      Native.sanitize(attributes, only, except, denylist)
    end
  end
end
