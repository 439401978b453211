# frozen_string_literal: true

module ActsAsTbackend
  # One dedicated connection with the client's request methods and soft results, for
  # scripts and consoles (the 0.2 API). It is a Client with a single lane and no circuit
  # breaker: a refused connect is `unavailable`, never a raise.
  class Connection < Client
    def initialize(host:, port:, token: nil, connect_timeout: 1.0, request_timeout: 2.0,
                   durability_default: "accepted", strict: false)
      config = Config.new
      config.host = host
      config.port = port
      config.token = token
      config.connect_timeout = connect_timeout
      config.request_timeout = request_timeout
      config.durability_default = durability_default
      config.strict = strict
      config.pool_size = 1
      config.breaker_threshold = Config::BREAKER_DISABLED
      super(config)
    end

    alias close shutdown
  end
end
