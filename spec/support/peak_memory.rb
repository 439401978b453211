# frozen_string_literal: true

# The rspec process's peak RSS, printed when the suite ends so every CI log shows it,
# and held under a ceiling (TBACKEND_SPEC_MAX_RSS_MB, default 1536): a runaway example
# once grew the process to 16 GB.
RSpec.configure do |config|
  config.after(:suite) do
    peak_kib = File.read("/proc/self/status")[/^VmHWM:\s*(\d+)/, 1].to_i
    ceiling_mib = Integer(ENV.fetch("TBACKEND_SPEC_MAX_RSS_MB", "1536"), 10)
    puts "\nrspec peak RSS (VmHWM): #{peak_kib / 1024} MiB (ceiling #{ceiling_mib} MiB)"
    raise "rspec peak RSS #{peak_kib / 1024} MiB is over #{ceiling_mib} MiB" if peak_kib > ceiling_mib * 1024
  end
end
