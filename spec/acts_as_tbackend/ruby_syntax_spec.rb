# frozen_string_literal: true

require "spec_helper"

# Debian 12's ruby3.1 is Ruby 3.1.2, which rejects syntax that 3.1.3+ accepts (an anonymous
# block parameter in a method that also takes keywords). The suite loads most of lib/, but
# not every file (rake tasks, generators' Ruby, bench/, bin/demo), so each is compiled here
# on the Ruby running the specs.
RSpec.describe "Ruby sources" do
  root = File.expand_path("../..", __dir__)
  files = Dir.chdir(root) do
    Dir["{lib,bench,demo,spec}/**/*.{rb,rake}"] + %w[Rakefile acts_as_tbackend.gemspec bin/demo]
  end

  it "all compile on #{RUBY_VERSION}" do
    failures = files.filter_map do |file|
      RubyVM::InstructionSequence.compile_file(File.join(root, file))
      nil
    rescue SyntaxError => e
      "#{file}: #{e.message.lines.first.strip}"
    end
    expect(failures).to eq([])
    expect(files.size).to be > 100
  end
end
