# frozen_string_literal: true

# `require "tcb/minitest_helpers"`, as with the tcb gem.
require "acts_as_tbackend/tcb"
require "acts_as_tbackend/tcb/minitest_helpers"
