# frozen_string_literal: true

require "active_support/log_subscriber"
require "logger"

module ActsAsTbackend
  # Turns the acts_as_tbackend notifications into log lines: calls at debug, failures,
  # retries and breaker changes at warn/info. It logs what the payloads carry — names, ids,
  # statuses, durations — so values and tokens cannot reach a log by default. The Railtie
  # attaches it; elsewhere: `ActsAsTbackend::LogSubscriber.attach_to :acts_as_tbackend`.
  class LogSubscriber < ActiveSupport::LogSubscriber
    CALLS = %i[write_fact_once write_fact_once_safe write_facts_once latest_for facts_for facts_by_seq ping mirror enqueue].freeze
    # Outcomes that are not failures, whatever `ok` says.
    QUIET_STATUSES = %w[disabled enqueued].freeze

    CALLS.each do |call|
      define_method(call) { |event| log_call(call, event) }
    end

    # A call's payload that gets a warning: not ok, and not a status that only looks so.
    def self.failure?(payload)
      payload[:ok] == false && !QUIET_STATUSES.include?(payload[:status])
    end

    # What a call must do when this subscriber, logging to `logger`, is its only listener
    # (Instrumentation.watch): :all when debug lines show, :failures when only warnings
    # do, else nil. A logger's `level` is an Integer for Ruby's Logger, ActiveSupport's
    # and Rails 7.1's BroadcastLogger (their `debug?` compares it); any other is asked.
    def self.watch(logger)
      return nil if logger.nil?

      level = logger.level
      numeric = level.is_a?(Integer)
      if numeric ? level <= ::Logger::DEBUG : logger.debug? then :all
      elsif numeric ? level <= ::Logger::WARN : logger.warn? then :failures
      end
    end

    def retry(event)
      payload = event.payload
      statuses = Array(payload[:statuses]).join(",")
      info do
        "TBackend retry store=#{payload[:store]} id=#{payload[:fact_id]} attempts=#{payload[:attempt_count]} statuses=#{statuses}"
      end
    end

    def breaker_open(event)
      payload = event.payload
      warn do
        "TBackend circuit breaker open for #{payload[:host]}:#{payload[:port]} after #{payload[:consecutive_failures]} failures"
      end
    end

    def spool_flush(event)
      payload = event.payload
      line = "TBackend spool flush (#{event.duration.round(1)}ms) settled=#{payload[:settled]} " \
             "delivered=#{payload[:delivered]} queued=#{payload[:queued]} dead=#{payload[:dead]}"
      payload[:settled] == false ? warn(line) : debug(line)
    end

    def dead_letter(event)
      payload = event.payload
      error do
        "TBackend dead letter store=#{payload[:store]} id=#{payload[:fact_id]} attempts=#{payload[:attempts]} " \
          "status=#{payload[:status]} via=#{payload[:via]}"
      end
    end

    def writer_paused(event)
      payload = event.payload
      warn do
        "TBackend async writer paused: #{payload[:host]}:#{payload[:port]} unreachable (#{payload[:status]}: " \
          "#{payload[:error]}), #{payload[:queued]} fact(s) waiting"
      end
    end

    def writer_resumed(event)
      payload = event.payload
      info do
        "TBackend async writer resumed: #{payload[:host]}:#{payload[:port]} answers again after " \
          "#{payload[:paused_for].round(1)}s, #{payload[:queued]} fact(s) waiting"
      end
    end

    def spool_error(event)
      payload = event.payload
      times = payload[:count].to_i > 1 ? " (#{payload[:count]} times)" : ""
      error { "TBackend spool #{payload[:operation]} failed in #{payload[:spool_path]}: #{payload[:error]}#{times}" }
    end

    def spool_adopt(event)
      payload = event.payload
      info { "TBackend spool adopted #{payload[:segment]}: #{payload[:facts]} fact(s) of a process that died" }
    end

    def events_dropped(event)
      warn { "TBackend async writer: #{event.payload[:count]} event(s) dropped (the event queue was full)" }
    end

    def breaker_closed(event)
      info { "TBackend circuit breaker closed for #{event.payload[:host]}:#{event.payload[:port]}" }
    end

    private

    # The line is built only for a logger that shows it.
    def log_call(call, event)
      if self.class.failure?(event.payload)
        warn { describe(call, event) }
      else
        debug { describe(call, event) }
      end
    end

    def describe(call, event)
      payload = event.payload
      parts = ["TBackend #{call} (#{event.duration.round(1)}ms)"]
      %i[store event_type fact_id count durability status statuses].each do |field|
        next if payload[field].nil?

        value = payload[field]
        value = value.map { |status, n| "#{status}:#{n}" }.join(",") if value.is_a?(Hash)
        parts << "#{field == :fact_id ? 'id' : field}=#{value}"
      end
      parts.join(" ")
    end
  end
end
