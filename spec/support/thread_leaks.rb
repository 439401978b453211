# frozen_string_literal: true

module TbackendSpec
  # No example may leave a Ruby thread running. One that a failed example left behind
  # kept calling a stopped daemon at 100% CPU, grew rspec to 16 GB and failed later
  # examples. After each example (after its own teardown: this hook wraps every other),
  # a thread that did not exist before it and is still alive after a short grace fails
  # that example, by name and creation site, and is killed and joined, so one failure
  # cannot cascade.
  module ThreadLeaks
    # For threads already told to stop and on their way out.
    GRACE = 1.0

    # Threads a library keeps for the life of the process by design; stopping them is
    # neither an example's job nor possible through a public API. Nothing of ours is
    # here: our gem's threads (the TCB bus dispatcher, the writer's) are stopped by the
    # examples that start them.
    LONG_LIVED = {
      # Ruby 3.3's timeout library runs every Timeout.timeout through one watcher
      # thread, started on first use and never stopped (3.1's used a thread per call).
      "Timeout's watcher" => ->(thread) { thread.name == "Timeout stdlib thread" },
      # ActiveRecord's connection pool reaper: one per reaping frequency, shared by the
      # pools of the process; it stops only a reaping period (60 s) after the last pool
      # is gone ("AR Pool Reaper" on 7.x, unnamed on 6.1).
      "ActiveRecord's pool reaper" => lambda do |thread|
        thread.name == "AR Pool Reaper" ||
          thread.backtrace.to_a.any? { |line| line.include?("active_record/connection_adapters/abstract/connection_pool") }
      end,
      # concurrent-ruby 1.1 (Debian 12) starts its thread-local finalizer thread when
      # RubyThreadLocalVar is first loaded, which happens inside whichever example first
      # touches ActiveSupport's per-thread state; it lives as long as the process.
      "concurrent-ruby's thread-local finalizer" => lambda do |thread|
        thread.backtrace.to_a.any? { |line| line.include?("concurrent/atomic/ruby_thread_local_var.rb") }
      end
    }.freeze

    module_function

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # The threads started since `before` that are still running after the grace.
    def left_running(before)
      deadline = monotonic + GRACE
      (Thread.list - before).reject do |thread|
        finished?(thread, [deadline - monotonic, 0].max) || LONG_LIVED.values.any? { |known| known.call(thread) }
      end
    end

    def finished?(thread, seconds)
      !thread.join(seconds).nil?
    rescue Exception # rubocop:disable Lint/RescueException
      true # it ended by raising; the example that started it sees that, or not: not a leak
    end

    def stop(threads)
      threads.each(&:kill)
      threads.each { |thread| finished?(thread, 5) }
    end
  end
end

RSpec.configure do |config|
  config.around do |example|
    before = Thread.list
    example.run
    leaked = TbackendSpec::ThreadLeaks.left_running(before)
    unless leaked.empty?
      names = leaked.map(&:inspect)
      TbackendSpec::ThreadLeaks.stop(leaked)
      raise "#{leaked.size} thread(s) left running by this example (killed): #{names.join(', ')}"
    end
  end
end
