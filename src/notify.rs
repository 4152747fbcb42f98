//! Talking to systemd's notification socket. A failure here is logged once and
//! never fatal: the gateway's job is waking VMs, not pleasing the manager.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends `sd_notify` messages; a no-op when `NOTIFY_SOCKET` is unset.
#[derive(Debug)]
pub struct Notifier {
    warned: bool,
    watchdog_interval: Option<Duration>,
    next_watchdog: Option<Instant>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` and prepares to ping at half that interval.
    pub fn from_env() -> Self {
        let watchdog_interval = sd_notify::watchdog_enabled().map(|usec| usec / 2);
        Notifier {
            warned: false,
            watchdog_interval,
            next_watchdog: watchdog_interval.map(|_| Instant::now()),
        }
    }

    fn send(&mut self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            if self.warned {
                debug!("cannot notify systemd: {e}");
            } else {
                self.warned = true;
                warn!("cannot notify systemd (NOTIFY_SOCKET): {e}; carrying on");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=…`, shown by `systemctl status`.
    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// When the next watchdog ping is due, if the watchdog is on.
    pub fn watchdog_due(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Pings the watchdog if a ping is due.
    pub fn watchdog(&mut self, now: Instant) {
        if let (Some(due), Some(interval)) = (self.next_watchdog, self.watchdog_interval) {
            if now >= due {
                self.send(&[NotifyState::Watchdog]);
                self.next_watchdog = Some(now + interval);
            }
        }
    }
}
