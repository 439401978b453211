//! The writer's last resort: lines on stderr, rate-limited. Used when nobody drains its
//! events (a Rust program, or a Ruby process whose draining thread is gone) and for the
//! events a Ruby drainer found nobody subscribed to.

use std::io::Write;
use std::time::{Duration, Instant};

/// At most `BURST` lines per second; what it holds back is counted into the next line,
/// so a flood (a wrong token fails every fact) stays readable and not silent.
#[derive(Debug, Default)]
pub(super) struct StderrLimiter {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl StderrLimiter {
    const BURST: u32 = 10;

    /// Writes `text` (one line) to stderr unless the burst is spent.
    pub fn line(&mut self, text: &str) {
        self.line_to(&mut std::io::stderr().lock(), text, Instant::now());
    }

    fn line_to(&mut self, out: &mut impl Write, text: &str, now: Instant) {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines >= Self::BURST {
            self.suppressed += 1;
            return;
        }
        self.lines += 1;
        let suppressed = std::mem::take(&mut self.suppressed);
        if suppressed > 0 {
            let _ = writeln!(
                out,
                "acts_as_tbackend: {suppressed} more such lines suppressed"
            );
        }
        let _ = writeln!(out, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_a_burst_per_second_and_counted_into_the_next_line() {
        let mut limiter = StderrLimiter::default();
        let mut out = Vec::new();
        let t0 = Instant::now();
        for n in 0..25 {
            limiter.line_to(&mut out, &format!("line {n}"), t0);
        }
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert_eq!(text.lines().last(), Some("line 9"));
        out.clear();
        limiter.line_to(&mut out, "later", t0 + Duration::from_millis(999));
        assert!(out.is_empty(), "still the same second");
        limiter.line_to(&mut out, "next second", t0 + Duration::from_secs(1));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "acts_as_tbackend: 16 more such lines suppressed\nnext second\n"
        );
    }
}
