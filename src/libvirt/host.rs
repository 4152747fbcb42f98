//! One libvirt host (one `--libvirt-uri`): its connection, its MAC index,
//! the operator's policy, and the calls that find a MAC's domains and bring
//! one up.
//!
//! `lookup`, `act`, `inventory` and `check_silence` block on libvirt and are
//! meant for worker threads; `route`, `health` and `uri` never wait and are
//! what the loop may ask. A host is shared by all threads (`Arc<Host>`).
//! Several requests run on one host at once, except that two never act on
//! the same domain at the same time. The host keeps its [`Health`]
//! (answering, unreachable, silent) and reports each outage once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use crate::decide::ask::{Ask, Target};
use crate::decide::control::Route;
use crate::decide::outcome::Verb;
use crate::decide::plan::{Candidate, action_for};
use crate::decide::policy::{self, DomainRef, Policy, Refusal};
use crate::libvirt::domain_xml::Agent;
use crate::libvirt::hypervisor::{
    Connector, Heartbeat, Hypervisor, Inspection, Listed, Unreadable,
};
use crate::libvirt::index::file::IndexFile;
use crate::libvirt::index::{Freshness, MacIndex, Refresh, Rescan, Uuid, refresh_for};
use crate::lock;
use crate::model::{Action, DomainState, HvError, HvErrorKind, Mac, StopReason};
use crate::report;
use crate::secret::Hash;

/// Why a host could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Not reachable (cannot connect, or the connection died): the request
    /// waits for it.
    #[error("{0}")]
    Unreachable(HvError),
    /// libvirt answered, but with an error (listing the domains failed).
    #[error("{0}")]
    Failed(HvError),
}

/// What one host knows about a MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Domains with the MAC that the policy permits, with their state.
    pub candidates: Vec<Candidate>,
    /// Domains with the MAC that the policy refuses, and why.
    pub refused: Vec<(String, Refusal)>,
}

impl Lookup {
    /// True if this host has a domain with the MAC that may be woken. A
    /// refused one does not count: another host may have one that is not.
    pub fn has_candidate(&self) -> bool {
        !self.candidates.is_empty()
    }
}

/// What an action came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acted {
    /// `verb` succeeded (or, in a dry run, would be done).
    Done(Verb),
    /// libvirt refused `verb`.
    Failed(Verb, HvError),
    /// Another request brought the domain up while this one waited its turn.
    AlreadyUp(DomainState),
}

/// One domain as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Name, UUID and opt-in.
    pub domain: DomainRef,
    /// Its MACs, or why they are unknown.
    pub macs: Result<Vec<Mac>, Unreadable>,
    /// Its state, if libvirt told.
    pub state: Option<DomainState>,
    /// It has a managed-save image (a start restores it).
    pub managed_save: bool,
    /// The hashes of its HTTP wake tokens.
    pub tokens: Vec<Hash>,
    /// It set a SecureOn password.
    pub secureon: bool,
}

/// Whether a host answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Its last call was answered (or none was made yet).
    Answering,
    /// Connecting failed, or the connection died, since `since`.
    Unreachable {
        /// When it was first found unreachable.
        since: Instant,
    },
    /// A call has gone unanswered for longer than the deadline (a stopped
    /// daemon, a network that drops packets); until it returns, no new call
    /// is sent there.
    Silent {
        /// When it was found silent.
        since: Instant,
    },
}

/// What a host tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEvent {
    /// It answers again after an outage: requests waiting for it are due.
    Back,
    /// A refresh of its index ended: requests that waited for it can be
    /// answered.
    Refreshed,
}

/// Counters for the exit summary and tests.
#[derive(Debug, Default)]
struct Counters {
    listings: AtomicU64,
    full_scans: AtomicU64,
}

/// The index of one host and when it was refreshed.
struct IndexState {
    /// `None` until loaded from the file or built by a scan: until then the
    /// file answers lookups one MAC at a time.
    index: Option<MacIndex>,
    fresh: Freshness,
    /// When the last listing that succeeded was asked for: a domain defined
    /// before then is in the index (see [`Host::check_unknown`]).
    listed_from: Option<Instant>,
    file: Option<IndexFile>,
    /// Domains whose XML could not be read, reported once each.
    reported_unreadable: HashSet<Uuid>,
}

/// Domains being acted on: a second request for the same domain waits its
/// turn, then finds it up.
#[derive(Default)]
struct Turns {
    busy: Mutex<HashSet<Uuid>>,
    freed: Condvar,
}

/// The right to act on one domain; given back on drop.
struct Turn<'a> {
    turns: &'a Turns,
    uuid: Uuid,
}

impl Turns {
    /// Waits until nobody acts on `uuid`; true if it had to wait.
    fn take(&self, uuid: Uuid) -> (Turn<'_>, bool) {
        let mut busy = lock(&self.busy);
        let mut waited = false;
        while busy.contains(&uuid) {
            waited = true;
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        busy.insert(uuid);
        (Turn { turns: self, uuid }, waited)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        lock(&self.turns.busy).remove(&self.uuid);
        self.turns.freed.notify_all();
    }
}

/// The connection an action runs on: one of its own where connections are
/// independent, never the one lookups use. With libvirt 9.0's client (no
/// event loop registered), a call on a connection that also carries a long
/// action can go unanswered until some other call on it wakes the reader:
/// a start held 8 s by a qemu hook left another domain's state read waiting
/// about 5 s in two runs of three, and two actions on one connection waited
/// for each other in about one run of eight. On separate connections, never.
/// Given back on drop (a panic included) and kept as a spare for the next.
struct Lane<'a> {
    host: &'a Host,
    hv: Arc<dyn Hypervisor>,
    main: Arc<dyn Hypervisor>,
}

impl<'a> Lane<'a> {
    fn take(host: &'a Host, main: Arc<dyn Hypervisor>) -> Lane<'a> {
        let own = if host.connector.independent_connections() {
            host.spare_or_new()
        } else {
            None
        };
        Lane {
            host,
            hv: own.unwrap_or_else(|| Arc::clone(&main)),
            main,
        }
    }

    fn is_main(&self) -> bool {
        Arc::ptr_eq(&self.hv, &self.main)
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        if !self.is_main() && self.hv.is_alive() {
            self.host.spares.keep(Arc::clone(&self.hv));
        }
    }
}

/// Idle action connections (see [`Lane`]), and whether one is being opened
/// in the background. An action takes an idle one, or waits for the one
/// being opened rather than opening another: through ssh each connection
/// costs a key exchange (about 0.3 s here), so a cold wake of a remote
/// domain would otherwise pay for three instead of two.
#[derive(Default)]
struct Spares {
    state: Mutex<SpareState>,
    opened: Condvar,
}

#[derive(Default)]
struct SpareState {
    idle: Vec<Arc<dyn Hypervisor>>,
    opening: bool,
}

impl Spares {
    /// Keeps `hv` for a later action (more than [`MAX_SPARE_LANES`] are
    /// closed).
    fn keep(&self, hv: Arc<dyn Hypervisor>) {
        let mut state = lock(&self.state);
        if state.idle.len() < MAX_SPARE_LANES {
            state.idle.push(hv);
        }
    }

    /// An idle connection still alive, waiting for the one being opened if
    /// there is none; `None` when there is none and none coming.
    fn take(&self) -> Option<Arc<dyn Hypervisor>> {
        let mut state = lock(&self.state);
        loop {
            while let Some(hv) = state.idle.pop() {
                if hv.is_alive() {
                    return Some(hv);
                }
            }
            if !state.opening {
                return None;
            }
            state = self
                .opened
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Marks a background opening as started; false (nothing to open) if
    /// one already runs or one is idle.
    fn start_opening(&self) -> bool {
        let mut state = lock(&self.state);
        if state.opening || !state.idle.is_empty() {
            return false;
        }
        state.opening = true;
        true
    }

    /// Ends a background opening with what it opened, if anything.
    fn finish_opening(&self, opened: Option<Arc<dyn Hypervisor>>) {
        let mut state = lock(&self.state);
        state.opening = false;
        if let Some(hv) = opened {
            if state.idle.len() < MAX_SPARE_LANES {
                state.idle.push(hv);
            }
        }
        drop(state);
        self.opened.notify_all();
    }

    /// Closes the idle ones (their daemon went away).
    fn clear(&self) {
        lock(&self.state).idle.clear();
    }
}

/// A background opening under way: ended by [`Opening::done`], or on drop
/// (a panic in the connect, a thread that never ran) with nothing, so an
/// action never waits for an opening that will not end.
struct Opening(Option<Arc<Spares>>);

impl Opening {
    fn done(mut self, opened: Option<Arc<dyn Hypervisor>>) {
        if let Some(spares) = self.0.take() {
            spares.finish_opening(opened);
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(spares) = self.0.take() {
            spares.finish_opening(None);
        }
    }
}

/// A libvirt host.
pub struct Host {
    /// The URI as shown (see [`crate::libvirt::uri::shown`]); the connector has the
    /// full one.
    uri: Arc<str>,
    /// Its place among the `--libvirt-uri`s, set by [`Host::at`].
    position: usize,
    /// The only host: an outage stops every wake (an error), not some (a
    /// warning).
    alone: bool,
    connector: Arc<dyn Connector>,
    policy: Policy,
    rescan: Rescan,
    beat: Heartbeat,
    connection: Mutex<Connection>,
    index: Mutex<IndexState>,
    /// Held while the index is refreshed: concurrent lookups of unknown
    /// MACs wait for one refresh instead of each starting their own.
    refreshing: Mutex<()>,
    turns: Turns,
    /// Actions finished so far: a candidate read before another action
    /// finished has its state read again before it is acted on.
    actions_done: AtomicU64,
    /// Idle connections for actions (see [`Lane`]).
    spares: Arc<Spares>,
    health: Mutex<Health>,
    /// When the running liveness ping started, if one runs.
    ping: Mutex<Option<Instant>>,
    counters: Counters,
    /// The token hashes each domain held when its XML was last read here:
    /// the tokens this host has shown (see [`Host::vouches`]).
    tokens: Mutex<HashMap<Uuid, Vec<Hash>>>,
    /// Told when the host answers again after an outage, and when a
    /// refresh of its index ends (requests may wait for either).
    on_event: OnceLock<Box<dyn Fn(HostEvent) + Send + Sync>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// The open connection, or the last failure to open one.
#[derive(Default)]
struct Connection {
    open: Option<Arc<dyn Hypervisor>>,
    failed: Option<(Instant, HvError)>,
}

/// Idle action connections kept for the next actions (see [`Lane`]); more
/// are closed after use.
const MAX_SPARE_LANES: usize = 3;

/// While a host cannot be reached, connecting is tried at most this often;
/// requests in between get the last error at once (a flood of new MACs
/// must not become a flood of connection attempts).
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// How a connection failed during a lookup.
enum Failure {
    /// Connecting failed: no point in trying again at once.
    Connect(HvError),
    /// The connection died (libvirtd restarted): one fresh try is worth it.
    Died(HvError),
    /// libvirt answered with an error.
    Answered(HvError),
}

impl From<Failure> for HostError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Connect(e) | Failure::Died(e) => HostError::Unreachable(e),
            Failure::Answered(e) => HostError::Failed(e),
        }
    }
}

impl Host {
    /// A host connected through `connector` on first use.
    pub fn new(connector: Box<dyn Connector>, rescan: Rescan) -> Self {
        Host {
            uri: Arc::from(crate::libvirt::uri::shown(connector.uri())),
            position: 0,
            alone: true,
            connector: Arc::from(connector),
            policy: Policy::default(),
            rescan,
            beat: Heartbeat::default(),
            connection: Mutex::new(Connection::default()),
            index: Mutex::new(IndexState {
                index: None,
                fresh: Freshness::default(),
                listed_from: None,
                file: None,
                reported_unreadable: HashSet::new(),
            }),
            refreshing: Mutex::new(()),
            turns: Turns::default(),
            actions_done: AtomicU64::new(0),
            spares: Arc::default(),
            health: Mutex::new(Health::Answering),
            ping: Mutex::new(None),
            counters: Counters::default(),
            tokens: Mutex::new(HashMap::new()),
            on_event: OnceLock::new(),
        }
    }

    /// Places the host at `position` among the fleet's `of` (the fleet
    /// does).
    pub(crate) fn at(mut self, position: usize, of: usize) -> Self {
        self.position = position;
        self.alone = of <= 1;
        self
    }

    /// Restricts which domains may be woken.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps the MAC index in `file` across processes.
    pub fn with_index_file(self, file: IndexFile) -> Self {
        lock(&self.index).file = Some(file);
        self
    }

    /// Calls `tell` with each [`HostEvent`].
    pub fn on_event(&self, tell: impl Fn(HostEvent) + Send + Sync + 'static) {
        let _ = self.on_event.set(Box::new(tell));
    }

    fn tell(&self, event: HostEvent) {
        if let Some(tell) = self.on_event.get() {
            tell(event);
        }
    }

    /// The libvirt URI.
    pub fn uri(&self) -> &Arc<str> {
        &self.uri
    }

    /// Whether it answers.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Domain listings made so far (for an unknown MAC).
    pub fn listings(&self) -> u64 {
        self.counters.listings.load(Ordering::Relaxed)
    }

    /// Full scans (every domain's XML) made so far.
    pub fn full_scans(&self) -> u64 {
        self.counters.full_scans.load(Ordering::Relaxed)
    }

    /// True if some domain held `token` when this host last read its XML.
    /// Never waits on libvirt. It decides only whether a request may wait
    /// for a host that does not answer, never whether a token opens a
    /// domain: that is checked against the domain's current XML.
    pub fn vouches(&self, token: &Hash) -> bool {
        // Every stored hash is compared, in constant time each.
        lock(&self.tokens)
            .values()
            .flatten()
            .fold(false, |found, held| found | held.matches(token))
    }

    /// Remembers the tokens a domain's XML held (read just now).
    fn saw(&self, uuid: Uuid, tokens: &[Hash]) {
        let mut seen = lock(&self.tokens);
        if tokens.is_empty() {
            seen.remove(&uuid);
        } else {
            seen.insert(uuid, tokens.to_vec());
        }
    }

    /// Where a request for `mac` should go, known without asking libvirt
    /// and without waiting (a busy index counts as "ask a worker"):
    /// [`Route::Lacks`] when the host answers, its index is loaded and does
    /// not know the MAC, and the rules allow no refresh yet (a worker would
    /// answer "no domain" from memory too); [`Route::AfterRefresh`] when a
    /// refresh that may find it is under way. This lets the loop answer a
    /// flood of unknown MACs without a thread each, and keeps them from
    /// holding every worker while a listing waits (libvirtd answers no
    /// listing while a domain is starting).
    pub fn route(&self, mac: Mac, now: Instant, wall: SystemTime) -> Route {
        if *lock(&self.health) != Health::Answering {
            return Route::Worker;
        }
        let Ok(state) = self.index.try_lock() else {
            return Route::Worker;
        };
        let Some(index) = state.index.as_ref() else {
            return Route::Worker;
        };
        if !index.owners(mac).is_empty() {
            return Route::Worker;
        }
        if refresh_for(&state.fresh, false, &self.rescan, now, wall) == Refresh::Nothing {
            return Route::Lacks;
        }
        match self.refreshing.try_lock() {
            Ok(_) => Route::Refresh,
            Err(_) => Route::AfterRefresh,
        }
    }

    /// Records that libvirt answered; reports the end of an outage.
    fn answered(&self) {
        self.beat.beat();
        *lock(&self.ping) = None;
        let was = std::mem::replace(&mut *lock(&self.health), Health::Answering);
        let since = match was {
            Health::Answering => return,
            Health::Unreachable { since } | Health::Silent { since } => since,
        };
        report::host_back(&self.uri, since.elapsed());
        self.tell(HostEvent::Back);
    }

    /// Records that libvirt cannot be reached; reports it once per outage.
    fn unreachable(&self, error: &HvError) {
        let mut health = lock(&self.health);
        match *health {
            Health::Answering => {
                *health = Health::Unreachable {
                    since: Instant::now(),
                };
                drop(health);
                report::host_unreachable(&self.uri, error, self.alone);
            }
            // A silent host whose stuck call failed: still out, said once.
            Health::Silent { since } => *health = Health::Unreachable { since },
            Health::Unreachable { .. } => {}
        }
    }

    /// Looks at a call that has waited since `since`: when libvirt has
    /// answered nothing on this host for `deadline`, a ping on the
    /// connection tells a busy daemon (a start in a slow qemu hook holds up
    /// every listing for its duration, but a ping is answered) from a
    /// silent one. Returns when to look again, or `None` when the host is
    /// silent: nothing answered, not even the ping within `grace`. Reports
    /// the silence once.
    pub fn check_silence(
        self: &Arc<Self>,
        since: Instant,
        now: Instant,
        deadline: Duration,
        grace: Duration,
    ) -> Option<Instant> {
        let last = self.beat.last().map_or(since, |at| at.max(since));
        if now < last + deadline {
            return Some(last + deadline);
        }
        if let Health::Silent { .. } = *lock(&self.health) {
            return None;
        }
        let mut ping = lock(&self.ping);
        let started = match *ping {
            Some(started) => started,
            None => {
                // No connection (or one being made: its lock is held while
                // connecting): the unanswered call is the connect itself,
                // and the grace runs without a ping.
                let open = match self.connection.try_lock() {
                    Ok(slot) => slot.open.clone(),
                    Err(_) => None,
                };
                if let Some(hv) = open {
                    let host = Arc::clone(self);
                    let _ = std::thread::Builder::new()
                        .name("wol-ping".into())
                        .spawn(move || {
                            if hv.ping().is_ok() {
                                host.answered();
                            }
                            *lock(&host.ping) = None;
                        });
                }
                *ping = Some(now);
                now
            }
        };
        if now < started + grace {
            return Some(started + grace);
        }
        drop(ping);
        let mut health = lock(&self.health);
        match *health {
            Health::Answering => {
                *health = Health::Silent { since: now };
                drop(health);
                report::host_silent(&self.uri, deadline, self.alone);
            }
            // Out already (its connect failed, now one hangs): said once.
            Health::Unreachable { since } => *health = Health::Silent { since },
            Health::Silent { .. } => {}
        }
        None
    }

    /// The open connection, or a new one. Connecting blocks while a daemon
    /// is stopped: the caller's deadline sees that as silence.
    fn connection(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
        let mut slot = lock(&self.connection);
        if let Some(hv) = &slot.open {
            return Ok(Arc::clone(hv));
        }
        if let Some((at, error)) = &slot.failed {
            if at.elapsed() < RECONNECT_INTERVAL {
                return Err(error.clone());
            }
        }
        // The action connection is opened beside this one, not after it:
        // through ssh each takes a whole login (~0.3 s here), and a cold
        // wake needs both. Not while the host is out: each retry would be
        // two failing logins (twice as fast into fail2ban or sshd's
        // penalties), or two connects hanging on a silent network.
        let healthy = slot.failed.is_none();
        if healthy {
            self.prepare_lane();
        }
        match self.connector.connect() {
            Ok(hv) => {
                self.beat.beat();
                if !healthy {
                    self.prepare_lane();
                }
                *slot = Connection {
                    open: Some(Arc::clone(&hv)),
                    failed: None,
                };
                Ok(hv)
            }
            Err(error) => {
                slot.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Opens an action connection (see [`Lane`]) in the background while
    /// the main connection is made and the first lookup runs on it: a cold
    /// wake then finds it ready instead of connecting between lookup and
    /// start. At most one at a time, and none while one is idle.
    fn prepare_lane(&self) {
        if !self.connector.independent_connections() || !self.spares.start_opening() {
            return;
        }
        let (connector, opening) = (
            Arc::clone(&self.connector),
            Opening(Some(Arc::clone(&self.spares))),
        );
        // Without the thread (the closure and its Opening dropped), the
        // first action connects itself.
        let _ = std::thread::Builder::new()
            .name("wol-lane".into())
            .spawn(move || opening.done(connector.connect().ok()));
    }

    /// Forgets a dead connection (if it is still the current one), and the
    /// spare action connections, which went to the same daemon. The index
    /// stays: it is only a hint, confirmed before every use.
    fn drop_connection(&self, dead: &Arc<dyn Hypervisor>) {
        let mut slot = lock(&self.connection);
        if slot.open.as_ref().is_some_and(|hv| Arc::ptr_eq(hv, dead)) {
            slot.open = None;
            self.spares.clear();
        }
    }

    /// Sorts a failed call: libvirt's own error, or a dead connection
    /// (forgotten, if it was the host's connection).
    fn failure(&self, hv: &Arc<dyn Hypervisor>, error: HvError) -> Failure {
        if hv.is_alive() {
            self.beat.beat();
            Failure::Answered(error)
        } else {
            self.drop_connection(hv);
            Failure::Died(error)
        }
    }

    /// The domains on this host that own `mac`, with their current state,
    /// and those the policy refuses.
    ///
    /// A connection that died since the last request (libvirtd restarted)
    /// gets one immediate reconnect before the host counts as unreachable.
    pub fn lookup(&self, ask: &Ask) -> Result<Lookup, HostError> {
        let result = match self.lookup_once(ask) {
            Err(Failure::Died(e)) => {
                debug!("connection to {} lost ({e}); reconnecting", self.uri);
                self.lookup_once(ask)
            }
            other => other,
        };
        let result = result.map_err(HostError::from);
        self.note(&result);
        result
    }

    /// Records what a call's outcome says about the host's health.
    fn note<T>(&self, result: &Result<T, HostError>) {
        match result {
            Err(HostError::Unreachable(e)) => self.unreachable(e),
            _ => self.answered(),
        }
    }

    fn lookup_once(&self, ask: &Ask) -> Result<Lookup, Failure> {
        let hv = self.connection().map_err(Failure::Connect)?;
        let epoch = self.actions_done.load(Ordering::SeqCst);
        let owners = match &ask.target {
            Target::Mac(mac) => self.owners(&hv, *mac),
            Target::Domain(name) => self.named(&hv, name),
        }
        .map_err(|e| self.failure(&hv, e))?;
        let mut lookup = Lookup::default();
        for owner in owners {
            let domain = DomainRef {
                name: owner.record.name,
                uuid: owner.record.uuid,
                wake_opt_in: owner.record.meta.opt_in,
            };
            // A domain by name is allowed by any of its MACs.
            let macs = match (ask.mac(), &owner.record.macs) {
                (Some(mac), _) => vec![mac],
                (None, Ok(macs)) => macs.clone(),
                (None, Err(_)) => Vec::new(),
            };
            // The credential first: a request that proves nothing must not
            // learn which domains the operator's policy refuses (a refusal
            // would tell that the domain exists).
            let allowed = policy::check_credential(&owner.record.meta, &ask.credential)
                .and_then(|()| self.policy.check(&domain, &macs));
            if let Err(reason) = allowed {
                lookup.refused.push((domain.name, reason));
                continue;
            }
            lookup.candidates.push(Candidate {
                name: domain.name,
                uuid: domain.uuid,
                state: owner.state,
                managed_save: owner.managed_save,
                host: self.position,
                epoch,
            });
        }
        Ok(lookup)
    }

    /// The domains whose current XML has `mac`. The index names the
    /// candidates; each is confirmed by reading its XML. When the index
    /// does not know the MAC, or was wrong about it, it is refreshed as
    /// [`refresh_for`] allows, and asked again.
    fn owners(&self, hv: &Arc<dyn Hypervisor>, mac: Mac) -> Result<Vec<Inspection>, HvError> {
        let since = Instant::now();
        let hint = self.hint(mac);
        let mut stale = false;
        if !hint.is_empty() {
            let (mut confirmed, all) = self.confirm(hv.as_ref(), mac, &hint)?;
            if all {
                // Every owner the index names still has the MAC, but a
                // domain it never read may have it too (a clone defined
                // since): before one is brought up, make sure.
                if !would_act(&confirmed) {
                    return Ok(confirmed);
                }
                self.check_unknown(hv.as_ref(), since)?;
                let new: Vec<Uuid> = (self.hint(mac).into_iter())
                    .filter(|uuid| !hint.contains(uuid))
                    .collect();
                if !new.is_empty() {
                    confirmed.extend(self.confirm(hv.as_ref(), mac, &new)?.0);
                }
                return Ok(confirmed);
            }
            stale = true;
        }
        let refreshed = {
            let _one_refresh_at_a_time = lock(&self.refreshing);
            self.refresh(hv.as_ref(), stale)
        };
        if !matches!(refreshed, Ok(false)) {
            self.tell(HostEvent::Refreshed);
        }
        refreshed?;
        let hint = self.hint(mac);
        Ok(self.confirm(hv.as_ref(), mac, &hint)?.0)
    }

    /// Makes sure the index knows every domain defined before `since`: one
    /// listing, reading only the XML of domains it has not read. The index
    /// counts as complete, as it does for a MAC it lacks, for
    /// `--rescan-interval` after a listing was asked for, and for whoever
    /// came before a listing under way (requests acting at once share one):
    /// besides saving calls, that keeps a wake from waiting behind another
    /// domain's slow start, which holds up every listing. A failed listing
    /// is the caller's error: nothing is brought up on a guess.
    fn check_unknown(&self, hv: &dyn Hypervisor, since: Instant) -> Result<(), HvError> {
        let _one_refresh_at_a_time = lock(&self.refreshing);
        let recent = lock(&self.index).listed_from.is_some_and(|from| {
            from >= since || since.saturating_duration_since(from) < self.rescan.interval
        });
        if recent {
            return Ok(());
        }
        let listed = self.reread(hv, false);
        self.tell(HostEvent::Refreshed);
        listed
    }

    /// The domain named `name`, read for a wake (none if there is none).
    fn named(&self, hv: &Arc<dyn Hypervisor>, name: &str) -> Result<Vec<Inspection>, HvError> {
        let Some(uuid) = hv.find(name)? else {
            return Ok(Vec::new());
        };
        self.beat.beat();
        match hv.inspect(uuid) {
            Ok(inspection) if inspection.record.name == name => {
                self.saw(uuid, &inspection.record.meta.tokens);
                Ok(vec![inspection])
            }
            // Renamed or undefined since: as if not found.
            Ok(_) => Ok(Vec::new()),
            Err(e) if e.kind == HvErrorKind::NoDomain => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// What the index (or, before it is loaded, the index file) says owns
    /// `mac`.
    fn hint(&self, mac: Mac) -> Vec<Uuid> {
        let mut state = lock(&self.index);
        if let Some(index) = &state.index {
            return index.owners(mac);
        }
        let Some(file) = &state.file else {
            return Vec::new();
        };
        match file.lookup(mac) {
            Ok(owners) => owners.unwrap_or_default(),
            Err(reason) => {
                report::index_file_ignored(file.path(), &reason);
                // Not asked again; the next refresh rewrites it.
                state.index = Some(MacIndex::default());
                Vec::new()
            }
        }
    }

    /// Reads each hinted domain's current XML (with its state and image:
    /// see [`Hypervisor::inspect`]). Returns those that have `mac`, and
    /// whether all of them did (else the hint was stale). What the XML says
    /// goes into the index.
    fn confirm(
        &self,
        hv: &dyn Hypervisor,
        mac: Mac,
        hint: &[Uuid],
    ) -> Result<(Vec<Inspection>, bool), HvError> {
        let mut confirmed = Vec::with_capacity(hint.len());
        let mut all = true;
        for uuid in hint {
            match hv.inspect(*uuid) {
                Ok(inspection) => {
                    self.beat.beat();
                    self.saw(*uuid, &inspection.record.meta.tokens);
                    let macs = &inspection.record.macs;
                    let has = macs.as_ref().is_ok_and(|m| m.contains(&mac));
                    if let Ok(macs) = macs {
                        self.correct(|index| index.update(*uuid, macs));
                    }
                    if has {
                        confirmed.push(inspection);
                    } else {
                        debug!(mac = %mac, "index entry for {mac} is stale (domain {uuid} changed)");
                        all = false;
                    }
                }
                Err(e) if e.kind == HvErrorKind::NoDomain => {
                    self.beat.beat();
                    self.correct(|index| index.forget(&HashSet::from([*uuid])));
                    all = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((confirmed, all))
    }

    /// Applies what a domain's current XML showed to the loaded index, and
    /// writes the index file if that changed it (the next process must not
    /// trip over the same stale entry).
    fn correct(&self, change: impl FnOnce(&mut MacIndex) -> bool) {
        let mut state = lock(&self.index);
        if state.index.as_mut().is_some_and(change) {
            self.store_file(&mut state);
        }
    }

    /// Refreshes the index if the rules allow it now; true if it tried.
    fn refresh(&self, hv: &dyn Hypervisor, stale: bool) -> Result<bool, HvError> {
        let decision = {
            let mut state = lock(&self.index);
            self.load_file(&mut state);
            refresh_for(
                &state.fresh,
                stale,
                &self.rescan,
                Instant::now(),
                SystemTime::now(),
            )
        };
        match decision {
            Refresh::Nothing => Ok(false),
            Refresh::Listing | Refresh::Full => {
                self.reread(hv, decision == Refresh::Full).map(|()| true)
            }
        }
    }

    /// Lists the domains and reads the XML of those the index has not read
    /// (of every one with `full`), forgetting those that are gone.
    fn reread(&self, hv: &dyn Hypervisor, full: bool) -> Result<(), HvError> {
        let started = Instant::now();
        // The index file, if not loaded yet, is read while libvirtd answers
        // the listing (each ~6 ms and ~20 ms at 10,000 domains).
        let unloaded = lock(&self.index).index.is_none();
        let listed = std::thread::scope(|scope| {
            let load = || self.load_file(&mut lock(&self.index));
            let loading = unloaded.then(|| {
                std::thread::Builder::new()
                    .name("wol-load".into())
                    .spawn_scoped(scope, load)
            });
            if let Some(Err(_)) = loading {
                load();
            }
            hv.list()
        });
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                // A failed listing counts as one: unknown MACs must not
                // turn a failing daemon into a stream of calls.
                lock(&self.index).fresh.listed_at = Some(Instant::now());
                return Err(e);
            }
        };
        self.beat.beat();
        let listed_count = listed.len();
        // A full scan reads the whole listing; a listing only the domains
        // the index has not read, and keeps the UUIDs to forget the rest.
        let (to_read, present): (Vec<Listed>, HashSet<Uuid>) = if full {
            (listed, HashSet::new())
        } else {
            let present = listed.iter().map(|l| l.uuid).collect();
            let state = lock(&self.index);
            let index = state.index.as_ref();
            let new = listed
                .into_iter()
                .filter(|l| !index.is_some_and(|i| i.knows(l.uuid)))
                .collect();
            (new, present)
        };
        let beat = self.beat.clone();
        let records = hv.records(&to_read, &move || beat.beat());
        if !to_read.is_empty() && !hv.is_alive() {
            return Err(HvError::other(
                "the connection was lost while reading domains",
            ));
        }
        let now = Instant::now();
        let mut state = lock(&self.index);
        let mut readable = Vec::with_capacity(records.len());
        for record in records {
            let uuid = record.uuid;
            self.saw(uuid, &record.meta.tokens);
            match record.macs {
                Ok(macs) => {
                    state.reported_unreadable.remove(&uuid);
                    readable.push((uuid, macs));
                }
                // Left out of the index, so the next listing tries again;
                // said once, not at every listing.
                Err(reason) => {
                    if state.reported_unreadable.insert(uuid) {
                        report::domain_skipped(&record.name, &reason);
                    }
                }
            }
        }
        // A full scan is always written: the file remembers when it ran.
        let (changed, count) = if full {
            state.index = Some(MacIndex::from_domains(readable));
            state.fresh.scanned_at = Some(now);
            state.fresh.scanned_wall = Some(SystemTime::now());
            self.counters.full_scans.fetch_add(1, Ordering::Relaxed);
            (true, listed_count)
        } else {
            let index = state.index.get_or_insert_with(MacIndex::default);
            let gone: HashSet<Uuid> = index.domains().filter(|u| !present.contains(u)).collect();
            let forgot = index.forget(&gone);
            let added = !readable.is_empty();
            index.add(readable);
            self.counters.listings.fetch_add(1, Ordering::Relaxed);
            (forgot || added, to_read.len())
        };
        state.fresh.listed_at = Some(now);
        state.listed_from = Some(started);
        debug!(
            "{} {} on {}: read {count} domain(s) in {:.1} ms",
            if full { "scanned" } else { "listed" },
            listed_count,
            self.uri,
            started.elapsed().as_secs_f64() * 1e3,
        );
        if changed {
            self.store_file(&mut state);
        }
        Ok(())
    }

    /// Loads the index file into memory, once, before the first refresh.
    fn load_file(&self, state: &mut IndexState) {
        if state.index.is_some() {
            return;
        }
        let Some(file) = &state.file else {
            state.index = Some(MacIndex::default());
            return;
        };
        match file.load() {
            Ok(Some((index, scanned))) => {
                state.index = Some(index);
                state.fresh.scanned_wall = scanned;
            }
            Ok(None) => state.index = Some(MacIndex::default()),
            Err(reason) => {
                report::index_file_ignored(file.path(), &reason);
                state.index = Some(MacIndex::default());
            }
        }
    }

    fn store_file(&self, state: &mut IndexState) {
        let (Some(file), Some(index)) = (&state.file, &state.index) else {
            return;
        };
        if let Err(e) = file.store(index, state.fresh.scanned_wall) {
            report::index_file_unwritable(file.path(), &e);
            state.file = None;
        }
    }

    /// A connection of its own for an action: a spare one still alive (or
    /// the one being opened), or a new one; `None` (use the main one) if
    /// none can be had.
    fn spare_or_new(&self) -> Option<Arc<dyn Hypervisor>> {
        self.spares.take().or_else(|| self.connector.connect().ok())
    }

    /// Performs `action` on `domain` (with `dry_run`, only says what it
    /// would do). Waits while another request acts on the same domain,
    /// then looks at its state again.
    pub fn act(
        &self,
        domain: &Candidate,
        action: Action,
        dry_run: bool,
    ) -> Result<Acted, HostError> {
        let result = self.act_once(domain, action, dry_run);
        self.note(&result);
        result
    }

    fn act_once(
        &self,
        domain: &Candidate,
        action: Action,
        dry_run: bool,
    ) -> Result<Acted, HostError> {
        let main = self.connection().map_err(HostError::Unreachable)?;
        let lane = Lane::take(self, main);
        self.act_on(&lane.hv, domain, action, dry_run)
    }

    fn act_on(
        &self,
        hv: &Arc<dyn Hypervisor>,
        domain: &Candidate,
        mut action: Action,
        dry_run: bool,
    ) -> Result<Acted, HostError> {
        let uuid = domain.uuid;
        let sort = |e| HostError::from(self.failure(hv, e));
        let (_turn, waited) = self.turns.take(domain.uuid);
        let mut managed_save = domain.managed_save;
        // Another request may have acted on it since its state was read
        // (two MACs of one domain, a second host's grace): look again.
        let acted_since = self.actions_done.load(Ordering::SeqCst) != domain.epoch;
        if waited || acted_since {
            let state = hv.state(uuid).map_err(sort)?;
            match action_for(state) {
                Some(now) => action = now,
                None => return Ok(Acted::AlreadyUp(state)),
            }
            managed_save = hv.has_managed_save(uuid).unwrap_or(false);
        }
        // Only a start can restore an image.
        let verb = Verb::of(action, managed_save);
        if dry_run {
            return Ok(Acted::Done(verb));
        }
        let result = hv.perform(uuid, action);
        self.actions_done.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(()) => Ok(Acted::Done(verb)),
            Err(e) => match sort(e) {
                HostError::Failed(e) => Ok(Acted::Failed(verb, e)),
                unreachable => Err(unreachable),
            },
        }
    }

    /// The current state of the domain named `name` and why it stopped, if
    /// it did (`None`: no such domain): for an HTTP caller waiting for it to
    /// come up, and the check after a start.
    pub fn state_of(
        &self,
        name: &str,
    ) -> Result<Option<(DomainState, Option<StopReason>)>, HostError> {
        self.by_name(name, |hv, uuid| hv.state_reason(uuid).map(Some))
    }

    /// The QEMU guest agent channel of the domain named `name`, as its
    /// current XML shows it (`None`: no such domain, or no channel).
    pub fn agent_of(&self, name: &str) -> Result<Option<Agent>, HostError> {
        self.by_name(name, |hv, uuid| hv.domain(uuid).map(|record| record.agent))
    }

    /// `read` of the domain named `name`; `None` when there is none (or it
    /// vanished between the lookup and the read).
    fn by_name<T>(
        &self,
        name: &str,
        read: impl FnOnce(&dyn Hypervisor, Uuid) -> Result<Option<T>, HvError>,
    ) -> Result<Option<T>, HostError> {
        let hv = self.connection().map_err(HostError::Unreachable)?;
        let sort = |e| HostError::from(self.failure(&hv, e));
        let Some(uuid) = hv.find(name).map_err(sort)? else {
            return Ok(None);
        };
        match read(hv.as_ref(), uuid) {
            Err(e) if e.kind == HvErrorKind::NoDomain => Ok(None),
            found => found.map_err(sort),
        }
    }

    /// Every domain of this host with its MACs, state and managed-save
    /// image, for `list`.
    pub fn inventory(&self) -> Result<Vec<DomainInfo>, HostError> {
        let hv = self.connection().map_err(HostError::Unreachable)?;
        let listed = hv.list().map_err(HostError::Failed)?;
        let records = hv.records(&listed, &|| {});
        Ok(records
            .into_iter()
            .map(|record| {
                let state = hv.state(record.uuid).ok();
                let managed_save = state == Some(DomainState::ShutOff)
                    && hv.has_managed_save(record.uuid).unwrap_or(false);
                let secureon = record.meta.secureon.is_some();
                self.saw(record.uuid, &record.meta.tokens);
                let tokens = record.meta.tokens;
                DomainInfo {
                    domain: DomainRef {
                        name: record.name,
                        uuid: record.uuid,
                        wake_opt_in: record.meta.opt_in,
                    },
                    macs: record.macs,
                    state,
                    managed_save,
                    tokens,
                    secureon,
                }
            })
            .collect())
    }
}

/// True if these owners of a MAC (on one host) could have one of them
/// brought up: a single one that is not up. (Several are ambiguous, or one
/// of them is up: nothing is started either way, and a domain more changes
/// neither.)
fn would_act(owners: &[Inspection]) -> bool {
    matches!(owners, [one] if action_for(one.state).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::hypervisor::DomainRecord;

    /// A connection that is alive and answers nothing else: what the spares
    /// hold is all these tests look at.
    struct Idle;

    impl Hypervisor for Idle {
        fn list(&self) -> Result<Vec<Listed>, HvError> {
            Err(HvError::other("unused"))
        }
        fn records(&self, _: &[Listed], _: &(dyn Fn() + Sync)) -> Vec<DomainRecord> {
            Vec::new()
        }
        fn domain(&self, _: Uuid) -> Result<DomainRecord, HvError> {
            Err(HvError::other("unused"))
        }
        fn state(&self, _: Uuid) -> Result<DomainState, HvError> {
            Err(HvError::other("unused"))
        }
        fn has_managed_save(&self, _: Uuid) -> Result<bool, HvError> {
            Err(HvError::other("unused"))
        }
        fn perform(&self, _: Uuid, _: Action) -> Result<(), HvError> {
            Err(HvError::other("unused"))
        }
        fn ping(&self) -> Result<(), HvError> {
            Ok(())
        }
        fn is_alive(&self) -> bool {
            true
        }
    }

    #[test]
    fn an_action_waits_for_the_connection_being_opened_instead_of_opening_another() {
        let spares = Arc::new(Spares::default());
        assert!(spares.take().is_none(), "none idle, none coming");
        assert!(spares.start_opening());
        assert!(!spares.start_opening(), "one opening at a time");
        let taker = {
            let spares = Arc::clone(&spares);
            std::thread::spawn(move || spares.take())
        };
        let opened: Arc<dyn Hypervisor> = Arc::new(Idle);
        spares.finish_opening(Some(Arc::clone(&opened)));
        let taken = taker.join().expect("taker").expect("the opened connection");
        assert!(Arc::ptr_eq(&taken, &opened));
        assert!(spares.take().is_none(), "taken once");

        // A failed opening wakes the waiter with nothing.
        assert!(spares.start_opening());
        let taker = {
            let spares = Arc::clone(&spares);
            std::thread::spawn(move || spares.take())
        };
        spares.finish_opening(None);
        assert!(taker.join().expect("taker").is_none());
    }

    #[test]
    fn an_opening_that_never_ends_normally_still_wakes_the_waiter() {
        // A connect that panicked, or a thread that could not start: the
        // Opening is dropped without done().
        let spares = Arc::new(Spares::default());
        assert!(spares.start_opening());
        let opening = Opening(Some(Arc::clone(&spares)));
        let taker = {
            let spares = Arc::clone(&spares);
            std::thread::spawn(move || spares.take())
        };
        drop(opening);
        assert!(taker.join().expect("taker").is_none());
        assert!(spares.start_opening(), "no opening left marked");
    }

    #[test]
    fn at_most_three_idle_connections_are_kept() {
        let spares = Spares::default();
        for _ in 0..5 {
            spares.keep(Arc::new(Idle));
        }
        let kept = std::iter::from_fn(|| spares.take()).count();
        assert_eq!(kept, MAX_SPARE_LANES);
    }
}
