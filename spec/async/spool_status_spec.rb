# frozen_string_literal: true

require "spec_helper"
require "tmpdir"

# Native.spool_status fails as Ruby's own Dir would on a path it cannot read (the rake
# task's report itself is specified in spec/rails/spool_tasks_spec.rb).
RSpec.describe "ActsAsTbackend::Native.spool_status" do
  it "raises the Errno of a path that is no directory" do
    expect { ActsAsTbackend::Native.spool_status(__FILE__) }
      .to raise_error(Errno::ENOTDIR, /spool status of #{Regexp.escape(__FILE__)}/)
  end

  it "reads an empty directory as no segments and no dead letters" do
    Dir.mktmpdir { |dir| expect(ActsAsTbackend::Native.spool_status(dir)).to eq(segments: [], dead_letters: 0) }
  end
end
