# frozen_string_literal: true

require "acts_as_tbackend/test_daemon"

# The specs use the gem's own test-daemon helper (lib/acts_as_tbackend/test_daemon.rb).
module TbackendSpec
  TestDaemon = ActsAsTbackend::TestDaemon
  FramedSocket = ActsAsTbackend::TestDaemon::FramedSocket
end
