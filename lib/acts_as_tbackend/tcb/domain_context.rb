# frozen_string_literal: true

module TCB
  # The name of a domain module as the runtime uses it: "payments/charges" in stream ids,
  # "payments__charges_events" as a table name. Derived from Module#name only, so the
  # same module always maps to the same streams and tables.
  class DomainContext
    NAMESPACE_SEPARATOR = "/"
    TABLE_SEPARATOR = "__"
    TABLE_SUFFIX = "_events"
    OUTBOX_SUFFIX = "_outbox"

    attr_reader :domain_module

    def self.from_module(domain_module)
      new(domain_module)
    end

    # "HTTPGateway" → "http_gateway", "OrderV2" → "order_v2": acronyms stay one word,
    # unlike a naive split before every capital.
    def self.underscore(segment)
      segment.gsub(/([A-Z\d]+)([A-Z][a-z])/, '\1_\2').gsub(/([a-z\d])([A-Z])/, '\1_\2').downcase
    end

    def initialize(domain_module)
      raise ArgumentError, "a domain context needs a module, got #{domain_module.inspect}" unless domain_module.is_a?(Module)

      name = domain_module.name
      raise ArgumentError, "anonymous module #{domain_module.inspect} has no domain context" if name.nil?

      @domain_module = domain_module
      @name = name.split("::").map { |segment| self.class.underscore(segment) }.join(NAMESPACE_SEPARATOR).freeze
      freeze
    end

    def to_s
      @name
    end

    def table_prefix
      @name.gsub(NAMESPACE_SEPARATOR, TABLE_SEPARATOR)
    end

    def events_table
      "#{table_prefix}#{TABLE_SUFFIX}"
    end
    alias table_name events_table # tcb 0.6.2's name

    def outbox_table
      "#{table_prefix}#{OUTBOX_SUFFIX}"
    end
    alias outbox_table_name outbox_table # tcb 0.6.2's name

    def ==(other)
      other.is_a?(DomainContext) && other.to_s == to_s
    end
    alias eql? ==

    def hash
      @name.hash
    end

    def inspect
      "#<TCB::DomainContext #{@name}>"
    end
  end
end
