# frozen_string_literal: true

# Run by fact_json_rails_values_spec.rb in a process of its own (ActiveSupport loaded,
# as in a Rails app): compares ActsAsTbackend::Fact.to_json with JSON.generate, byte for
# byte, over random and edge Times, TimeWithZones, Dates, DateTimes and BigDecimals, alone
# and inside a Hash and an Array, each under a random ActiveSupport JSON time format and
# precision. Prints "checked N" or the first mismatches. ARGV: seed, count.
require "active_support"
require "active_support/core_ext/object/json"
require "active_support/time"
require "bigdecimal"
require "date"
require "acts_as_tbackend"

# Random values of the Rails types a record's attributes hold.
class RailsValues
  ZONES = (ActiveSupport::TimeZone.all.map(&:name) +
           %w[UTC Etc/UTC Etc/GMT+12 Asia/Kathmandu Pacific/Chatham America/St_Johns]).freeze
  # 2000-02-29, 2024-02-29, 2100-02-28, the bounds of years 1 and 9999.
  EDGE_EPOCHS = [0, -1, 951_782_400, 1_709_164_800, 4_107_542_400, 253_402_300_799, -62_135_596_800].freeze
  EDGE_DATES = [[2024, 2, 29], [1900, 2, 28], [2000, 2, 29], [1582, 10, 15], [1582, 10, 4], [0, 1, 1], [-1, 12, 31],
                [9999, 12, 31], [10_000, 1, 1]].freeze
  EDGE_DECIMALS = %w[0 -0 NaN Infinity -Infinity 19.99 1e-30 123456789012345678901234567890.5 -1E+400 1e-400].freeze

  def initialize(seed)
    @rng = Random.new(seed)
  end

  def kinds
    %i[time decimal date datetime zoned]
  end

  def time
    at = Time.at(epoch + subsec)
    case @rng.rand(3)
    when 0 then at.utc
    when 1 then at.getlocal
    else at.localtime(offset(utc: "+00:00"))
    end
  end

  def zoned
    time.in_time_zone(pick(ZONES))
  end

  def decimal
    case @rng.rand(6)
    when 0 then BigDecimal("#{pick(['', '-'])}#{@rng.rand(10**@rng.rand(1..40))}.#{@rng.rand(10**@rng.rand(0..40))}")
    when 1 then BigDecimal("#{pick(['', '-'])}#{@rng.rand(1..999)}e#{@rng.rand(-400..400)}")
    when 2 then BigDecimal(pick(EDGE_DECIMALS))
    when 3 then BigDecimal(@rng.rand * (10**@rng.rand(-10..10)), 15)
    when 4 then BigDecimal(@rng.rand(-(10**30)..(10**30)))
    else BigDecimal("0.#{'0' * @rng.rand(30)}#{@rng.rand(1..9)}")
    end
  end

  def date
    case @rng.rand(3)
    when 0 then Date.jd(@rng.rand(1_721_426..5_373_484)) # years 1..9999
    when 1 then Date.new(*pick(EDGE_DATES))
    else Date.jd(@rng.rand(-1_000_000..6_000_000))
    end
  end

  def datetime
    day = date
    zone = offset(utc: "+00:00")
    zone = Rational(zone, 86_400) if zone.is_a?(Integer)
    DateTime.new(day.year, day.month, day.day, @rng.rand(24), @rng.rand(60), @rng.rand(60) + subsec, zone)
  rescue ArgumentError # an offset DateTime does not take
    DateTime.new(day.year, day.month, day.day, 3, 4, 5)
  end

  private

  def pick(list)
    list[@rng.rand(list.size)]
  end

  def offset(utc:)
    case @rng.rand(4)
    when 0 then utc
    when 1 then format("%<sign>s%<h>02d:%<m>02d", sign: pick(%w[+ -]), h: @rng.rand(15), m: pick([0, 15, 30, 45]))
    when 2 then @rng.rand(-50_400..50_400) # seconds, odd ones too
    else format("%<sign>s%<h>02d:%<m>02d:%<s>02d", sign: pick(%w[+ -]), h: @rng.rand(14), m: @rng.rand(60), s: @rng.rand(60))
    end
  end

  def epoch
    case @rng.rand(5)
    when 0 then @rng.rand(-62_135_596_800..253_402_300_799) # years 1..9999
    when 1 then @rng.rand(-2_000_000..2_000_000)
    when 2 then pick(EDGE_EPOCHS)
    when 3 then @rng.rand(-70_000_000_000..300_000_000_000) # five-digit and negative years
    else Time.now.to_i + @rng.rand(-1000..1000)
    end
  end

  # Whole seconds, micro, nano, and finer than Time keeps.
  def subsec
    digits = pick([0, 6, 9, 12])
    digits.zero? ? 0 : Rational(@rng.rand(10**digits), 10**digits)
  end
end

values = RailsValues.new(Integer(ARGV.fetch(0)))
count = Integer(ARGV.fetch(1))
encoding = ActiveSupport::JSON::Encoding
rng = Random.new(Integer(ARGV.fetch(0)))
mismatches = []
checked = 0
count.times do |i|
  encoding.use_standard_json_time_format = rng.rand(2).zero?
  encoding.time_precision = rng.rand(0..9)
  value = values.public_send(values.kinds[i % values.kinds.size])
  [value, { "v" => value, "n" => [value, 1] }].each do |wrapped|
    ours = ActsAsTbackend::Fact.to_json(wrapped)
    theirs = JSON.generate(wrapped)
    checked += 1
    mismatches << "#{value.class} #{value.inspect}: #{ours} vs #{theirs}" unless ours.b == theirs.b
  end
end
puts(mismatches.empty? ? "checked #{checked}" : mismatches.first(5).join("\n"))
