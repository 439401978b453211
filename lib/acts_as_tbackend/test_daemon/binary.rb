# frozen_string_literal: true

require "digest"
require "fileutils"
require "open3"
require_relative "../version"

module ActsAsTbackend
  class TestDaemon
    # Finds the tbackend-testd executable: `TBACKEND_TESTD_BIN`, else a source checkout's
    # `target/release/tbackend-testd`, else a per-user cache, built there with cargo on
    # first use. Built on use rather than at `gem install`: production hosts install the
    # gem and never run the test daemon, and the cache outlives reinstalls of one version.
    # The gem directory is only read (cargo gets its own target dir, and `--locked`).
    module Binary
      NAME = "tbackend-testd"
      GEM_ROOT = File.expand_path("../../..", __dir__)
      # What `cargo build -p tbackend-testd` compiles: the cache key changes with any of it.
      SOURCES = %w[Cargo.toml Cargo.lock crates/tbackend-core/Cargo.toml crates/tbackend-core/src/**/*.rs
                   crates/tbackend-testd/Cargo.toml crates/tbackend-testd/src/**/*.rs].freeze

      # Raised when the daemon cannot be built (no cargo, a failed build).
      class BuildError < StandardError; end

      module_function

      def path(out: $stderr)
        override = ENV.fetch("TBACKEND_TESTD_BIN", "")
        return override unless override.empty?

        development_binary || cached(out: out)
      end

      # `rake compile` builds the daemon into the checkout's target dir; an installed gem
      # has no Rakefile, and never uses a target dir inside itself.
      def development_binary
        return nil unless File.file?(File.join(GEM_ROOT, "Rakefile"))

        target = ENV.fetch("CARGO_TARGET_DIR", "")
        target = File.join(GEM_ROOT, "target") if target.empty?
        binary = File.join(target, "release", NAME)
        File.executable?(binary) ? binary : nil
      end

      def default_cache_root
        base = ENV.fetch("XDG_CACHE_HOME", "")
        base = File.join(Dir.home, ".cache") if base.empty?
        File.join(base, "acts_as_tbackend")
      end

      # The sources do not change under a running process: hashed once.
      def cache_key
        @cache_key ||= "#{ActsAsTbackend::VERSION}-#{source_digest[0, 16]}"
      end

      def source_digest
        digest = Digest::SHA256.new
        Dir.chdir(GEM_ROOT) { SOURCES.flat_map { |pattern| Dir[pattern] }.sort }.each do |relative|
          digest << relative << "\0" << File.binread(File.join(GEM_ROOT, relative)) << "\0"
        end
        digest.hexdigest
      end

      # `<cache_root>/<version>-<source hash>/tbackend-testd`, built if missing. Concurrent
      # first uses (parallel test workers) queue on a lock file; the binary appears by
      # rename, so a reader never sees half of it.
      def cached(cache_root: default_cache_root, out: $stderr)
        key = cache_key
        binary = File.join(cache_root, key, NAME)
        return binary if File.executable?(binary)

        FileUtils.mkdir_p(cache_root)
        File.open(File.join(cache_root, "#{key}.lock"), File::RDWR | File::CREAT, 0o644) do |lock|
          lock.flock(File::LOCK_EX)
          build(cache_root, key, binary, out) unless File.executable?(binary)
        end
        binary
      end

      def build(cache_root, key, binary, out)
        cargo = ENV.fetch("CARGO", "cargo")
        user_target = ENV.fetch("CARGO_TARGET_DIR", "")
        target = user_target.empty? ? File.join(cache_root, "target") : user_target
        log = File.join(cache_root, "#{key}.build.log")
        out.puts "acts_as_tbackend: building #{NAME} with cargo into #{File.dirname(binary)} " \
                 "(once per gem version, usually 1-3 minutes; log: #{log})"
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        run_cargo(cargo, target, log)
        install(File.join(target, "release", NAME), binary)
        seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
        out.puts "acts_as_tbackend: built #{NAME} in #{seconds.round}s"
      ensure
        # Our own target dir is only intermediates; a user's CARGO_TARGET_DIR is theirs.
        FileUtils.rm_rf(target) if target && user_target.to_s.empty?
      end

      def run_cargo(cargo, target, log)
        locked = File.file?(File.join(GEM_ROOT, "Rakefile")) ? [] : ["--locked"]
        command = [cargo, "build", "--release", *locked, "-p", "tbackend-testd", "--bin", NAME]
        output, status = Open3.capture2e({ "CARGO_TARGET_DIR" => target }, *command, chdir: GEM_ROOT)
        File.write(log, output)
        return if status.success?

        raise BuildError, "#{command.join(' ')} failed (#{status}); last lines of #{log}:\n#{output.lines.last(20).join}"
      rescue Errno::ENOENT
        raise BuildError, "cannot build #{NAME}: `#{cargo}` not found. Install Rust (cargo), " \
                          "or point TBACKEND_TESTD_BIN at a built #{NAME}"
      end

      def install(built, binary)
        FileUtils.mkdir_p(File.dirname(binary))
        partial = "#{binary}.#{Process.pid}.tmp"
        FileUtils.cp(built, partial)
        File.chmod(0o755, partial)
        File.rename(partial, binary)
      ensure
        FileUtils.rm_f(partial) if partial
      end
    end
  end
end
