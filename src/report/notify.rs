//! Talking to systemd's notification socket. A failure here is logged once and
//! never fatal: the gateway's job is waking VMs, not pleasing the manager.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// `STATUS=` updates are sent at most this often. A flood changes the status
/// with every batch; sd_notify's send blocks once the manager's queue is
/// full, so an unthrottled stream could stall the gateway.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends `sd_notify` messages; a no-op when `NOTIFY_SOCKET` is unset.
#[derive(Debug)]
pub struct Notifier {
    warned: bool,
    watchdog_interval: Option<Duration>,
    next_watchdog: Option<Instant>,
    status_sent: String,
    status_sent_at: Option<Instant>,
    status_held: Option<String>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` and prepares to ping at half that interval.
    pub fn from_env() -> Self {
        let watchdog_interval = sd_notify::watchdog_enabled().map(|usec| usec / 2);
        Notifier {
            warned: false,
            watchdog_interval,
            next_watchdog: watchdog_interval.map(|_| Instant::now()),
            status_sent: String::new(),
            status_sent_at: None,
            status_held: None,
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
    pub(crate) fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.status_sent = status.to_owned();
        self.status_sent_at = Some(Instant::now());
    }

    /// `STATUS=…`, shown by `systemctl status`: sent if it changed, at most
    /// once per second; a newer one held back is sent by
    /// [`Notifier::flush_status`].
    pub(crate) fn status(&mut self, status: &str, now: Instant) {
        if status == self.status_sent {
            self.status_held = None;
            return;
        }
        match self.status_sent_at {
            Some(at) if now < at + STATUS_INTERVAL => self.status_held = Some(status.to_owned()),
            _ => {
                self.send(&[NotifyState::Status(status)]);
                self.status_sent = status.to_owned();
                self.status_sent_at = Some(now);
                self.status_held = None;
            }
        }
    }

    /// Sends a held-back status once its turn has come.
    pub(crate) fn flush_status(&mut self, now: Instant) {
        if let Some(status) = self.status_held.take() {
            self.status(&status, now);
        }
    }

    /// When a held-back status is due.
    pub(crate) fn status_due(&self) -> Option<Instant> {
        self.status_held.as_ref()?;
        self.status_sent_at.map(|at| at + STATUS_INTERVAL)
    }

    /// `STOPPING=1` with a status line.
    pub(crate) fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// When the next watchdog ping is due, if the watchdog is on.
    pub(crate) fn watchdog_due(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Pings the watchdog if a ping is due.
    pub(crate) fn watchdog(&mut self, now: Instant) {
        if let (Some(due), Some(interval)) = (self.next_watchdog, self.watchdog_interval) {
            if now >= due {
                self.send(&[NotifyState::Watchdog]);
                self.next_watchdog = Some(now + interval);
            }
        }
    }
}
