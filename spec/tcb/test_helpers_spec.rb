# frozen_string_literal: true

require_relative "tcb_helper"
require "minitest"
require "tcb/minitest_helpers"

RSpec.describe "TCB test helpers" do
  before do
    stub_const("Orders::OrderPlaced", Struct.new(:order_id))
    stub_const("Orders::Shipped", Struct.new(:order_id))
  end

  describe "RSpec matchers (require \"tcb/rspec_helpers\")" do
    it "have_published matches classes (any instance) and instances (==), all of them" do
      configure_tcb
      expect { TCB.publish(Orders::OrderPlaced.new(42)) }.to have_published(Orders::OrderPlaced)
      expect { TCB.publish(Orders::OrderPlaced.new(42)) }.to have_published(Orders::OrderPlaced.new(42))
      expect { TCB.publish(Orders::OrderPlaced.new(1), Orders::Shipped.new(1)) }
        .to have_published(Orders::OrderPlaced, Orders::Shipped.new(1))
    end

    it "have_published fails, naming what was published, when an expectation is unmet" do
      configure_tcb
      expect do
        expect { TCB.publish(Orders::OrderPlaced.new(1)) }.to have_published(Orders::OrderPlaced.new(2), within: 0.05)
      end.to raise_error(RSpec::Expectations::ExpectationNotMetError,
                         /#<struct Orders::OrderPlaced order_id=2>.*published: #<struct Orders::OrderPlaced order_id=1>/)
      expect do
        expect { nil }.to have_published(Orders::Shipped, within: 0.05)
      end.to raise_error(RSpec::Expectations::ExpectationNotMetError, /published: nothing/)
    end

    it "not_to have_published passes when none of the events was published, and fails naming the one that was" do
      configure_tcb
      expect { TCB.publish(Orders::Shipped.new(1)) }.not_to have_published(Orders::OrderPlaced)
      expect do
        expect { TCB.publish(Orders::OrderPlaced.new(1)) }.not_to have_published(Orders::OrderPlaced, Orders::Shipped)
      end.to raise_error(RSpec::Expectations::ExpectationNotMetError, /expected Orders::OrderPlaced not to be published/)
    end

    it "have_published waits for an async bus, and leaves no subscription behind" do
      configure_tcb(bus: TCB::EventBus.new)
      expect do
        Thread.new do
          sleep 0.05
          TCB.publish(Orders::OrderPlaced.new(1))
        end
      end
        .to have_published(Orders::OrderPlaced, within: 2)
      expect(TCB.config.event_bus.registry.handlers_for(Orders::OrderPlaced)).to eq([])
    end

    it "poll_match passes once the block is truthy, and fails after within" do
      deadline = monotonic + 0.05
      expect { monotonic > deadline }.to poll_match(within: 2.0)
      expect { expect { false }.to poll_match(within: 0.02) }
        .to raise_error(RSpec::Expectations::ExpectationNotMetError, /within 0.02s/)
    end
  end

  describe TCB::MinitestHelpers do
    let(:test) do
      Class.new do
        include Minitest::Assertions
        include TCB::MinitestHelpers
        attr_accessor :assertions

        def initialize = @assertions = 0
      end.new
    end

    it "assert_published passes and fails like the matcher" do
      configure_tcb
      test.assert_published(Orders::OrderPlaced, Orders::OrderPlaced.new(2)) do
        TCB.publish(Orders::OrderPlaced.new(1), Orders::OrderPlaced.new(2))
      end
      expect do
        test.assert_published(Orders::OrderPlaced, Orders::OrderPlaced, within: 0.05) do
          TCB.publish(Orders::OrderPlaced.new(1))
        end
      end
        .to raise_error(Minitest::Assertion, /expected Orders::OrderPlaced to be published/)
      expect(test.assertions).to eq(2)
    end

    it "poll_assert polls, with a message on failure" do
      flag = []
      Thread.new do
        sleep 0.02
        flag << 1
      end
      test.poll_assert("flag set", within: 2) { flag.any? }
      expect do
        test.poll_assert("never", within: 0.02) do
          false
        end
      end.to raise_error(Minitest::Assertion, /never did not become true/)
    end
  end
end
