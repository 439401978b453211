//! Exponential backoff with full jitter, for reconnects and retries alike.

use std::time::Duration;

/// The sleep before retry number `attempt` (1 for the first): uniform in
/// `[0, min(max, base · 2^(attempt-1))]`. Full jitter, so clients that failed together
/// (every process of a fleet when the daemon restarts) do not come back in lockstep.
pub(crate) fn full_jitter(base: Duration, max: Duration, attempt: u32, rng: &mut u64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max).as_nanos().min(u64::MAX as u128 / 2) as u64;
    if cap == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(next_rand(rng) % (cap + 1))
}

/// xorshift64*: jitter needs spread, not quality. `state` must not be 0.
pub(crate) fn next_rand(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_saturates_and_spreads() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let mut rng = 7;
        for attempt in 1..40 {
            let cap = (base * 2u32.pow((attempt - 1).min(20))).min(max);
            let draws: Vec<_> = (0..200)
                .map(|_| full_jitter(base, max, attempt, &mut rng))
                .collect();
            assert!(draws.iter().all(|d| *d <= cap), "attempt {attempt}");
            assert!(draws.iter().any(|d| *d < cap / 4) && draws.iter().any(|d| *d > cap * 3 / 4));
        }
        assert_eq!(
            full_jitter(Duration::ZERO, max, 3, &mut rng),
            Duration::ZERO
        );
    }
}
