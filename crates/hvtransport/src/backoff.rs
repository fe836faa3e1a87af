//! Redial pacing: exponential backoff from 100 ms to 30 s with jitter, reset after a connection that lived a
//! while. Pure: the caller passes the random bits and the durations.

use std::time::Duration;

pub const MIN_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A connection that lived this long counts as healthy, and the next redial starts again from the minimum.
pub const STABLE_AFTER: Duration = Duration::from_secs(5);

/// The backoff state of one dialling service.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    min: Duration,
    max: Duration,
    random: u64,
}

impl Backoff {
    /// A fresh backoff; `seed` feeds the jitter (any value; zero is replaced).
    pub fn new(seed: u64) -> Backoff {
        Backoff::with_limits(seed, MIN_DELAY, MAX_DELAY)
    }

    /// A fresh backoff growing from `min` to `max` (the config's redial_min and redial_max).
    pub fn with_limits(seed: u64, min: Duration, max: Duration) -> Backoff {
        Backoff {
            base: min,
            min,
            max: max.max(min),
            random: seed | 1,
        }
    }

    /// The delay before the next attempt: between half and all of the current base, so many agents that
    /// lost the same host do not redial in step. The base then doubles, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let half = self.base / 2;
        let jitter = half.mul_f64((self.random >> 11) as f64 / (1u64 << 53) as f64);
        let delay = half + jitter;
        self.base = (self.base * 2).min(self.max);
        delay
    }

    /// Called when a connection ends after `lived`: a long one resets the backoff.
    pub fn connection_ended(&mut self, lived: Duration) {
        if lived >= STABLE_AFTER {
            self.base = self.min;
        }
    }

    /// The current base, for status output.
    pub fn base(&self) -> Duration {
        self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_from_100_ms_to_30_s_with_jitter_within_bounds() {
        let mut backoff = Backoff::new(42);
        let mut base = MIN_DELAY;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= base / 2 && delay <= base,
                "{delay:?} vs base {base:?}"
            );
            base = (base * 2).min(MAX_DELAY);
        }
        assert_eq!(backoff.base(), MAX_DELAY);
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let first: Vec<Duration> = (0..5)
            .map({
                let mut b = Backoff::new(1);
                move |_| b.next_delay()
            })
            .collect();
        let second: Vec<Duration> = (0..5)
            .map({
                let mut b = Backoff::new(99);
                move |_| b.next_delay()
            })
            .collect();
        assert_ne!(first, second);
    }

    #[test]
    fn a_long_connection_resets_and_a_short_one_does_not() {
        let mut backoff = Backoff::new(7);
        for _ in 0..6 {
            backoff.next_delay();
        }
        let grown = backoff.base();
        backoff.connection_ended(Duration::from_millis(300));
        assert_eq!(backoff.base(), grown);
        backoff.connection_ended(STABLE_AFTER);
        assert_eq!(backoff.base(), MIN_DELAY);
    }
}
