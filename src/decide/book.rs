//! The request book: which wake requests wait, which are being handled,
//! which MACs were handled lately, and when each may be tried. Pure: the
//! clock is passed in, so every rule below is tested with made-up instants.
//!
//! Rules:
//! - one request per MAC: packets for a MAC already waiting or being handled
//!   join it (a burst: tools send 3-10 copies, Moonlight to several ports);
//! - after a request brought its domain up, packets for the MAC within the
//!   de-duplication window are duplicates;
//! - after any other outcome (failed, refused, unknown MAC, ambiguous) the
//!   next packet is acted on, but not sooner than a second after the last
//!   try: a fixed cause is retried, a refusal never blocks a later,
//!   legitimate packet, and a stream of packets costs one try a second;
//! - a request that could not be decided because libvirt was unreachable or
//!   silent waits ("parked") and is retried with backoff, or at once when a
//!   host answers again;
//! - at most `max_pending` magic packets wait; more are dropped (and
//!   counted). HTTP requests have room of their own, apart from the
//!   packets': at most `max_http_pending` in all, `max_http_per_client` of
//!   one client, and at most `max_http_parked` of them wait for libvirt
//!   (more are withdrawn), so no HTTP client, with or without a valid token,
//!   can take a packet's place, and requests that wait for a host that does
//!   not answer cannot take the place of requests a host that answers can
//!   decide;
//! - requests for one target with different SecureOn passwords are a few
//!   at a time ([`MAX_CREDENTIALS_PER_TARGET`]); HTTP requests take no such
//!   place (their per-client caps bound them), so a made-up token never
//!   keeps a domain's owner out.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::decide::ask::{Ask, Credential, Target};
use crate::decide::backoff::Backoff;
use crate::decide::client::Client;
use crate::model::Source;

/// The book's settings.
#[derive(Debug, Clone)]
pub struct Rules {
    /// A MAC whose domain was brought up is not acted on again for this long.
    pub(crate) dedupe_window: Duration,
    /// After an outcome that did not bring the domain up, the next try waits
    /// at least this long.
    pub(crate) retry_spacing: Duration,
    /// Magic packets' requests kept at most; more are dropped.
    pub(crate) max_pending: usize,
    /// HTTP requests kept at most (room apart from the packets').
    pub(crate) max_http_pending: usize,
    /// HTTP requests of one client (an IPv4 address, an IPv6 /64) kept at
    /// most.
    pub(crate) max_http_per_client: usize,
    /// HTTP requests kept waiting for libvirt at most; more are withdrawn.
    pub(crate) max_http_parked: usize,
    /// Recently handled MACs remembered at most (a flood of distinct MACs
    /// must not grow memory; forgetting one only risks a harmless second try).
    pub(crate) max_recent: usize,
    /// First retry delay while libvirt is away.
    pub(crate) first_retry: Duration,
    /// Longest retry delay while libvirt is away.
    pub(crate) max_retry: Duration,
}

impl Rules {
    /// The gateway's rules with the given de-duplication window.
    pub fn with_dedupe_window(dedupe_window: Duration) -> Self {
        Rules {
            dedupe_window,
            retry_spacing: Duration::from_secs(1),
            max_pending: 4_096,
            max_http_pending: 1_024,
            // As many as one client's connections (crate::ingress::http).
            max_http_per_client: 8,
            max_http_parked: 256,
            max_recent: 4_096,
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(5),
        }
    }
}

/// What became of an offered packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offer {
    /// A new request, due at once or after the retry spacing.
    Queued,
    /// Joined the request already waiting or being handled for the MAC.
    Repeat,
    /// The MAC's domain was brought up `ago`; `first` is true for the first
    /// duplicate since then (worth a line at info).
    Duplicate {
        /// Since the request that brought it up was settled.
        ago: Duration,
        /// The first duplicate since.
        first: bool,
    },
    /// Too many requests wait already; this one is dropped.
    Dropped,
}

/// A request, as the book hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What was asked for, and with what credential.
    pub(crate) ask: Ask,
    /// The first packet's sender.
    pub(crate) source: Source,
    /// Packets that joined it.
    pub(crate) repeats: u32,
    /// It waited for libvirt at least once.
    pub(crate) parked: bool,
    /// When it became due (for "waited for a free slot" accounting).
    pub(crate) due: Instant,
}

#[derive(Debug)]
enum Stage {
    /// In the queue under this key.
    Waiting { key: (Instant, u64), parked: bool },
    /// Handed out by [`Book::next_due`] or [`Book::take`].
    InFlight,
}

#[derive(Debug)]
struct Entry {
    request: Request,
    stage: Stage,
    /// Arrival order, for the exit report.
    seq: u64,
    /// The HTTP client it came from; `None` for a magic packet.
    client: Option<Client>,
}

#[derive(Debug)]
struct Recent {
    at: Instant,
    brought_up: bool,
    duplicate_seen: bool,
}

/// Requests wait for libvirt: the shared retry time and its backoff.
#[derive(Debug)]
struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Backoff,
}

/// What parking a request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parked {
    /// This request started an outage (none was going on).
    pub(crate) began: bool,
    /// When the parked requests are tried again.
    pub(crate) retry_at: Instant,
}

/// Why a request that waits for libvirt is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotParked {
    /// It is not being handled (nothing to park).
    NotInFlight,
    /// Too many HTTP requests wait for libvirt already: it was withdrawn.
    Crowded,
}

/// An outage that ended: parked requests are due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// How long requests waited.
    pub(crate) waited: Duration,
    /// How many are due again.
    pub(crate) requests: usize,
}

/// Requests for one target with different credentials waiting or being
/// handled at once; more are dropped (and counted).
pub(crate) const MAX_CREDENTIALS_PER_TARGET: usize = 4;

/// The request book.
#[derive(Debug)]
pub(crate) struct Book {
    rules: Rules,
    entries: HashMap<Ask, Entry>,
    /// Waiting requests by (due, arrival): the next one due is the first.
    queue: BTreeMap<(Instant, u64), Ask>,
    seq: u64,
    in_flight: usize,
    parked: usize,
    recent: HashMap<Ask, Recent>,
    /// Requests with a SecureOn password waiting or being handled per
    /// target.
    per_target: HashMap<Target, usize>,
    /// Magic packets' requests kept (the rest of the entries are HTTP's).
    packets: usize,
    /// HTTP requests kept, per client.
    http: HashMap<Client, usize>,
    /// HTTP requests waiting for libvirt.
    http_parked: usize,
    last_prune: Option<Instant>,
    outage: Option<Outage>,
}

impl Book {
    /// An empty book.
    pub(crate) fn new(rules: Rules) -> Self {
        Book {
            rules,
            entries: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            in_flight: 0,
            parked: 0,
            recent: HashMap::new(),
            per_target: HashMap::new(),
            packets: 0,
            http: HashMap::new(),
            http_parked: 0,
            last_prune: None,
            outage: None,
        }
    }

    /// A packet asking for `mac` from `source` arrived at `now`.
    pub(crate) fn offer(&mut self, mac: Ask, source: Source, now: Instant) -> Offer {
        if let Some(entry) = self.entries.get_mut(&mac) {
            entry.request.repeats = entry.request.repeats.saturating_add(1);
            return Offer::Repeat;
        }
        let mut due = now;
        // Only a packet with a password has a de-duplication key of its
        // own (see [`Ask::dedup_key`]); the rest are looked up once, which
        // a flood of unknown MACs pays per packet.
        let by_mac = matches!(mac.credential, Credential::SecureOn(_)).then(|| mac.dedup_key());
        if let Some(recent) = self.recent.get_mut(by_mac.as_ref().unwrap_or(&mac)) {
            let ago = now.saturating_duration_since(recent.at);
            if recent.brought_up && ago < self.rules.dedupe_window {
                let first = !std::mem::replace(&mut recent.duplicate_seen, true);
                return Offer::Duplicate { ago, first };
            }
            if by_mac.is_none() && !recent.brought_up {
                due = due.max(recent.at + self.rules.retry_spacing);
            }
        }
        if by_mac.is_some() {
            if let Some(recent) = self.recent.get(&mac) {
                if !recent.brought_up {
                    due = due.max(recent.at + self.rules.retry_spacing);
                }
            }
        }
        let client = match &source {
            Source::Http(peer) => Some(Client::of(peer.ip())),
            Source::Udp(_) | Source::Raw(_) | Source::Cli => None,
        };
        if let Some(client) = client {
            let of_client = self.http.get(&client).copied().unwrap_or(0);
            if self.entries.len() - self.packets >= self.rules.max_http_pending
                || of_client >= self.rules.max_http_per_client
            {
                return Offer::Dropped;
            }
        } else if self.packets >= self.rules.max_pending {
            return Offer::Dropped;
        }
        // Requests for one target with different passwords are separate (a
        // wrong password first must not swallow the right one), but a few
        // at a time: a flood of made-up passwords for one MAC would
        // otherwise become a flood of libvirt lookups. (Without a password
        // there is one request per target anyway.)
        if matches!(mac.credential, Credential::SecureOn(_)) {
            let same_target = self.per_target.entry(mac.target.clone()).or_default();
            if *same_target >= MAX_CREDENTIALS_PER_TARGET {
                return Offer::Dropped;
            }
            *same_target += 1;
        }
        match client {
            Some(client) => *self.http.entry(client).or_default() += 1,
            None => self.packets += 1,
        }
        // Not parked during an outage: with several hosts, the MAC may be
        // on one that answers (an unreachable host answers at once).
        self.seq += 1;
        let key = (due, self.seq);
        self.queue.insert((due, self.seq), mac.clone());
        self.entries.insert(
            mac.clone(),
            Entry {
                request: Request {
                    ask: mac,
                    source,
                    repeats: 0,
                    parked: false,
                    due,
                },
                stage: Stage::Waiting { key, parked: false },
                seq: self.seq,
                client,
            },
        );
        Offer::Queued
    }

    /// The next request due at `now`, now counted as being handled. (The
    /// loop looks past requests that must wait with [`Book::due`] and
    /// [`Book::take`]; the tests step through the book one at a time.)
    #[cfg(test)]
    pub(crate) fn next_due(&mut self, now: Instant) -> Option<Request> {
        let mac = self.due(now).next()?;
        self.take(&mac)
    }

    /// What the requests due at `now` ask for, in order, left waiting.
    pub(crate) fn due(&self, now: Instant) -> impl Iterator<Item = Ask> + '_ {
        self.queue
            .iter()
            .take_while(move |&(&(due, _), _)| due <= now)
            .map(|(_, ask)| ask.clone())
    }

    /// Takes the waiting request for `mac`, now counted as being handled.
    pub(crate) fn take(&mut self, mac: &Ask) -> Option<Request> {
        let entry = self.entries.get_mut(mac)?;
        let Stage::Waiting {
            key: (due, seq),
            parked,
        } = entry.stage
        else {
            return None;
        };
        self.queue.remove(&(due, seq));
        if parked {
            self.parked -= 1;
            if entry.client.is_some() {
                self.http_parked -= 1;
            }
        }
        entry.stage = Stage::InFlight;
        self.in_flight += 1;
        Some(entry.request.clone())
    }

    /// When the next waiting request is due, if any waits.
    pub(crate) fn next_due_at(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|(&(due, _), _)| due)
    }

    /// When the first request due after `now` is, if any.
    pub(crate) fn next_due_after(&self, now: Instant) -> Option<Instant> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.queue
            .range((Excluded((now, u64::MAX)), Unbounded))
            .next()
            .map(|(&(due, _), _)| due)
    }

    /// Removes the in-flight request for `ask` (and what it counted for).
    fn take_in_flight(&mut self, ask: &Ask) -> Option<Entry> {
        match self.entries.get(ask)?.stage {
            Stage::InFlight => {}
            Stage::Waiting { .. } => return None,
        }
        self.in_flight -= 1;
        let entry = self.entries.remove(ask)?;
        match entry.client {
            Some(client) => {
                if let Some(count) = self.http.get_mut(&client) {
                    *count -= 1;
                    if *count == 0 {
                        self.http.remove(&client);
                    }
                }
            }
            None => self.packets -= 1,
        }
        if matches!(ask.credential, Credential::SecureOn(_)) {
            if let Some(count) = self.per_target.get_mut(&ask.target) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_target.remove(&ask.target);
                }
            }
        }
        Some(entry)
    }

    /// The request for `mac` was decided at `now`; `brought_up` says whether
    /// its domain is up now (see the module rules). Returns the request.
    pub(crate) fn settle(&mut self, mac: &Ask, brought_up: bool, now: Instant) -> Option<Request> {
        let entry = self.take_in_flight(mac)?;
        if entry.request.parked {
            // A request that waited for libvirt was decided: the host it
            // waited for answers (with several hosts, others may still be
            // away: their requests come back at once and park again).
            self.end_outage(now);
        }
        self.remember(entry.request.ask.clone(), brought_up, now);
        Some(entry.request)
    }

    /// The request for `mac` could not be decided: libvirt is unreachable
    /// or silent. It waits for the next retry (with backoff, shared by all
    /// parked requests), or until [`Book::hosts_back`]; an HTTP request
    /// beyond `max_http_parked` is withdrawn instead.
    pub(crate) fn park(&mut self, mac: &Ask, now: Instant) -> Result<Parked, NotParked> {
        let entry = self.entries.get(mac).ok_or(NotParked::NotInFlight)?;
        let Stage::InFlight = entry.stage else {
            return Err(NotParked::NotInFlight);
        };
        let http = entry.client.is_some();
        if http && self.http_parked >= self.rules.max_http_parked {
            // Withdrawn undecided: nothing is remembered of it (a later one
            // is acted on as if it were the first).
            self.take_in_flight(mac);
            return Err(NotParked::Crowded);
        }
        let rules = &self.rules;
        let began = self.outage.is_none();
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now,
            retry_at: now,
            backoff: Backoff::new(rules.first_retry, rules.max_retry),
        });
        // One retry round for all requests parked before it comes.
        if now >= outage.retry_at {
            outage.retry_at = now + outage.backoff.next_delay();
        }
        let retry_at = outage.retry_at;
        let entry = self.entries.get_mut(mac).ok_or(NotParked::NotInFlight)?;
        self.in_flight -= 1;
        self.parked += 1;
        if http {
            self.http_parked += 1;
        }
        entry.request.parked = true;
        entry.request.due = retry_at;
        self.seq += 1;
        entry.stage = Stage::Waiting {
            key: (retry_at, self.seq),
            parked: true,
        };
        self.queue.insert((retry_at, self.seq), mac.clone());
        Ok(Parked { began, retry_at })
    }

    /// A host answers again: parked requests are due at once.
    pub(crate) fn hosts_back(&mut self, now: Instant) -> Option<Resumed> {
        self.end_outage(now)
    }

    fn end_outage(&mut self, now: Instant) -> Option<Resumed> {
        let outage = self.outage.take()?;
        let mut requests = 0;
        for entry in self.entries.values_mut() {
            if let Stage::Waiting {
                key: (due, seq),
                parked: true,
            } = entry.stage
            {
                if due > now {
                    self.queue.remove(&(due, seq));
                    self.queue.insert((now, seq), entry.request.ask.clone());
                    entry.stage = Stage::Waiting {
                        key: (now, seq),
                        parked: true,
                    };
                    entry.request.due = now;
                }
                requests += 1;
            }
        }
        Some(Resumed {
            waited: now.saturating_duration_since(outage.since),
            requests,
        })
    }

    fn remember(&mut self, mac: Ask, brought_up: bool, now: Instant) {
        let keep = self.rules.dedupe_window.max(self.rules.retry_spacing);
        // Pruning walks the whole map: at most once a second, or a flood of
        // distinct MACs would pay a full walk per request.
        if self.recent.len() >= self.rules.max_recent
            && self
                .last_prune
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            self.recent
                .retain(|_, recent| now.saturating_duration_since(recent.at) < keep);
            self.last_prune = Some(now);
        }
        // Brought up: a duplicate for any packet of the MAC (see
        // [`Ask::dedup_key`]); not: retried no sooner, for this request.
        let mac = if brought_up && matches!(mac.credential, Credential::SecureOn(_)) {
            mac.dedup_key()
        } else {
            mac
        };
        if self.recent.len() < self.rules.max_recent || self.recent.contains_key(&mac) {
            self.recent.insert(
                mac,
                Recent {
                    at: now,
                    brought_up,
                    duplicate_seen: false,
                },
            );
        }
    }

    /// A domain was put to sleep: what was brought up may be down now, so
    /// no later request is a duplicate of an earlier wake. (Every domain's,
    /// not only that one's: a request names a MAC or a name, not the
    /// domain it found; the others' next repeat costs one lookup.)
    pub(crate) fn forget_wakes(&mut self) {
        self.recent.retain(|_, recent| !recent.brought_up);
    }

    /// Requests waiting or being handled.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no request waits or is being handled.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Requests being handled.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests waiting for libvirt.
    pub(crate) fn parked(&self) -> usize {
        self.parked
    }

    /// True if the request for `ask` waits for libvirt to answer again.
    pub(crate) fn is_parked(&self, ask: &Ask) -> bool {
        self.entries
            .get(ask)
            .is_some_and(|e| matches!(e.stage, Stage::Waiting { parked: true, .. }))
    }

    /// Every request not decided, in arrival order, and whether it is
    /// being handled (for the exit report).
    pub(crate) fn undecided(&self) -> Vec<(Target, bool)> {
        let mut all: Vec<(u64, Target, bool)> = self
            .entries
            .values()
            .map(|e| {
                let in_flight = matches!(e.stage, Stage::InFlight);
                (e.seq, e.request.ask.target.clone(), in_flight)
            })
            .collect();
        all.sort_unstable_by_key(|(seq, _, _)| *seq);
        all.into_iter().map(|(_, target, f)| (target, f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::ask::Credential;
    use crate::model::{Mac, Password};
    use std::net::SocketAddr;

    fn mac(last: u8) -> Ask {
        Ask::from(Mac([0x52, 0x54, 0, 0, 0, last]))
    }

    fn source() -> Source {
        Source::Udp(SocketAddr::from(([192, 0, 2, 2], 40_000)))
    }

    fn book() -> (Book, Instant) {
        (
            Book::new(Rules::with_dedupe_window(Duration::from_secs(10))),
            Instant::now(),
        )
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn a_burst_is_one_request_with_its_repeats() {
        let (mut book, t0) = book();
        assert_eq!(book.offer(mac(1), source(), t0), Offer::Queued);
        for _ in 0..3 {
            assert_eq!(book.offer(mac(1), source(), t0), Offer::Repeat);
        }
        let request = book.next_due(t0).expect("due");
        assert_eq!(request.repeats, 3);
        // Repeats keep joining while it is being handled.
        assert_eq!(book.offer(mac(1), source(), secs(t0, 0.1)), Offer::Repeat);
        let settled = book
            .settle(&mac(1), true, secs(t0, 0.2))
            .expect("in flight");
        assert_eq!(settled.repeats, 4);
        assert!(book.is_empty());
    }

    #[test]
    fn after_a_wake_repeats_within_the_window_are_duplicates() {
        let (mut book, t0) = book();
        book.offer(mac(1), source(), t0);
        book.next_due(t0);
        book.settle(&mac(1), true, secs(t0, 1.0));
        assert_eq!(
            book.offer(mac(1), source(), secs(t0, 3.0)),
            Offer::Duplicate {
                ago: Duration::from_secs(2),
                first: true
            }
        );
        assert_eq!(
            book.offer(mac(1), source(), secs(t0, 4.0)),
            Offer::Duplicate {
                ago: Duration::from_secs(3),
                first: false
            }
        );
        assert_eq!(book.offer(mac(1), source(), secs(t0, 11.0)), Offer::Queued);
        assert_eq!(book.next_due(secs(t0, 11.0)).map(|r| r.ask), Some(mac(1)));
    }

    #[test]
    fn after_a_sleep_the_next_wake_is_no_duplicate() {
        // Home Assistant's switch: on, off and on again within the window.
        let (mut book, t0) = book();
        book.offer(mac(1), source(), t0);
        book.next_due(t0);
        book.settle(&mac(1), true, secs(t0, 1.0));
        book.forget_wakes();
        assert_eq!(book.offer(mac(1), source(), secs(t0, 3.0)), Offer::Queued);
    }

    #[test]
    fn after_a_failure_the_next_packet_is_acted_on_at_most_once_a_second() {
        let (mut book, t0) = book();
        book.offer(mac(1), source(), t0);
        book.next_due(t0);
        book.settle(&mac(1), false, secs(t0, 0.5));
        // 0.3 s after the failure: not swallowed, but due 1 s after it.
        assert_eq!(book.offer(mac(1), source(), secs(t0, 0.8)), Offer::Queued);
        assert_eq!(book.next_due(secs(t0, 1.4)), None);
        assert_eq!(book.next_due_at(), Some(secs(t0, 1.5)));
        assert_eq!(book.next_due(secs(t0, 1.5)).map(|r| r.ask), Some(mac(1)));
        book.settle(&mac(1), false, secs(t0, 1.6));
        // Fixed and retried by the user 5 s later: due at once.
        assert_eq!(book.offer(mac(1), source(), secs(t0, 6.6)), Offer::Queued);
        assert!(book.next_due(secs(t0, 6.6)).is_some());
    }

    #[test]
    fn requests_are_handed_out_in_arrival_order() {
        let (mut book, t0) = book();
        for i in 1..=3 {
            book.offer(mac(i), source(), secs(t0, f64::from(i) * 0.001));
        }
        let now = secs(t0, 1.0);
        let order: Vec<Ask> = std::iter::from_fn(|| book.next_due(now).map(|r| r.ask)).collect();
        assert_eq!(order, [mac(1), mac(2), mac(3)]);
        assert_eq!(book.in_flight(), 3);
        assert_eq!(
            book.undecided(),
            [
                (mac(1).target, true),
                (mac(2).target, true),
                (mac(3).target, true)
            ]
        );
    }

    #[test]
    fn overflow_drops_new_macs_but_repeats_still_join() {
        let (mut book, t0) = book();
        book.rules.max_pending = 2;
        assert_eq!(book.offer(mac(1), source(), t0), Offer::Queued);
        assert_eq!(book.offer(mac(2), source(), t0), Offer::Queued);
        assert_eq!(book.offer(mac(3), source(), t0), Offer::Dropped);
        assert_eq!(book.offer(mac(1), source(), t0), Offer::Repeat);
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn parked_requests_retry_with_backoff_and_at_once_when_a_host_is_back() {
        let (mut book, t0) = book();
        book.offer(mac(1), source(), t0);
        book.next_due(t0);
        let parked = book.park(&mac(1), t0).expect("in flight");
        assert_eq!(
            parked,
            Parked {
                began: true,
                retry_at: secs(t0, 0.5)
            }
        );
        assert_eq!(book.parked(), 1);
        // A new MAC during the outage is tried at once (it may be on a host
        // that answers), and parked with the others if not.
        assert_eq!(book.offer(mac(2), source(), secs(t0, 0.1)), Offer::Queued);
        assert_eq!(book.next_due(secs(t0, 0.1)).map(|r| r.ask), Some(mac(2)));
        assert_eq!(
            book.park(&mac(2), secs(t0, 0.2)),
            Ok(Parked {
                began: false,
                retry_at: secs(t0, 0.5)
            })
        );
        assert_eq!(book.next_due(secs(t0, 0.4)), None);
        let retry = secs(t0, 0.5);
        assert_eq!(book.next_due(retry).map(|r| r.ask), Some(mac(1)));
        assert_eq!(book.next_due(retry).map(|r| r.ask), Some(mac(2)));
        // Both fail again: one round, the delay doubles once.
        assert_eq!(
            book.park(&mac(1), retry).map(|p| p.retry_at),
            Ok(secs(t0, 1.5))
        );
        assert_eq!(
            book.park(&mac(2), retry).map(|p| p.retry_at),
            Ok(secs(t0, 1.5))
        );
        // A host answers again at 0.7 s: both are due now.
        let back = secs(t0, 0.7);
        assert_eq!(
            book.hosts_back(back),
            Some(Resumed {
                waited: Duration::from_millis(700),
                requests: 2
            })
        );
        assert_eq!(book.parked(), 2, "still waiting, but due");
        assert!(book.next_due(back).is_some() && book.next_due(back).is_some());
        assert_eq!(book.parked(), 0);
        assert_eq!(book.hosts_back(back), None, "no outage any more");
    }

    #[test]
    fn deciding_a_parked_request_ends_the_outage() {
        let (mut book, t0) = book();
        for i in 1..=2 {
            book.offer(mac(i), source(), t0);
        }
        book.next_due(t0);
        book.next_due(t0);
        book.park(&mac(1), t0).expect("in flight");
        book.park(&mac(2), t0).expect("in flight");
        let retry = book.next_due_at().expect("parked");
        book.next_due(retry);
        book.settle(&mac(1), true, retry);
        assert_eq!(book.hosts_back(retry), None, "the outage is over");
        assert_eq!(book.next_due(retry).map(|r| r.ask), Some(mac(2)));
        // A later outage starts its backoff afresh.
        let later = secs(t0, 30.0);
        assert_eq!(
            book.park(&mac(2), later).map(|p| p.retry_at),
            Ok(secs(t0, 30.5))
        );
    }

    #[test]
    fn a_wrong_secureon_password_first_never_makes_the_right_one_a_duplicate() {
        let (mut book, t0) = book();
        let with = |password: &[u8]| Ask {
            credential: Credential::SecureOn(Password::new(password).expect("4 bytes")),
            ..mac(1)
        };
        let (wrong, right) = (with(&[9, 9, 9, 9]), with(&[1, 2, 3, 4]));
        assert_eq!(book.offer(wrong.clone(), source(), t0), Offer::Queued);
        // Same burst: its own request, not a repeat of the wrong one.
        assert_eq!(book.offer(right.clone(), source(), t0), Offer::Queued);
        assert_eq!(book.offer(right.clone(), source(), t0), Offer::Repeat);
        let first = book.next_due(t0).expect("due");
        let second = book.next_due(t0).expect("due");
        assert_eq!((&first.ask, &second.ask), (&wrong, &right));
        // The wrong one is refused, the right one wakes the domain; a later
        // wrong one is asked again (and refused again), a later right one is
        // a duplicate.
        book.settle(&wrong, false, secs(t0, 0.1));
        book.settle(&right, true, secs(t0, 0.1));
        // Once it is up, any packet for the MAC is a duplicate, whatever
        // its password: the domain is up.
        for later in [&right, &wrong, &mac(1)] {
            assert!(matches!(
                book.offer(later.clone(), source(), secs(t0, 2.0)),
                Offer::Duplicate { .. }
            ));
        }
    }

    #[test]
    fn a_flood_of_made_up_passwords_for_one_mac_is_a_few_requests() {
        let (mut book, t0) = book();
        let with = |i: u32| Ask {
            credential: Credential::SecureOn(Password::new(&i.to_be_bytes()).expect("4 bytes")),
            ..mac(1)
        };
        let offers: Vec<Offer> = (0..1000)
            .map(|i| book.offer(with(i), source(), t0))
            .collect();
        let queued = offers.iter().filter(|o| **o == Offer::Queued).count();
        assert_eq!(queued, MAX_CREDENTIALS_PER_TARGET);
        assert_eq!(book.len(), MAX_CREDENTIALS_PER_TARGET);
        // Another MAC is not held up by them.
        assert_eq!(book.offer(mac(2), source(), t0), Offer::Queued);
        // Decided (refused), they make room again.
        for i in 0..MAX_CREDENTIALS_PER_TARGET as u32 {
            book.next_due(t0).expect("due");
            book.settle(&with(i), false, t0);
        }
        assert_eq!(book.offer(with(5000), source(), t0), Offer::Queued);
    }

    fn http(client: u8) -> Source {
        Source::Http(SocketAddr::from(([192, 0, 2, client], 40_000)))
    }

    fn token(target: &str, token: &str) -> Ask {
        Ask {
            target: Target::Domain(target.into()),
            credential: Credential::Token(crate::secret::token_hash(token)),
        }
    }

    #[test]
    fn http_requests_have_room_of_their_own_apart_from_the_packets() {
        let (mut book, t0) = book();
        book.rules.max_pending = 2;
        book.rules.max_http_pending = 3;
        // HTTP requests from many clients fill their own room...
        for i in 0..3 {
            let ask = token(&format!("junk{i}"), "made-up-token-aaaaaaaaaaaa");
            assert_eq!(book.offer(ask, http(i), t0), Offer::Queued);
        }
        let more = token("junk9", "made-up-token-aaaaaaaaaaaa");
        assert_eq!(book.offer(more, http(9), t0), Offer::Dropped);
        // ...and never the packets'.
        assert_eq!(book.offer(mac(1), source(), t0), Offer::Queued);
        assert_eq!(book.offer(mac(2), source(), t0), Offer::Queued);
        assert_eq!(book.offer(mac(3), source(), t0), Offer::Dropped);
        assert_eq!(book.len(), 5);
    }

    #[test]
    fn one_http_client_keeps_at_most_its_share() {
        let (mut book, t0) = book();
        book.rules.max_http_per_client = 2;
        let junk = |i| token(&format!("junk{i}"), "made-up-token-aaaaaaaaaaaa");
        assert_eq!(book.offer(junk(0), http(1), t0), Offer::Queued);
        assert_eq!(book.offer(junk(1), http(1), t0), Offer::Queued);
        assert_eq!(book.offer(junk(2), http(1), t0), Offer::Dropped);
        assert_eq!(book.offer(junk(3), http(2), t0), Offer::Queued);
        // Decided, they make room again.
        let first = book.next_due(t0).expect("due").ask;
        book.settle(&first, false, t0);
        assert_eq!(book.offer(junk(4), http(1), t0), Offer::Queued);
    }

    #[test]
    fn made_up_tokens_take_no_place_of_a_domains_owner() {
        // A flood of made-up tokens for one domain (while a host is away,
        // each waiting): the owner's token is still taken in.
        let (mut book, t0) = book();
        for i in 0..20u8 {
            let ask = token("web01", &format!("made-up-token-{i:02}-aaaaaaaaaa"));
            assert_eq!(book.offer(ask, http(i), t0), Offer::Queued);
        }
        let owner = token("web01", "the-owners-token-aaaaaaaaaaa");
        assert_eq!(book.offer(owner, http(200), t0), Offer::Queued);
    }

    #[test]
    fn few_http_requests_wait_for_libvirt_and_the_rest_are_withdrawn() {
        let (mut book, t0) = book();
        book.rules.max_http_parked = 2;
        let asks: Vec<Ask> = (0..3)
            .map(|i| token(&format!("db{i}"), "a-valid-token-aaaaaaaaaaaaa"))
            .collect();
        for (i, ask) in asks.iter().enumerate() {
            book.offer(ask.clone(), http(i as u8), t0);
            book.next_due(t0).expect("due");
        }
        assert!(book.park(&asks[0], t0).is_ok());
        assert!(book.park(&asks[1], t0).is_ok());
        assert_eq!(book.park(&asks[2], t0), Err(NotParked::Crowded));
        assert_eq!(book.len(), 2, "the third was withdrawn");
        // Packets still wait for libvirt whatever HTTP requests do.
        book.offer(mac(1), source(), t0);
        book.next_due(t0).expect("due");
        assert!(book.park(&mac(1), t0).is_ok());
        assert_eq!(book.parked(), 3);
        // A withdrawn request is not remembered: the next one is due at once.
        assert_eq!(book.offer(asks[2].clone(), http(2), t0), Offer::Queued);
        assert!(book.due(t0).any(|ask| ask == asks[2]));
    }

    #[test]
    fn a_flood_of_distinct_macs_keeps_memory_bounded() {
        let (mut book, t0) = book();
        book.rules.max_recent = 100;
        for i in 0..1_000u32 {
            let m = Ask::from(Mac([0x52, 0x54, 0, 0, (i >> 8) as u8, i as u8]));
            let now = t0 + Duration::from_millis(u64::from(i));
            book.offer(m.clone(), source(), now);
            book.next_due(now);
            book.settle(&m, true, now);
        }
        assert!(book.recent.len() <= 100, "{}", book.recent.len());
        assert!(book.is_empty());
    }
}
