# frozen_string_literal: true

# `rake spec:gc_stress` reruns the native-facing specs under GC.stress (a full GC at every
# allocation), so a Ruby object the native side keeps using after the GC could have
# moved or freed it fails there instead of in production. The specs: the fact/JSON specs
# (tagged here, by file) and the client specs tagged :gc_stress in their files.
#
# TBACKEND_GC_STRESS selects how (the rake task sets it):
# - "1": GC.stress is on inside every call into ActsAsTbackend::Native and its classes.
#   A GC can only strike native code where it allocates or calls back into Ruby, which
#   all happens inside those calls; the specs' own Ruby runs at normal speed, so the
#   whole run takes minutes instead of most of an hour (a full GC costs ~20 ms here).
# - "full": GC.stress is on for each whole example body, between native calls too.
module TbackendSpec
  module GcStress
    @active = false

    class << self
      attr_accessor :active

      def around_native
        return yield if !active || GC.stress

        GC.stress = true
        begin
          yield
        ensure
          GC.stress = false
        end
      end

      # Every method the native extension defines runs under GC.stress while active, but
      # the events thread's wait: it only sleeps, for as long as its writer lives, and
      # GC.stress is the whole process's, so wrapping it kept every thread (rspec's own
      # included) under GC.stress for whole async examples, as "full" does.
      def instrument!
        native = ActsAsTbackend::Native
        wrap(native.singleton_class, native.singleton_methods(false))
        [native::Client, native::TailCursor, native::Writer].each do |klass|
          wrap(klass.singleton_class, klass.singleton_methods(false))
          wrap(klass, klass.instance_methods(false) - UNWRAPPED.fetch(klass.name, []))
        end
      end

      UNWRAPPED = { "ActsAsTbackend::Native::Writer" => %i[wait_events] }.freeze

      private

      def wrap(target, names)
        target.prepend(Module.new do
          names.each do |name|
            define_method(name) { |*args, &block| GcStress.around_native { super(*args, &block) } }
          end
        end)
      end
    end
  end
end

RSpec.configure do |config|
  config.define_derived_metadata(file_path: %r{/spec/acts_as_tbackend/fact_[a-z_]*_spec\.rb\z}) do |metadata|
    metadata[:gc_stress] = true
  end

  case ENV.fetch("TBACKEND_GC_STRESS", nil)
  when "1"
    TbackendSpec::GcStress.instrument!
    config.before(:each, :gc_stress) { TbackendSpec::GcStress.active = true }
    config.after(:each, :gc_stress) { TbackendSpec::GcStress.active = false }
  when "full"
    config.before(:each, :gc_stress) { GC.stress = true }
    config.after(:each, :gc_stress) { GC.stress = false }
  end
end
