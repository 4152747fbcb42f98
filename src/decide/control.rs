//! What the loop does on each event, as data: the loop's decisions apart
//! from its I/O.
//!
//! The loop in [`crate::gateway`] polls, spawns and writes; everything it
//! decides comes from here. [`Control::on`] takes an event (a magic packet,
//! an HTTP request, a worker's conclusion, a look after a start, a host
//! that is back, a tick of the loop) and the time, and returns the
//! [`Effect`]s to carry out: a worker to spawn, an answer for an HTTP
//! caller, a look at a domain, something to report, the exit. The hosts are
//! asked only what they know without calling libvirt ([`Hosts`]), so the
//! rules are tested on made-up instants and made-up hosts.
//!
//! `W` is where an HTTP caller's answer goes: the loop's channel sender, a
//! number in tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::decide::ask::{Ask, Credential, Target};
use crate::decide::book::{Book, NotParked, Offer, Request, Resumed, Rules};
use crate::decide::guesses::Guesses;
use crate::decide::outcome::{Decision, Exit, Named, Outcome, Verb, WaitFor};
use crate::decide::policy::Refusal;
use crate::model::{DomainState, Mac, Source, StopReason};
use crate::secret::Hash;

/// Due requests looked at per tick: past the ones that wait (for a slot,
/// or for a refresh under way), so one that can go is not held up by them.
const LOOK_AHEAD: usize = 512;

/// How long after a start, restore, resume or PM wake-up the domain is
/// looked at again: a guest that dies at once (a missing device, a bad
/// firmware, a qemu hook that stops it) is seen before the gateway idles
/// out.
pub(crate) const POST_START_CHECK: Duration = Duration::from_secs(3);

/// How long the idle exit waits for looks under way: a libvirt that hangs
/// must not keep the gateway from exiting (its report is then skipped).
const CHECK_PATIENCE: Duration = Duration::from_secs(10);

/// The loop's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Exit after this long without activity; `None` runs until stopped.
    pub idle_timeout: Option<Duration>,
    /// The request book's rules.
    pub rules: Rules,
    /// Requests handled at once; more wait in the book.
    pub max_in_flight: usize,
}

/// Where a request for a MAC should go, as far as the hosts can tell
/// without asking libvirt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A worker must ask libvirt (the MAC is known, the index is not
    /// loaded, or the host is out).
    Worker,
    /// The index lacks the MAC and may be refreshed: a worker must refresh
    /// it (one is enough: others can wait for its refresh).
    Refresh,
    /// No host has a domain with the MAC now.
    Lacks,
    /// The index lacks the MAC and a refresh is under way: its answer is
    /// worth waiting for, without holding a worker.
    AfterRefresh,
    /// A host's index is in use by a worker for a moment (the loop never
    /// waits for it): ask again after [`BUSY_RETRY`]. Taking a worker
    /// instead would let a burst of unknown MACs that meets a refresh
    /// taking in what it read fill the slots, each waiting for the same
    /// refresh.
    Busy,
}

/// How soon a request whose host's index was busy is routed again.
pub(crate) const BUSY_RETRY: Duration = Duration::from_millis(1);

/// What the loop may ask the hosts without waiting for libvirt.
pub(crate) trait Hosts {
    /// Where a request for `target` goes now.
    fn route(&self, target: &Target, now: Instant) -> Route;
    /// Some host has shown `token` on a domain.
    fn vouches(&self, token: &Hash) -> bool;
    /// Some host answers.
    fn any_answers(&self) -> bool;
}

/// Counters for the exit summary (and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams read.
    pub datagrams: u64,
    /// HTTP wake requests taken in.
    pub(crate) http_requests: u64,
    /// Datagrams that were not magic packets.
    pub(crate) rejected: u64,
    /// Magic packets for a MAC already waiting, being handled, or brought
    /// up within the window.
    pub duplicates: u64,
    /// Wake requests decided (one log line each).
    pub handled: u64,
    /// Wake requests refused because too many were waiting.
    pub(crate) dropped: u64,
    /// Magic packets with a SecureOn password not looked up: too many wrong
    /// ones for their MAC, or from their sender, lately.
    pub(crate) throttled: u64,
    /// Wake requests read but not decided when the gateway exited.
    pub unacted: u64,
    /// Wake requests that waited because the most allowed were being handled.
    pub waited_for_slot: u64,
    /// Time spent reading and parsing datagrams (for the drain-rate figure).
    pub(crate) drain_time: Duration,
}

/// What the loop tells an HTTP wake request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
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
    /// a domain (see [`Hosts::vouches`]); if none has, the token opened
    /// nothing that answers, which counts as a failed authentication.
    Waiting {
        /// The hosts waited for.
        waiting: WaitFor,
        /// Some host has shown the token.
        vouched: bool,
    },
}

/// A look at a domain after it was acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// When it is due.
    pub(crate) due: Instant,
    /// When the action was decided.
    pub(crate) acted: Instant,
    /// The domain.
    pub(crate) domain: Named,
    /// What was done.
    pub(crate) verb: Verb,
}

/// What a look after a start found: the domain's state (`None`: it is
/// gone), or why it could not be read.
pub(crate) type Looked = Result<Option<(DomainState, Option<StopReason>)>, String>;

/// Something that happened, for the loop's rules.
#[derive(Debug)]
pub(crate) enum Event<W> {
    /// A magic packet (a SecureOn password's guesses are throttled).
    Packet(Ask, Source),
    /// `count` datagrams were read, of which `rejected` were no magic
    /// packet: activity for the idle exit.
    Read {
        /// Datagrams read.
        count: usize,
        /// Those that were not magic packets.
        rejected: usize,
    },
    /// An HTTP wake request, and where its answer goes.
    Http(Ask, Source, W),
    /// An HTTP request was answered; `authenticated`: its token opened a
    /// domain, which makes it activity for the idle exit.
    HttpDone {
        /// The token opened a domain.
        authenticated: bool,
    },
    /// A domain is about to be put to sleep on request, or was: no later
    /// wake request is a duplicate of an earlier one.
    Slept,
    /// A worker decided a request.
    Decided(Ask, Decision),
    /// A worker could not decide: the request waits for these hosts.
    Waits(Ask, WaitFor),
    /// No worker thread could be started for a request.
    NoWorker(Ask),
    /// A host answers again after an outage.
    HostBack,
    /// A refresh of a host's index ended (requests that waited for it are
    /// looked at again on the next tick).
    Refreshed,
    /// A look after a start came back (or could not be made).
    Looked(Check, Looked),
    /// A round of the loop: hand due requests to workers, start due looks,
    /// see whether it is time to exit. `http_busy`: HTTP requests being
    /// answered.
    Tick {
        /// HTTP requests being answered.
        http_busy: usize,
    },
}

/// Something the loop must say; [`crate::report`] puts it into words.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Note {
    /// A request was decided.
    Decision(Request, Decision),
    /// Requests waiting for libvirt are due again.
    Resumed(Resumed),
    /// A magic packet repeated a request decided `ago`.
    Duplicate {
        /// The MAC.
        mac: Mac,
        /// Its sender.
        source: Source,
        /// Since the request it repeats was decided.
        ago: Duration,
        /// The first duplicate of that request.
        first: bool,
    },
    /// A magic packet was dropped: too many requests wait.
    Dropped {
        /// The MAC.
        mac: Mac,
        /// Its sender.
        source: Source,
        /// The most that may wait.
        max_pending: usize,
    },
    /// A magic packet with a password was not looked up: too many wrong
    /// guesses lately.
    Throttled {
        /// The MAC.
        mac: Mac,
        /// Its sender.
        source: Source,
        /// Until the throttle ends.
        left: Duration,
    },
    /// A domain acted on stopped again soon after.
    StoppedAgain {
        /// The domain.
        domain: Named,
        /// What was done to it.
        verb: Verb,
        /// Its state now.
        state: DomainState,
        /// Why it stopped, if libvirt says.
        reason: Option<StopReason>,
        /// How long after the action.
        after: Duration,
    },
    /// A look after a start could not be made (only worth a debug line).
    LookFailed {
        /// The domain.
        domain: Named,
        /// Why.
        error: String,
    },
}

/// What the loop must do.
#[derive(Debug)]
pub(crate) enum Effect<W> {
    /// Start a worker for this request.
    Spawn(Ask),
    /// Answer an HTTP caller.
    Reply(W, Reply),
    /// Look at a domain acted on (on a thread of its own).
    Look(Check),
    /// Say something.
    Say(Note),
    /// Stop the loop.
    Exit(Exit),
}

/// The numbers STATUS= shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gauge {
    /// Requests waiting or being handled.
    pub(crate) pending: usize,
    /// The hosts requests wait for (when some wait for libvirt).
    pub(crate) waiting_for: Option<String>,
    /// Time to the idle exit, if one is set.
    pub(crate) idle_left: Option<Duration>,
}

/// What is left when the loop ends, for the exit summary.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    /// The counters.
    pub(crate) stats: Stats,
    /// Requests not decided, in arrival order: the target, and whether it
    /// was being handled.
    pub(crate) undecided: Vec<(Target, bool)>,
    /// The hosts requests were waiting for, if some were.
    pub(crate) waiting_for: Option<WaitFor>,
}

/// The loop's state: the request book and everything around it.
#[derive(Debug)]
pub(crate) struct Control<W> {
    book: Book,
    /// Wrong SecureOn passwords, per MAC and per sender.
    guesses: Guesses,
    config: Config,
    stats: Stats,
    /// The last activity: a datagram, or an HTTP request whose token opened
    /// a domain. The idle time counts from it.
    last_activity: Instant,
    /// The last instant all worker slots were busy while a request was due.
    slots_full_at: Option<Instant>,
    /// The request whose worker refreshes an index for an unknown MAC; other
    /// unknown MACs wait for it in the book, not in worker slots (a listing
    /// can take as long as another domain's start).
    refresher: Option<Ask>,
    /// The hosts the last request that could not be decided waited for.
    last_wait: Option<WaitFor>,
    /// The last tick left due requests waiting (for a slot or a refresh):
    /// only a worker's message ends their wait, so they are no deadline.
    due_wait: bool,
    /// The last tick found a host's index busy: route again then.
    busy_until: Option<Instant>,
    status_changed: bool,
    /// HTTP callers waiting for their request's decision.
    replies: HashMap<Ask, Vec<W>>,
    /// Looks after a start, not yet made; and since when the oldest look
    /// under way runs (`None`: none runs).
    checks: Vec<Check>,
    checks_running: Option<Instant>,
    checks_in_flight: usize,
}

impl<W> Control<W> {
    /// A loop state started at `now` (the idle time counts from it).
    pub(crate) fn new(config: Config, now: Instant) -> Self {
        Control {
            book: Book::new(config.rules.clone()),
            guesses: Guesses::default(),
            config,
            stats: Stats::default(),
            last_activity: now,
            slots_full_at: None,
            refresher: None,
            last_wait: None,
            due_wait: false,
            busy_until: None,
            status_changed: false,
            replies: HashMap::new(),
            checks: Vec::new(),
            checks_running: None,
            checks_in_flight: 0,
        }
    }

    /// What to do about `event` at `now`.
    pub(crate) fn on(
        &mut self,
        event: Event<W>,
        now: Instant,
        hosts: &dyn Hosts,
    ) -> Vec<Effect<W>> {
        let mut out = Vec::new();
        match event {
            Event::Packet(ask, source) => self.packet(ask, source, now, &mut out),
            Event::Read { count, rejected } => {
                self.stats.rejected += rejected as u64;
                if count > 0 {
                    self.stats.datagrams += count as u64;
                    self.last_activity = now;
                    self.status_changed = true;
                }
            }
            Event::Http(ask, source, reply) => self.http(ask, source, reply, now, hosts, &mut out),
            Event::HttpDone { authenticated } => {
                self.status_changed = true;
                if authenticated {
                    self.last_activity = now;
                }
            }
            Event::Slept => self.book.forget_wakes(),
            Event::Decided(ask, decision) => {
                self.concluded(&ask);
                self.decided(&ask, decision, now, &mut out);
            }
            Event::Waits(ask, waiting) => {
                self.concluded(&ask);
                self.wait_for_hosts(&ask, waiting, now, hosts, &mut out);
            }
            Event::NoWorker(ask) => {
                self.concluded(&ask);
                if self.book.park(&ask, now) == Err(NotParked::Crowded) {
                    self.stats.dropped += 1;
                    self.answer_waiters(&ask, &Reply::Dropped, &mut out);
                }
            }
            Event::HostBack => {
                self.status_changed = true;
                if let Some(resumed) = self.book.hosts_back(now) {
                    out.push(Effect::Say(Note::Resumed(resumed)));
                }
            }
            Event::Refreshed => self.status_changed = true,
            Event::Looked(check, looked) => self.looked(check, looked, now, &mut out),
            Event::Tick { http_busy } => {
                self.due_wait = self.dispatch(now, hosts, &mut out);
                self.start_looks(now, &mut out);
                if let Some(exit) = self.idle_exit(now, http_busy, hosts) {
                    out.push(Effect::Exit(exit));
                }
            }
        }
        out
    }

    /// The next instant something is due (the idle exit, a request, a look
    /// or the patience with looks under way); the loop may sleep until
    /// then, or until an event.
    pub(crate) fn deadline(&self, now: Instant) -> Option<Instant> {
        let idle = (self.config.idle_timeout)
            .map(|t| self.last_activity + t)
            .filter(|&at| at > now);
        let request = if self.due_wait {
            self.book.next_due_after(now)
        } else {
            self.book.next_due_at()
        };
        let look = (self.checks.iter().map(|c| c.due))
            .chain(self.checks_running.map(|since| since + CHECK_PATIENCE))
            .filter(|&at| at > now);
        [idle, request, self.busy_until]
            .into_iter()
            .flatten()
            .chain(look)
            .min()
    }

    /// True once after something STATUS= shows changed.
    pub(crate) fn status_changed(&mut self) -> bool {
        std::mem::take(&mut self.status_changed)
    }

    /// What STATUS= shows at `now`.
    pub(crate) fn gauge(&self, now: Instant) -> Gauge {
        let waiting_for = (self.last_wait.as_ref())
            .filter(|_| self.book.parked() > 0)
            .map(|w| {
                let uris: Vec<&str> = w.hosts.iter().map(|(uri, _)| &**uri).collect();
                uris.join(", ")
            });
        Gauge {
            pending: self.book.len(),
            waiting_for,
            idle_left: (self.config.idle_timeout)
                .map(|idle| (self.last_activity + idle).saturating_duration_since(now)),
        }
    }

    /// Adds time spent reading datagrams (for the drain-rate figure).
    pub(crate) fn drained_for(&mut self, time: Duration) {
        self.stats.drain_time += time;
    }

    /// The exit's accounting: what was never decided, and the counters.
    pub(crate) fn finish(mut self) -> Summary {
        let undecided = self.book.undecided();
        self.stats.unacted = undecided.len() as u64;
        let waiting_for = self.last_wait.filter(|_| self.book.parked() > 0);
        Summary {
            stats: self.stats,
            undecided,
            waiting_for,
        }
    }

    fn packet(&mut self, ask: Ask, source: Source, now: Instant, out: &mut Vec<Effect<W>>) {
        let Target::Mac(mac) = ask.target else {
            return;
        };
        // Someone guessing SecureOn passwords is not looked up.
        if matches!(ask.credential, Credential::SecureOn(_)) {
            if let Some(left) = self.guesses.throttled(mac, &source, now) {
                self.stats.throttled += 1;
                out.push(Effect::Say(Note::Throttled { mac, source, left }));
                return;
            }
        }
        match self.book.offer(ask, source.clone(), now) {
            Offer::Queued => {}
            Offer::Repeat => self.stats.duplicates += 1,
            Offer::Duplicate { ago, first } => {
                self.stats.duplicates += 1;
                let note = Note::Duplicate {
                    mac,
                    source,
                    ago,
                    first,
                };
                out.push(Effect::Say(note));
            }
            Offer::Dropped => {
                self.stats.dropped += 1;
                let max_pending = self.config.rules.max_pending;
                out.push(Effect::Say(Note::Dropped {
                    mac,
                    source,
                    max_pending,
                }));
            }
        }
    }

    /// An HTTP request enters the book like a packet; its answer waits for
    /// the decision.
    fn http(
        &mut self,
        ask: Ask,
        source: Source,
        reply: W,
        now: Instant,
        hosts: &dyn Hosts,
        out: &mut Vec<Effect<W>>,
    ) {
        self.status_changed = true;
        self.stats.http_requests += 1;
        match self.book.offer(ask.clone(), source, now) {
            // Joining a request that waits for libvirt: say so now, as the
            // first caller heard.
            Offer::Repeat if self.book.is_parked(&ask) => {
                let waiting = self.last_wait.clone().unwrap_or_default();
                out.push(Effect::Reply(reply, waiting_reply(&ask, waiting, hosts)));
            }
            Offer::Queued | Offer::Repeat => self.replies.entry(ask).or_default().push(reply),
            Offer::Duplicate { ago, .. } => {
                self.stats.duplicates += 1;
                out.push(Effect::Reply(reply, Reply::Duplicate { ago }));
            }
            Offer::Dropped => {
                self.stats.dropped += 1;
                out.push(Effect::Reply(reply, Reply::Dropped));
            }
        }
    }

    /// A worker's request ended: if it refreshed an index, others may go.
    fn concluded(&mut self, ask: &Ask) {
        self.status_changed = true;
        if self.refresher.as_ref() == Some(ask) {
            self.refresher = None;
        }
    }

    /// A request that a host not answering kept from a decision: it waits
    /// and is done when libvirt answers, but an HTTP request only while few
    /// wait (see [`Book::park`]). HTTP callers hear it now, and whether
    /// some host has shown their token.
    fn wait_for_hosts(
        &mut self,
        ask: &Ask,
        waiting: WaitFor,
        now: Instant,
        hosts: &dyn Hosts,
        out: &mut Vec<Effect<W>>,
    ) {
        let reply = match self.book.park(ask, now) {
            Err(NotParked::Crowded) => {
                self.stats.dropped += 1;
                Reply::Dropped
            }
            Ok(_) | Err(NotParked::NotInFlight) => {
                self.last_wait = Some(waiting.clone());
                waiting_reply(ask, waiting, hosts)
            }
        };
        self.answer_waiters(ask, &reply, out);
    }

    /// Tells the HTTP callers waiting for `ask`'s decision.
    fn answer_waiters(&mut self, ask: &Ask, reply: &Reply, out: &mut Vec<Effect<W>>) {
        for waiter in self.replies.remove(ask).unwrap_or_default() {
            out.push(Effect::Reply(waiter, reply.clone()));
        }
    }

    fn decided(&mut self, ask: &Ask, decision: Decision, now: Instant, out: &mut Vec<Effect<W>>) {
        self.answer_waiters(ask, &Reply::Decided(decision.clone()), out);
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
        if let Outcome::Done { domain, verb, .. } = &decision.outcome {
            self.checks.push(Check {
                due: now + POST_START_CHECK,
                acted: now,
                domain: domain.clone(),
                verb: *verb,
            });
        }
        out.push(Effect::Say(Note::Decision(request, decision)));
    }

    /// Hands due requests to workers while slots are free. Answers at once
    /// those no host can have (a flood of unknown MACs costs no threads and
    /// needs no slot), and leaves waiting, without a slot, those a refresh
    /// under way will answer. Returns true when the requests due now all
    /// wait for something (a slot, a refresh): the loop need not wake for
    /// them.
    fn dispatch(&mut self, now: Instant, hosts: &dyn Hosts, out: &mut Vec<Effect<W>>) -> bool {
        let due: Vec<Ask> = self.book.due(now).take(LOOK_AHEAD).collect();
        let (mut left, mut went, looked) = (false, false, due.len());
        self.busy_until = None;
        for ask in due {
            self.status_changed = true;
            match hosts.route(&ask.target, now) {
                Route::Lacks => {
                    went = true;
                    self.book.take(&ask);
                    let decision = Decision {
                        outcome: Outcome::NoMatch,
                        left_out: Vec::new(),
                    };
                    self.decided(&ask, decision, now, out);
                }
                Route::AfterRefresh => left = true,
                Route::Busy => {
                    left = true;
                    self.busy_until = Some(now + BUSY_RETRY);
                }
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
                    out.push(Effect::Spawn(ask));
                }
            }
        }
        // Perhaps more were due than looked at, and some went: look again
        // at once rather than sleep on the ones that wait.
        left && !(went && looked == LOOK_AHEAD)
    }

    /// The looks at domains acted on [`POST_START_CHECK`] ago.
    fn start_looks(&mut self, now: Instant, out: &mut Vec<Effect<W>>) {
        let (due, later): (Vec<Check>, Vec<Check>) = std::mem::take(&mut self.checks)
            .into_iter()
            .partition(|c| c.due <= now);
        self.checks = later;
        for check in due {
            self.checks_in_flight += 1;
            self.checks_running.get_or_insert(now);
            out.push(Effect::Look(check));
        }
    }

    /// What a look after a start found: a domain that stopped again is
    /// reported once.
    fn looked(&mut self, check: Check, looked: Looked, now: Instant, out: &mut Vec<Effect<W>>) {
        self.status_changed = true;
        self.checks_in_flight = self.checks_in_flight.saturating_sub(1);
        if self.checks_in_flight == 0 {
            self.checks_running = None;
        }
        let note = match looked {
            Ok(Some((state @ (DomainState::ShutOff | DomainState::Crashed), reason))) => {
                Note::StoppedAgain {
                    after: now.saturating_duration_since(check.acted),
                    domain: check.domain,
                    verb: check.verb,
                    state,
                    reason,
                }
            }
            Ok(_) => return,
            Err(error) => Note::LookFailed {
                domain: check.domain,
                error,
            },
        };
        out.push(Effect::Say(note));
    }

    /// The idle exit, when it has come: nothing left, or only requests
    /// waiting for a libvirt that never answered. Requests being handled
    /// (a slow start), HTTP requests being answered and looks after a start
    /// (for [`CHECK_PATIENCE`]) are waited for.
    fn idle_exit(&self, now: Instant, http_busy: usize, hosts: &dyn Hosts) -> Option<Exit> {
        let idle = self.config.idle_timeout?;
        if now.saturating_duration_since(self.last_activity) < idle
            || http_busy > 0
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
        Some(if hosts.any_answers() {
            Exit::Idle
        } else {
            Exit::GaveUp
        })
    }
}

/// What an HTTP caller of a request waiting for libvirt hears.
fn waiting_reply(ask: &Ask, waiting: WaitFor, hosts: &dyn Hosts) -> Reply {
    let vouched = match ask.credential {
        Credential::Token(token) => hosts.vouches(&token),
        Credential::None | Credential::SecureOn(_) | Credential::Operator => false,
    };
    Reply::Waiting { waiting, vouched }
}

#[cfg(test)]
mod tests {
    //! The loop's rules on made-up instants and made-up hosts: `W` is a
    //! number standing for an HTTP caller.

    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;
    use crate::model::{HvError, Password};

    /// Hosts whose routes, tokens and health a test sets.
    #[derive(Default)]
    struct Made {
        routes: RefCell<HashMap<Target, Route>>,
        vouched: RefCell<Vec<Hash>>,
        silent: Cell<bool>,
    }

    impl Hosts for Made {
        fn route(&self, target: &Target, _: Instant) -> Route {
            let routes = self.routes.borrow();
            routes.get(target).copied().unwrap_or(Route::Worker)
        }
        fn vouches(&self, token: &Hash) -> bool {
            self.vouched.borrow().contains(token)
        }
        fn any_answers(&self) -> bool {
            !self.silent.get()
        }
    }

    type Effects = Vec<Effect<u32>>;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn packet(last: u8) -> Ask {
        Ask::from(mac(last))
    }

    fn from(last: u8) -> Source {
        Source::Udp(([192, 0, 2, last], 40_000).into())
    }

    fn http_ask(name: &str, token: u8) -> Ask {
        Ask {
            target: Target::Domain(name.into()),
            credential: Credential::Token(Hash::of(&[token; 32])),
        }
    }

    fn control(idle: Option<u64>, slots: usize) -> (Control<u32>, Instant) {
        let t0 = Instant::now();
        let config = Config {
            idle_timeout: idle.map(Duration::from_secs),
            rules: Rules::with_dedupe_window(Duration::from_secs(30)),
            max_in_flight: slots,
        };
        (Control::new(config, t0), t0)
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn tick(c: &mut Control<u32>, now: Instant, hosts: &Made) -> Effects {
        c.on(Event::Tick { http_busy: 0 }, now, hosts)
    }

    fn spawned(effects: &Effects) -> Vec<Ask> {
        let spawns = effects.iter().filter_map(|e| match e {
            Effect::Spawn(ask) => Some(ask.clone()),
            _ => None,
        });
        spawns.collect()
    }

    fn replies(effects: &Effects) -> Vec<(u32, Reply)> {
        let replies = effects.iter().filter_map(|e| match e {
            Effect::Reply(to, reply) => Some((*to, reply.clone())),
            _ => None,
        });
        replies.collect()
    }

    fn exit(effects: &Effects) -> Option<Exit> {
        effects.iter().find_map(|e| match e {
            Effect::Exit(exit) => Some(*exit),
            _ => None,
        })
    }

    fn done(name: &str) -> Decision {
        Decision {
            outcome: Outcome::Done {
                domain: Named {
                    name: name.into(),
                    uri: "test:///default".into(),
                },
                state: DomainState::ShutOff,
                verb: Verb::Start,
            },
            left_out: Vec::new(),
        }
    }

    fn waiting() -> WaitFor {
        WaitFor {
            hosts: vec![("qemu:///system".into(), Some(HvError::other("gone")))],
        }
    }

    #[test]
    fn at_most_the_slots_run_and_the_next_goes_when_one_ends() {
        let hosts = Made::default();
        let (mut c, t0) = control(None, 2);
        for last in 1..=3 {
            assert!(
                c.on(Event::Packet(packet(last), from(1)), t0, &hosts)
                    .is_empty()
            );
        }
        let first = tick(&mut c, t0, &hosts);
        assert_eq!(spawned(&first), [packet(1), packet(2)]);
        // The third waits for a slot: no deadline for it, a worker's
        // message ends its wait.
        assert_eq!(c.deadline(t0), None);
        assert!(spawned(&tick(&mut c, at(t0, 10), &hosts)).is_empty());
        c.on(Event::Decided(packet(1), done("a")), at(t0, 20), &hosts);
        assert_eq!(spawned(&tick(&mut c, at(t0, 20), &hosts)), [packet(3)]);
        let summary = c.finish();
        assert_eq!(summary.stats.waited_for_slot, 1);
        assert_eq!(summary.stats.handled, 1);
        assert_eq!(summary.stats.unacted, 2, "two still in flight");
    }

    #[test]
    fn one_worker_refreshes_and_other_unknown_macs_wait_for_it_without_a_slot() {
        let hosts = Made::default();
        for last in 1..=3 {
            hosts
                .routes
                .borrow_mut()
                .insert(packet(last).target, Route::Refresh);
        }
        let (mut c, t0) = control(None, 8);
        for last in 1..=3 {
            c.on(Event::Packet(packet(last), from(1)), t0, &hosts);
        }
        assert_eq!(spawned(&tick(&mut c, t0, &hosts)), [packet(1)]);
        // The refresh found neither of the others: they are answered at
        // once, without a worker.
        for last in 2..=3 {
            hosts
                .routes
                .borrow_mut()
                .insert(packet(last).target, Route::Lacks);
        }
        c.on(Event::Refreshed, at(t0, 50), &hosts);
        let after = tick(&mut c, at(t0, 50), &hosts);
        assert!(spawned(&after).is_empty());
        let no_match = after.iter().filter(
            |e| matches!(e, Effect::Say(Note::Decision(_, d)) if d.outcome == Outcome::NoMatch),
        );
        assert_eq!(no_match.count(), 2);
    }

    #[test]
    fn a_host_whose_index_is_busy_is_asked_again_soon_not_given_a_worker() {
        let hosts = Made::default();
        hosts
            .routes
            .borrow_mut()
            .insert(packet(1).target, Route::Busy);
        let (mut c, t0) = control(None, 8);
        c.on(Event::Packet(packet(1), from(1)), t0, &hosts);
        assert!(spawned(&tick(&mut c, t0, &hosts)).is_empty());
        assert_eq!(c.deadline(t0), Some(t0 + BUSY_RETRY));
        hosts
            .routes
            .borrow_mut()
            .insert(packet(1).target, Route::Worker);
        let again = t0 + BUSY_RETRY;
        assert_eq!(spawned(&tick(&mut c, again, &hosts)), [packet(1)]);
        assert_eq!(c.deadline(again), None);
    }

    #[test]
    fn a_refresh_whose_worker_never_started_does_not_hold_the_others() {
        let hosts = Made::default();
        for last in 1..=2 {
            hosts
                .routes
                .borrow_mut()
                .insert(packet(last).target, Route::Refresh);
        }
        let (mut c, t0) = control(None, 8);
        c.on(Event::Packet(packet(1), from(1)), t0, &hosts);
        assert_eq!(spawned(&tick(&mut c, t0, &hosts)), [packet(1)]);
        c.on(Event::NoWorker(packet(1)), t0, &hosts);
        c.on(Event::Packet(packet(2), from(1)), t0, &hosts);
        assert_eq!(spawned(&tick(&mut c, t0, &hosts)), [packet(2)]);
    }

    #[test]
    fn the_idle_exit_counts_from_the_last_datagram_or_proven_http_request() {
        let hosts = Made::default();
        let (mut c, t0) = control(Some(10), 8);
        assert_eq!(c.deadline(t0), Some(at(t0, 10_000)));
        c.on(
            Event::Read {
                count: 1,
                rejected: 1,
            },
            at(t0, 4_000),
            &hosts,
        );
        // A request whose token opened nothing is no activity.
        c.on(
            Event::HttpDone {
                authenticated: false,
            },
            at(t0, 8_000),
            &hosts,
        );
        assert_eq!(exit(&tick(&mut c, at(t0, 13_999), &hosts)), None);
        c.on(
            Event::HttpDone {
                authenticated: true,
            },
            at(t0, 13_999),
            &hosts,
        );
        assert_eq!(exit(&tick(&mut c, at(t0, 23_000), &hosts)), None);
        // An HTTP request being answered (a caller waiting) holds it.
        let busy = Event::Tick { http_busy: 1 };
        assert_eq!(exit(&c.on(busy, at(t0, 24_000), &hosts)), None);
        assert_eq!(
            exit(&tick(&mut c, at(t0, 24_000), &hosts)),
            Some(Exit::Idle)
        );
        assert_eq!(c.finish().stats.rejected, 1);
    }

    #[test]
    fn the_idle_exit_waits_for_a_slow_start_and_for_looks_but_not_forever() {
        let hosts = Made::default();
        let (mut c, t0) = control(Some(1), 8);
        c.on(Event::Packet(packet(1), from(1)), t0, &hosts);
        tick(&mut c, t0, &hosts);
        assert_eq!(
            exit(&tick(&mut c, at(t0, 60_000), &hosts)),
            None,
            "in flight"
        );
        let acted = at(t0, 60_000);
        c.on(Event::Decided(packet(1), done("a")), acted, &hosts);
        assert_eq!(c.deadline(acted), Some(acted + POST_START_CHECK));
        assert_eq!(
            exit(&tick(&mut c, at(t0, 61_000), &hosts)),
            None,
            "look due"
        );
        let looks = tick(&mut c, acted + POST_START_CHECK, &hosts);
        let [Effect::Look(check)] = looks.as_slice() else {
            panic!("one look expected: {looks:?}");
        };
        assert_eq!(check.domain.name, "a");
        // A look that hangs is waited for CHECK_PATIENCE, then not.
        let later = acted + POST_START_CHECK + CHECK_PATIENCE;
        assert_eq!(c.deadline(acted + POST_START_CHECK), Some(later));
        assert_eq!(
            exit(&tick(&mut c, later - Duration::from_millis(1), &hosts)),
            None
        );
        assert_eq!(exit(&tick(&mut c, later, &hosts)), Some(Exit::Idle));
    }

    #[test]
    fn a_domain_that_stopped_again_is_said_once_with_how_long_after() {
        let hosts = Made::default();
        let (mut c, t0) = control(None, 8);
        let check = Check {
            due: at(t0, 3_000),
            acted: t0,
            domain: Named {
                name: "a".into(),
                uri: "test:///default".into(),
            },
            verb: Verb::Start,
        };
        let found = Ok(Some((DomainState::ShutOff, Some(StopReason::Crashed))));
        let said = c.on(Event::Looked(check, found), at(t0, 3_200), &hosts);
        let [Effect::Say(Note::StoppedAgain { after, state, .. })] = said.as_slice() else {
            panic!("one note expected: {said:?}");
        };
        assert_eq!(
            (*after, *state),
            (Duration::from_millis(3_200), DomainState::ShutOff)
        );
    }

    #[test]
    fn only_requests_waiting_for_libvirt_that_nobody_answers_exit_with_failure() {
        for silent in [true, false] {
            let hosts = Made::default();
            hosts.silent.set(silent);
            let (mut c, t0) = control(Some(1), 8);
            c.on(Event::Packet(packet(1), from(1)), t0, &hosts);
            tick(&mut c, t0, &hosts);
            c.on(Event::Waits(packet(1), waiting()), t0, &hosts);
            let gauge = c.gauge(t0);
            assert_eq!(gauge.waiting_for.as_deref(), Some("qemu:///system"));
            let want = if silent { Exit::GaveUp } else { Exit::Idle };
            // Retries of the parked request are due meanwhile: a worker
            // takes it, it waits again.
            let mut now = t0;
            let exited = loop {
                now += Duration::from_millis(250);
                let effects = tick(&mut c, now, &hosts);
                for ask in spawned(&effects) {
                    c.on(Event::Waits(ask, waiting()), now, &hosts);
                }
                if let Some(exit) = exit(&effects) {
                    break exit;
                }
                assert!(now < at(t0, 60_000), "never exited");
            };
            assert_eq!(exited, want);
            let summary = c.finish();
            assert_eq!(summary.undecided, [(packet(1).target, false)]);
            assert_eq!(summary.stats.unacted, 1);
            assert_eq!(summary.waiting_for, Some(waiting()));
        }
    }

    #[test]
    fn http_callers_of_one_request_all_hear_its_decision() {
        let hosts = Made::default();
        let (mut c, t0) = control(None, 8);
        let ask = http_ask("web01", 1);
        assert!(
            c.on(Event::Http(ask.clone(), from(1), 1), t0, &hosts)
                .is_empty()
        );
        assert_eq!(
            spawned(&tick(&mut c, t0, &hosts)),
            std::slice::from_ref(&ask)
        );
        assert!(
            c.on(Event::Http(ask.clone(), from(2), 2), t0, &hosts)
                .is_empty()
        );
        let decided = c.on(
            Event::Decided(ask.clone(), done("web01")),
            at(t0, 900),
            &hosts,
        );
        let heard = replies(&decided);
        assert_eq!(heard.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [1, 2]);
        assert!(
            heard
                .iter()
                .all(|(_, r)| *r == Reply::Decided(done("web01")))
        );
        // Within the window, the same request is a duplicate, said at once.
        let again = c.on(Event::Http(ask, from(1), 3), at(t0, 1_900), &hosts);
        let ago = Duration::from_secs(1);
        assert_eq!(replies(&again), [(3, Reply::Duplicate { ago })]);
        let stats = c.finish().stats;
        assert_eq!(
            (stats.http_requests, stats.duplicates, stats.handled),
            (3, 1, 1)
        );
    }

    #[test]
    fn http_callers_of_a_request_waiting_for_libvirt_hear_at_once_whether_their_token_was_seen() {
        let hosts = Made::default();
        let (mut c, t0) = control(None, 8);
        let (seen, unseen) = (http_ask("web01", 1), http_ask("web01", 2));
        hosts.vouched.borrow_mut().push(Hash::of(&[1; 32]));
        for (ask, to) in [(&seen, 1), (&unseen, 2)] {
            c.on(Event::Http(ask.clone(), from(1), to), t0, &hosts);
        }
        tick(&mut c, t0, &hosts);
        let mut heard = Vec::new();
        for ask in [&seen, &unseen] {
            heard.extend(replies(&c.on(
                Event::Waits(ask.clone(), waiting()),
                t0,
                &hosts,
            )));
        }
        let vouched = |r: &Reply| matches!(r, Reply::Waiting { vouched: true, .. });
        assert_eq!(heard.len(), 2);
        assert!(vouched(&heard[0].1) && !vouched(&heard[1].1));
        // A caller joining a waiting request is not left hanging.
        let joined = c.on(Event::Http(seen, from(3), 3), at(t0, 10), &hosts);
        let joined = replies(&joined);
        assert_eq!(joined.len(), 1);
        assert!(joined[0].0 == 3 && vouched(&joined[0].1));
    }

    #[test]
    fn sixth_wrong_secureon_guess_is_throttled_not_looked_up() {
        let hosts = Made::default();
        let (mut c, t0) = control(None, 8);
        let guess = |n: u8| Ask {
            target: Target::Mac(mac(1)),
            credential: Credential::SecureOn(
                Password::new(&[n; 6]).unwrap_or_else(|| unreachable!()),
            ),
        };
        let wrong = Decision {
            outcome: Outcome::Refused {
                domains: Vec::new(),
                reason: Refusal::SecureOnWrong,
            },
            left_out: Vec::new(),
        };
        for n in 0..5 {
            let now = at(t0, u64::from(n) * 1_100);
            c.on(Event::Packet(guess(n), from(9)), now, &hosts);
            assert_eq!(spawned(&tick(&mut c, now, &hosts)), [guess(n)]);
            c.on(Event::Decided(guess(n), wrong.clone()), now, &hosts);
        }
        let sixth = c.on(Event::Packet(guess(5), from(9)), at(t0, 5_500), &hosts);
        assert!(matches!(
            sixth.as_slice(),
            [Effect::Say(Note::Throttled { .. })]
        ));
        assert!(spawned(&tick(&mut c, at(t0, 5_500), &hosts)).is_empty());
        assert_eq!(c.finish().stats.throttled, 1);
    }

    #[test]
    fn the_book_full_drops_a_packet_and_says_so() {
        let hosts = Made::default();
        let t0 = Instant::now();
        let mut rules = Rules::with_dedupe_window(Duration::from_secs(30));
        rules.max_pending = 1;
        let config = Config {
            idle_timeout: None,
            rules,
            max_in_flight: 8,
        };
        let mut c: Control<u32> = Control::new(config, t0);
        c.on(Event::Packet(packet(1), from(1)), t0, &hosts);
        let second = c.on(Event::Packet(packet(2), from(1)), t0, &hosts);
        assert!(matches!(
            second.as_slice(),
            [Effect::Say(Note::Dropped { max_pending: 1, .. })]
        ));
        assert_eq!(c.finish().stats.dropped, 1);
    }
}
