# frozen_string_literal: true

# The 0.2 gem's require path (its lib had this file); the code lives in mirror/sanitizer.rb.
require_relative "../acts_as_tbackend"
require_relative "mirror/sanitizer"
