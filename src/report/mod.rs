//! The one place that turns what happened into words: log lines and their
//! journal fields (`MAC`, `SOURCE`, `VIA`, `DOMAIN`, `HOST`, `STATE`,
//! `ACTION`, `RESULT`), the `STATUS=` text, the exit summary, and the words
//! of `list`. Everything else hands over data.
//!
//! A flood never floods the journal: junk, duplicates, unknown MACs,
//! refusals and failures each have a rate limit ([`LOG_BURST`] lines per
//! [`LOG_WINDOW`] at their own level, the rest at debug), and what a limit
//! held back is summed up when its window closes. Worker threads' lines (a
//! host out or back, a domain skipped, the index file) go through windows
//! of the same size in `workers`, shared by every thread.

pub(crate) mod idle;
pub(crate) mod logging;
pub mod notify;
pub(crate) mod ratelimit;
pub(crate) mod sleep;
mod workers;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{Level, debug, error, info, warn};

use crate::decide::ask::Target;
use crate::decide::book::{Request, Resumed};
use crate::decide::control::Stats;
use crate::decide::outcome::{Decision, Exit, Limit, Named, Outcome, Severity, Verb, WaitFor};
use crate::decide::policy::Refusal;
use crate::ingress::packet::Rejection;
use crate::libvirt::hypervisor::Unreadable;
use crate::libvirt::index::file::FileError;
use crate::libvirt::uri::Transport;
use crate::model::{DomainState, HvError, Mac, Source, StopReason};
use crate::report::ratelimit::RateLimiter;
use crate::report::workers::{About, Held, Topic, WORKER_LINES, WorkerLines};

/// Window of the log rate limits.
pub(crate) const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Lines per window and kind at their own level.
pub(crate) const LOG_BURST: u32 = 10;
/// MACs named in one line; the rest are counted.
const MAX_LISTED: usize = 10;

/// The `ACTION` word for a verb (also `list`'s).
pub(crate) fn action_word(verb: Verb) -> &'static str {
    match verb {
        Verb::Start => "start",
        Verb::Restore => "restore",
        Verb::Resume => "resume",
        Verb::PmWakeup => "pm-wakeup",
    }
}

/// The `ACTION` word for what was done, tried or would be done, `none`
/// when nothing: the journal's, the HTTP wake's and `list`'s.
pub(crate) fn action_words(verb: Option<Verb>) -> &'static str {
    verb.map_or("none", action_word)
}

/// The journal level of an outcome's severity.
fn level(severity: Severity) -> Level {
    match severity {
        Severity::Info => Level::INFO,
        Severity::Warn => Level::WARN,
        Severity::Error => Level::ERROR,
    }
}

/// What no domain has, for a request no domain matches.
fn missing_words(target: &Target, uris: &str) -> String {
    match target {
        Target::Mac(_) => format!("no domain on {uris} has MAC {target}"),
        Target::Domain(_) => format!("no domain named {target} on {uris}"),
    }
}

/// The end of a decision's line when some hosts had not answered.
fn left_out_words(left_out: &[Arc<str>]) -> String {
    if left_out.is_empty() {
        return String::new();
    }
    let uris: Vec<&str> = left_out.iter().map(|u| &**u).collect();
    format!(
        "; decided without {} (not answering): its answer could only have added an ambiguity",
        uris.join(", ")
    )
}

/// The end of a decision's line when packets repeated it.
fn burst_words(repeats: u32) -> String {
    match repeats {
        0 => String::new(),
        1 => " (1 duplicate packet in this burst ignored)".into(),
        n => format!(" ({n} duplicate packets in this burst ignored)"),
    }
}

/// libvirt's reason for a stop, in words (also the HTTP wake's `error`).
pub(crate) fn stop_reason_words(reason: Option<StopReason>) -> &'static str {
    match reason {
        Some(StopReason::Shutdown) => "shut down from inside the guest",
        Some(StopReason::Destroyed) => "destroyed",
        Some(StopReason::Crashed) => "crashed",
        Some(StopReason::Migrated) => "migrated away",
        Some(StopReason::Saved) => "saved",
        Some(StopReason::Failed) => "failed",
        Some(StopReason::FromSnapshot) => "reverted to a snapshot",
        Some(StopReason::Daemon) => "stopped by the daemon",
        Some(StopReason::Panicked) => "the guest panicked",
        None => "libvirt gives no reason",
    }
}

/// "started", "restored", … for "after it was …".
fn verb_done_words(verb: Verb) -> &'static str {
    match verb {
        Verb::Start => "started",
        Verb::Restore => "restored",
        Verb::Resume => "resumed",
        Verb::PmWakeup => "woken from PM suspend",
    }
}

/// What was done, as the log and `STATUS=` begin: "started web01".
fn done(verb: Verb, domain: &str) -> String {
    match verb {
        Verb::Start => format!("started {domain}"),
        Verb::Restore => format!("restored {domain} from its managed-save image"),
        Verb::Resume => format!("resumed {domain}"),
        Verb::PmWakeup => format!("woke {domain} from PM suspend"),
    }
}

/// One log event: its words and its journal fields, as data (tests read
/// these instead of log lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its level (lowered to debug when a rate limit holds it back).
    pub(crate) level: Level,
    /// The sentence.
    pub(crate) message: String,
    /// `MAC`.
    pub mac: Option<Mac>,
    /// `SOURCE`: the sender (`192.0.2.2:40000`, `52:54:00:12:34:56 on eth0`).
    pub(crate) source: Option<String>,
    /// `VIA`: `udp` or `raw`.
    pub(crate) via: Option<&'static str>,
    /// `DOMAIN`: the domain's name (several, comma-separated, when a
    /// decision is about several).
    pub domain: Option<String>,
    /// `HOST`: the libvirt URI of the domain's host.
    pub(crate) host: Option<String>,
    /// `STATE`: the domain's state before.
    pub state: Option<&'static str>,
    /// `ACTION`: `start`, `restore`, `resume`, `pm-wakeup` or `none`.
    pub action: Option<&'static str>,
    /// `RESULT`: `ok`, `failed`, `already-up`, `ambiguous`, `no-match`,
    /// `refused`, `duplicate`, `dropped`, `throttled` (a SecureOn password
    /// not looked up), `dry-run`, or `stopped-again` (the look after a
    /// start).
    pub result: Option<&'static str>,
}

impl Record {
    /// Fills `DOMAIN`, `HOST`, `STATE` and `ACTION` for a decision.
    fn decided(&mut self, outcome: &Outcome) {
        if let Some((domain, state)) = outcome.domain() {
            self.on(domain, state, outcome.verb());
        }
        match outcome {
            Outcome::Refused { domains, .. } | Outcome::Ambiguous { domains } => {
                self.domain = Some(plain_names(domains));
            }
            Outcome::LookupFailed { uri, .. } => self.host = Some(uri.to_string()),
            _ => {}
        }
        self.action = Some(action_words(outcome.verb()));
    }

    /// Fills `DOMAIN`, `HOST`, `STATE` and (if something was or would be
    /// done) `ACTION` for a decision about one domain.
    fn on(&mut self, domain: &Named, state: DomainState, verb: Option<Verb>) {
        self.domain = Some(domain.name.clone());
        self.host = Some(domain.uri.to_string());
        self.state = Some(state.as_str());
        self.action = verb.map(action_word);
    }

    /// A record with only its level and sentence.
    fn plain(level: Level, message: String) -> Self {
        Record {
            level,
            message,
            mac: None,
            source: None,
            via: None,
            domain: None,
            host: None,
            state: None,
            action: None,
            result: None,
        }
    }

    /// A record about a request for `target` from `source`.
    fn about(level: Level, target: &Target, source: &Source, message: String) -> Self {
        Record {
            mac: target.mac(),
            source: Some(source.to_string()),
            via: Some(source.via()),
            ..Record::plain(level, message)
        }
    }
}

/// Writes a record to the log (journald fields, or a line on stderr).
fn emit(r: &Record) {
    macro_rules! event {
        ($macro:ident) => {
            $macro!(
                mac = r.mac.as_ref().map(tracing::field::display),
                source = r.source.as_deref(),
                via = r.via,
                domain = r.domain.as_deref(),
                host = r.host.as_deref(),
                state = r.state,
                action = r.action,
                result = r.result,
                "{}",
                r.message
            )
        };
    }
    match r.level {
        Level::ERROR => event!(error),
        Level::WARN => event!(warn),
        Level::INFO => event!(info),
        _ => event!(debug),
    }
}

/// What `STATUS=` says besides the last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusView<'a> {
    /// Requests waiting or being handled.
    pub(crate) pending: usize,
    /// Requests waiting for libvirt, and the URIs.
    pub(crate) waiting_for: Option<&'a str>,
    /// Time to the idle exit, if one is set and nothing is pending.
    pub(crate) idle_left: Option<Duration>,
}

/// Why the gateway exits, in words.
fn exit_words(exit: Exit) -> &'static str {
    match exit {
        Exit::Idle => "idle timeout",
        Exit::Signal => "signal",
        Exit::GaveUp => "idle timeout with libvirt unreachable",
        Exit::ListenerLost => "a listened-on interface disappeared",
    }
}

/// The loop's reporter: rate limits, the last event for `STATUS=`, and an
/// optional copy of every record for tests.
#[derive(Debug)]
pub struct Reporter {
    several_hosts: bool,
    rejections: RateLimiter,
    duplicates: RateLimiter,
    unknown: RateLimiter,
    problems: RateLimiter,
    overflow: RateLimiter,
    guesses: RateLimiter,
    last_event: String,
    sink: Option<Sender<Record>>,
}

impl Reporter {
    /// A reporter; `several_hosts` adds the URI to domain names in words.
    pub fn new(several_hosts: bool) -> Self {
        Reporter {
            several_hosts,
            rejections: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            duplicates: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            unknown: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            problems: RateLimiter::new(LOG_WINDOW, LOG_BURST),
            overflow: RateLimiter::new(LOG_WINDOW, 1),
            guesses: RateLimiter::new(LOG_WINDOW, 1),
            last_event: String::new(),
            sink: None,
        }
    }

    /// Also sends every record to `sink`.
    pub fn with_sink(mut self, sink: Sender<Record>) -> Self {
        self.sink = Some(sink);
        self
    }

    fn send(&mut self, mut record: Record, shown: bool) {
        if !shown {
            record.level = Level::DEBUG;
        }
        emit(&record);
        if let Some(sink) = &self.sink {
            let _ = sink.send(record);
        }
    }

    /// A domain's name in a sentence.
    fn name(&self, domain: &Named) -> String {
        if self.several_hosts {
            format!("{} on {}", domain.name, domain.uri)
        } else {
            domain.name.clone()
        }
    }

    fn names(&self, domains: &[Named]) -> String {
        let names: Vec<String> = domains.iter().map(|d| self.name(d)).collect();
        names.join(", ")
    }

    /// The end of an already-up line when other domains share the MAC.
    fn sharing(&self, others: &[Named]) -> String {
        if others.is_empty() {
            return String::new();
        }
        format!(
            "; left alone the other domain(s) sharing the MAC: {}",
            self.names(others)
        )
    }

    /// The first line: what it listens on, where libvirt is, when it exits.
    pub(crate) fn listening(&mut self, listeners: &[String], uris: &str, idle: Option<Duration>) {
        self.last_event = format!("listening on {}", listeners.join(", "));
        let exit = match idle {
            Some(t) => format!("exiting after {} s without packets", t.as_secs_f64()),
            None => "running until stopped".into(),
        };
        info!("{}; libvirt {uris}; {exit}", self.last_event);
    }

    /// A datagram that is not a magic packet.
    pub(crate) fn rejected(
        &mut self,
        source: &Source,
        len: usize,
        reason: &Rejection,
        now: Instant,
    ) {
        if self.rejections.allow(now) {
            debug!(source = %source, len, "rejected datagram from {source}: {reason}");
        }
    }

    /// A packet for a MAC brought up within the window.
    pub(crate) fn duplicate(
        &mut self,
        mac: Mac,
        source: &Source,
        ago: Duration,
        first: bool,
        now: Instant,
    ) {
        let message = format!(
            "duplicate wake request for {mac} from {source} ignored: handled {:.1} s ago",
            ago.as_secs_f64()
        );
        // At info: the first repeat of each MAC, and at most LOG_BURST per
        // window in all; every other one is counted for the summary.
        let shown = if first {
            self.duplicates.allow(now)
        } else {
            self.duplicates.suppress(now);
            false
        };
        let mut record = Record::about(Level::INFO, &Target::Mac(mac), source, message);
        record.action = Some("none");
        record.result = Some("duplicate");
        self.send(record, shown);
    }

    /// A request dropped because too many wait.
    pub(crate) fn dropped(&mut self, mac: Mac, source: &Source, max_pending: usize, now: Instant) {
        let message = format!(
            "dropping wake request for {mac} from {source}: {max_pending} requests, or {} with \
             other passwords for this MAC, are already waiting (counted in the exit summary)",
            crate::decide::book::MAX_CREDENTIALS_PER_TARGET
        );
        let mut record = Record::about(Level::WARN, &Target::Mac(mac), source, message);
        record.action = Some("none");
        record.result = Some("dropped");
        let shown = self.overflow.allow(now);
        self.send(record, shown);
    }

    /// A packet with a SecureOn password that is not looked up: too many
    /// wrong ones lately for its MAC or from its sender. One line a window,
    /// the rest counted.
    pub(crate) fn throttled(&mut self, mac: Mac, source: &Source, left: Duration, now: Instant) {
        let message = format!(
            "not looking up the SecureOn password for {mac} from {source}: {} wrong ones for \
             this MAC or from this sender within {} s; passwords are heard again in {} s \
             (counted in the exit summary)",
            crate::decide::guesses::MAX_FAILURES,
            crate::decide::guesses::WINDOW.as_secs(),
            left.as_secs()
        );
        let mut record = Record::about(Level::WARN, &Target::Mac(mac), source, message);
        record.action = Some("none");
        record.result = Some("throttled");
        let shown = self.guesses.allow(now);
        self.send(record, shown);
    }

    /// One line per decided request. Its level, `RESULT` and rate limit
    /// are its outcome's class (`Outcome::class`); only the words are
    /// made here.
    pub(crate) fn decision(
        &mut self,
        request: &Request,
        decision: &Decision,
        uris: &str,
        now: Instant,
    ) {
        let (target, source) = (&request.ask.target, &request.source);
        let outcome = &decision.outcome;
        let class = outcome.class();
        let (headline, message) = self.decision_words(request, outcome, uris);
        let mut record = Record::about(level(class.severity), target, source, String::new());
        record.decided(outcome);
        record.result = Some(class.result);
        record.message = format!(
            "{message}{}{}",
            left_out_words(&decision.left_out),
            burst_words(request.repeats)
        );
        let shown = match class.limit {
            Limit::Shown => true,
            Limit::Problems => self.problems.allow(now),
            Limit::Unknown => self.unknown.allow(now),
        };
        self.last_event = headline;
        self.send(record, shown);
    }

    /// The `STATUS=` headline and the log sentence for a decision.
    fn decision_words(&self, request: &Request, outcome: &Outcome, uris: &str) -> (String, String) {
        let (mac, source) = (&request.ask.target, &request.source);
        let from = format!("{mac} from {source}");
        match outcome {
            Outcome::Done {
                domain,
                state,
                verb,
            } => {
                let what = done(*verb, &self.name(domain));
                (
                    format!("{what} ({mac})"),
                    format!("{what} (was {state}) for {from}"),
                )
            }
            Outcome::Failed {
                domain,
                state,
                verb,
                error,
            } => {
                let (name, verb) = (self.name(domain), action_word(*verb));
                (
                    format!("failed to {verb} {name} ({mac})"),
                    format!("cannot {verb} {name} (was {state}) for {from}: {error}"),
                )
            }
            Outcome::AlreadyUp {
                domain,
                state,
                others,
            } => {
                let (name, also) = (self.name(domain), self.sharing(others));
                (
                    format!("{name} ({mac}) already up"),
                    format!("{name} is already up ({state}); nothing to do for {from}{also}"),
                )
            }
            Outcome::Refused { domains, reason } => {
                let names = self.names(domains);
                (
                    format!("refused to wake {names} ({mac})"),
                    format!("refused to wake {names} for {from}: {reason}"),
                )
            }
            Outcome::Ambiguous { domains } => (
                format!("{mac} is ambiguous, nothing started"),
                format!(
                    "{from}: MAC is on several shut-off domains ({}); starting none. Give each \
                     domain a unique MAC",
                    self.names(domains)
                ),
            ),
            Outcome::NoMatch => (
                format!("no domain has {mac}"),
                format!(
                    "{} (from {source}); nothing to do",
                    missing_words(mac, uris)
                ),
            ),
            Outcome::DryRun {
                domain,
                state,
                verb,
            } => {
                let (name, verb) = (self.name(domain), action_word(*verb));
                (
                    format!("dry run: would {verb} {name} ({mac})"),
                    format!("dry run: would {verb} {name} (is {state}) for {from}"),
                )
            }
            Outcome::LookupFailed { uri, error } => (
                format!("lookup of {mac} failed"),
                format!("cannot look up {from} on {uri}: {error}"),
            ),
        }
    }

    /// No thread could be started for a request (it waits and is tried
    /// again); at most a few lines per window.
    pub(crate) fn no_worker(&mut self, target: &Target, error: &std::io::Error, now: Instant) {
        let shown = self.problems.allow(now);
        let message = format!(
            "cannot start a worker thread for {target} ({error}); it waits and is tried again"
        );
        let record = Record {
            mac: target.mac(),
            ..Record::plain(Level::WARN, message)
        };
        self.send(record, shown);
    }

    /// The look after a start found the domain stopped again: one error
    /// line with libvirt's reason (`RESULT=stopped-again`). `STATE` is the
    /// state it was found in.
    pub(crate) fn stopped_again(
        &mut self,
        domain: &Named,
        verb: Verb,
        state: DomainState,
        reason: Option<StopReason>,
        after: Duration,
        now: Instant,
    ) {
        let shown = self.problems.allow(now);
        let name = self.name(domain);
        let message = format!(
            "{name} stopped again {:.1} s after it was {}: {state} ({}); see its log in \
             /var/log/libvirt/qemu/{}.log",
            after.as_secs_f64(),
            verb_done_words(verb),
            stop_reason_words(reason),
            domain.name
        );
        let mut record = Record {
            result: Some("stopped-again"),
            ..Record::plain(Level::ERROR, message)
        };
        record.on(domain, state, Some(verb));
        self.last_event = format!("{name} stopped again after its {}", action_word(verb));
        self.send(record, shown);
    }

    /// Requests that waited for libvirt are acted on again.
    pub(crate) fn resumed(&mut self, resumed: &Resumed) {
        if resumed.requests > 0 {
            info!(
                "acting on {} wake request(s) that waited {:.1} s for libvirt",
                resumed.requests,
                resumed.waited.as_secs_f64()
            );
        }
    }

    /// Logs what the rate limits held back, once each window closes (or
    /// at exit, with `force`).
    pub(crate) fn close_windows(&mut self, now: Instant, uris: &str, force: bool) {
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
        if let Some(n) = self.unknown.close_window(now, force) {
            warn!("{n} more wake requests for MACs no domain on {uris} has in the last {window} s");
        }
        if let Some(n) = self.problems.close_window(now, force) {
            warn!(
                "{n} more wake requests refused, ambiguous or failed in the last {window} s \
                 (RUST_LOG=debug shows each)"
            );
        }
        if let Some(n) = self.overflow.close_window(now, force) {
            warn!("dropped {n} more wake requests in the last {window} s: too many pending");
        }
        if let Some(n) = self.guesses.close_window(now, force) {
            warn!(
                "throttled {n} more magic packets with SecureOn passwords in the last {window} s: \
                 too many wrong ones"
            );
        }
        close_worker_windows(now, force);
    }

    /// When the next rate-limit summary is due, if any.
    pub(crate) fn summary_due(&self) -> Option<Instant> {
        [
            &self.rejections,
            &self.duplicates,
            &self.unknown,
            &self.problems,
            &self.overflow,
            &self.guesses,
        ]
        .into_iter()
        .filter_map(RateLimiter::summary_due)
        .chain(crate::lock::lock(&WORKER_LINES).summary_due())
        .min()
    }

    /// The `STATUS=` text.
    pub(crate) fn status(&self, view: &StatusView<'_>) -> String {
        let event = &self.last_event;
        let pending = view.pending;
        if let Some(uris) = view.waiting_for {
            return format!(
                "{event}; waiting for libvirt at {uris} ({pending} wake request(s) pending)"
            );
        }
        if pending > 0 {
            return format!("{event}; {pending} wake request(s) in progress");
        }
        match view.idle_left {
            Some(left) => format!("{event}; idle, exiting in {} s", left.as_secs_f64().ceil()),
            None => format!("{event}; waiting for magic packets"),
        }
    }

    /// The exit lines: requests not acted on, then the summary. Returns the
    /// `STATUS=` text sent with `STOPPING=1`.
    pub(crate) fn exit(
        &mut self,
        why: Exit,
        stats: &Stats,
        undecided: &[(Target, bool)],
        waiting_for: Option<&WaitFor>,
        refreshes: (u64, u64),
    ) -> String {
        if !undecided.is_empty() {
            let text = undecided_words(why, undecided, waiting_for);
            match why {
                Exit::Signal => warn!("{text}"),
                _ => error!("{text}"),
            }
        }
        info!("{}", summary_words(why, stats, refreshes));
        format!("exiting ({}); {}", exit_words(why), self.last_event)
    }
}

/// The exit line about requests read but not acted on.
fn undecided_words(
    why: Exit,
    undecided: &[(Target, bool)],
    waiting_for: Option<&WaitFor>,
) -> String {
    // A flood can leave thousands: the first few name the rest.
    let mut macs: Vec<String> = undecided
        .iter()
        .take(MAX_LISTED)
        .map(|(mac, in_flight)| {
            if *in_flight {
                format!("{mac} (being handled)")
            } else {
                mac.to_string()
            }
        })
        .collect();
    if undecided.len() > MAX_LISTED {
        macs.push(format!("and {} more", undecided.len() - MAX_LISTED));
    }
    let in_flight = undecided.iter().filter(|(_, f)| *f).count();
    let mut text = format!(
        "{}: not acting on {} wake request(s) read: {}",
        exit_words(why),
        undecided.len(),
        macs.join(", ")
    );
    if let Some(waiting) = waiting_for {
        let _ = write!(text, "; {}", waiting_words(waiting));
    }
    if in_flight > 0 {
        text.push_str(
            "; a call already sent to libvirtd completes there (a start under way still \
             finishes), one to an in-process driver such as test:/// ends with this process",
        );
    }
    text
}

/// The exit summary: what came in and what became of it.
fn summary_words(why: Exit, stats: &Stats, refreshes: (u64, u64)) -> String {
    let Stats {
        datagrams,
        http_requests,
        rejected,
        duplicates,
        handled,
        dropped,
        throttled,
        unacted,
        waited_for_slot,
        drain_time,
    } = *stats;
    let mut extra = String::new();
    if dropped > 0 {
        let _ = write!(extra, ", {dropped} dropped (too many pending)");
    }
    if throttled > 0 {
        let _ = write!(extra, ", {throttled} throttled (wrong SecureOn passwords)");
    }
    if unacted > 0 {
        let _ = write!(extra, ", {unacted} not acted on");
    }
    if waited_for_slot > 0 {
        let _ = write!(extra, ", {waited_for_slot} waited for a free slot");
    }
    let (listings, full_scans) = refreshes;
    // Said only where HTTP is in use: the line is matched by scripts.
    let http = match http_requests {
        0 => String::new(),
        n => format!("{n} HTTP requests, "),
    };
    format!(
        "exiting ({}): {datagrams} datagrams, {http}{handled} wake requests handled, \
         {duplicates} duplicates, {rejected} invalid{extra}; {listings} domain listings, \
         {full_scans} full scans; {:.1} ms spent reading datagrams",
        exit_words(why),
        drain_time.as_secs_f64() * 1e3
    )
}

fn plain_names(domains: &[Named]) -> String {
    let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
    names.join(", ")
}

/// "libvirt at URI was not reachable: ERROR" for each host waited for.
pub(crate) fn waiting_words(waiting: &WaitFor) -> String {
    let parts: Vec<String> = waiting
        .hosts
        .iter()
        .map(|(uri, error)| match error {
            Some(e) => format!("libvirt at {uri} was not reachable: {e}"),
            None => format!("libvirt at {uri} did not answer"),
        })
        .collect();
    parts.join("; ")
}

/// Logs a worker thread's line through the worker lines' rate limits
/// ([`workers`]).
fn worker_line(topic: Topic<'_>, record: Record) {
    pass_worker_line(&WORKER_LINES, Instant::now(), topic, record, &mut emit);
}

/// Hands `out` a worker line, held back to debug past the burst, after the
/// summaries of windows that closed (tests pass their own limits and
/// `out`).
fn pass_worker_line(
    lines: &Mutex<WorkerLines>,
    now: Instant,
    topic: Topic<'_>,
    mut record: Record,
    out: &mut dyn FnMut(&Record),
) {
    // The lock is let go before logging: a slow journal must not hold up
    // the other workers' counting.
    let admitted = crate::lock::lock(lines).admit(topic, now);
    for held in &admitted.held {
        out(&held_record(held));
    }
    if !admitted.shown {
        record.level = Level::DEBUG;
    }
    out(&record);
}

/// The summary of worker lines a window held back.
fn held_record(held: &Held) -> Record {
    let (n, window) = (held.count, LOG_WINDOW.as_secs());
    let (level, message) = match &held.about {
        About::Host(uri) => (
            Level::WARN,
            format!(
                "held back {n} more lines about libvirt at {uri} in the last {window} s: it went \
                 away and came back again and again (RUST_LOG=debug shows each)"
            ),
        ),
        About::Domains => (
            Level::WARN,
            format!(
                "skipped {n} more domains whose MACs cannot be read in the last {window} s \
                 (RUST_LOG=debug names each)"
            ),
        ),
        About::IndexFile => (
            Level::INFO,
            format!(
                "held back {n} more lines about MAC index files in the last {window} s \
                 (RUST_LOG=debug shows each)"
            ),
        ),
        About::Sleep => (
            Level::WARN,
            format!(
                "held back {n} more lines about requests to put domains to sleep in the last \
                 {window} s (RUST_LOG=debug shows each)"
            ),
        ),
    };
    let host = match &held.about {
        About::Host(uri) => Some(uri.clone()),
        _ => None,
    };
    Record {
        host,
        ..Record::plain(level, message)
    }
}

/// Logs the summaries of the worker lines' windows that closed at `now`
/// (every one with `force`).
fn close_worker_windows(now: Instant, force: bool) {
    let held = crate::lock::lock(&WORKER_LINES).close(now, force);
    for held in &held {
        emit(&held_record(held));
    }
}

/// A host could not be reached (said once per outage, from a worker).
pub(crate) fn host_unreachable(uri: &str, error: &HvError, alone: bool) {
    // What to check depends on how the URI gets there.
    let check = match crate::libvirt::uri::transport(uri) {
        Transport::Local => {
            "Is libvirtd running, and may this user use it (member of the 'libvirt' group, or \
             allowed by polkit)?"
        }
        Transport::Ssh => {
            "Can this user log in there with ssh without a prompt (the key in ?keyfile=, the \
             host's key in known_hosts), and may the remote user use libvirt (group \
             'libvirt')?"
        }
        Transport::Network => {
            "Is the host up and reachable from here (a firewall, this service's \
             IPAddressAllow=), and does libvirt listen there (libvirtd-tcp.socket or \
             libvirtd-tls.socket; virtproxyd-tcp.socket or virtproxyd-tls.socket with \
             modular daemons)?"
        }
    };
    outage(
        uri,
        alone,
        format!(
            "cannot reach libvirt at {uri}: {error}. {check} Wake requests that need it wait \
             until it answers"
        ),
    );
}

/// A host stopped answering (said once per outage, from a worker).
pub(crate) fn host_silent(uri: &str, deadline: Duration, alone: bool) {
    outage(
        uri,
        alone,
        format!(
            "libvirt at {uri} did not answer within {} s (daemon stopped or hung, or its network \
             down?); wake requests that need it wait until it answers",
            deadline.as_secs_f64()
        ),
    );
}

/// A host's outage: an error when it is the only host (no wake can
/// happen), a warning when others answer (only its domains wait).
fn outage(uri: &str, alone: bool, message: String) {
    let level = if alone { Level::ERROR } else { Level::WARN };
    host_line(uri, level, message);
}

/// A line about a host, with its `HOST` field.
fn host_line(uri: &str, level: Level, message: String) {
    let record = Record {
        host: Some(uri.to_owned()),
        ..Record::plain(level, message)
    };
    worker_line(Topic::Host(uri), record);
}

/// A host answers again (from a worker).
pub(crate) fn host_back(uri: &str, after: Duration) {
    let message = format!(
        "libvirt at {uri} is reachable again after {:.1} s",
        after.as_secs_f64()
    );
    host_line(uri, Level::INFO, message);
}

/// A domain whose MACs cannot be known (said once per domain).
pub(crate) fn domain_skipped(name: &str, reason: &Unreadable) {
    worker_line(Topic::Domains, skipped_record(name, reason));
}

fn skipped_record(name: &str, reason: &Unreadable) -> Record {
    Record {
        domain: Some(name.to_owned()),
        ..Record::plain(Level::WARN, format!("skipping domain {name}: {reason}"))
    }
}

/// The index file is unusable and will be rewritten.
pub(crate) fn index_file_ignored(path: &Path, reason: &FileError) {
    let message = format!(
        "ignoring index file {} ({reason}); it will be rebuilt",
        path.display()
    );
    worker_line(Topic::IndexFile, Record::plain(Level::INFO, message));
}

/// The index file cannot be written; the cache is off from now on.
pub(crate) fn index_file_unwritable(path: &Path, error: &std::io::Error) {
    let message = format!(
        "cannot write the MAC index {}: {error}; it is no longer updated (the next activation \
         may find it stale and read every domain again)",
        path.display()
    );
    worker_line(Topic::IndexFile, Record::plain(Level::WARN, message));
}

/// A host that cannot be listed (`list`).
pub(crate) fn cannot_list(uri: &str, error: &impl std::fmt::Display) -> String {
    format!("cannot list {uri}: {error}")
}

/// What a magic packet would do to a domain now (`list`'s last column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// This action.
    Act(Verb),
    /// Nothing: it is up.
    AlreadyUp(DomainState),
    /// Nothing: another domain with the MAC is up.
    SharedWithUp(String),
    /// Nothing: other inactive domains share the MAC.
    Ambiguous(Vec<String>),
    /// Nothing: the policy refuses it.
    Refused(Refusal),
    /// Nothing: libvirt did not tell its state.
    Unknown,
}

impl Effect {
    /// What a wake would do, as [`Outcome::verb`] says what one did: read
    /// by [`action_words`] for `list`'s `action`, as for the journal's
    /// `ACTION` and the HTTP wake's `action`.
    pub(crate) fn verb(&self) -> Option<Verb> {
        match self {
            Effect::Act(verb) => Some(*verb),
            _ => None,
        }
    }
}

/// `list`'s words for an effect: the `ACTION` words, or why nothing.
pub(crate) fn effect_words(effect: &Effect) -> String {
    match effect {
        Effect::Act(verb) => action_word(*verb).to_owned(),
        Effect::AlreadyUp(state) => format!("nothing: already up ({state})"),
        Effect::SharedWithUp(other) => format!("nothing: {other} has the same MAC and is up"),
        Effect::Ambiguous(others) => {
            format!("nothing: ambiguous MAC (also on {})", others.join(", "))
        }
        Effect::Refused(reason) => format!("nothing: refused ({reason})"),
        Effect::Unknown => "nothing: state unknown".into(),
    }
}

/// `list`'s words for a domain whose MACs are unknown.
pub(crate) fn skipped_words(reason: &Unreadable) -> String {
    format!("skipped: {reason}")
}

/// `list`'s words for a domain without NICs.
pub(crate) const NO_NIC_WORDS: &str =
    "nothing: no MAC (no network interface; `mac add` gives it one)";

/// How `list` marks an extra MAC (`mac add`) beside an interface's.
pub(crate) const EXTRA_MAC_WORDS: &str = "(extra)";

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten thousand unreadable domains (a host whose XML all fails) log
    /// one burst at warning, the rest at debug, and one summary.
    #[test]
    fn a_burst_of_skipped_domains_logs_a_burst_and_a_summary() {
        let lines = Mutex::new(WorkerLines::new());
        let t0 = Instant::now();
        let reason = Unreadable::Fetch(HvError::other("Domain not found"));
        let mut logged = Vec::new();
        for i in 0..10_000 {
            let record = skipped_record(&format!("vm{i}"), &reason);
            pass_worker_line(&lines, t0, Topic::Domains, record, &mut |r| {
                logged.push(r.clone());
            });
        }
        let at = |level| logged.iter().filter(|r| r.level == level).count();
        assert_eq!(at(Level::WARN), LOG_BURST as usize);
        assert_eq!(at(Level::DEBUG), 10_000 - LOG_BURST as usize);
        assert_eq!(logged[0].domain.as_deref(), Some("vm0"));
        // The next line after the window sums the held-back ones up first.
        let record = skipped_record("late", &reason);
        pass_worker_line(&lines, t0 + LOG_WINDOW, Topic::Domains, record, &mut |r| {
            logged.push(r.clone());
        });
        let [.., summary, late] = &logged[..] else {
            panic!("{}", logged.len())
        };
        assert_eq!(
            (summary.level, summary.domain.as_ref()),
            (Level::WARN, None)
        );
        assert!(summary.message.contains("9990"), "{}", summary.message);
        assert_eq!(
            (late.level, late.domain.as_deref()),
            (Level::WARN, Some("late"))
        );
    }
}
