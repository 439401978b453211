# frozen_string_literal: true

require "spec_helper"
require "open3"
require "rbconfig"
require "tmpdir"

# The gem builds on Linux only (futex, eventfd, ppoll): elsewhere `gem install` must stop
# at extconf with a message that says so, not deep inside cargo.
RSpec.describe "ext/acts_as_tbackend/extconf.rb" do
  extconf = File.expand_path("../ext/acts_as_tbackend/extconf.rb", __dir__)

  # Runs extconf in a scratch directory on a Ruby that reports `host_os`, with a cargo that
  # does not exist, so nothing is ever built.
  def extconf_on(host_os, extconf)
    Dir.mktmpdir("extconf") do |dir|
      prelude = "require 'rbconfig'; RbConfig::CONFIG['host_os'] = #{host_os.dump}; load #{extconf.dump}"
      out, status = Open3.capture2e({ "CARGO" => File.join(dir, "no-cargo") }, RbConfig.ruby, "-e", prelude, chdir: dir)
      [out, status, File.exist?(File.join(dir, "Makefile"))]
    end
  end

  %w[darwin23 freebsd14.0 mingw32].each do |host_os|
    it "stops on #{host_os}, saying Linux only" do
      out, status, makefile = extconf_on(host_os, extconf)
      expect(status).not_to be_success
      expect(out).to include("acts_as_tbackend supports Linux only: its native core uses futex, eventfd and ppoll")
      expect(out).to include("built for #{host_os}")
      expect(makefile).to be(false)
    end
  end

  it "goes on to look for cargo on Linux" do
    out, status, = extconf_on("linux-gnu", extconf)
    expect(status).not_to be_success
    expect(out).to include("no-cargo` not found")
    expect(out).not_to include("Linux only")
  end

  it "is announced by the gemspec" do
    spec = Gem::Specification.load(File.expand_path("../acts_as_tbackend.gemspec", __dir__))
    expect(spec.description).to include("Linux only: the native core uses futex, eventfd and ppoll.")
    expect(spec.requirements).to include("Linux (the native core uses futex, eventfd and ppoll)")
    expect(spec.platform).to eq(Gem::Platform::RUBY)
  end
end
