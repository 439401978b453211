# frozen_string_literal: true

module ActsAsTbackend
  VERSION = "0.3.0"
end
