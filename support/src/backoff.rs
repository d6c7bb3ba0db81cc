//! Exponential backoff with jitter, for retrying calls to another process (the runner's calls to the API, the
//! proxy's change feed). Jitter spreads the retries of many clients that failed at the same moment.

use std::time::Duration;

/// Delays that double from `base` up to `max`, each drawn at random from its upper half ("equal jitter").
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The ceiling for retry number `attempt` (0 for the first retry): `base * 2^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max)
    }

    /// The delay before retry number `attempt`: between half the ceiling and the ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let mut b = [0u8; 4];
        // Without randomness the delay is the ceiling: still bounded, just not spread.
        let r = match getrandom::fill(&mut b) {
            Ok(()) => f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        half + (ceiling - half).mul_f64(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_stays_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(b.ceiling(0), Duration::from_millis(200));
        assert_eq!(b.ceiling(1), Duration::from_millis(400));
        assert_eq!(b.ceiling(5), Duration::from_secs(5));
        assert_eq!(b.ceiling(1000), Duration::from_secs(5));
        for attempt in 0..10 {
            let d = b.delay(attempt);
            assert!(d >= b.ceiling(attempt) / 2 && d <= b.ceiling(attempt), "{attempt}: {d:?}");
        }
    }
}
