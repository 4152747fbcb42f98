//! The rate limits of the lines worker threads log (a host out or back, a
//! domain skipped, the index file): the same windows and burst as the
//! loop's ([`super::LOG_WINDOW`], [`super::LOG_BURST`]), so a flapping host
//! or ten thousand unreadable domains cannot flood the journal either.
//!
//! Workers have no [`super::Reporter`] (the loop owns it), so their limits
//! live in one process-wide [`WORKER_LINES`]. What a limit holds back is
//! logged at debug and summed up when its window closes: by the next worker
//! line, or by the loop's [`super::Reporter::close_windows`], which also
//! wakes for [`WorkerLines::summary_due`].

use std::sync::Mutex;
use std::time::Instant;

use super::ratelimit::RateLimiter;
use super::{LOG_BURST, LOG_WINDOW};

/// The limits every worker line goes through.
pub(crate) static WORKER_LINES: Mutex<WorkerLines> = Mutex::new(WorkerLines::new());

/// What a worker line is about: the key of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic<'a> {
    /// A host going out or coming back. Each host has its own window, so
    /// one flapping host does not hide another's outage.
    Host(&'a str),
    /// Domains skipped because their MACs cannot be read.
    Domains,
    /// The MAC index file ignored or not written.
    IndexFile,
    /// Requests to put a domain to sleep.
    Sleep,
}

/// The lines a closed window held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// What they were about.
    pub(crate) about: About,
    /// How many.
    pub(crate) count: u64,
}

/// A [`Topic`] that owns its URI (it outlives the line that counted it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum About {
    /// [`Topic::Host`].
    Host(String),
    /// [`Topic::Domains`].
    Domains,
    /// [`Topic::IndexFile`].
    IndexFile,
    /// [`Topic::Sleep`].
    Sleep,
}

/// A worker line's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// It may be logged at its own level (else at debug).
    pub(crate) shown: bool,
    /// Summaries of windows that closed before it, to be logged first.
    pub(crate) held: Vec<Held>,
}

/// The worker lines' windows.
#[derive(Debug)]
pub(crate) struct WorkerLines {
    /// One window per host URI that logged within its window; closed ones
    /// are dropped, so this holds only hosts heard from lately.
    hosts: Vec<(String, RateLimiter)>,
    domains: RateLimiter,
    index_file: RateLimiter,
    sleep: RateLimiter,
}

impl WorkerLines {
    /// No line seen yet.
    pub(crate) const fn new() -> Self {
        WorkerLines {
            hosts: Vec::new(),
            domains: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            index_file: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            sleep: RateLimiter::new(LOG_WINDOW, LOG_BURST),
        }
    }

    /// Counts a line about `topic` at `now`. Windows that ended are closed
    /// first, so their counts are not lost when a new window starts.
    pub(crate) fn admit(&mut self, topic: Topic<'_>, now: Instant) -> Admitted {
        let held = self.close(now, false);
        let limiter = match topic {
            Topic::Host(uri) => {
                let at = match self.hosts.iter().position(|(u, _)| u == uri) {
                    Some(at) => at,
                    None => {
                        let limiter = RateLimiter::new(LOG_WINDOW, LOG_BURST);
                        self.hosts.push((uri.to_owned(), limiter));
                        self.hosts.len() - 1
                    }
                };
                &mut self.hosts[at].1
            }
            Topic::Domains => &mut self.domains,
            Topic::IndexFile => &mut self.index_file,
            Topic::Sleep => &mut self.sleep,
        };
        Admitted {
            shown: limiter.allow(now),
            held,
        }
    }

    /// Closes the windows that ended at `now` (every one with `force`) and
    /// returns what they held back.
    pub(crate) fn close(&mut self, now: Instant, force: bool) -> Vec<Held> {
        let mut held = Vec::new();
        for (uri, limiter) in &mut self.hosts {
            if let Some(count) = limiter.close_window(now, force) {
                let about = About::Host(uri.clone());
                held.push(Held { about, count });
            }
        }
        let others = [
            (About::Domains, &mut self.domains),
            (About::IndexFile, &mut self.index_file),
            (About::Sleep, &mut self.sleep),
        ];
        for (about, limiter) in others {
            if let Some(count) = limiter.close_window(now, force) {
                held.push(Held { about, count });
            }
        }
        self.hosts.retain(|(_, limiter)| !limiter.is_idle());
        held
    }

    /// When the next summary is due, if a window holds lines back.
    pub(crate) fn summary_due(&self) -> Option<Instant> {
        (self.hosts.iter().map(|(_, limiter)| limiter))
            .chain([&self.domains, &self.index_file, &self.sleep])
            .filter_map(RateLimiter::summary_due)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_of_skipped_domains_is_bounded_and_summed_up() {
        let t0 = Instant::now();
        let mut lines = WorkerLines::new();
        let shown = (0..10_000)
            .map(|_| lines.admit(Topic::Domains, t0 + Duration::from_millis(1)))
            .inspect(|admitted| assert_eq!(admitted.held, []))
            .filter(|admitted| admitted.shown)
            .count();
        assert_eq!(shown, LOG_BURST as usize);
        assert_eq!(
            lines.summary_due(),
            Some(t0 + Duration::from_millis(1) + LOG_WINDOW)
        );
        // The loop closes the window when it is due: one summary.
        let held = lines.close(t0 + LOG_WINDOW, false);
        assert_eq!(held, []);
        let held = lines.close(t0 + Duration::from_millis(1) + LOG_WINDOW, false);
        assert_eq!(
            held,
            [Held {
                about: About::Domains,
                count: 10_000 - u64::from(LOG_BURST),
            }]
        );
        assert_eq!(lines.summary_due(), None);
        // The next window starts afresh.
        assert!(lines.admit(Topic::Domains, t0 + 2 * LOG_WINDOW).shown);
    }

    #[test]
    fn the_next_worker_line_sums_up_a_window_nobody_closed() {
        let t0 = Instant::now();
        let mut lines = WorkerLines::new();
        for _ in 0..LOG_BURST + 3 {
            lines.admit(Topic::IndexFile, t0);
        }
        let later = lines.admit(Topic::Domains, t0 + LOG_WINDOW);
        assert!(later.shown);
        assert_eq!(
            later.held,
            [Held {
                about: About::IndexFile,
                count: 3,
            }]
        );
    }

    #[test]
    fn a_flapping_host_does_not_hide_another() {
        let t0 = Instant::now();
        let mut lines = WorkerLines::new();
        let flapping = (0..100)
            .filter(|_| lines.admit(Topic::Host("qemu+ssh://a/system"), t0).shown)
            .count();
        assert_eq!(flapping, LOG_BURST as usize);
        assert!(lines.admit(Topic::Host("qemu+ssh://b/system"), t0).shown);
        let held = lines.close(t0, true);
        assert_eq!(
            held,
            [Held {
                about: About::Host("qemu+ssh://a/system".into()),
                count: 100 - u64::from(LOG_BURST),
            }]
        );
        // Hosts whose windows closed are forgotten: the list stays short.
        assert!(lines.hosts.is_empty());
    }

    #[test]
    fn forced_close_sums_up_at_exit() {
        let t0 = Instant::now();
        let mut lines = WorkerLines::new();
        for _ in 0..LOG_BURST + 1 {
            lines.admit(Topic::Domains, t0);
        }
        assert_eq!(lines.close(t0, false), []);
        assert_eq!(lines.close(t0, true).len(), 1);
        assert_eq!(lines.close(t0, true), []);
    }
}
