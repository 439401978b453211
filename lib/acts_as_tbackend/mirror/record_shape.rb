# frozen_string_literal: true

module ActsAsTbackend
  module Mirror
    # Whether a record responds to `updated_at` and `valid_time`, told from its attributes
    # instead of asking `respond_to?`, which on an ActiveRecord model costs 1 µs for
    # updated_at and 2 for a name it has no method for (valid_time, usually): it goes
    # through ActiveModel's attribute method patterns. Worked out once per model class
    # (and again when its columns change) from the way ActiveRecord 6.1–7.2 answers
    # `respond_to?(name)` on a record:
    # - a public method `name` (an attribute reader or the app's): yes, except for a
    #   column the record was loaded without (`select`): then no;
    # - a private or protected one: no;
    # - no method: yes when an attribute method pattern matches `name` for an attribute
    #   the record has (a plain `valid_time` attribute a `select` added, say).
    # "The record has attribute x" is `record.attributes.key?(x)`. A model that overrides
    # `respond_to?`, `respond_to_missing?`, `attributes` or how attribute methods are
    # matched is asked, as is every object that is not an ActiveRecord record.
    module RecordShape
      NAMES = %w[updated_at valid_time].freeze
      # A plan per name: true, false, nil (ask the record), or attribute names of which one
      # in `record.attributes` means yes. The last element is the column names the plans
      # were made from (ActiveRecord memoizes them until reset_column_information).
      ASK = [nil, nil].freeze

      module_function

      # The shape for src/record.rs: nil (ask the record) or a frozen Array of the plans.
      def of(record)
        return nil unless defined?(::ActiveRecord::Base) && record.is_a?(::ActiveRecord::Base)

        klass = record.class
        columns = klass.column_names
        shape = klass.instance_variable_get(:@tbackend_record_shape)
        return shape if shape && shape.last.equal?(columns)

        # Only once the class has generated its attribute methods (a record's initialize
        # does), or the plans would see no readers.
        return nil unless klass.instance_variable_get(:@attribute_methods_generated)

        klass.instance_variable_set(:@tbackend_record_shape, build(klass, columns))
      end

      def build(klass, columns)
        plans = stock?(klass) ? NAMES.map { |name| plan(klass, name, columns) } : ASK
        [*plans, columns].freeze
      end

      def plan(klass, name, columns)
        if klass.public_method_defined?(name)
          columns.include?(name) ? [name].freeze : true
        elsif klass.private_method_defined?(name) || klass.protected_method_defined?(name)
          false
        elsif !columns.include?(name)
          matching_attributes(klass, name)
        end
      end

      # The attribute names whose attribute methods (`x`, `x_was`, `saved_change_to_x?`…)
      # include `name`; nil if this ActiveModel does not say, or if one is "id", which
      # the record has by its primary key whatever its attributes.
      def matching_attributes(klass, name)
        finder = %i[attribute_method_patterns_matching attribute_method_matchers_matching]
                 .find { |method| klass.respond_to?(method, true) }
        names = finder && klass.send(finder, name).map(&:attr_name).uniq
        names.freeze unless names.nil? || names.include?("id")
      end

      # respond_to? and the methods it relies on are ActiveRecord's and ActiveModel's own.
      def stock?(klass)
        owners = chain(klass.instance_method(:respond_to?))
        owners == [::ActiveRecord::AttributeMethods, ::ActiveModel::AttributeMethods, ::Kernel] &&
          (chain(klass.instance_method(:respond_to_missing?)) - [::ActiveRecord::AttributeMethods]) == [::Kernel] &&
          klass.instance_method(:attributes).owner == ::ActiveRecord::AttributeMethods &&
          # PrimaryKey's adds "id" (see matching_attributes)
          (chain(klass.instance_method(:attribute_method?)) - [::ActiveRecord::AttributeMethods::PrimaryKey])
            .first == ::ActiveRecord::AttributeMethods &&
          # 7.x's name and 6.1's for the lookup of a matching pattern
          %i[matched_attribute_method match_attribute_method?].all? do |name|
            !klass.private_method_defined?(name) || klass.instance_method(name).owner == ::ActiveModel::AttributeMethods
          end
      end

      def chain(method)
        owners = []
        while method
          owners << method.owner
          method = method.super_method
        end
        owners
      end

      private_class_method :build, :plan, :matching_attributes, :stock?, :chain
    end
  end
end
