# frozen_string_literal: true

require "open3"
require "rbconfig"

# lib/acts_as_tbackend is grouped by layer (client, async, mirror, rails), but every path an
# app may require keeps working: the ones our README and docs teach, and the files the 0.2
# gem's lib had, which an app moving over may still require by name.
RSpec.describe "public require paths" do
  lib = File.expand_path("../../lib", __dir__)

  {
    "acts_as_tbackend" => "ActsAsTbackend::Client",
    "acts_as_tbackend/extension" => "ActsAsTbackend::Model",
    "acts_as_tbackend/test_helpers" => "ActsAsTbackend::TestHelpers::FakeClient",
    "acts_as_tbackend/test_daemon" => "ActsAsTbackend::TestDaemon",
    "acts_as_tbackend/rspec" => "ActsAsTbackend::Testing",
    "acts_as_tbackend/minitest" => "ActsAsTbackend::Testing",
    "acts_as_tbackend/tcb" => "TCB",
    "acts_as_tbackend/tcb/lint" => "TCB::Lint",
    # The 0.2 gem's files.
    "acts_as_tbackend/client" => "ActsAsTbackend::Client",
    "acts_as_tbackend/connection" => "ActsAsTbackend::Connection",
    "acts_as_tbackend/mirror" => "ActsAsTbackend::Mirror",
    "acts_as_tbackend/sanitizer" => "ActsAsTbackend::Sanitizer",
    "acts_as_tbackend/failure_policy" => "ActsAsTbackend::FailurePolicy"
  }.each do |path, constant|
    it "require #{path.inspect} loads #{constant} in a fresh process" do
      # The lint examples are for a spec helper, which has RSpec loaded.
      script = "#{'require "rspec"; ' if path.end_with?('/lint')}require #{path.dump}; c = #{constant}; puts c.name"
      out, status = Open3.capture2e(RbConfig.ruby, "-I", lib, "-e", script)
      expect(status).to be_success, out
      expect(out.lines.last.strip).to eq(constant)
    end
  end
end
