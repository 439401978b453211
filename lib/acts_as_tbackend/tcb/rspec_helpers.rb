# frozen_string_literal: true

require_relative "../tcb"
require_relative "rspec_matchers"

RSpec.configure { |config| config.include(TCB::RSpecHelpers) } if defined?(RSpec) && RSpec.respond_to?(:configure)
