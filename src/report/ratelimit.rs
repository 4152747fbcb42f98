//! A fixed-window log limiter, so a flood of junk cannot flood the journal.

use std::time::{Duration, Instant};

/// Allows `burst` events per `window`; counts the rest so a summary can be
/// logged when the window closes.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    allowed: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter letting `burst` events through per `window` (const: the
    /// worker lines' limits are a `static`).
    pub(crate) const fn new(window: Duration, burst: u32) -> Self {
        RateLimiter {
            window,
            burst,
            window_start: None,
            allowed: 0,
            suppressed: 0,
        }
    }

    /// Records an event at `now`; true if it may be logged individually.
    /// Call [`RateLimiter::close_window`] first so a finished window's
    /// suppressed count is not lost.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.window {
            self.window_start = Some(now);
            self.allowed = 0;
        }
        if self.allowed < self.burst {
            self.allowed += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Records an event at `now` that is not logged individually whatever
    /// the burst left (it counts for the window's summary).
    pub(crate) fn suppress(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.window {
            self.window_start = Some(now);
            self.allowed = 0;
        }
        self.suppressed += 1;
    }

    /// When the current window ends, if events were suppressed in it (the
    /// caller should wake up then to log the summary).
    pub(crate) fn summary_due(&self) -> Option<Instant> {
        match self.window_start {
            Some(start) if self.suppressed > 0 => Some(start + self.window),
            _ => None,
        }
    }

    /// True when no window is open: nothing was counted since the last
    /// close.
    pub(crate) fn is_idle(&self) -> bool {
        self.window_start.is_none()
    }

    /// If the window is over (or `force`), returns how many events it
    /// suppressed (if any) and starts afresh.
    pub(crate) fn close_window(&mut self, now: Instant, force: bool) -> Option<u64> {
        let start = self.window_start?;
        if !force && now.duration_since(start) < self.window {
            return None;
        }
        self.window_start = None;
        self.allowed = 0;
        match std::mem::take(&mut self.suppressed) {
            0 => None,
            n => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppressed_then_summary_then_fresh_window() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(Duration::from_secs(10), 3);
        let allowed = (0..1000).filter(|_| limiter.allow(t0)).count();
        assert_eq!(allowed, 3);
        assert_eq!(limiter.summary_due(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            limiter.close_window(t0 + Duration::from_secs(1), false),
            None
        );
        assert_eq!(
            limiter.close_window(t0 + Duration::from_secs(10), false),
            Some(997)
        );
        assert!(limiter.allow(t0 + Duration::from_secs(11)));
        assert_eq!(
            limiter.close_window(t0 + Duration::from_secs(12), true),
            None
        );
    }
}
