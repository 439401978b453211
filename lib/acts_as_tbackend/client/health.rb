# frozen_string_literal: true

module ActsAsTbackend
  # `ActsAsTbackend.health`: safe to call from a health-check endpoint or a deploy task in
  # any mode — it never raises and never shows the token. Beyond the 0.2 fields it reports
  # the lanes and the breaker, and, when the daemon answers, what it says about itself
  # (whether "accepted" writes reach a disk at all: `data_dir` or "ephemeral").
  class Health
    DAEMON_FACTS = %i[data_dir pool_size host port total_stores total_facts_across_stores uptime_seconds].freeze
    # The error kinds (`result[:error_kind]`) a token that must change gives.
    AUTH_KINDS = %w[auth access_denied].freeze

    def initialize(client)
      @client = client
      @config = client.config
    end

    def call
      base = {
        enabled: @config.enabled?, host: @config.host, port: @config.port,
        durability_default: @config.durability_default, strict: @config.strict, failure_policy: @config.failure_policy
      }
      base.merge(probe)
    rescue StandardError => e
      base.to_h.merge(ok: false, status: "error", error: Redact.call("#{e.class.name}: #{e.message}", @config.token))
    end

    private

    def probe
      return { ok: true, status: "disabled", error: nil } unless @config.enabled?
      return { ok: false, status: "config_error", error: @config.errors.join("; ") } unless @config.valid?

      ping = @client.native_call { |native| native.ping(nil) }
      status = status_of(ping)
      report = { ok: status == "ok", status: status, error: ping[:error] }
      stats = @client.stats
      report[:lanes] = stats[:lanes]
      report[:breaker] = stats[:breaker]
      report[:daemon] = daemon_facts if status == "ok"
      report
    end

    def status_of(ping)
      status = ping[:status]
      return status if %w[ok circuit_open config_error].include?(status)
      return "down" if Client::TRANSPORT_STATUSES.include?(status)

      AUTH_KINDS.include?(ping[:error_kind]) ? "auth_error" : "error"
    end

    # Best effort: a token may not be allowed diagnostics; health stays "ok" then.
    def daemon_facts
      answer = @client.native_call { |native| native.diagnostics_summary(nil) }
      summary = answer.dig(:response, :summary)
      summary.is_a?(Hash) ? summary.slice(*DAEMON_FACTS) : nil
    end
  end
end
