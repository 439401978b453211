# frozen_string_literal: true

require "English"
require "fileutils"
require "rbconfig"

module ActsAsTbackend
  # Loads the native extension. In a source checkout that has not run `rake compile` (a
  # Gemfile `path:` source), the first require builds it with cargo, the way `rake
  # compile:ext` does; without cargo it says what to run. An installed gem was built by
  # `gem install`: a missing extension there is a plain LoadError.
  module NativeBuild
    ROOT = File.expand_path("../..", __dir__)
    LIB = File.join(ROOT, "lib")
    FEATURE = "acts_as_tbackend/acts_as_tbackend_native"
    BUILD_DIR = File.join(ROOT, "tmp", "ext")

    module_function

    def load!
      require FEATURE
    rescue LoadError => e
      raise unless e.path == FEATURE && source_checkout?

      build_on_first_require(e)
      require FEATURE
    end

    # A checkout has the Rakefile; the gem's files do not include it.
    def source_checkout?
      File.file?(File.join(ROOT, "Rakefile")) && File.file?(File.join(ROOT, "ext", "acts_as_tbackend", "extconf.rb"))
    end

    def library
      File.join(LIB, "#{FEATURE}.#{RbConfig::CONFIG['DLEXT']}")
    end

    def cargo
      ENV.fetch("CARGO", "cargo")
    end

    def cargo?
      return File.executable?(cargo) if cargo.include?(File::SEPARATOR)

      ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).any? { |dir| File.executable?(File.join(dir, cargo)) }
    end

    # Builds lib/acts_as_tbackend/acts_as_tbackend_native.so: extconf.rb's Makefile, then
    # `make install` into lib/ (the library appears by rename). Output goes to `out`.
    def compile(out:)
      FileUtils.mkdir_p(BUILD_DIR)
      target = ENV.fetch("CARGO_TARGET_DIR", "")
      env = { "CARGO_TARGET_DIR" => target.empty? ? File.join(ROOT, "target") : target, "ACTS_AS_TBACKEND_DEV" => "1" }
      [[RbConfig.ruby, File.join(ROOT, "ext", "acts_as_tbackend", "extconf.rb")],
       ["make", "install", "sitearchdir=#{LIB}"]].each do |command|
        next if system(env, *command, chdir: BUILD_DIR, out: out, err: out)

        raise LoadError, "acts_as_tbackend: `#{command.join(' ')}` failed (#{$CHILD_STATUS})"
      end
    end

    # Parallel first requires (test workers, Puma workers booting) wait for one build.
    def build_on_first_require(error)
      unless cargo?
        raise LoadError, "acts_as_tbackend: the native extension is not built in this checkout (#{ROOT}), and " \
                         "`#{cargo}` is not on PATH to build it. Install Rust (cargo), then run `rake compile` " \
                         "in #{ROOT} (or `bin/setup`). (#{error.message})"
      end

      FileUtils.mkdir_p(BUILD_DIR)
      File.open(File.join(BUILD_DIR, "first-require.lock"), File::RDWR | File::CREAT, 0o644) do |lock|
        lock.flock(File::LOCK_EX)
        build_with_messages unless File.file?(library)
      end
    end

    def build_with_messages
      log = File.join(BUILD_DIR, "first-require.log")
      warn "acts_as_tbackend: the native extension is not built in this checkout; building it now with cargo " \
           "into #{library} (usually 1-5 minutes the first time; output: #{log}). " \
           "`rake compile` builds it ahead of time."
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      File.open(log, "w") do |out|
        compile(out: out)
      rescue LoadError => e
        out.flush
        raise LoadError, "#{e.message}; last lines of #{log}:\n#{File.readlines(log).last(20).join}"
      end
      seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      warn "acts_as_tbackend: built the native extension in #{seconds.round}s"
    end
  end
end
