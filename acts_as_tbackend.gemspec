# frozen_string_literal: true

require_relative "lib/acts_as_tbackend/version"

Gem::Specification.new do |spec|
  spec.name = "acts_as_tbackend"
  spec.version = ActsAsTbackend::VERSION
  spec.summary = "Rails connector for the TBackend temporal ledger, with a Rust core"
  spec.description = <<~TEXT
    Mirrors ActiveRecord changes and domain events into TBackend, a temporal-ledger daemon,
    through a native (Rust) client: pipelined connections shared by all threads, deadlines,
    a circuit breaker, safe retries and deterministic fact ids. Drop-in for acts-as-tbackend 0.2.
    Linux only: the native core uses futex, eventfd and ppoll.
  TEXT
  spec.authors = ["acts_as_tbackend developers"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.1"

  spec.files = Dir.chdir(__dir__) do
    Dir[
      "lib/**/*.rb", "lib/**/*.rake", "lib/**/*.tt", "ext/**/extconf.rb", "exe/*",
      "src/**/*.rs", "crates/*/Cargo.toml", "crates/*/src/**/*.rs",
      "Cargo.toml", "Cargo.lock", "README.md", "CHANGELOG.md", "LICENSE"
    ].select { |path| File.file?(path) }
  end
  spec.require_paths = ["lib"]
  # The test daemon, built from crates/ into a per-user cache on first run (never into
  # the gem directory): lib/acts_as_tbackend/test_daemon/binary.rb.
  spec.bindir = "exe"
  spec.executables = ["tbackend-testd"]
  spec.extensions = ["ext/acts_as_tbackend/extconf.rb"]
  spec.requirements = ["Linux (the native core uses futex, eventfd and ppoll)", "cargo (Rust) to build the extension"]
  spec.metadata["rubygems_mfa_required"] = "true"
end
