//! `valid_time` / `transaction_time` normalisation: the wire wants float epoch seconds.
//!
//! The old gem turned a String `valid_time` into garbage and raised on a Date. The Ruby
//! binding extracts primitives (a Time's seconds and nanoseconds, a Date's ISO string,
//! a String as given) and hands strings to [`parse_iso8601`], numbers to
//! [`check_finite`].
//!
//! Accepted strings, years `0000`–`9999` only:
//! - `YYYY-MM-DD`: midnight UTC of that day;
//! - `YYYY-MM-DD`, then `T`, `t` or a space, then `HH:MM`, `HH:MM:SS` or
//!   `HH:MM:SS.fraction`, then an offset: `Z`, `z`, `±HH:MM`, `±HHMM` or `±HH`
//!   (hours `00`–`23`, minutes `00`–`59`, as Ruby allows). The fraction has any
//!   number of digits; digits past the ninth (nanoseconds) are dropped.
//!
//! A date-time without an offset is refused: its instant would depend on the zone of
//! the machine that happens to run the code. So are `24:00`, leap seconds (`:60`),
//! impossible dates (`2026-02-30`) and any surrounding whitespace.

use thiserror::Error;

/// Why a time could not be normalised.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TimeError {
    /// The string does not have the shape of an ISO 8601 date or date-time.
    #[error("{input:?} is not an ISO 8601 time: expected {expected} at byte {at}")]
    Syntax {
        /// The string given.
        input: String,
        /// Byte offset of the problem.
        at: usize,
        /// What should have been there.
        expected: &'static str,
    },
    /// A date-time without `Z` or a numeric offset.
    #[error("{input:?} has no UTC offset: add Z or ±HH:MM (a local time would depend on the machine's time zone)")]
    MissingOffset {
        /// The string given.
        input: String,
    },
    /// A field out of its range (month 13, hour 24, minute 60, offset +24:00, …).
    #[error("{input:?} is not a valid time: {field} {value} is out of range {min}..={max}")]
    OutOfRange {
        /// The string given.
        input: String,
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u32,
        /// The smallest value allowed.
        min: u32,
        /// The largest value allowed.
        max: u32,
    },
    /// The day does not exist in that month (Feb 30, Feb 29 of a common year, Apr 31).
    #[error("{input:?} is not a valid date: {year:04}-{month:02} has {days_in_month} days")]
    NoSuchDay {
        /// The string given.
        input: String,
        /// The year.
        year: u32,
        /// The month.
        month: u32,
        /// How many days that month has.
        days_in_month: u32,
    },
    /// NaN or ±Infinity.
    #[error("{0} is not a time: epoch seconds must be finite")]
    NotFinite(f64),
}

/// `Ok(seconds)` when `seconds` is a usable epoch time (finite).
pub fn check_finite(seconds: f64) -> Result<f64, TimeError> {
    if seconds.is_finite() {
        Ok(seconds)
    } else {
        Err(TimeError::NotFinite(seconds))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`). `month` is 1..=12, `day` 1..=31; no range checks.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Days in `month` of `year` (proleptic Gregorian).
pub fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        _ => 28,
    }
}

/// Reads an ISO 8601 text byte by byte, remembering where it is for the error.
struct Scanner<'a> {
    input: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn syntax(&self, expected: &'static str) -> TimeError {
        TimeError::Syntax {
            input: self.input.to_owned(),
            at: self.at,
            expected,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn digits(&mut self, n: usize, expected: &'static str) -> Result<u32, TimeError> {
        let mut value = 0;
        for _ in 0..n {
            match self.peek() {
                Some(b @ b'0'..=b'9') => {
                    value = value * 10 + u32::from(b - b'0');
                    self.at += 1;
                }
                _ => return Err(self.syntax(expected)),
            }
        }
        Ok(value)
    }

    fn byte(&mut self, want: u8, expected: &'static str) -> Result<(), TimeError> {
        if self.peek() == Some(want) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    fn range(&self, field: &'static str, value: u32, min: u32, max: u32) -> Result<u32, TimeError> {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(TimeError::OutOfRange {
                input: self.input.to_owned(),
                field,
                value,
                min,
                max,
            })
        }
    }
}

/// Epoch seconds of an ISO 8601 date or date-time with offset (see the module docs
/// for the exact forms). Computed exactly in integers, then rounded once to the
/// nearest `f64`.
pub fn parse_iso8601(input: &str) -> Result<f64, TimeError> {
    let (seconds, nanos) = parse_iso8601_parts(input)?;
    Ok(to_f64(seconds, nanos))
}

/// [`parse_iso8601`] without the final rounding: whole epoch seconds (floored) and
/// the nanoseconds past them, `0..1_000_000_000`.
pub fn parse_iso8601_parts(input: &str) -> Result<(i64, u32), TimeError> {
    let mut c = Scanner {
        input,
        bytes: input.as_bytes(),
        at: 0,
    };
    let year = c.digits(4, "a four-digit year")?;
    c.byte(b'-', "'-' after the year")?;
    let month = c.digits(2, "a two-digit month")?;
    let month = c.range("month", month, 1, 12)?;
    c.byte(b'-', "'-' after the month")?;
    let day = c.digits(2, "a two-digit day")?;
    let day = c.range("day", day, 1, 31)?;
    let dim = days_in_month(year, month);
    if day > dim {
        return Err(TimeError::NoSuchDay {
            input: input.to_owned(),
            year,
            month,
            days_in_month: dim,
        });
    }
    let days = days_from_civil(i64::from(year), month, day);
    match c.peek() {
        None => return Ok((days * 86_400, 0)),
        Some(b'T' | b't' | b' ') => c.at += 1,
        Some(_) => return Err(c.syntax("the end, or 'T' or a space before the time")),
    }
    let hour = c.digits(2, "a two-digit hour")?;
    let hour = c.range("hour", hour, 0, 23)?;
    c.byte(b':', "':' after the hour")?;
    let minute = c.digits(2, "a two-digit minute")?;
    let minute = c.range("minute", minute, 0, 59)?;
    let mut second = 0;
    let mut nanos = 0;
    if c.peek() == Some(b':') {
        c.at += 1;
        second = c.digits(2, "a two-digit second")?;
        second = c.range("second", second, 0, 59)?;
        if c.peek() == Some(b'.') {
            c.at += 1;
            let start = c.at;
            while let Some(b @ b'0'..=b'9') = c.peek() {
                if c.at - start < 9 {
                    nanos = nanos * 10 + u32::from(b - b'0');
                }
                c.at += 1;
            }
            if c.at == start {
                return Err(c.syntax("fraction digits after '.'"));
            }
            for _ in (c.at - start)..9 {
                nanos *= 10;
            }
        }
    }
    let offset_seconds: i64 = match c.peek() {
        None => {
            return Err(TimeError::MissingOffset {
                input: input.to_owned(),
            })
        }
        Some(b'Z' | b'z') => {
            c.at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            c.at += 1;
            let hours = c.digits(2, "a two-digit offset hour")?;
            let hours = c.range("offset hour", hours, 0, 23)?;
            let minutes = match c.peek() {
                None => 0,
                Some(b':') => {
                    c.at += 1;
                    c.digits(2, "two-digit offset minutes after ':'")?
                }
                Some(_) => c.digits(2, "two-digit offset minutes, or the end")?,
            };
            let minutes = c.range("offset minute", minutes, 0, 59)?;
            let magnitude = i64::from(hours * 3600 + minutes * 60);
            if sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        Some(_) => return Err(c.syntax("'Z' or a ±HH:MM offset")),
    };
    if c.at != c.bytes.len() {
        return Err(c.syntax("the end after the offset"));
    }
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    Ok((seconds, nanos))
}

/// The `f64` nearest to `seconds + nanos / 1e9`. Formatting the exact decimal and
/// parsing it is one correctly rounded conversion; `seconds as f64 + nanos as f64 /
/// 1e9` would round twice.
fn to_f64(seconds: i64, nanos: u32) -> f64 {
    if nanos == 0 {
        return seconds as f64;
    }
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let sign = if total < 0 { "-" } else { "" };
    let magnitude = total.unsigned_abs();
    let text = format!(
        "{sign}{}.{:09}",
        magnitude / 1_000_000_000,
        magnitude % 1_000_000_000
    );
    text.parse()
        .expect("a formatted decimal always parses as f64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> f64 {
        parse_iso8601(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn dates_are_utc_midnight() {
        assert_eq!(ok("1970-01-01"), 0.0);
        assert_eq!(ok("2026-07-03"), 1_783_036_800.0);
        assert_eq!(ok("2000-02-29"), 951_782_400.0);
        assert_eq!(ok("1969-12-31"), -86_400.0);
        assert_eq!(ok("0000-01-01"), -62_167_219_200.0);
        assert_eq!(ok("9999-12-31"), 253_402_214_400.0);
    }

    #[test]
    fn date_times_with_offsets() {
        assert_eq!(ok("2026-07-03T10:00:00Z"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03t10:00:00z"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03 10:00:00Z"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03T10:00Z"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03T13:00:00+03:00"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03T13:00:00+0300"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03T13:00:00+03"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03T04:30:00-05:30"), 1_783_072_800.0);
        assert_eq!(ok("2026-07-03T10:00:00-00:00"), 1_783_072_800.0);
        assert_eq!(
            ok("2026-07-04T09:59:00+23:59"),
            1_783_072_800.0 - 60.0 + 60.0
        );
        assert_eq!(ok("1970-01-01T00:00:00+01:00"), -3600.0);
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(ok("2026-06-02T07:59:34.5Z"), 1_780_387_174.5);
        assert_eq!(
            parse_iso8601_parts("2026-06-02T07:59:34.123456789Z"),
            Ok((1_780_387_174, 123_456_789))
        );
        assert_eq!(
            ok("2026-06-02T07:59:34.123456789Z"),
            1_780_387_174.123_456_7
        );
        assert_eq!(
            parse_iso8601_parts("2026-06-02T07:59:34.1234567891999Z"),
            Ok((1_780_387_174, 123_456_789)),
            "digits past nanoseconds are dropped"
        );
        assert_eq!(
            parse_iso8601_parts("1970-01-01T00:00:00.000000001Z"),
            Ok((0, 1))
        );
        assert_eq!(ok("1970-01-01T00:00:00.000000001Z"), 1e-9);
        assert_eq!(
            parse_iso8601_parts("1969-12-31T23:59:58.5Z"),
            Ok((-2, 500_000_000))
        );
        assert_eq!(ok("1969-12-31T23:59:58.5Z"), -1.5);
        assert_eq!(ok("1969-12-31T23:59:59.9Z"), -0.1);
        assert_eq!(ok("2026-06-02T07:59:34.1Z"), 1_780_387_174.1);
    }

    /// Whether `r` is the double nearest to `total_nanos / 1e9`, decided in exact
    /// integer arithmetic: `r = m * 2^k`, and `m` must beat `m ± 1` at the same `k`.
    fn is_nearest(r: f64, total_nanos: i128) -> bool {
        let bits = r.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i32;
        let fraction = i128::from(bits & ((1 << 52) - 1));
        let (mut m, k) = if exponent == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1 << 52), exponent - 1075)
        };
        if bits >> 63 == 1 {
            m = -m;
        }
        assert!((-100..=0).contains(&k), "test only covers |r| < 2^52: {r}");
        // |c * 2^k - N / 1e9| scaled by 1e9 * 2^-k.
        let target = total_nanos << -k;
        let distance = |c: i128| (c * 1_000_000_000 - target).abs();
        distance(m) <= distance(m - 1) && distance(m) <= distance(m + 1)
    }

    #[test]
    fn conversion_rounds_once() {
        for (secs, nanos) in [
            (1_780_387_174i64, 123_456_789u32),
            (-2, 500_000_001),
            (0, 7),
            (0, 1),
            (253_402_300_799, 999_999_999),
            (-62_167_219_200, 1),
        ] {
            let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
            assert!(is_nearest(to_f64(secs, nanos), total), "{secs}.{nanos:09}");
        }
        let r = to_f64(1_780_387_174, 123_456_789);
        let one_ulp_off = f64::from_bits(r.to_bits() + 1);
        assert!(
            !is_nearest(one_ulp_off, 1_780_387_174_123_456_789),
            "the check can fail"
        );
        assert_eq!(to_f64(-2, 500_000_000), -1.5);
        assert_eq!(to_f64(-1, 0), -1.0);
    }

    #[test]
    fn refuses_date_times_without_offset() {
        for s in [
            "2026-07-03T10:00:00",
            "2026-07-03T10:00",
            "2026-07-03 10:00:00.5",
        ] {
            let err = parse_iso8601(s).unwrap_err();
            assert!(matches!(err, TimeError::MissingOffset { .. }), "{s}");
            assert!(err.to_string().contains("no UTC offset"), "{err}");
        }
    }

    #[test]
    fn refuses_impossible_dates() {
        let err = parse_iso8601("2026-02-30").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"2026-02-30\" is not a valid date: 2026-02 has 28 days"
        );
        assert!(matches!(
            parse_iso8601("2025-02-29T00:00Z"),
            Err(TimeError::NoSuchDay {
                days_in_month: 28,
                ..
            })
        ));
        assert!(matches!(
            parse_iso8601("1900-02-29"),
            Err(TimeError::NoSuchDay { .. })
        ));
        assert!(parse_iso8601("2000-02-29").is_ok());
        assert!(matches!(
            parse_iso8601("2026-04-31"),
            Err(TimeError::NoSuchDay {
                days_in_month: 30,
                ..
            })
        ));
        for (s, field) in [
            ("2026-13-01", "month"),
            ("2026-00-01", "month"),
            ("2026-01-00", "day"),
            ("2026-01-32", "day"),
            ("2026-01-01T24:00:00Z", "hour"),
            ("2026-01-01T23:60:00Z", "minute"),
            ("2026-12-31T23:59:60Z", "second"),
            ("2026-01-01T00:00:00+24:00", "offset hour"),
            ("2026-01-01T00:00:00+01:60", "offset minute"),
        ] {
            match parse_iso8601(s) {
                Err(TimeError::OutOfRange { field: f, .. }) => assert_eq!(f, field, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(
            parse_iso8601("2026-01-01T24:00:00Z")
                .unwrap_err()
                .to_string(),
            "\"2026-01-01T24:00:00Z\" is not a valid time: hour 24 is out of range 0..=23"
        );
    }

    #[test]
    fn refuses_malformed_strings() {
        for s in [
            "",
            " 2026-01-01",
            "2026-01-01 ",
            "26-01-01",
            "+2026-01-01",
            "-0001-01-01",
            "10000-01-01",
            "2026-1-01",
            "2026/01/01",
            "20260101",
            "2026-01-01T",
            "2026-01-01T1:00Z",
            "2026-01-01T10Z",
            "2026-01-01T10:00:0Z",
            "2026-01-01T10:00:00.Z",
            "2026-01-01T10:00:00,5Z",
            "2026-01-01T10:00:00ZZ",
            "2026-01-01T10:00:00+1",
            "2026-01-01T10:00:00+01:0",
            "2026-01-01T10:00:00+01:00:00",
            "2026-01-01T10:00:00 UTC",
            "2026-01-01T10:00:00 +01:00",
            "2026-01-01x",
            "２０２６-01-01",
            "1780387174.5",
        ] {
            let err = parse_iso8601(s).unwrap_err();
            assert!(matches!(err, TimeError::Syntax { .. }), "{s}: {err}");
        }
        assert_eq!(
            parse_iso8601("2026/01/01").unwrap_err().to_string(),
            "\"2026/01/01\" is not an ISO 8601 time: expected '-' after the year at byte 4"
        );
    }

    #[test]
    fn finite_check() {
        assert_eq!(check_finite(1.5), Ok(1.5));
        assert_eq!(check_finite(-0.0), Ok(-0.0));
        assert!(check_finite(f64::NAN).is_err());
        assert_eq!(
            check_finite(f64::INFINITY).unwrap_err().to_string(),
            "inf is not a time: epoch seconds must be finite"
        );
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(0, 3, 1), -719_468);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2400, 2), 29);
    }

    proptest! {
        #[test]
        fn consecutive_days_count_up_by_one(year in -2000i64..12000, month in 1u32..=12, day in 1u32..=31) {
            let leap_probe = year.rem_euclid(400) as u32 + 2000;
            prop_assume!(day <= days_in_month(leap_probe, month));
            let (ny, nm, nd) = if day < days_in_month(leap_probe, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
            prop_assert_eq!(days_from_civil(ny, nm, nd), days_from_civil(year, month, day) + 1);
        }

        #[test]
        fn any_valid_fields_parse(
            year in 0u32..=9999, month in 1u32..=12, day in 1u32..=28,
            hour in 0u32..=23, minute in 0u32..=59, second in 0u32..=59,
            nanos in 0u32..1_000_000_000, offset in -1439i32..=1439,
        ) {
            let sign = if offset < 0 { '-' } else { '+' };
            let s = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{nanos:09}{sign}{:02}:{:02}",
                offset.unsigned_abs() / 60, offset.unsigned_abs() % 60
            );
            let (secs, ns) = parse_iso8601_parts(&s).unwrap();
            let expected = days_from_civil(i64::from(year), month, day) * 86_400
                + i64::from(hour * 3600 + minute * 60 + second)
                - i64::from(offset) * 60;
            prop_assert_eq!((secs, ns), (expected, nanos));
        }

        #[test]
        fn conversion_is_the_nearest_double(
            secs in -62_167_219_200i64..253_402_300_800, nanos in 0u32..1_000_000_000,
        ) {
            let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
            prop_assert!(is_nearest(to_f64(secs, nanos), total));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_iso8601(&s);
        }

        #[test]
        fn never_panics_on_near_misses(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9:.]{0,14}([Zz]|[+-][0-9:]{0,6})?)?") {
            let _ = parse_iso8601(&s);
        }
    }
}
