# frozen_string_literal: true

require "spec_helper"
require "open3"
require "rbconfig"

# Issue 12, "One error root, looked up once".
RSpec.describe "ActsAsTbackend::Error" do
  let(:lib) { File.expand_path("../../lib", __dir__) }

  # Every exception class ActsAsTbackend defines at its top level (autoloaded constants
  # are the Rails-facing layer, not errors: loading them here would start its threads).
  def error_classes
    ActsAsTbackend.constants.reject { |name| ActsAsTbackend.autoload?(name) }
                  .map { |name| ActsAsTbackend.const_get(name) }
                  .select { |value| value.is_a?(Class) && value <= Exception }
  end

  def ruby(code)
    Open3.capture3(RbConfig.ruby, "-I", lib, "-e", code)
  end

  it "catches every error the gem raises, InvalidFact and ConfigurationError too, which stay ArgumentErrors" do
    raised = [
      -> { ActsAsTbackend::Fact.build(id: "a", store: "bad store", key: "k", value: {}) },
      -> { ActsAsTbackend::Native.encode_json({ "x" => Float::NAN }, 1000) },
      -> { ActsAsTbackend::Config.new.failure_policy = "nope" },
      -> { ActsAsTbackend::Config.new.port = "abc" }
    ].map do |call|
      call.call
    rescue ActsAsTbackend::Error => e
      e
    end
    expect(raised.map(&:class)).to eq([ActsAsTbackend::InvalidFact, ActsAsTbackend::InvalidFact,
                                       ActsAsTbackend::ConfigurationError, ActsAsTbackend::ConfigurationError])
    expect(raised).to all(be_a(ArgumentError))
    expect(raised.map(&:retryable?)).to all(be(false))
  end

  it "is what every error class of the gem is, each defined in errors.rb" do
    expect(error_classes).to include(ActsAsTbackend::InvalidFact, ActsAsTbackend::ConfigurationError,
                                     ActsAsTbackend::QueueFull, ActsAsTbackend::MirrorFailure,
                                     ActsAsTbackend::ConnectionError, ActsAsTbackend::InternalError)
    error_classes.each do |klass|
      expect(klass).to be < ActsAsTbackend::Error
      file, = ActsAsTbackend.const_source_location(klass.name.split("::").last)
      expect(file).to eq(File.join(lib, "acts_as_tbackend", "errors.rb")), "#{klass} is defined in #{file}"
    end
    expect(ActsAsTbackend::TransportError.new("x", result: { status: "unavailable" }).result)
      .to eq(status: "unavailable")
  end

  # TCB's errors answer TCB's contract (tcb 0.6.2's names), not the connector's
  # `retryable?`/`result`: they stay outside the root.
  it "leaves TCB's own contract root alone" do
    require "acts_as_tbackend/tcb"
    expect(TCB::Error.ancestors).not_to include(ActsAsTbackend::Error)
    expect(TCB::ConfigurationError).to be < TCB::Error
    expect(TCB::AlreadyConfigured).to be < FrozenError
    expect(TCB::Error).to be < StandardError
  end

  describe "the binding" do
    it "raises the classes it found when it loaded, whatever the constants say later" do
      out, err, status = ruby(<<~RUBY)
        require "acts_as_tbackend"
        loaded = ActsAsTbackend::InvalidFact
        ActsAsTbackend.send(:remove_const, :InvalidFact)
        ActsAsTbackend.const_set(:InvalidFact, Class.new(ArgumentError))
        begin
          ActsAsTbackend::Native.encode_json({ "x" => Float::NAN }, 1000)
        rescue ArgumentError => e
          puts e.class.equal?(loaded)
        end
      RUBY
      expect([out, err, status.success?]).to eq(["true\n", "", true])
    end

    it "refuses to load, naming the class, when an error class is missing" do
      out, err, status = ruby(<<~RUBY)
        module ActsAsTbackend; end
        require "acts_as_tbackend/version"
        require "acts_as_tbackend/native_build"
        begin
          ActsAsTbackend::NativeBuild.load!
          puts "loaded"
        rescue NameError => e
          puts e.message
        end
      RUBY
      expect(err).to eq("")
      expect(status.success?).to be(true)
      expect(out).to include("ActsAsTbackend::InvalidFact", "errors.rb")
    end
  end
end
