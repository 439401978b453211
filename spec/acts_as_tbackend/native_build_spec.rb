# frozen_string_literal: true

require "spec_helper"
require "fileutils"
require "open3"
require "tmpdir"

# A Gemfile `path:` source is a plain checkout that never ran `rake compile`. Its first
# `require "acts_as_tbackend"` builds the native extension (once, however many processes
# require it at the same moment), or, without cargo, says exactly what to run.
RSpec.describe "require \"acts_as_tbackend\" in a checkout without the compiled extension" do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:target_dir) { ENV["CARGO_TARGET_DIR"].to_s.empty? ? File.join(root, "target") : ENV.fetch("CARGO_TARGET_DIR") }
  let(:script) do
    'require "acts_as_tbackend"; ' \
      'puts ActsAsTbackend::Fact.derive_id(store: "s", record_id: 1, event_type: "e", source_version: 17)'
  end

  # What a clone of this working tree holds (tracked and unignored files), without the
  # compiled extension; the release build dir is copied so cargo reuses its dependencies.
  def clone_checkout(dir)
    checkout_files.each do |path|
      next unless File.file?(File.join(root, path))

      FileUtils.mkdir_p(File.join(dir, File.dirname(path)))
      FileUtils.cp(File.join(root, path), File.join(dir, path), preserve: true)
    end
    raise "the copy has a compiled extension" unless Dir[File.join(dir, "lib", "**", "*.so")].empty?

    dir
  end

  # The files git would put in a clone; without git or .git (a CI's clean copy), every
  # file but build output.
  def checkout_files
    files, status = Open3.capture2("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                                   chdir: root, err: File::NULL)
    status.success? ? files.split("\0") : all_but_build_output
  rescue Errno::ENOENT # no git
    all_but_build_output
  end

  def all_but_build_output
    Dir.glob("**/*", base: root).grep_v(%r{\A(target|tmp|\.git)(/|\z)|\.so\z})
  end

  def require_in(clone, env = {})
    base = { "CARGO_TARGET_DIR" => nil, "RUBYOPT" => nil, "RUBYLIB" => nil }
    Open3.capture3(base.merge(env), RbConfig.ruby, "-I", File.join(clone, "lib"), "-e", script, chdir: clone)
  end

  it "fails with what to run when cargo is not on PATH" do
    Dir.mktmpdir("tbackend-clone") do |dir|
      clone = clone_checkout(dir)
      bin = File.join(dir, "bin-without-cargo")
      FileUtils.mkdir_p(bin)
      File.symlink(RbConfig.ruby, File.join(bin, "ruby"))
      _, err, status = require_in(clone, "PATH" => bin, "CARGO" => nil)
      expect(status).not_to be_success
      expect(err).to include("the native extension is not built in this checkout (#{clone})")
      expect(err).to include("`cargo` is not on PATH").and include("run `rake compile` in #{clone}")
      expect(Dir[File.join(clone, "lib", "**", "*.so")]).to be_empty
    end
  end

  it "builds the extension on the first require, once for two processes requiring at the same time, and loads it" do
    Dir.mktmpdir("tbackend-clone") do |dir|
      clone = clone_checkout(dir)
      FileUtils.mkdir_p(File.join(clone, "target"))
      system("cp", "-a", File.join(target_dir, "release"), File.join(clone, "target"), exception: true)
      runs = Array.new(2) { Thread.new { require_in(clone) } }
      results = runs.map { |thread| thread.join(900) ? thread.value : raise("first require still building after 900s") }
      results.each do |out, err, status|
        expect(status).to be_success, err
        expect(out).to eq("s:1:e:17\n")
      end
      messages = results.map { |_, err, _| err }.join
      expect(messages.scan("building it now with cargo into #{clone}/lib/acts_as_tbackend/acts_as_tbackend_native.so").size)
        .to eq(1)
      expect(messages).to match(/built the native extension in \d+s/)
      expect(File.file?(File.join(clone, "lib", "acts_as_tbackend", "acts_as_tbackend_native.so"))).to be(true)

      out, err, status = require_in(clone) # built: a plain require, no message
      expect([out, err, status.success?]).to eq(["s:1:e:17\n", "", true])
    end
  end
end
