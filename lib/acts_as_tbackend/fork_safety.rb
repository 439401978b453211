# frozen_string_literal: true

module ActsAsTbackend
  # After fork (Puma cluster, Sidekiq, Spring, parallel tests) the child must not touch the
  # parent's connections: writing on an inherited socket interleaves frames with the
  # parent's, and a shutdown(2) would cut the parent's connection. The native client
  # checks the pid on every call and rebuilds itself in a new process; this hook makes
  # the child drop the inherited sockets at once instead of at its first call.
  module ForkSafety
    def _fork
      pid = super
      ActsAsTbackend.after_fork! if pid.zero?
      pid
    end
  end
end

Process.singleton_class.prepend(ActsAsTbackend::ForkSafety) if Process.respond_to?(:_fork)
