# frozen_string_literal: true

# Builds the Rust extension with cargo, using nothing but mkmf: the rb_sys gem and
# rake-compiler are not installable everywhere this gem must build (offline hosts,
# Debian-packaged Rubies). RubyGems runs this file, then `make` and `make install`;
# `rake compile` runs the same Makefile with sitearchdir pointing at lib/.
require "mkmf"
require "rbconfig"
require "shellwords"

# The native core waits, wakes and polls with Linux system calls; it does not build
# elsewhere, so say so before cargo fails on it.
host_os = RbConfig::CONFIG["host_os"]
unless host_os.include?("linux")
  abort "acts_as_tbackend supports Linux only: its native core uses futex, eventfd and ppoll " \
        "(this Ruby was built for #{host_os})"
end

crate_dir = File.expand_path("../..", __dir__)
ext_name = "acts_as_tbackend_native"
so_ext = RbConfig::CONFIG["DLEXT"]
cargo = ENV.fetch("CARGO", "cargo")

abort "acts_as_tbackend: `#{cargo}` not found; install Rust (cargo) to build this gem" unless find_executable(cargo)

# A user-supplied target dir is theirs to keep; our own (inside the gem) is 200+ MiB
# of intermediates and is removed after `make install`.
user_target = ENV.fetch("CARGO_TARGET_DIR", nil) unless ENV["CARGO_TARGET_DIR"].to_s.empty?
target_dir = user_target || File.join(crate_dir, "target")
cleanup = user_target ? "" : "\trm -rf #{target_dir.shellescape}"

# The library is installed by rename, never overwritten in place: a Ruby process that has
# it loaded (a console, a test run) would die of SIGBUS when its mapped pages change.

# rb-sys reruns its build script whenever RUBY changes; exporting it when it already
# matches the `ruby` on PATH would rebuild magnus on every plain `cargo build`.
this_ruby = RbConfig.ruby
path_ruby = find_executable("ruby")
ruby_env = path_ruby && File.realpath(path_ruby) == File.realpath(this_ruby) ? "" : "RUBY=#{this_ruby.shellescape} "

locked = File.exist?(File.join(crate_dir, "Cargo.lock")) && ENV["ACTS_AS_TBACKEND_DEV"] != "1" ? " --locked" : ""
profile = ENV.fetch("ACTS_AS_TBACKEND_PROFILE", "release")
built = File.join(target_dir, profile == "dev" ? "debug" : profile, "libacts_as_tbackend.#{RbConfig::CONFIG['SOEXT'] || 'so'}")

File.write("Makefile", <<~MAKE)
  sitearchdir = #{RbConfig::CONFIG['sitearchdir']}
  RUBYARCHDIR = $(sitearchdir)
  DESTDIR =

  all: #{ext_name}.#{so_ext}

  #{ext_name}.#{so_ext}: FORCE
  \tcd #{crate_dir.shellescape} && CARGO_TARGET_DIR=#{target_dir.shellescape} #{ruby_env}#{cargo.shellescape} build --profile #{profile} --lib -p acts_as_tbackend#{locked}
  \tcp #{built.shellescape} #{ext_name}.#{so_ext}

  install: all
  \tmkdir -p $(DESTDIR)$(RUBYARCHDIR)/acts_as_tbackend
  \tcp #{ext_name}.#{so_ext} $(DESTDIR)$(RUBYARCHDIR)/acts_as_tbackend/#{ext_name}.#{so_ext}.tmp
  \tmv -f $(DESTDIR)$(RUBYARCHDIR)/acts_as_tbackend/#{ext_name}.#{so_ext}.tmp $(DESTDIR)$(RUBYARCHDIR)/acts_as_tbackend/#{ext_name}.#{so_ext}
  #{cleanup}

  clean:
  \trm -f #{ext_name}.#{so_ext}

  FORCE:
  .PHONY: all install clean FORCE
MAKE
