# frozen_string_literal: true

module ActsAsTbackend
  # After fork (Puma cluster, Sidekiq, Spring, parallel tests) the child must not touch the
  # parent's connections, threads or queues: writing on an inherited socket interleaves
  # frames with the parent's, a shutdown(2) would cut the parent's connection, and the
  # parent's threads do not exist in the child.
  #
  # Everything that holds such state registers here when it is built (clients, async
  # writers, TCB event buses, the memoised async writer) and answers `after_fork`. In a
  # forked child, before `fork` returns, one hook calls `after_fork` once on each, in
  # whatever order. An object built in the child registers there and is reset by the
  # child's own forks. The registry holds its objects weakly: it keeps nothing alive.
  #
  # The native core also notices a new process by itself on its next call (see
  # src/per_process.rs); the hook makes the child drop what it inherited at once.
  module ForkSafety
    @registry = ObjectSpace::WeakMap.new

    class << self
      # This process's pid, without a system call: set again by the hook in each child.
      attr_reader :pid

      # Registers `object` (anything with an `after_fork` method); returns it.
      def register(object)
        @registry[object] = true
        object
      end

      # @api private: whether `object` will be reset after the next fork.
      def registered?(object)
        @registry.key?(object)
      end

      # @api private: run in a new child process by the hook below.
      def after_fork
        @pid = Process.pid
        # A snapshot: an `after_fork` may build (and so register) something.
        objects = @registry.keys
        objects.each { |object| reset(object) }
        nil
      end

      private

      # One object that fails to reset must not keep the others from it.
      def reset(object)
        object.after_fork
      rescue StandardError => e
        warn("acts_as_tbackend: after fork, resetting #{object.class} failed: #{e.class}: #{e.message}")
      end
    end

    @pid = Process.pid

    # Process._fork runs for Kernel#fork, Process.fork and IO.popen("-") (Ruby 3.1+).
    # Process.daemon forks without it, so it is hooked too (it returns only in the child).
    module Hook
      def _fork
        pid = super
        ForkSafety.after_fork if pid.zero?
        pid
      end

      def daemon(*args)
        result = super
        ForkSafety.after_fork
        result
      end
    end
  end
end

Process.singleton_class.prepend(ActsAsTbackend::ForkSafety::Hook) if Process.respond_to?(:_fork)
