# frozen_string_literal: true

# `require "tcb/rspec_helpers"`, as with the tcb gem.
require "acts_as_tbackend/tcb/rspec_helpers"
