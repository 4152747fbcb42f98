//! One libvirt host (one `--libvirt-uri`): the calls that find a MAC's
//! domains and bring one up, composed from parts that hold one concern
//! each: its connections (`pool`), whether it answers (`health`, pure
//! transitions applied here, where the reports and the ping thread are),
//! one action per domain (`turns`), its MAC index
//! (`index::cache`), and the operator's policy.
//!
//! `lookup`, `act`, `inventory` and `check_silence` block on libvirt and are
//! meant for worker threads; `route`, `health` and `uri` never wait and are
//! what the loop may ask. A host is shared by all threads (`Arc<Host>`).
//! Several requests run on one host at once, except that two never act on
//! the same domain at the same time. The host keeps its [`Health`]
//! (answering, unreachable, silent) and reports each outage once.

pub mod health;
mod pool;
mod turns;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use crate::decide::ask::{Ask, Target};
use crate::decide::control::Route;
use crate::decide::idle::{IdlePolicy, Sleep};
use crate::decide::outcome::Verb;
use crate::decide::plan::{Candidate, action_for};
use crate::decide::policy::{self, DomainRef, Policy, Refusal};
use crate::decide::sleep;
use crate::libvirt::domain_xml::Agent;
use crate::libvirt::hypervisor::{Connector, Heartbeat, Hypervisor, Inspection, Unreadable};
use crate::libvirt::index::Rescan;
use crate::libvirt::index::cache::{Cache, Checked, Peek};
use crate::libvirt::index::file::IndexFile;
use crate::lock::lock;
use crate::model::{Action, DomainState, HvError, HvErrorKind, Mac, StopReason, Uuid};
use crate::report;
use crate::secret::Hash;
use health::{Health, Watch};
use pool::Pool;
use turns::Turns;

/// Why a host could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
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
pub(crate) struct Lookup {
    /// Domains with the MAC that the policy permits, with their state.
    pub(crate) candidates: Vec<Candidate>,
    /// Domains with the MAC that the policy refuses, and why.
    pub(crate) refused: Vec<(String, Refusal)>,
}

impl Lookup {
    /// True if this host has a domain with the MAC that may be woken. A
    /// refused one does not count: another host may have one that is not.
    pub(crate) fn has_candidate(&self) -> bool {
        !self.candidates.is_empty()
    }
}

/// What an action came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acted {
    /// `verb` succeeded (or, in a dry run, would be done).
    Done(Verb),
    /// libvirt refused `verb`.
    Failed(Verb, HvError),
    /// Another request brought the domain up while this one waited its turn.
    AlreadyUp(DomainState),
}

/// What a sleep request came to on the host (see [`Host::sleep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Put {
    /// Done (or, in a dry run, would be), from this state.
    Done(Sleep, DomainState),
    /// libvirt refused, from this state.
    Failed(Sleep, DomainState, HvError),
    /// Not up (any more): nothing to do.
    AlreadyDown(DomainState),
    /// The token may only wake it.
    Forbidden,
}

/// One domain as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainInfo {
    /// Name, UUID and opt-in.
    pub(crate) domain: DomainRef,
    /// Its MACs (its interfaces', then its extra ones), or why they are
    /// unknown.
    pub(crate) macs: Result<Vec<Mac>, Unreadable>,
    /// Those of `macs` that only its metadata gives (`mac add`).
    pub(crate) extra: Vec<Mac>,
    /// Its state, if libvirt told.
    pub(crate) state: Option<DomainState>,
    /// It has a managed-save image (a start restores it).
    pub(crate) managed_save: bool,
    /// The hashes of its HTTP wake tokens.
    pub(crate) tokens: Vec<Hash>,
    /// It set a SecureOn password.
    pub(crate) secureon: bool,
    /// Its idle policy.
    pub(crate) idle: Option<IdlePolicy>,
}

/// What a host tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostEvent {
    /// It answers again after an outage: requests waiting for it are due.
    Back,
    /// A refresh of its index ended: requests that waited for it can be
    /// answered.
    Refreshed,
}

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
    policy: Policy,
    /// When libvirt last answered anything on this host (any connection).
    beat: Heartbeat,
    pool: Pool,
    index: Cache,
    turns: Turns,
    /// Actions finished so far: a candidate read before another action
    /// finished has its state read again before it is acted on.
    actions_done: AtomicU64,
    /// Domains being put to sleep on request right now, and how.
    sleeping: Mutex<HashMap<Uuid, Sleep>>,
    watch: Mutex<Watch>,
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

impl Host {
    /// A host connected through `connector` on first use.
    pub fn new(connector: Box<dyn Connector>, rescan: Rescan) -> Self {
        let uri: Arc<str> = Arc::from(crate::libvirt::uri::shown(connector.uri()));
        let beat = Heartbeat::default();
        Host {
            position: 0,
            alone: true,
            policy: Policy::default(),
            pool: Pool::new(Arc::from(connector), beat.clone()),
            index: Cache::new(Arc::clone(&uri), rescan, beat.clone()),
            uri,
            beat,
            turns: Turns::default(),
            actions_done: AtomicU64::new(0),
            sleeping: Mutex::new(HashMap::new()),
            watch: Mutex::new(Watch::default()),
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
        self.index.set_file(file);
        self
    }

    /// Calls `tell` with each [`HostEvent`].
    pub(crate) fn on_event(&self, tell: impl Fn(HostEvent) + Send + Sync + 'static) {
        let _ = self.on_event.set(Box::new(tell));
    }

    fn tell(&self, event: HostEvent) {
        if let Some(tell) = self.on_event.get() {
            tell(event);
        }
    }

    /// The libvirt URI.
    pub(crate) fn uri(&self) -> &Arc<str> {
        &self.uri
    }

    /// Whether it answers.
    pub fn health(&self) -> Health {
        lock(&self.watch).health().clone()
    }

    /// Domain listings made so far (for an unknown MAC).
    pub fn listings(&self) -> u64 {
        self.index.listings()
    }

    /// Full scans (every domain's XML) made so far.
    pub fn full_scans(&self) -> u64 {
        self.index.full_scans()
    }

    /// True if some domain held `token` when this host last read its XML.
    /// Never waits on libvirt. It decides only whether a request may wait
    /// for a host that does not answer, never whether a token opens a
    /// domain: that is checked against the domain's current XML.
    pub(crate) fn vouches(&self, token: &Hash) -> bool {
        self.index.vouches(token)
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
    pub(crate) fn route(&self, mac: Mac, now: Instant, wall: SystemTime) -> Route {
        if *lock(&self.watch).health() != Health::Answering {
            return Route::Worker;
        }
        match self.index.peek(mac, now, wall) {
            Peek::Ask => Route::Worker,
            Peek::Busy => Route::Busy,
            Peek::Refresh => Route::Refresh,
            Peek::Lacks => Route::Lacks,
            Peek::AfterRefresh => Route::AfterRefresh,
        }
    }

    /// Records that libvirt answered; reports the end of an outage.
    fn answered(&self) {
        self.beat.beat();
        let back = lock(&self.watch).answered(Instant::now());
        if let Some(out_for) = back {
            report::host_back(&self.uri, out_for);
            self.tell(HostEvent::Back);
        }
    }

    /// Records that libvirt cannot be reached; reports it once per outage.
    fn unreachable(&self, error: &HvError) {
        let news = lock(&self.watch).failed(Instant::now());
        if news {
            report::host_unreachable(&self.uri, error, self.alone);
        }
    }

    /// Looks at a call that has waited since `since`: when libvirt has
    /// answered nothing on this host for `deadline`, a ping on the
    /// connection tells a busy daemon (a start in a slow qemu hook holds up
    /// every listing for its duration, but a ping is answered) from a
    /// silent one. Returns when to look again, or `None` when the host is
    /// silent: nothing answered, not even the ping within `grace`. Reports
    /// the silence once. (The rules are `Watch::silent`'s; this is their
    /// edge: the ping thread and the report.)
    pub(crate) fn check_silence(
        self: &Arc<Self>,
        since: Instant,
        now: Instant,
        deadline: Duration,
        grace: Duration,
    ) -> Option<Instant> {
        let look = lock(&self.watch).silent(self.beat.last(), since, now, deadline, grace);
        if look.ping {
            self.ping();
        }
        if look.news {
            report::host_silent(&self.uri, deadline, self.alone);
        }
        look.again
    }

    /// Pings on the open connection in the background. With no connection
    /// (or one being made: its lock is held while connecting), the
    /// unanswered call is the connect itself, and the grace runs without a
    /// ping.
    fn ping(self: &Arc<Self>) {
        let Some(hv) = self.pool.open_now() else {
            return;
        };
        let host = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("wol-ping".into())
            .spawn(move || {
                if hv.ping().is_ok() {
                    host.answered();
                }
                lock(&host.watch).ping_ended();
            });
    }

    /// Sorts a failed call: libvirt's own error, or a dead connection
    /// (forgotten, if it was the host's connection). The index stays: it
    /// is only a hint, confirmed before every use.
    fn failure(&self, hv: &Arc<dyn Hypervisor>, error: HvError) -> Failure {
        if hv.is_alive() {
            self.beat.beat();
            Failure::Answered(error)
        } else {
            self.pool.drop_connection(hv);
            Failure::Died(error)
        }
    }

    /// The domains on this host that own `mac`, with their current state,
    /// and those the policy refuses.
    ///
    /// A connection that died since the last request (libvirtd restarted)
    /// gets one immediate reconnect before the host counts as unreachable.
    pub(crate) fn lookup(&self, ask: &Ask) -> Result<Lookup, HostError> {
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
        let hv = self.pool.connection().map_err(Failure::Connect)?;
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
            // One being put to sleep is seen as it will be: a wake during
            // a managed save waits for its turn, then restores the image
            // (the action reads the state again after a wait); one being
            // paused or asked to shut down is on its way down, no "already
            // up" to remember.
            let (state, managed_save) = match lock(&self.sleeping).get(&domain.uuid) {
                Some(Sleep::ManagedSave) => (DomainState::ShutOff, true),
                Some(Sleep::Shutdown | Sleep::Suspend) => (DomainState::InShutdown, false),
                None => (owner.state, owner.managed_save),
            };
            lookup.candidates.push(Candidate {
                name: domain.name,
                uuid: domain.uuid,
                state,
                managed_save,
                host: self.position,
                epoch,
            });
        }
        Ok(lookup)
    }

    /// The domains whose current XML has `mac`. The index names the
    /// candidates; each is confirmed by reading its XML. When the index
    /// does not know the MAC, or was wrong about it, it is refreshed as
    /// [`crate::libvirt::index::refresh_for`] allows, and asked again.
    fn owners(&self, hv: &Arc<dyn Hypervisor>, mac: Mac) -> Result<Vec<Inspection>, HvError> {
        let since = Instant::now();
        let hint = self.index.hint(mac);
        let mut stale = false;
        if !hint.is_empty() {
            let (mut confirmed, all) = self.index.confirm(hv.as_ref(), mac, &hint)?;
            if all {
                // Every owner the index names still has the MAC, but a
                // domain it never read may have it too (a clone defined
                // since): before one is brought up, make sure.
                if !would_act(&confirmed) {
                    return Ok(confirmed);
                }
                if let Checked::Listed(listed) = self.index.check_unknown(hv.as_ref(), since) {
                    self.tell(HostEvent::Refreshed);
                    listed?;
                }
                let new: Vec<Uuid> = (self.index.hint(mac).into_iter())
                    .filter(|uuid| !hint.contains(uuid))
                    .collect();
                if !new.is_empty() {
                    confirmed.extend(self.index.confirm(hv.as_ref(), mac, &new)?.0);
                }
                return Ok(confirmed);
            }
            stale = true;
        }
        let refreshed = self.index.refresh(hv.as_ref(), stale);
        if !matches!(refreshed, Ok(false)) {
            self.tell(HostEvent::Refreshed);
        }
        refreshed?;
        let hint = self.index.hint(mac);
        Ok(self.index.confirm(hv.as_ref(), mac, &hint)?.0)
    }

    /// The domain named `name`, read for a wake (none if there is none).
    fn named(&self, hv: &Arc<dyn Hypervisor>, name: &str) -> Result<Vec<Inspection>, HvError> {
        let Some(uuid) = hv.find(name)? else {
            return Ok(Vec::new());
        };
        self.beat.beat();
        match hv.inspect(uuid) {
            Ok(inspection) if inspection.record.name == name => {
                self.index.saw(uuid, &inspection.record.meta.tokens);
                Ok(vec![inspection])
            }
            // Renamed or undefined since: as if not found.
            Ok(_) => Ok(Vec::new()),
            Err(e) if e.kind == HvErrorKind::NoDomain => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Performs `action` on `domain` (with `dry_run`, only says what it
    /// would do). Waits while another request acts on the same domain,
    /// then looks at its state again.
    pub(crate) fn act(
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
        let main = self.pool.connection().map_err(HostError::Unreachable)?;
        let lane = self.pool.lane(main);
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

    /// Puts `domain` to sleep on request, with its idle policy's action or
    /// a shutdown request; with `token`, only if the domain's current XML
    /// gives that token the right. Waits while another request acts on the
    /// same domain, and reads its state afresh first: a repeat finds it
    /// asleep. `acting` is called just before the action and once it ended.
    /// Runs on an action lane, as a start does: a managed save that takes
    /// minutes holds no connection that lookups need.
    pub(crate) fn sleep(
        &self,
        domain: &Candidate,
        token: Option<Hash>,
        dry_run: bool,
        acting: &dyn Fn(),
    ) -> Result<Put, HostError> {
        let result = self.sleep_once(domain, token, dry_run, acting);
        self.note(&result);
        result
    }

    fn sleep_once(
        &self,
        domain: &Candidate,
        token: Option<Hash>,
        dry_run: bool,
        acting: &dyn Fn(),
    ) -> Result<Put, HostError> {
        let main = self.pool.connection().map_err(HostError::Unreachable)?;
        let lane = self.pool.lane(main);
        let hv = &lane.hv;
        let sort = |e| HostError::from(self.failure(hv, e));
        let _turn = self.turns.take(domain.uuid);
        let record = hv.domain(domain.uuid).map_err(sort)?;
        if token.is_some_and(|token| !policy::may_sleep(&record.meta, &token)) {
            return Ok(Put::Forbidden);
        }
        let how = sleep::action(record.meta.idle.map(|policy| policy.action));
        let state = hv.state(domain.uuid).map_err(sort)?;
        if !sleep::is_up(state) {
            return Ok(Put::AlreadyDown(state));
        }
        if dry_run {
            return Ok(Put::Done(how, state));
        }
        // While it goes on, a wake's lookup sees the domain as it will be
        // (see `lookup_once`).
        lock(&self.sleeping).insert(domain.uuid, how);
        acting();
        let result = hv.sleep(domain.uuid, how);
        lock(&self.sleeping).remove(&domain.uuid);
        self.actions_done.fetch_add(1, Ordering::SeqCst);
        acting();
        match result {
            Ok(()) => Ok(Put::Done(how, state)),
            Err(e) => match sort(e) {
                HostError::Failed(e) => Ok(Put::Failed(how, state, e)),
                unreachable => Err(unreachable),
            },
        }
    }

    /// The current state of the domain named `name` and why it stopped, if
    /// it did (`None`: no such domain): for an HTTP caller waiting for it to
    /// come up, and the check after a start.
    pub(crate) fn state_of(
        &self,
        name: &str,
    ) -> Result<Option<(DomainState, Option<StopReason>)>, HostError> {
        self.by_name(name, |hv, uuid| hv.state_reason(uuid).map(Some))
    }

    /// The QEMU guest agent channel of the domain named `name`, as its
    /// current XML shows it (`None`: no such domain, or no channel).
    pub(crate) fn agent_of(&self, name: &str) -> Result<Option<Agent>, HostError> {
        self.by_name(name, |hv, uuid| hv.domain(uuid).map(|record| record.agent))
    }

    /// `read` of the domain named `name`; `None` when there is none (or it
    /// vanished between the lookup and the read).
    fn by_name<T>(
        &self,
        name: &str,
        read: impl FnOnce(&dyn Hypervisor, Uuid) -> Result<Option<T>, HvError>,
    ) -> Result<Option<T>, HostError> {
        let hv = self.pool.connection().map_err(HostError::Unreachable)?;
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
    pub(crate) fn inventory(&self) -> Result<Vec<DomainInfo>, HostError> {
        let hv = self.pool.connection().map_err(HostError::Unreachable)?;
        let listed = hv.list().map_err(HostError::Failed)?;
        let records = hv.records(&listed, &|| {});
        Ok(records
            .into_iter()
            .map(|record| {
                let state = hv.state(record.uuid).ok();
                let managed_save = state == Some(DomainState::ShutOff)
                    && hv.has_managed_save(record.uuid).unwrap_or(false);
                let secureon = record.meta.secureon.is_some();
                let idle = record.meta.idle;
                self.index.saw(record.uuid, &record.meta.tokens);
                let tokens = record.meta.tokens;
                DomainInfo {
                    domain: DomainRef {
                        name: record.name,
                        uuid: record.uuid,
                        wake_opt_in: record.meta.opt_in,
                    },
                    macs: record.macs,
                    extra: record.extra,
                    state,
                    managed_save,
                    tokens,
                    secureon,
                    idle,
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
