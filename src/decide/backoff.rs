//! Exponential backoff as one small type, not arithmetic spread through the
//! callers.

use std::time::Duration;

/// Delays that double from `first` up to `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// A backoff starting at `first`, never above `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            attempts: 0,
        }
    }

    /// A backoff that has given `attempts` delays already (kept between
    /// processes as a count).
    pub(crate) fn after(first: Duration, max: Duration, attempts: u32) -> Self {
        Backoff {
            first,
            max,
            attempts,
        }
    }

    /// The delay before the next attempt; each call doubles the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // 2^16 times any sensible first delay is past any sensible maximum.
        let delay = self
            .first
            .saturating_mul(1 << self.attempts.min(16))
            .min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let delays: Vec<u64> = (0..6)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        for _ in 0..100 {
            assert_eq!(backoff.next_delay(), Duration::from_secs(5), "no overflow");
        }
    }
}
