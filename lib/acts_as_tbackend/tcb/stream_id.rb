# frozen_string_literal: true

module TCB
  # "context|aggregate id": the stream of one aggregate inside one domain module.
  class StreamId
    SEPARATOR = "|"

    attr_reader :context, :id

    # `context` is the domain module itself or a context string, lowercased as tcb 0.6.2
    # does ("Orders" → "orders"; contexts derived from modules are lower case already).
    def self.build(context, id)
      new(context.is_a?(Module) ? context_from_module(context) : context.to_s.downcase, id)
    end

    # The context string of a domain module: "payments/charges" for Payments::Charges.
    def self.context_from_module(domain_module)
      DomainContext.from_module(domain_module).to_s
    end

    # Splits on the first "|", so aggregate ids may contain "|".
    def self.parse(string)
      context, id = string.to_s.split(SEPARATOR, 2)
      raise ArgumentError, "invalid stream id #{string.inspect}: expected \"context|id\"" if id.nil?

      new(context, id)
    end

    def initialize(context, id)
      @context = context.to_s
      @id = id.to_s
      raise ArgumentError, "stream id needs a context (got #{context.inspect})" if @context.empty?
      raise ArgumentError, "stream id needs an aggregate id (got #{id.inspect})" if @id.empty?
      raise ArgumentError, "a context may not contain #{SEPARATOR.inspect}: #{@context.inspect}" if @context.include?(SEPARATOR)

      freeze
    end

    def to_s
      "#{context}#{SEPARATOR}#{id}"
    end
    alias to_str to_s

    def ==(other)
      other.is_a?(StreamId) && other.to_s == to_s
    end
    alias eql? ==

    def hash
      to_s.hash
    end

    def inspect
      "#<TCB::StreamId #{self}>"
    end
  end
end
