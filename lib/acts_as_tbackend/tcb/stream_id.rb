# frozen_string_literal: true

module TCB
  # "context|aggregate id": the stream of one aggregate inside one domain module.
  class StreamId
    SEPARATOR = "|"

    attr_reader :context, :id

    # `context` is a context string ("payments/charges") or the domain module itself.
    def self.build(context, id)
      context = DomainContext.from_module(context).to_s if context.is_a?(Module)
      new(context, id)
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
