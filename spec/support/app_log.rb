# frozen_string_literal: true

require "logger"
require "stringio"

module TbackendSpec
  # The gem's log subscriber attached as the Railtie attaches it, to a logger of its own at
  # `level` (Rails' production level is :info) for the block. Returns what was logged.
  # `logger:` builds another kind of logger from the IO and the level.
  module AppLog
    def app_log(level: :debug, logger: ->(io, lvl) { Logger.new(io, level: lvl) })
      require "acts_as_tbackend/rails/log_subscriber"
      io = StringIO.new
      saved = ActiveSupport::LogSubscriber.logger
      ActiveSupport::LogSubscriber.logger = logger.call(io, level)
      ActsAsTbackend::LogSubscriber.attach_to :acts_as_tbackend
      yield
      io.string
    ensure
      ActsAsTbackend::LogSubscriber.detach_from :acts_as_tbackend if defined?(ActsAsTbackend::LogSubscriber)
      ActiveSupport::LogSubscriber.logger = saved if defined?(ActiveSupport::LogSubscriber)
    end
  end
end
