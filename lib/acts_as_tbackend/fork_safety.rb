# frozen_string_literal: true

module ActsAsTbackend
  # After fork (Puma cluster, Sidekiq, Spring, parallel tests) the child must not touch the
  # parent's connections, threads or queues: writing on an inherited socket interleaves
  # frames with the parent's, a shutdown(2) would cut the parent's connection, and the
  # parent's threads do not exist in the child.
  #
  # In a forked child, before `fork` returns, one hook calls `after_fork` on each object
  # registered here, in the order registered. Only process-wide objects register, and
  # they are held for the life of the process: the module (its memoised async writer)
  # and the native core, which forgets every client and async writer the parent built
  # (src/per_process.rs keeps them weakly, in Rust). Per-instance Ruby state checks the
  # pid on use instead (the TCB event bus). There is no weak registry in Ruby: Ruby
  # 3.1's WeakMap#keys hands back keys that have died, and resetting one crashed the
  # child.
  module ForkSafety
    @registry = []

    class << self
      # This process's pid, without a system call: set again by the hook in each child.
      attr_reader :pid

      # Registers `object` (anything with an `after_fork` method) for good, once;
      # returns it.
      def register(object)
        @registry << object unless registered?(object)
        object
      end

      # @api private: whether `object` will be reset after the next fork.
      def registered?(object)
        @registry.any? { |registered| registered.equal?(object) }
      end

      # @api private: run in a new child process by the hook below.
      def after_fork
        @pid = Process.pid
        # A snapshot: an `after_fork` may register something.
        objects = @registry.dup
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
