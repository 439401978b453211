# frozen_string_literal: true

# The 0.2 gem's require path (its lib had this file); the code lives in client/connection.rb.
require_relative "../acts_as_tbackend"
require_relative "client/connection"
