# frozen_string_literal: true

require "active_support/lazy_load_hooks"
require "acts_as_tbackend"
require "acts_as_tbackend/active_record/model"

# `require "acts_as_tbackend/extension"` gives every ActiveRecord model the
# `acts_as_tbackend` macro — now if ActiveRecord::Base is loaded, else when it loads.
ActiveSupport.on_load(:active_record) { extend ActsAsTbackend::Model }
