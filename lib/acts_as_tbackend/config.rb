# frozen_string_literal: true

module ActsAsTbackend
  # Every setting, its default and its ENV variable, in one table. ENV is read once, when
  # the config is built. A malformed ENV value never crashes `require`: it is recorded in
  # `errors` (the default stays in force) and surfaces as a `config_error`.
  class Config
    FAILURE_POLICIES = %w[ignore warn raise_in_test enqueue_retry].freeze
    ID_FORMATS = %w[legacy digest].freeze
    # block: wait up to queue_block_timeout for room; drop: warn and discard; raise: QueueFull.
    QUEUE_FULL_POLICIES = %w[block drop raise].freeze
    SPOOL_FSYNC_POLICIES = %w[always batch never].freeze
    # Where `enqueue_retry` sends a failed mirror: the native async writer (its file spool
    # when spool_path is set), or ActsAsTbackend::MirrorRetryJob on the app's ActiveJob.
    RETRY_BACKENDS = %w[spool active_job].freeze
    # `breaker_threshold = 0`: the breaker never opens (dedicated Connections use it).
    BREAKER_DISABLED = 0
    TRUE_WORDS = %w[1 true yes on].freeze
    FALSE_WORDS = %w[0 false no off].freeze

    # The types whose value is one of a list.
    CHOICES = {
      durability: %w[accepted durable], failure_policy: FAILURE_POLICIES, id_format: ID_FORMATS,
      queue_full_policy: QUEUE_FULL_POLICIES, spool_fsync: SPOOL_FSYNC_POLICIES, retry_backend: RETRY_BACKENDS
    }.freeze

    # name => [default, ENV variable, type]
    SETTINGS = {
      enabled: [true, "TBACKEND_ENABLED", :boolean],
      host: ["127.0.0.1", "TBACKEND_HOST", :string],
      port: [7401, "TBACKEND_PORT", :port],
      token: [nil, "TBACKEND_TOKEN", :secret],
      connect_timeout: [1.0, "TBACKEND_CONNECT_TIMEOUT", :seconds],
      request_timeout: [2.0, "TBACKEND_REQUEST_TIMEOUT", :seconds],
      # Lanes: persistent pipelined connections shared by all threads (0.2: sockets, one
      # per thread). One lane reaches the daemon's per-connection ceiling; see README.
      pool_size: [1, "TBACKEND_POOL_SIZE", :positive_integer],
      pool_checkout_timeout: [1.0, "TBACKEND_POOL_CHECKOUT_TIMEOUT", :seconds],
      max_in_flight: [256, "TBACKEND_MAX_IN_FLIGHT", :positive_integer],
      idle_reconnect: [20.0, "TBACKEND_IDLE_RECONNECT", :seconds],
      durability_default: ["accepted", "TBACKEND_DURABILITY", :durability],
      strict: [false, "TBACKEND_STRICT", :boolean],
      breaker_threshold: [5, "TBACKEND_BREAKER_THRESHOLD", :non_negative_integer],
      breaker_cooldown: [5.0, "TBACKEND_BREAKER_COOLDOWN", :seconds],
      producer: ["acts-as-tbackend", "TBACKEND_PRODUCER", :string],
      failure_policy: ["ignore", "TBACKEND_FAILURE_POLICY", :failure_policy],
      id_format: ["legacy", "TBACKEND_ID_FORMAT", :id_format],
      # Off the request path (AsyncWriter, docs/async.md): the commit hook only enqueues.
      async: [false, "TBACKEND_ASYNC", :boolean],
      queue_size: [10_000, "TBACKEND_QUEUE_SIZE", :positive_integer],
      queue_full_policy: ["block", "TBACKEND_QUEUE_FULL_POLICY", :queue_full_policy],
      queue_block_timeout: [1.0, "TBACKEND_QUEUE_BLOCK_TIMEOUT", :seconds],
      spool_path: [nil, "TBACKEND_SPOOL_PATH", :path],
      spool_fsync: ["batch", "TBACKEND_SPOOL_FSYNC", :spool_fsync],
      retry_attempts: [10, "TBACKEND_RETRY_ATTEMPTS", :positive_integer],
      retry_base_backoff: [0.05, "TBACKEND_RETRY_BASE_BACKOFF", :seconds],
      retry_max_backoff: [30.0, "TBACKEND_RETRY_MAX_BACKOFF", :seconds],
      retry_backend: ["spool", "TBACKEND_RETRY_BACKEND", :retry_backend],
      # Seconds the async writer waits for more facts before it sends fewer than a batch,
      # so a trickle goes out in pipelined rounds (docs/async.md); 0: send each at once.
      linger: [0.005, "TBACKEND_LINGER", :non_negative_seconds],
      # Where a fact given up for good is kept when the app has no tbackend_dead_letters
      # table; nil: dead-letter.jsonl beside the spool, else tmp/tbackend/ (DeadLetters).
      dead_letter_path: [nil, "TBACKEND_DEAD_LETTER_PATH", :path],
      # Prepended to every store name on the wire (Client#wire_store): keeps development,
      # test and parallel test workers apart in one daemon. nil: none (the Railtie
      # defaults it in the test environment); "": none, explicitly.
      store_prefix: [nil, "TBACKEND_STORE_PREFIX", :store_prefix],
      # Seconds the at_exit hook (and reset!) lets the async writer flush; nil: 0 with a
      # spool (its facts are safe on disk, the next writer delivers them), else
      # SHUTDOWN_TIMEOUT_WITHOUT_SPOOL. See #exit_flush_timeout.
      shutdown_timeout: [nil, "TBACKEND_SHUTDOWN_TIMEOUT", :optional_seconds]
    }.freeze
    # A prefix keeps the store name within the daemon's [A-Za-z0-9_-], 200 bytes.
    STORE_PREFIX_FORMAT = /\A[A-Za-z0-9_-]{0,64}\z/
    # What is not delivered by then is lost without a spool, so it gets a real chance.
    SHUTDOWN_TIMEOUT_WITHOUT_SPOOL = 5.0

    attr_reader(*SETTINGS.keys, :errors)

    def self.from_env(env = ENV)
      new(env)
    end

    def initialize(env = {})
      @errors = []
      SETTINGS.each { |name, (default, _var, _type)| instance_variable_set(:"@#{name}", default) }
      load_env(env)
    end

    SETTINGS.each do |name, (_default, _var, type)|
      define_method(:"#{name}=") { |value| instance_variable_set(:"@#{name}", coerce!(name, type, value)) }
    end

    def enabled?
      enabled ? true : false
    end

    def valid?
      errors.empty?
    end

    # The async writer's bound at exit: shutdown_timeout, or its default for this config.
    def exit_flush_timeout
      return shutdown_timeout if shutdown_timeout

      spool_path ? 0.0 : SHUTDOWN_TIMEOUT_WITHOUT_SPOOL
    end

    # Never shows the token.
    def inspect
      shown = SETTINGS.keys.map { |name| "#{name}=#{name == :token ? redacted_token : public_send(name).inspect}" }
      "#<#{self.class.name} #{shown.join(' ')}>"
    end
    alias to_s inspect

    private

    def redacted_token
      token.nil? ? "nil" : "[REDACTED]"
    end

    def load_env(env)
      SETTINGS.each do |name, (_default, var, type)|
        next unless env.key?(var)

        begin
          instance_variable_set(:"@#{name}", coerce!(name, type, env[var], from_env: true))
        rescue ConfigurationError => e
          @errors << "#{var}: #{e.message}"
        end
      end
      load_token_file(env["TBACKEND_TOKEN_FILE"]) if env["TBACKEND_TOKEN_FILE"] && !env["TBACKEND_TOKEN_FILE"].empty?
    end

    def load_token_file(path)
      @token = File.read(path).strip
      @token = nil if @token.empty?
    rescue SystemCallError => e
      @errors << "TBACKEND_TOKEN_FILE: cannot read the token file (#{e.class.name})"
    end

    def coerce!(name, type, value, from_env: false) # rubocop:disable Metrics/CyclomaticComplexity
      case type
      when :boolean then coerce_boolean(value, from_env)
      when :string then coerce_string(name, value)
      when :secret then value.nil? || value.to_s.empty? ? nil : value.to_s
      when :port then coerce_integer(value, 1..65_535, "a port (1-65535)")
      when :positive_integer then coerce_integer(value, 1.., "a positive integer")
      when :non_negative_integer then coerce_integer(value, 0.., "an integer >= 0")
      when :seconds then coerce_seconds(value)
      when :optional_seconds then coerce_optional_seconds(value)
      when :non_negative_seconds then coerce_non_negative_seconds(value)
      when :store_prefix then coerce_store_prefix(value)
      when *CHOICES.keys then coerce_choice(value, CHOICES.fetch(type), type.to_s)
      when :path then value.nil? || value.to_s.strip.empty? ? nil : value.to_s
      end
    end

    def coerce_boolean(value, from_env)
      return value if [true, false].include?(value)
      return false if value.nil? && !from_env

      word = value.to_s.strip.downcase
      return true if TRUE_WORDS.include?(word)
      return false if FALSE_WORDS.include?(word)

      raise ConfigurationError, "expected one of #{(TRUE_WORDS + FALSE_WORDS).join('/')}, got #{value.inspect}"
    end

    def coerce_string(name, value)
      text = value.to_s
      raise ConfigurationError, "#{name} must not be empty" if text.strip.empty?

      text
    end

    # Decimal only: the 0.2 gem's Integer() read "07401" as octal.
    def coerce_integer(value, range, what)
      number = value.is_a?(Integer) ? value : Integer(value.to_s.strip, 10)
      raise ConfigurationError, "expected #{what}, got #{value.inspect}" unless range.cover?(number)

      number
    rescue ArgumentError, TypeError
      raise ConfigurationError, "expected #{what}, got #{value.inspect}"
    end

    def coerce_seconds(value)
      seconds = value.is_a?(Numeric) ? value.to_f : Float(value.to_s.strip)
      unless seconds.finite? && seconds.positive?
        raise ConfigurationError,
              "expected a positive number of seconds, got #{value.inspect}"
      end

      seconds
    rescue ArgumentError, TypeError
      raise ConfigurationError, "expected a positive number of seconds, got #{value.inspect}"
    end

    def coerce_store_prefix(value)
      return nil if value.nil?

      text = value.to_s
      return text if STORE_PREFIX_FORMAT.match?(text)

      raise ConfigurationError, "store_prefix must be up to 64 of A-Z a-z 0-9 _ -, got #{value.inspect}"
    end

    # nil or blank: the default; else seconds >= 0 (0: no wait at all).
    def coerce_optional_seconds(value)
      return nil if value.nil? || value.to_s.strip.empty?

      coerce_non_negative_seconds(value)
    end

    def coerce_non_negative_seconds(value)
      seconds = value.is_a?(Numeric) ? value.to_f : Float(value.to_s.strip)
      return seconds if seconds.finite? && seconds >= 0

      raise ConfigurationError, "expected a number of seconds >= 0, got #{value.inspect}"
    rescue ArgumentError, TypeError
      raise ConfigurationError, "expected a number of seconds >= 0, got #{value.inspect}"
    end

    def coerce_choice(value, choices, what)
      text = value.to_s.strip
      return text if choices.include?(text)

      raise ConfigurationError, "#{what} must be one of #{choices.join(', ')}, got #{value.inspect}"
    end
  end
end
