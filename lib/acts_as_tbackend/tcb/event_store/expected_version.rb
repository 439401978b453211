# frozen_string_literal: true

module TCB
  module EventStore
    # The `expected_version:` rule every store applies before appending: nil skips the
    # check; :none or 0 requires an empty stream; an Integer n requires version n.
    module ExpectedVersion
      module_function

      def check!(stream_id, actual, expected)
        return if expected.nil?

        wanted = expected == :none ? 0 : expected
        unless wanted.is_a?(Integer) && wanted >= 0
          raise ArgumentError, "expected_version must be nil, :none or an Integer >= 0, got #{expected.inspect}"
        end
        return if wanted == actual

        raise WrongExpectedVersion.new(stream_id: stream_id.to_s, expected_version: expected, actual_version: actual)
      end
    end
  end
end
