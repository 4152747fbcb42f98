//! The loop: where packets enter. I/O only; the rules live in [`Book`], the
//! words in [`Reporter`], libvirt in the [`Fleet`].
//!
//! One thread polls the sockets, the signal pipe and the workers' mailbox.
//! Each round it collects what workers concluded, hands due requests to new
//! workers (at most [`Config::max_in_flight`] at once), checks the idle exit,
//! sleeps in `poll` until something happens or a deadline comes, and drains
//! every queued datagram into the book. It never calls libvirt itself, so a
//! slow start, a stopped daemon or a silent host delays nobody else, and
//! SIGTERM is answered at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, Timespec};
use tracing::{debug, warn};

use crate::decide::ask::{Ask, Credential};
use crate::decide::book::{Book, NotParked, Offer, Rules};
use crate::decide::guesses::Guesses;
use crate::decide::outcome::{Decision, Named, Outcome, Verb, WaitFor};
use crate::decide::policy::Refusal;
use crate::ingress::packet;
use crate::ingress::sockets::{self, Listener};
use crate::libvirt::fleet::{Conclusion, Fleet};
use crate::libvirt::host::{Health, HostError, HostEvent, Route};
use crate::model::{DomainState, HvError, Source, StopReason};
use crate::report::notify::Notifier;
use crate::report::{Reporter, Stats, StatusView};

/// Largest UDP payload; a magic packet may sit anywhere in it.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read per round before anything else, so a flood cannot starve
/// wakes, signals or the watchdog.
const MAX_DRAIN_BATCH: usize = 8_192;
/// Due requests looked at per round: past the ones that wait (for a slot,
/// or for a refresh under way), so one that can go is not held up by them.
const LOOK_AHEAD: usize = 512;

/// Loop settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Exit after this long without a datagram; `None` runs until stopped.
    pub idle_timeout: Option<Duration>,
    /// The request book's rules.
    pub rules: Rules,
    /// Requests handled at once; more wait in the book.
    pub max_in_flight: usize,
}

pub use crate::decide::outcome::Exit;

/// A readable end that `poll` watches, and the writable end that rings it.
fn bell() -> io::Result<(UnixStream, UnixStream)> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    Ok((read, write))
}

/// Empties a bell's read end; true if it had rung.
fn drain_bell(read: &UnixStream) -> bool {
    let mut buf = [0u8; 64];
    let mut rang = false;
    while matches!((&*read).read(&mut buf), Ok(n) if n > 0) {
        rang = true;
    }
    rang
}

/// SIGTERM/SIGINT (or a test's trigger), through a pipe `poll` watches.
#[derive(Debug)]
pub struct Shutdown {
    pipe: UnixStream,
    requested: bool,
}

/// Asks a [`Shutdown`] to stop the loop, as SIGTERM would.
#[derive(Debug)]
pub struct Trigger(UnixStream);

impl Trigger {
    /// Requests the stop.
    pub fn stop(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

impl Shutdown {
    /// Installs handlers for SIGTERM and SIGINT.
    pub fn install() -> io::Result<Self> {
        let (shutdown, Trigger(write)) = Shutdown::manual()?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        Ok(shutdown)
    }

    /// A shutdown only its trigger requests (for tests driving the loop in
    /// process, where a signal would stop every test at once).
    pub fn manual() -> io::Result<(Self, Trigger)> {
        let (read, write) = bell()?;
        Ok((
            Shutdown {
                pipe: read,
                requested: false,
            },
            Trigger(write),
        ))
    }

    /// True once a stop was requested (checked without blocking).
    pub fn requested(&mut self) -> bool {
        if !self.requested {
            self.requested = drain_bell(&self.pipe);
        }
        self.requested
    }
}

/// What workers and hosts tell the loop.
enum Message {
    /// A request ended (decided, or waiting for libvirt).
    Concluded(Ask, Conclusion),
    /// Something changed on a host.
    Host(HostEvent),
    /// An HTTP wake request.
    Http(Submission),
    /// An HTTP request was answered; `authenticated`: its token opened a
    /// domain, which makes it activity for the idle timeout.
    HttpDone { authenticated: bool },
    /// The look after a start: the domain's state then (`None`: it is
    /// gone), or why it could not be read.
    Checked(
        Check,
        Result<Option<(DomainState, Option<StopReason>)>, HostError>,
    ),
}

/// How long after a start, restore, resume or PM wake-up the domain is
/// looked at again: a guest that dies at once (a missing device, a bad
/// firmware, a qemu hook that stops it) is seen before the gateway idles
/// out.
pub const POST_START_CHECK: Duration = Duration::from_secs(3);

/// How long the idle exit waits for looks under way: a libvirt that hangs
/// must not keep the gateway from exiting (its report is then skipped).
const CHECK_PATIENCE: Duration = Duration::from_secs(10);

/// A look at a domain after it was acted on.
#[derive(Debug, Clone)]
pub struct Check {
    /// When it is due.
    due: Instant,
    /// When the action was decided.
    acted: Instant,
    /// The domain.
    domain: Named,
    /// What was done.
    verb: Verb,
}

/// What the loop tells an HTTP wake request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Decided, as a magic packet for it would have been.
    Decided(Decision),
    /// The same request brought its domain up `ago`: a duplicate, nothing
    /// done.
    Duplicate {
        /// Since that request was decided.
        ago: Duration,
    },
    /// Too many requests wait already: dropped, nothing done.
    Dropped,
    /// libvirt does not answer: the request waits in the book and is done
    /// when it does. `vouched`: some host has shown the request's token on
    /// a domain (see [`Fleet::vouches`]); if none has, the token opened
    /// nothing that answers, which counts as a failed authentication.
    Waiting {
        /// The hosts waited for.
        waiting: WaitFor,
        /// Some host has shown the token.
        vouched: bool,
    },
}

/// An HTTP wake request for the loop, and where its answer goes. Dropping
/// `reply` unanswered (the gateway stops) tells the HTTP side as much.
#[derive(Debug)]
pub struct Submission {
    /// What is asked, with the token's hash.
    pub ask: Ask,
    /// The HTTP peer.
    pub source: Source,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// The HTTP side's way into the loop: requests enter the same book as
/// magic packets (de-duplication, retries, the slots), and are decided by
/// the same workers.
#[derive(Clone)]
pub struct Submitter {
    mailbox: Mailbox,
    busy: Arc<AtomicUsize>,
}

impl Submitter {
    /// Hands a request to the loop.
    pub fn submit(&self, submission: Submission) {
        self.mailbox.send(Message::Http(submission));
    }

    /// Keeps the gateway from its idle exit while an HTTP request is being
    /// answered (a caller waiting for its domain to come up included). Only
    /// a request whose token opened a domain ([`Busy::authenticated`]) is
    /// activity: the idle time then counts from its answer. Others (health
    /// checks, made-up tokens) never keep the gateway running.
    pub fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy {
            submitter: self.clone(),
            authenticated: false,
        }
    }
}

/// An HTTP request being answered; see [`Submitter::busy`].
pub struct Busy {
    submitter: Submitter,
    authenticated: bool,
}

impl Busy {
    /// The request's token opened a domain.
    pub fn authenticated(&mut self) {
        self.authenticated = true;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Told before the count drops: once the loop sees no request being
        // answered, the activity is already in its mailbox.
        let authenticated = self.authenticated;
        self.submitter
            .mailbox
            .send(Message::HttpDone { authenticated });
        self.submitter.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The workers' side of the mailbox: send, then ring the bell.
#[derive(Clone)]
struct Mailbox {
    tx: Sender<Message>,
    bell: Arc<UnixStream>,
}

impl Mailbox {
    fn send(&self, message: Message) {
        if self.tx.send(message).is_ok() {
            // A full bell already rings: WouldBlock is fine.
            let _ = (&*self.bell).write(&[1]);
        }
    }
}

/// The gateway: sockets in, wake requests out.
pub struct Gateway {
    listeners: Vec<Listener>,
    fleet: Arc<Fleet>,
    book: Book,
    /// Wrong SecureOn passwords, per MAC and per sender.
    guesses: Guesses,
    mailbox: Mailbox,
    inbox: Receiver<Message>,
    bell: UnixStream,
    reporter: Reporter,
    notifier: Notifier,
    shutdown: Shutdown,
    config: Config,
    stats: Stats,
    uris: String,
    last_datagram: Instant,
    /// The last instant all worker slots were busy while a request was due.
    slots_full_at: Option<Instant>,
    /// The request whose worker refreshes an index for an unknown MAC; other
    /// unknown MACs wait for it in the book, not in worker slots (a listing
    /// can take as long as another domain's start).
    refresher: Option<Ask>,
    listener_lost: bool,
    last_wait: Option<WaitFor>,
    status_changed: bool,
    buf: Vec<u8>,
    /// HTTP requests waiting for their request's decision.
    replies: HashMap<Ask, Vec<tokio::sync::oneshot::Sender<Reply>>>,
    /// HTTP requests being answered.
    http_busy: Arc<AtomicUsize>,
    /// Where the HTTP wake listens (for the "listening on" line).
    http_addresses: Vec<String>,
    /// Looks after a start, not yet made; and since when the oldest look
    /// under way runs (`None`: none runs).
    checks: Vec<Check>,
    checks_running: Option<Instant>,
    checks_in_flight: usize,
}

impl Gateway {
    /// A gateway serving `listeners` (non-blocking), waking through `fleet`.
    pub fn new(
        listeners: Vec<Listener>,
        fleet: Fleet,
        config: Config,
        shutdown: Shutdown,
        notifier: Notifier,
        reporter: Reporter,
    ) -> io::Result<Self> {
        let (bell_read, bell_write) = bell()?;
        let (tx, inbox) = mpsc::channel();
        let mailbox = Mailbox {
            tx,
            bell: Arc::new(bell_write),
        };
        for host in fleet.hosts() {
            let mailbox = mailbox.clone();
            host.on_event(move |event| mailbox.send(Message::Host(event)));
        }
        Ok(Gateway {
            listeners,
            uris: fleet.uris(),
            fleet: Arc::new(fleet),
            book: Book::new(config.rules.clone()),
            guesses: Guesses::default(),
            mailbox,
            inbox,
            bell: bell_read,
            reporter,
            notifier,
            shutdown,
            config,
            stats: Stats::default(),
            last_datagram: Instant::now(),
            slots_full_at: None,
            refresher: None,
            listener_lost: false,
            last_wait: None,
            status_changed: false,
            buf: vec![0; MAX_DATAGRAM],
            replies: HashMap::new(),
            http_busy: Arc::new(AtomicUsize::new(0)),
            http_addresses: Vec::new(),
            checks: Vec::new(),
            checks_running: None,
            checks_in_flight: 0,
        })
    }

    /// Names the HTTP wake's addresses in the "listening on" line, with
    /// their scheme (`HTTP` or `HTTPS`).
    pub fn announce_http(&mut self, addresses: &[String], scheme: &str) {
        self.http_addresses = addresses
            .iter()
            .map(|a| format!("{a} ({scheme})"))
            .collect();
    }

    /// The way in for HTTP wake requests.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            mailbox: self.mailbox.clone(),
            busy: Arc::clone(&self.http_busy),
        }
    }

    /// The hosts, for what the HTTP side asks of them directly (domain
    /// lists, the state while a caller waits).
    pub fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet)
    }

    /// Serves until idle or stopped.
    pub fn run(mut self) -> (Exit, Stats) {
        let addresses: Vec<String> = (self.listeners.iter().map(Listener::describe))
            .chain(self.http_addresses.iter().cloned())
            .collect();
        self.reporter
            .listening(&addresses, &self.uris, self.config.idle_timeout);
        // Ready once the sockets are held, before libvirt is contacted.
        let status = self.status(Instant::now());
        self.notifier.ready(&status);
        let exit = loop {
            let now = Instant::now();
            self.notifier.watchdog(now);
            self.notifier.flush_status(now);
            self.reporter.close_windows(now, &self.uris, false);
            if self.shutdown.requested() {
                break Exit::Signal;
            }
            if self.listener_lost {
                break Exit::ListenerLost;
            }
            self.collect(now);
            let waiting = self.dispatch(now);
            self.run_checks(now);
            if let Some(exit) = self.idle_exit(now) {
                break exit;
            }
            if std::mem::take(&mut self.status_changed) {
                let status = self.status(now);
                self.notifier.status(&status, now);
            }
            self.wait(now, waiting);
            self.drain();
        };
        self.finish(exit);
        let stats = self.stats;
        // Never close libvirt connections on the way out: closing one waits
        // for the daemon's answer, which a stopped daemon never gives. The
        // kernel closes the sockets when the process exits, a moment later.
        std::mem::forget(self.fleet);
        (exit, stats)
    }

    /// Takes in what workers concluded.
    fn collect(&mut self, now: Instant) {
        if !drain_bell(&self.bell) {
            return;
        }
        while let Ok(message) = self.inbox.try_recv() {
            self.status_changed = true;
            if let Message::Concluded(ask, _) = &message {
                if self.refresher.as_ref() == Some(ask) {
                    self.refresher = None;
                }
            }
            match message {
                Message::Concluded(ask, Conclusion::Decided(decision)) => {
                    self.decided(&ask, &decision, now)
                }
                Message::Concluded(ask, Conclusion::Wait(waiting)) => {
                    self.wait_for_hosts(&ask, waiting, now);
                }
                Message::Host(HostEvent::Back) => {
                    if let Some(resumed) = self.book.hosts_back(now) {
                        self.reporter.resumed(&resumed);
                    }
                }
                // Requests that waited for the refresh are looked at again
                // in this round's dispatch.
                Message::Host(HostEvent::Refreshed) => {}
                Message::Http(submission) => self.http(submission, now),
                Message::HttpDone { authenticated } => {
                    if authenticated {
                        self.last_datagram = now;
                    }
                }
                Message::Checked(check, found) => self.checked(&check, found, now),
            }
        }
    }

    /// An HTTP request enters the book like a packet; its answer waits for
    /// the decision. (It is activity for the idle timeout only once its
    /// token proved to open a domain: see [`Submitter::busy`].)
    fn http(&mut self, submission: Submission, now: Instant) {
        let Submission { ask, source, reply } = submission;
        self.stats.http_requests += 1;
        match self.book.offer(ask.clone(), source, now) {
            // Joining a request that waits for libvirt: say so now, as the
            // first caller heard.
            Offer::Repeat if self.book.is_parked(&ask) => {
                let waiting = self.last_wait.clone().unwrap_or_default();
                let _ = reply.send(self.waiting_reply(&ask, waiting));
            }
            Offer::Queued | Offer::Repeat => self.replies.entry(ask).or_default().push(reply),
            Offer::Duplicate { ago, .. } => {
                self.stats.duplicates += 1;
                let _ = reply.send(Reply::Duplicate { ago });
            }
            Offer::Dropped => {
                self.stats.dropped += 1;
                let _ = reply.send(Reply::Dropped);
            }
        }
    }

    /// A request that a host not answering kept from a decision: it waits
    /// and is done when libvirt answers, but an HTTP request only while few
    /// wait (see [`Book::park`]). HTTP callers hear it now, and whether
    /// some host has shown their token.
    fn wait_for_hosts(&mut self, ask: &Ask, waiting: WaitFor, now: Instant) {
        let reply = match self.book.park(ask, now) {
            Err(NotParked::Crowded) => {
                self.stats.dropped += 1;
                Reply::Dropped
            }
            Ok(_) | Err(NotParked::NotInFlight) => {
                self.last_wait = Some(waiting.clone());
                self.waiting_reply(ask, waiting)
            }
        };
        self.answer_waiters(ask, &reply);
    }

    /// What an HTTP caller of a request waiting for libvirt hears.
    fn waiting_reply(&self, ask: &Ask, waiting: WaitFor) -> Reply {
        let vouched = match ask.credential {
            Credential::Token(token) => self.fleet.vouches(&token),
            Credential::None | Credential::SecureOn(_) => false,
        };
        Reply::Waiting { waiting, vouched }
    }

    /// Tells the HTTP callers waiting for `ask`'s decision.
    fn answer_waiters(&mut self, ask: &Ask, reply: &Reply) {
        for waiter in self.replies.remove(ask).unwrap_or_default() {
            let _ = waiter.send(reply.clone());
        }
    }

    fn decided(&mut self, ask: &Ask, decision: &Decision, now: Instant) {
        self.answer_waiters(ask, &Reply::Decided(decision.clone()));
        let Some(request) = self.book.settle(ask, decision.outcome.brings_up(), now) else {
            return;
        };
        self.stats.handled += 1;
        if let (
            Outcome::Refused {
                reason: Refusal::SecureOnWrong,
                ..
            },
            Some(mac),
        ) = (&decision.outcome, ask.mac())
        {
            self.guesses.wrong(mac, &request.source, now);
        }
        self.reporter.decision(&request, decision, &self.uris, now);
        if let Outcome::Done { domain, verb, .. } = &decision.outcome {
            self.checks.push(Check {
                due: now + POST_START_CHECK,
                acted: now,
                domain: domain.clone(),
                verb: *verb,
            });
        }
    }

    /// Hands due requests to workers while slots are free. Answers at once
    /// those no host can have (a flood of unknown MACs costs no threads and
    /// needs no slot), and leaves waiting, without a slot, those a refresh
    /// under way will answer. Returns true when the requests due now all
    /// wait for something (a slot, a refresh): `poll` need not wake for them.
    fn dispatch(&mut self, now: Instant) -> bool {
        let wall = SystemTime::now();
        let due: Vec<Ask> = self.book.due(now).take(LOOK_AHEAD).collect();
        let (mut left, mut went, looked) = (false, false, due.len());
        for ask in due {
            self.status_changed = true;
            match self.fleet.route(&ask.target, now, wall) {
                Route::Lacks => {
                    went = true;
                    self.book.take(&ask);
                    let decision = Decision {
                        outcome: Outcome::NoMatch,
                        left_out: Vec::new(),
                    };
                    self.decided(&ask, &decision, now);
                }
                Route::AfterRefresh => left = true,
                Route::Refresh if self.refresher.is_some() => left = true,
                Route::Worker | Route::Refresh
                    if self.book.in_flight() >= self.config.max_in_flight =>
                {
                    self.slots_full_at = Some(now);
                    left = true;
                }
                route @ (Route::Worker | Route::Refresh) => {
                    let Some(request) = self.book.take(&ask) else {
                        continue;
                    };
                    went = true;
                    if route == Route::Refresh {
                        self.refresher = Some(ask.clone());
                    }
                    if self.slots_full_at.is_some_and(|full| full >= request.due) {
                        self.stats.waited_for_slot += 1;
                    }
                    self.spawn_worker(ask, now);
                }
            }
        }
        // Perhaps more were due than looked at, and some went: look again
        // at once rather than sleep on the ones that wait.
        left && !(went && looked == LOOK_AHEAD)
    }

    fn spawn_worker(&mut self, ask: Ask, now: Instant) {
        let (fleet, mailbox) = (Arc::clone(&self.fleet), self.mailbox.clone());
        let asked = ask.clone();
        let spawned = std::thread::Builder::new()
            .name("wol-wake".into())
            .spawn(move || {
                // A panic must still conclude the request, or it would
                // count as in flight forever.
                let conclusion = catch_unwind(AssertUnwindSafe(|| fleet.wake(asked.clone())))
                    .unwrap_or_else(|_| {
                        Conclusion::Decided(Decision {
                            outcome: Outcome::LookupFailed {
                                uri: Arc::from(fleet.uris()),
                                error: HvError::other("internal error (a panic)"),
                            },
                            left_out: Vec::new(),
                        })
                    });
                mailbox.send(Message::Concluded(asked, conclusion));
            });
        if let Err(e) = spawned {
            self.reporter.no_worker(&ask.target, &e, now);
            if self.book.park(&ask, now) == Err(NotParked::Crowded) {
                self.stats.dropped += 1;
                self.answer_waiters(&ask, &Reply::Dropped);
            }
        }
    }

    /// Looks at the domains acted on [`POST_START_CHECK`] ago, each on a
    /// thread of its own (a hung libvirt holds that thread, not the loop).
    fn run_checks(&mut self, now: Instant) {
        let (due, later): (Vec<Check>, Vec<Check>) = std::mem::take(&mut self.checks)
            .into_iter()
            .partition(|c| c.due <= now);
        self.checks = later;
        for check in due {
            let Some(host) = self.fleet.host(&check.domain.uri).cloned() else {
                continue;
            };
            let mailbox = self.mailbox.clone();
            let spawned = std::thread::Builder::new()
                .name("wol-check".into())
                .spawn(move || {
                    let found = host.state_of(&check.domain.name);
                    mailbox.send(Message::Checked(check, found));
                });
            // Without a thread the look is skipped: it only reports.
            if spawned.is_ok() {
                self.checks_in_flight += 1;
                self.checks_running.get_or_insert(now);
            }
        }
    }

    /// What a look after a start found: a domain that stopped again is
    /// reported once.
    fn checked(
        &mut self,
        check: &Check,
        found: Result<Option<(DomainState, Option<StopReason>)>, HostError>,
        now: Instant,
    ) {
        self.checks_in_flight = self.checks_in_flight.saturating_sub(1);
        if self.checks_in_flight == 0 {
            self.checks_running = None;
        }
        match found {
            Ok(Some((state @ (DomainState::ShutOff | DomainState::Crashed), reason))) => {
                let after = now.saturating_duration_since(check.acted);
                self.reporter
                    .stopped_again(&check.domain, check.verb, state, reason, after, now);
            }
            Ok(_) => {}
            Err(e) => debug!("cannot look at {} after its start: {e}", check.domain.name),
        }
    }

    /// The idle exit, when it has come: nothing left, or only requests
    /// waiting for a libvirt that never answered. Requests being handled
    /// (a slow start) are waited for.
    fn idle_exit(&self, now: Instant) -> Option<Exit> {
        let idle = self.config.idle_timeout?;
        if now.saturating_duration_since(self.last_datagram) < idle
            || self.http_busy.load(Ordering::SeqCst) > 0
            || !self.checks.is_empty()
            || self
                .checks_running
                .is_some_and(|since| now.saturating_duration_since(since) < CHECK_PATIENCE)
        {
            return None;
        }
        if self.book.is_empty() {
            return Some(Exit::Idle);
        }
        if self.book.in_flight() > 0 || self.book.parked() < self.book.len() {
            return None;
        }
        // Status 1 only when no host answers at all: that needs an admin.
        // One host of several being away is routine (its requests are
        // reported), and failing the unit for it would make systemd stop
        // the socket after a few activations (start-limit-hit).
        let none_answers = self
            .fleet
            .hosts()
            .iter()
            .all(|host| host.health() != Health::Answering);
        Some(if none_answers {
            Exit::GaveUp
        } else {
            Exit::Idle
        })
    }

    fn status(&self, now: Instant) -> String {
        let waiting = self.last_wait.as_ref().map(|w| {
            let uris: Vec<&str> = w.hosts.iter().map(|(uri, _)| &**uri).collect();
            uris.join(", ")
        });
        let waiting_for = waiting.as_deref().filter(|_| self.book.parked() > 0);
        let idle_left = self
            .config
            .idle_timeout
            .map(|idle| (self.last_datagram + idle).saturating_duration_since(now));
        self.reporter.status(&StatusView {
            pending: self.book.len(),
            waiting_for,
            idle_left,
        })
    }

    /// Sleeps in `poll` until a socket, the signal pipe or the mailbox is
    /// readable, or the next deadline (idle exit, a request due, watchdog,
    /// status, log summary). Requests due now that wait (for a slot or a
    /// refresh) are no deadline: a worker's message ends their wait.
    fn wait(&mut self, now: Instant, waiting: bool) {
        let idle_deadline = self
            .config
            .idle_timeout
            .map(|t| self.last_datagram + t)
            .filter(|&at| at > now);
        let next_request = if waiting {
            self.book.next_due_after(now)
        } else {
            self.book.next_due_at()
        };
        let next_check = (self.checks.iter().map(|c| c.due))
            .chain(self.checks_running.map(|since| since + CHECK_PATIENCE))
            .filter(|&at| at > now)
            .min();
        let deadline = [
            idle_deadline,
            next_request,
            next_check,
            self.notifier.watchdog_due(),
            self.notifier.status_due(),
            self.reporter.summary_due(),
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
        fds.push(PollFd::new(&self.bell, PollFlags::IN));
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // Should not happen; avoid a busy loop if it does.
                warn!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Reads every queued datagram (up to a batch cap) into the book.
    fn drain(&mut self) {
        // One clock read per round, not per datagram: a round takes at most
        // a few milliseconds, far below every window it feeds.
        let now = Instant::now();
        let Gateway {
            listeners,
            buf,
            book,
            guesses,
            reporter,
            stats,
            config,
            ..
        } = self;
        let drained = sockets::drain(listeners, buf, MAX_DRAIN_BATCH, |payload, source| {
            match packet::parse_with_password(payload) {
                Ok(magic) => {
                    // Someone guessing SecureOn passwords is not looked up.
                    let throttled = magic
                        .password
                        .and_then(|_| guesses.throttled(magic.mac, &source, now));
                    if let Some(left) = throttled {
                        stats.throttled += 1;
                        reporter.throttled(magic.mac, &source, left, now);
                    } else {
                        offer(book, reporter, stats, config, magic, source, now);
                    }
                }
                Err(reason) => {
                    stats.rejected += 1;
                    reporter.rejected(&source, payload.len(), &reason, now);
                }
            }
        });
        if drained.lost.is_some() {
            self.listener_lost = true;
        }
        if drained.read > 0 {
            self.stats.datagrams += drained.read as u64;
            self.last_datagram = Instant::now();
            self.status_changed = true;
        }
        self.stats.drain_time += now.elapsed();
    }

    fn finish(&mut self, exit: Exit) {
        self.reporter
            .close_windows(Instant::now(), &self.uris, true);
        let undecided = self.book.undecided();
        self.stats.unacted = undecided.len() as u64;
        let status = self.reporter.exit(
            exit,
            &self.stats,
            &undecided,
            self.last_wait.as_ref().filter(|_| self.book.parked() > 0),
            self.fleet.refreshes(),
        );
        self.notifier.stopping(&status);
    }
}

/// A magic packet enters the book.
fn offer(
    book: &mut Book,
    reporter: &mut Reporter,
    stats: &mut Stats,
    config: &Config,
    magic: packet::Magic,
    source: Source,
    now: Instant,
) {
    match book.offer(Ask::from(magic), source.clone(), now) {
        Offer::Queued => {}
        Offer::Repeat => stats.duplicates += 1,
        Offer::Duplicate { ago, first } => {
            stats.duplicates += 1;
            reporter.duplicate(magic.mac, &source, ago, first, now);
        }
        Offer::Dropped => {
            stats.dropped += 1;
            reporter.dropped(magic.mac, &source, config.rules.max_pending, now);
        }
    }
}
