# frozen_string_literal: true

require "acts_as_tbackend"
require "json"

Dir[File.join(__dir__, "support", "**", "*.rb")].each { |file| require file }

RSpec.configure do |config|
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.disable_monkey_patching!
  config.order = :random
  Kernel.srand config.seed
  config.filter_run_when_matching :focus
  config.example_status_persistence_file_path = "tmp/rspec-status.txt"

  # Each example sees a config built from the ENV it sets, never one left by another.
  config.around do |example|
    ActsAsTbackend.instance_variable_set(:@config, nil)
    example.run
  ensure
    ActsAsTbackend.instance_variable_set(:@config, nil)
  end

  config.after(:suite) { TbackendSpec::TestDaemon.stop_all }
end

# A file under spec/fixtures (the recorded vectors are in spec/fixtures/tbackend). A
# missing file fails loudly: a spec that quietly skips its vectors proves nothing.
def fixture_file(*parts)
  path = File.join(__dir__, "fixtures", *parts)
  raise "missing fixture #{path}" unless File.file?(path)

  path
end
