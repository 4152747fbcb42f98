//! The event loop: where packets enter.
//!
//! One thread polls the sockets (and a signal pipe), drains every queued
//! datagram into a list of pending wake requests (one per MAC: repeats are
//! duplicates), then acts on them through the [`Fleet`]. When libvirt is
//! unreachable the requests stay pending and are retried with backoff. After
//! `idle_timeout` without a datagram the process exits; the socket stays with
//! systemd, which starts us again for the next packet.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use tracing::{debug, error, info, warn};

use crate::hypervisor::{Action, Connector};
use crate::notify::Notifier;
use crate::packet::{self, Mac};
use crate::ratelimit::RateLimiter;
use crate::sockets::{Listener, Source};
use crate::wake::{Fleet, Outcome, Unreachable};

/// Largest UDP payload; a magic packet may sit anywhere in it.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read per round before acting, so a flood cannot starve wakes.
const MAX_DRAIN_BATCH: usize = 8_192;
/// Recently handled MACs kept for de-duplication; bounds memory under a
/// flood of distinct MACs (forgetting one only risks a harmless second try).
const MAX_RECENT: usize = 4_096;
/// Wake requests kept while libvirt is away; more are refused (and logged).
const MAX_PENDING: usize = 4_096;
/// Window and burst for rate-limited log lines (junk, duplicates, unknown
/// MACs, overflow): a flood costs at most a few lines per window.
const LOG_WINDOW: Duration = Duration::from_secs(10);
const LOG_BURST: u32 = 10;
/// Retry backoff while libvirt is unreachable.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Loop settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Exit after this long without a datagram; `None` runs until stopped.
    pub idle_timeout: Option<Duration>,
    /// A MAC handled within this window is not acted on again.
    pub dedupe_window: Duration,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Idle timeout passed with nothing pending.
    Idle,
    /// SIGTERM or SIGINT.
    Signal,
    /// Idle timeout passed while libvirt stayed unreachable; requests were lost.
    GaveUp,
    /// A raw listener's interface disappeared.
    ListenerLost,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Exit::Idle | Exit::Signal => 0,
            Exit::GaveUp | Exit::ListenerLost => 1,
        }
    }
}

/// SIGTERM/SIGINT, delivered through a self-pipe so `poll` wakes up for them.
#[derive(Debug)]
pub struct Shutdown {
    pipe: UnixStream,
    requested: bool,
}

impl Shutdown {
    /// Installs handlers for SIGTERM and SIGINT.
    pub fn install() -> io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        Ok(Shutdown {
            pipe: read,
            requested: false,
        })
    }

    /// True once a signal has arrived (checked without blocking).
    pub fn requested(&mut self) -> bool {
        if !self.requested {
            let mut buf = [0u8; 8];
            self.requested = matches!(self.pipe.read(&mut buf), Ok(n) if n > 0);
        }
        self.requested
    }
}

/// Counters for the exit summary (and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams read.
    pub datagrams: u64,
    /// Datagrams that were not magic packets.
    pub rejected: u64,
    /// Magic packets for a MAC already pending or handled within the window.
    pub duplicates: u64,
    /// Wake requests decided (one log line each).
    pub handled: u64,
    /// Wake requests refused because too many were waiting for libvirt.
    pub dropped: u64,
    /// Time spent reading and parsing datagrams (for the drain-rate figure).
    pub drain_time: Duration,
}

struct Request {
    mac: Mac,
    source: Source,
    repeats: u32,
}

/// Pending wake requests in arrival order, one per MAC, with O(1) lookup
/// by MAC (a flood of distinct MACs must not make each enqueue a scan).
#[derive(Default)]
struct Pending {
    order: VecDeque<Mac>,
    requests: HashMap<Mac, Request>,
}

impl Pending {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn get_mut(&mut self, mac: Mac) -> Option<&mut Request> {
        self.requests.get_mut(&mac)
    }

    fn push(&mut self, request: Request) {
        self.order.push_back(request.mac);
        self.requests.insert(request.mac, request);
    }

    fn front(&self) -> Option<&Request> {
        self.order.front().and_then(|mac| self.requests.get(mac))
    }

    fn pop_front(&mut self) -> Option<Request> {
        let mac = self.order.pop_front()?;
        self.requests.remove(&mac)
    }

    fn macs(&self) -> impl Iterator<Item = &Mac> {
        self.order.iter()
    }
}

struct Recent {
    at: Instant,
    duplicate_logged: bool,
}

struct Outage {
    since: Instant,
    attempts: u32,
    retry_at: Instant,
    last_error: String,
}

/// The gateway: sockets in, wake requests out.
pub struct Gateway<C: Connector> {
    listeners: Vec<Listener>,
    fleet: Fleet<C>,
    config: Config,
    shutdown: Shutdown,
    notifier: Notifier,
    pending: Pending,
    recent: HashMap<Mac, Recent>,
    last_prune: Instant,
    overflow: RateLimiter,
    rejections: RateLimiter,
    unknown_macs: RateLimiter,
    duplicates: RateLimiter,
    outage: Option<Outage>,
    last_datagram: Instant,
    listener_lost: bool,
    last_event: String,
    stats: Stats,
    buf: Vec<u8>,
}

impl<C: Connector> Gateway<C> {
    /// A gateway serving `sockets` (non-blocking), waking through `fleet`.
    pub fn new(
        listeners: Vec<Listener>,
        fleet: Fleet<C>,
        config: Config,
        shutdown: Shutdown,
        notifier: Notifier,
    ) -> Self {
        let addresses: Vec<String> = listeners.iter().map(Listener::describe).collect();
        Gateway {
            listeners,
            fleet,
            config,
            shutdown,
            notifier,
            pending: Pending::default(),
            recent: HashMap::new(),
            last_prune: Instant::now(),
            overflow: RateLimiter::new(LOG_WINDOW, 1),
            rejections: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            unknown_macs: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            duplicates: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            outage: None,
            last_datagram: Instant::now(),
            listener_lost: false,
            last_event: format!("listening on {}", addresses.join(", ")),
            stats: Stats::default(),
            buf: vec![0; MAX_DATAGRAM],
        }
    }

    /// Serves until idle or signalled.
    pub fn run(mut self) -> (Exit, Stats) {
        let status = self.status_line(Instant::now());
        info!(
            "{}; libvirt {}; {}",
            self.last_event,
            self.fleet.uris(),
            match self.config.idle_timeout {
                Some(t) => format!("exiting after {} s without packets", t.as_secs_f64()),
                None => "running until stopped".into(),
            }
        );
        // Ready once the sockets are held, before libvirt is contacted.
        self.notifier.ready(&status);
        let exit = loop {
            let now = Instant::now();
            self.notifier.watchdog(now);
            self.notifier.flush_status(now);
            self.log_summaries(now, false);
            if self.shutdown.requested() {
                break Exit::Signal;
            }
            if self.listener_lost {
                break Exit::ListenerLost;
            }
            if self.retry_due(now) {
                self.act_on_pending();
                continue;
            }
            if let Some(idle) = self.config.idle_timeout {
                if now.duration_since(self.last_datagram) >= idle {
                    break if self.pending.is_empty() {
                        Exit::Idle
                    } else {
                        Exit::GaveUp
                    };
                }
            }
            self.wait(now);
            self.drain();
        };
        self.finish(exit);
        (exit, self.stats)
    }

    fn retry_due(&self, now: Instant) -> bool {
        !self.pending.is_empty() && self.outage.as_ref().is_none_or(|o| now >= o.retry_at)
    }

    /// Sleeps in `poll` until a socket or the signal pipe is readable, or
    /// the next deadline (idle exit, retry, watchdog, log summary).
    fn wait(&mut self, now: Instant) {
        let idle_deadline = self.config.idle_timeout.map(|t| self.last_datagram + t);
        let retry = self
            .outage
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|o| o.retry_at);
        let deadline = [
            idle_deadline,
            retry,
            self.notifier.watchdog_due(),
            self.notifier.status_due(),
            self.summary_due(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(now);
            Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        let mut fds: Vec<PollFd<'_>> = self
            .listeners
            .iter()
            .map(|s| PollFd::new(s, PollFlags::IN))
            .collect();
        fds.push(PollFd::new(&self.shutdown.pipe, PollFlags::IN));
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // Should not happen; avoid a busy loop if it does.
                warn!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Reads every queued datagram (up to a batch cap) into pending requests.
    fn drain(&mut self) {
        // One clock read per round, not per datagram: a round takes at most
        // a few milliseconds, far below every window it feeds.
        let now = Instant::now();
        let mut read = 0;
        for i in 0..self.listeners.len() {
            while read < MAX_DRAIN_BATCH {
                let (len, source) = match self.listeners[i].recv(&mut self.buf) {
                    Ok(received) => received,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // A raw interface was deleted: its socket can never
                        // receive again. Exit (status 1) so the unit's
                        // Restart= opens it anew once the interface is back.
                        error!("{}: {e}; exiting", self.listeners[i].describe());
                        self.listener_lost = true;
                        break;
                    }
                    Err(e) => {
                        warn!("{}: {e}", self.listeners[i].describe());
                        break;
                    }
                };
                read += 1;
                match packet::parse(&self.buf[..len]) {
                    Ok(mac) => self.enqueue(mac, source, now),
                    Err(reason) => {
                        self.stats.rejected += 1;
                        if self.rejections.allow(now) {
                            debug!(source = %source, len, "rejected datagram from {source}: {reason}");
                        }
                    }
                }
            }
        }
        if read > 0 {
            self.stats.datagrams += read as u64;
            self.last_datagram = Instant::now();
        }
        self.stats.drain_time += now.elapsed();
    }

    fn enqueue(&mut self, mac: Mac, source: Source, now: Instant) {
        if let Some(request) = self.pending.get_mut(mac) {
            // Part of the same burst: reported on the request's own line.
            request.repeats += 1;
            self.stats.duplicates += 1;
            return;
        }
        if let Some(recent) = self.recent.get_mut(&mac) {
            let ago = now.duration_since(recent.at);
            if ago < self.config.dedupe_window {
                self.stats.duplicates += 1;
                let message = format!(
                    "duplicate wake request for {mac} from {source} ignored: handled {:.1} s ago",
                    ago.as_secs_f64()
                );
                // At info: the first repeat of each MAC, and at most
                // LOG_BURST per window in all (a flood of repeats is
                // summarized); the rest at debug.
                let first = !std::mem::replace(&mut recent.duplicate_logged, true);
                if first && self.duplicates.allow(now) {
                    info!(mac = %mac, source = %source, action = "none", result = "duplicate", "{message}");
                } else {
                    debug!(mac = %mac, source = %source, action = "none", result = "duplicate", "{message}");
                }
                return;
            }
        }
        if self.pending.len() >= MAX_PENDING {
            self.stats.dropped += 1;
            if self.overflow.allow(now) {
                warn!(mac = %mac, source = %source, action = "none", result = "dropped",
                    "dropping wake request for {mac} from {source}: {MAX_PENDING} requests are \
                     already waiting for libvirt (counted in the exit summary)");
            }
            return;
        }
        self.pending.push(Request {
            mac,
            source,
            repeats: 0,
        });
    }

    /// Acts on pending requests in arrival order until done, signalled, or
    /// libvirt turns out unreachable.
    fn act_on_pending(&mut self) {
        while let Some(request) = self.pending.front() {
            // Between actions, never during one: SIGTERM waits for it.
            if self.shutdown.requested() {
                return;
            }
            let (mac, source, repeats) = (request.mac, request.source.clone(), request.repeats);
            match self.fleet.wake(mac) {
                Ok(outcome) => {
                    self.pending.pop_front();
                    self.end_outage();
                    self.stats.handled += 1;
                    self.report(mac, source, repeats, &outcome);
                    self.remember(mac);
                    self.last_event = outcome.summary(mac);
                }
                Err(Unreachable(e)) => {
                    self.begin_or_extend_outage(e.to_string());
                    break;
                }
            }
        }
        let now = Instant::now();
        let status = self.status_line(now);
        self.notifier.status(&status, now);
    }

    fn remember(&mut self, mac: Mac) {
        let now = Instant::now();
        // Pruning walks the whole map: at most once a second, or a flood of
        // distinct MACs would pay a full walk per request.
        if self.recent.len() >= MAX_RECENT
            && now.duration_since(self.last_prune) >= Duration::from_secs(1)
        {
            let window = self.config.dedupe_window;
            self.recent
                .retain(|_, recent| now.duration_since(recent.at) < window);
            self.last_prune = now;
        }
        if self.recent.len() < MAX_RECENT {
            self.recent.insert(
                mac,
                Recent {
                    at: now,
                    duplicate_logged: false,
                },
            );
        }
    }

    fn begin_or_extend_outage(&mut self, error: String) {
        let now = Instant::now();
        let uri = self.fleet.uris().to_owned();
        let pending = self.pending.len();
        let outage = self.outage.get_or_insert_with(|| {
            error!(
                "cannot reach libvirt at {uri}: {error}. Is libvirtd running, and may this user \
                 use it (member of the 'libvirt' group, or allowed by polkit)? Keeping {pending} \
                 wake request(s) and retrying"
            );
            Outage {
                since: now,
                attempts: 0,
                retry_at: now,
                last_error: error.clone(),
            }
        });
        outage.attempts += 1;
        let backoff = FIRST_RETRY
            .saturating_mul(1 << outage.attempts.min(8))
            .min(MAX_RETRY);
        outage.retry_at = now + backoff;
        if outage.attempts > 1 {
            debug!(
                "libvirt at {uri} still unreachable (attempt {}): {error}; retrying in {:.2} s",
                outage.attempts,
                backoff.as_secs_f64()
            );
        }
        outage.last_error = error;
        self.last_event =
            format!("waiting for libvirt at {uri} ({pending} wake request(s) pending)");
    }

    fn end_outage(&mut self) {
        if let Some(outage) = self.outage.take() {
            info!(
                "libvirt at {} is reachable again after {:.1} s; acting on {} pending wake request(s)",
                self.fleet.uris(),
                outage.since.elapsed().as_secs_f64(),
                self.pending.len() + 1
            );
        }
    }

    /// One log line per decision, with the journal fields MAC, SOURCE,
    /// DOMAIN, STATE, ACTION and RESULT.
    fn report(&mut self, mac: Mac, source: Source, repeats: u32, outcome: &Outcome) {
        let uri = self.fleet.uris().to_owned();
        let burst = match repeats {
            0 => String::new(),
            1 => " (1 duplicate packet in this burst ignored)".into(),
            n => format!(" ({n} duplicate packets in this burst ignored)"),
        };
        let request = format!("{mac} from {source}");
        match outcome {
            Outcome::Done {
                domain,
                state,
                action,
                restored,
            } => {
                let (verb, message) = match (action, restored) {
                    (Action::Start, true) => (
                        "restore",
                        format!("restored {domain} from its managed-save image"),
                    ),
                    (Action::Start, false) => ("start", format!("started {domain}")),
                    (Action::Resume, _) => ("resume", format!("resumed {domain}")),
                    (Action::PmWakeup, _) => {
                        ("pm-wakeup", format!("woke {domain} from PM suspend"))
                    }
                };
                info!(mac = %mac, source = %source, domain = %domain, state = %state, action = verb, result = "ok",
                    "{message} (was {state}) for {request}{burst}");
            }
            Outcome::Failed {
                domain,
                state,
                action,
                error,
            } => {
                error!(mac = %mac, source = %source, domain = %domain, state = %state, action = action.as_str(), result = "failed",
                    "cannot {} {domain} (was {state}) for {request}: {error}{burst}", action.as_str());
            }
            Outcome::AlreadyUp {
                domain,
                state,
                others,
            } => {
                let also = if others.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; left alone the inactive domain(s) sharing the MAC: {}",
                        others.join(", ")
                    )
                };
                info!(mac = %mac, source = %source, domain = %domain, state = %state, action = "none", result = "already-up",
                    "{domain} is already up ({state}); nothing to do for {request}{also}{burst}");
            }
            Outcome::Refused { domains, reason } => {
                let names = domains.join(", ");
                warn!(mac = %mac, source = %source, domain = %names, action = "none", result = "refused",
                    "refused to wake {names} for {request}: {reason}{burst}");
            }
            Outcome::Ambiguous { domains } => {
                let names = domains.join(", ");
                error!(mac = %mac, source = %source, domain = %names, action = "none", result = "ambiguous",
                    "{request}: MAC is on several shut-off domains ({names}); starting none. \
                     Give each domain a unique MAC{burst}");
            }
            Outcome::NoMatch => {
                let now = Instant::now();
                self.log_summaries(now, false);
                let message = format!(
                    "no domain on {uri} has MAC {mac} (from {source}); nothing to do{burst}"
                );
                if self.unknown_macs.allow(now) {
                    warn!(mac = %mac, source = %source, action = "none", result = "no-match", "{message}");
                } else {
                    debug!(mac = %mac, source = %source, action = "none", result = "no-match", "{message}");
                }
            }
            Outcome::DryRun {
                domain,
                state,
                action,
                restored,
            } => {
                let verb = if *restored {
                    "restore"
                } else {
                    action.as_str()
                };
                info!(mac = %mac, source = %source, domain = %domain, state = %state, action = verb, result = "dry-run",
                    "dry run: would {verb} {domain} (is {state}) for {request}{burst}");
            }
            Outcome::LookupFailed { error } => {
                error!(mac = %mac, source = %source, action = "none", result = "failed",
                    "cannot look up {request} on {uri}: {error}{burst}");
            }
        }
    }

    /// Logs what the rate limits held back, once each window closes (or
    /// at exit, with `force`).
    fn log_summaries(&mut self, now: Instant, force: bool) {
        let window = LOG_WINDOW.as_secs();
        if let Some(n) = self.rejections.close_window(now, force) {
            info!(
                "ignored {n} more invalid datagrams in the last {window} s (not magic packets; \
                 RUST_LOG=debug shows the first {LOG_BURST} of each window)"
            );
        }
        if let Some(n) = self.duplicates.close_window(now, force) {
            info!("ignored {n} more duplicate wake requests in the last {window} s");
        }
        if let Some(n) = self.unknown_macs.close_window(now, force) {
            warn!(
                "{n} more wake requests for MACs no domain on {} has in the last {window} s",
                self.fleet.uris()
            );
        }
        if let Some(n) = self.overflow.close_window(now, force) {
            warn!("dropped {n} more wake requests in the last {window} s: too many pending");
        }
    }

    /// When the next rate-limit summary is due, if any.
    fn summary_due(&self) -> Option<Instant> {
        [
            &self.rejections,
            &self.duplicates,
            &self.unknown_macs,
            &self.overflow,
        ]
        .into_iter()
        .filter_map(RateLimiter::summary_due)
        .min()
    }

    fn status_line(&self, now: Instant) -> String {
        if !self.pending.is_empty() {
            return self.last_event.clone();
        }
        match self.config.idle_timeout {
            Some(idle) => {
                let left = (self.last_datagram + idle).saturating_duration_since(now);
                format!(
                    "{}; idle, exiting in {} s",
                    self.last_event,
                    left.as_secs_f64().ceil()
                )
            }
            None => format!("{}; waiting for magic packets", self.last_event),
        }
    }

    fn finish(&mut self, exit: Exit) {
        self.log_summaries(Instant::now(), true);
        let uri = self.fleet.uris().to_owned();
        let unacted: Vec<String> = self.pending.macs().map(Mac::to_string).collect();
        let why = match exit {
            Exit::Idle => "idle timeout",
            Exit::Signal => "signal",
            Exit::GaveUp => "idle timeout with libvirt unreachable",
            Exit::ListenerLost => "a listened-on interface disappeared",
        };
        if !unacted.is_empty() {
            let error = self
                .outage
                .as_ref()
                .map_or_else(String::new, |o| format!(": {}", o.last_error));
            error!(
                "exiting ({why}) without acting on {} wake request(s) for {}; libvirt at {uri} \
                 was not reachable{error}",
                unacted.len(),
                unacted.join(", ")
            );
        }
        let Stats {
            datagrams,
            rejected,
            duplicates,
            handled,
            dropped,
            drain_time,
        } = self.stats;
        let dropped = match dropped {
            0 => String::new(),
            n => format!(", {n} dropped (too many pending)"),
        };
        info!(
            "exiting ({why}): {datagrams} datagrams, {handled} wake requests handled, \
             {duplicates} duplicates, {rejected} invalid{dropped}; {} libvirt scans; \
             {:.1} ms spent reading datagrams",
            self.fleet.scans(),
            drain_time.as_secs_f64() * 1e3
        );
        self.notifier
            .stopping(&format!("exiting ({why}); {}", self.last_event));
    }
}
