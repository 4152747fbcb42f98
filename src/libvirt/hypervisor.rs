//! The libvirt edge: everything the gateway asks of a hypervisor, behind a small
//! trait so the wake logic can be driven by the real libvirt (`test:///` in
//! tests, `qemu:///system` in production) and, only where libvirt's test driver
//! cannot go (it has no PM wake-up), by a fake.
//!
//! Every call here blocks until libvirt answers, which may be never (a
//! stopped daemon, a silent network): they run on worker threads, never on
//! the gateway's loop (see [`crate::libvirt::fleet`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState as VirtState};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

use crate::decide::idle::{IdlePolicy, Sample, Sleep};
use crate::decide::policy::WakeMeta;
use crate::libvirt::domain_xml::{self, Agent, DomainXmlError};
use crate::lock::lock;
use crate::model::{Action, DomainState, HvError, HvErrorKind, Mac, StopReason, Uuid};

impl From<virt::error::Error> for HvError {
    fn from(e: virt::error::Error) -> Self {
        // libvirt messages can span lines (an XML parser's caret diagram);
        // our log lines are one line each.
        let lines: Vec<&str> = e.message().lines().map(str::trim).collect();
        let kind = match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => HvErrorKind::NoDomain,
            _ => HvErrorKind::Other,
        };
        HvError {
            kind,
            message: lines.join(" "),
        }
    }
}

/// Why a domain's MACs are unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unreadable {
    /// Its XML could not be fetched.
    #[error("cannot read its XML: {0}")]
    Fetch(HvError),
    /// Its XML was fetched but is not a usable domain description.
    #[error(transparent)]
    Xml(#[from] DomainXmlError),
}

/// A domain as a listing names it (no XML read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The domain's UUID, the stable handle used for every later call.
    pub uuid: Uuid,
    /// The domain's name.
    pub name: String,
}

/// One defined domain and its MACs (or why they are unknown: its XML could
/// not be fetched or read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// The domain's name.
    pub(crate) name: String,
    /// The domain's UUID.
    pub(crate) uuid: Uuid,
    /// Every MAC a magic packet finds it by (its interfaces', then its
    /// extra ones: see [`domain_xml::DomainNics::macs`]), or why they are
    /// unknown.
    pub(crate) macs: Result<Vec<Mac>, Unreadable>,
    /// Those of `macs` that only its metadata gives (`mac add`), for `list`.
    pub(crate) extra: Vec<Mac>,
    /// What its owner set in our `<metadata>` element (the opt-in, token
    /// hashes).
    pub(crate) meta: WakeMeta,
    /// Its QEMU guest agent channel, if it has one.
    pub(crate) agent: Option<Agent>,
}

impl DomainRecord {
    /// Reads the MACs (and the opt-in) from a fetched XML description.
    pub fn from_xml(name: String, uuid: Uuid, xml: Result<String, HvError>) -> Self {
        let nics = match xml {
            Ok(xml) => domain_xml::read(&xml).map_err(Unreadable::from),
            Err(e) => Err(Unreadable::Fetch(e)),
        };
        let (macs, extra, meta, agent) = match nics {
            Ok(nics) => (Ok(nics.macs), nics.extra, nics.meta, nics.agent),
            Err(e) => (Err(e), Vec::new(), WakeMeta::default(), None),
        };
        DomainRecord {
            name,
            uuid,
            macs,
            extra,
            meta,
            agent,
        }
    }
}

/// A domain read for a wake: its current XML, state and managed-save image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Its record, from its current XML.
    pub(crate) record: DomainRecord,
    /// Its state.
    pub(crate) state: DomainState,
    /// It has a managed-save image (a start restores it).
    pub(crate) managed_save: bool,
}

/// When a connection last got an answer from libvirt: how the gateway tells
/// a slow daemon (a scan of many domains, still answering) from a silent one.
/// Shared by every thread using one host; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heartbeat(Arc<AtomicU64>);

/// The instant heartbeats count from (monotonic, process-wide).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Heartbeat {
    /// Records an answer now.
    pub(crate) fn beat(&self) {
        let micros = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
        // +1: zero means "never".
        self.0
            .fetch_max(micros.saturating_add(1), Ordering::Relaxed);
    }

    /// When the last answer came, if any.
    pub(crate) fn last(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(epoch() + Duration::from_micros(micros - 1)),
        }
    }
}

/// An open connection to one hypervisor. Implementations are shared by the
/// worker threads of one host, so they must be thread-safe (libvirt's
/// connections are).
pub trait Hypervisor: Send + Sync {
    /// Every domain, persistent and transient, active and inactive, by UUID
    /// and name: one call, no XML.
    fn list(&self) -> Result<Vec<Listed>, HvError>;
    /// The records of these domains (their XML read), fetched concurrently.
    /// A domain that vanished is returned with its error; `progress` is
    /// called after each answer, so a long scan is seen to be alive.
    fn records(&self, domains: &[Listed], progress: &(dyn Fn() + Sync)) -> Vec<DomainRecord>;
    /// One domain and its current MACs, by UUID (to confirm what an index
    /// says before acting).
    fn domain(&self, uuid: Uuid) -> Result<DomainRecord, HvError>;
    /// The current state of the domain with this UUID.
    fn state(&self, uuid: Uuid) -> Result<DomainState, HvError>;
    /// The current state and, for a stopped domain, why it stopped (where
    /// the driver tells).
    fn state_reason(&self, uuid: Uuid) -> Result<(DomainState, Option<StopReason>), HvError> {
        Ok((self.state(uuid)?, None))
    }
    /// The UUID of the domain named `name`, if there is one. By default
    /// from a listing; libvirt looks a name up in one call.
    fn find(&self, name: &str) -> Result<Option<Uuid>, HvError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|listed| listed.name == name)
            .map(|listed| listed.uuid))
    }
    /// What a wake needs to know of a domain: its XML, state and image, one
    /// call after another. (Asked together on three threads they were
    /// slower: through a local libvirtd a round trip costs less than
    /// starting a thread.)
    fn inspect(&self, uuid: Uuid) -> Result<Inspection, HvError> {
        let record = self.domain(uuid)?;
        let state = self.state(uuid)?;
        let managed_save = self.has_managed_save(uuid).unwrap_or(false);
        Ok(Inspection {
            record,
            state,
            managed_save,
        })
    }
    /// Whether the domain has a managed-save image that a start will restore.
    fn has_managed_save(&self, uuid: Uuid) -> Result<bool, HvError>;
    /// Performs `action` on the domain.
    fn perform(&self, uuid: Uuid, action: Action) -> Result<(), HvError>;
    /// Puts the domain to sleep: a managed save, an ACPI shutdown request
    /// (never a destroy) or a pause.
    fn sleep(&self, uuid: Uuid, how: Sleep) -> Result<(), HvError> {
        let _ = (uuid, how);
        Err(HvError::other(
            "putting a domain to sleep is not supported here",
        ))
    }
    /// One round trip to libvirt that changes nothing (is it answering?).
    fn ping(&self) -> Result<(), HvError>;
    /// False once the connection is known to be dead (daemon restarted, ...).
    fn is_alive(&self) -> bool;
}

/// Opens hypervisor connections; the seam that lets tests share one
/// in-process `test:///` connection or simulate an unreachable libvirt.
pub trait Connector: Send + Sync {
    /// The URI connections go to, for messages.
    fn uri(&self) -> &str;
    /// Opens a new connection.
    fn connect(&self) -> Result<Arc<dyn Hypervisor>, HvError>;
    /// True when separate connections see the same hypervisor (a daemon),
    /// so calls may be spread over several. False (the default) where state
    /// lives in the connection, as for `test:///` with a node file.
    fn independent_connections(&self) -> bool {
        false
    }
}

/// Connects to libvirt through the `virt` bindings.
#[derive(Debug, Clone)]
pub(crate) struct LibvirtConnector {
    uri: String,
}

impl LibvirtConnector {
    /// A connector for `uri` (e.g. `qemu:///system`).
    pub(crate) fn new(uri: impl Into<String>) -> Self {
        // libvirt's default error handler prints every error to stderr; we
        // report errors ourselves, once, with context.
        virt::error::clear_error_callback();
        LibvirtConnector { uri: uri.into() }
    }
}

impl Connector for LibvirtConnector {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn connect(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
        Ok(Arc::new(Libvirt::open(&self.uri)?))
    }

    fn independent_connections(&self) -> bool {
        // Only the test driver runs in this process (`test:///…`); with a
        // transport (`test+unix://`) or any other driver a daemon or a
        // remote API holds the state.
        let scheme = self.uri.split(':').next().unwrap_or_default();
        scheme != "test"
    }
}

/// Threads fetching domain XML during a scan. Through libvirtd each fetch
/// is a round trip (~145 µs); several in flight on one connection overlap
/// the waits. libvirtd serves at most 5 requests of one client at a time
/// (`max_client_requests`); measured at 10,000 domains on 2 cores: 1 thread
/// ~1.0 s, 2 ~0.69 s, 4 ~0.46 s, 5 ~0.39 s, 8 ~0.67 s (requests queue).
const SCAN_THREADS: usize = 5;
/// Below this many domains per thread, threads cost more than they save.
const DOMAINS_PER_THREAD: usize = 32;
/// An idle check's running domains per thread, at least (a look is a few
/// calls, a scan's read one).
const LOOKS_PER_THREAD: usize = 8;

/// Handles kept from individual lookups (the domains woken lately); past
/// this many the cache starts afresh, so memory stays flat however many
/// domains a host has.
const MAX_CACHED_HANDLES: usize = 256;

/// A live libvirt connection.
pub struct Libvirt {
    conn: Connect,
    /// Domain handles of domains looked up one by one: a wake asks for the
    /// same domain's XML, state and action, and one lookup serves all three.
    handles: Mutex<HashMap<Uuid, Domain>>,
    /// The handles of the last listing, until [`Hypervisor::records`] has
    /// read the domains it wants: a handle carries name and UUID, so reading
    /// a listed domain needs no lookup round trip.
    listing: Mutex<HashMap<Uuid, Domain>>,
}

impl fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Libvirt").finish_non_exhaustive()
    }
}

impl Libvirt {
    /// Opens a read-write connection to `uri`.
    pub(crate) fn open(uri: &str) -> Result<Self, HvError> {
        virt::error::clear_error_callback();
        Ok(Libvirt::from_connection(Connect::open(Some(uri))?))
    }

    /// Wraps an open connection. A `test:///PATH` node file's state is
    /// private to one connection, so tests share one this way.
    pub fn from_connection(conn: Connect) -> Self {
        Libvirt {
            conn,
            handles: Mutex::new(HashMap::new()),
            listing: Mutex::new(HashMap::new()),
        }
    }

    /// The names of every defined domain.
    pub(crate) fn domain_names(&self) -> Result<Vec<String>, HvError> {
        Ok(self.list()?.into_iter().map(|listed| listed.name).collect())
    }

    /// What the owner set in `name`'s metadata, as its persistent
    /// definition has it (the live one for a transient domain): the base
    /// for editing it.
    pub fn wake_meta(&self, name: &str) -> Result<WakeMeta, HvError> {
        Ok(self.definition(name)?.meta)
    }

    /// What `name`'s persistent definition says (the live one for a
    /// transient domain): its MACs and our metadata, as
    /// [`Libvirt::wake_meta`] reads it.
    pub(crate) fn definition(&self, name: &str) -> Result<domain_xml::DomainNics, HvError> {
        let domain = self.conn.lookup_domain_by_name(name)?;
        let flags = if domain.is_persistent()? {
            virt::sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        let xml = domain.xml_desc(flags)?;
        domain_xml::read(&xml).map_err(|e| HvError::other(e.to_string()))
    }

    /// Replaces our metadata element of `name` (`None` removes it) in its
    /// persistent definition and, while it runs, in the live one too, so
    /// the change counts at once and survives a restart.
    pub(crate) fn set_wake_meta(&self, name: &str, element: Option<&str>) -> Result<(), HvError> {
        let domain = self.conn.lookup_domain_by_name(name)?;
        let mut flags = 0;
        if domain.is_persistent()? {
            flags |= virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        if domain.is_active()? {
            flags |= virt::sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        domain.set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            element,
            Some(domain_xml::METADATA_KEY),
            Some(domain_xml::METADATA_NAMESPACE),
            flags,
        )?;
        Ok(())
    }

    /// Every running domain that has an idle policy, each looked at once:
    /// its counters (vCPU time, bytes on each interface, bytes read and
    /// written on each disk), whether a libvirt job runs on it; `wall_ms`
    /// gives the time of each look. A domain that cannot be looked at is
    /// named with the reason, and never acted on.
    pub(crate) fn idle_looks(
        &self,
        wall_ms: &(dyn Fn() -> u64 + Sync),
    ) -> Result<IdleLooks, HvError> {
        let running = self
            .conn
            .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?;
        // A look is a few calls (the XML, the info, each interface's and
        // each disk's counters, the job): spread over a few threads, as a
        // scan is, since libvirtd answers calls on one connection at once.
        let look_all = |domains: &[Domain]| {
            let looks = domains.iter().map(|domain| {
                // Both kept in the handle: no call to libvirtd.
                let name = domain.name().unwrap_or_else(|_| "?".to_owned());
                let uuid = domain
                    .uuid_string()
                    .ok()
                    .and_then(|u| Uuid::from_str(&u).ok());
                (name, uuid, idle_look(domain, wall_ms))
            });
            looks.collect::<Vec<_>>()
        };
        let threads = (running.len() / LOOKS_PER_THREAD).clamp(1, SCAN_THREADS);
        let chunk = running.len().div_ceil(threads).max(1);
        let mut looks = IdleLooks::default();
        std::thread::scope(|scope| {
            let workers: Vec<_> = running
                .chunks(chunk)
                .map(|part| (part, scope.spawn(move || look_all(part))))
                .collect();
            for (part, worker) in workers {
                // A look that panicked is no look: those domains are left
                // alone, and named.
                let Ok(results) = worker.join() else {
                    for domain in part {
                        let name = domain.name().unwrap_or_else(|_| "?".to_owned());
                        let uuid = domain
                            .uuid_string()
                            .ok()
                            .and_then(|u| Uuid::from_str(&u).ok());
                        looks
                            .failed
                            .push((name, uuid, HvError::other("internal error (a panic)")));
                    }
                    continue;
                };
                for (name, uuid, result) in results {
                    match result {
                        Ok(Some(look)) => looks.found.push(look),
                        Ok(None) => {}
                        // Gone between the listing and the look.
                        Err(e) if e.kind == HvErrorKind::NoDomain => {}
                        Err(e) => looks.failed.push((name, uuid, e)),
                    }
                }
            }
        });
        Ok(looks)
    }

    fn lookup(&self, uuid: Uuid) -> Result<Domain, HvError> {
        if let Some(domain) = lock(&self.handles).get(&uuid) {
            return Ok(domain.clone());
        }
        let domain = self.conn.lookup_domain_by_uuid_string(&uuid.to_string())?;
        let mut handles = lock(&self.handles);
        if handles.len() >= MAX_CACHED_HANDLES {
            handles.clear();
        }
        handles.insert(uuid, domain.clone());
        Ok(domain)
    }
}

/// Fetches and reads one domain's XML. Runs in the scan threads, so parsing
/// overlaps the other threads' round trips to libvirtd.
fn record(listed: &Listed, domain: Option<Domain>) -> DomainRecord {
    let xml = match domain {
        Some(domain) => domain.xml_desc(0).map_err(HvError::from),
        None => Err(HvError {
            kind: HvErrorKind::NoDomain,
            message: "domain not found".into(),
        }),
    };
    DomainRecord::from_xml(listed.name.clone(), listed.uuid, xml)
}

/// libvirt's reason as a [`StopReason`], for stopped and crashed domains.
fn stop_reason(reason: virt::domain::DomainStateReasonEnum) -> Option<StopReason> {
    use virt::domain::{DomainCrashedReason as C, DomainShutoffReason as S, DomainStateReason};
    match reason {
        Enum::Known(DomainStateReason::Shutoff(Enum::Known(reason))) => match reason {
            S::Shutdown => Some(StopReason::Shutdown),
            S::Destroyed => Some(StopReason::Destroyed),
            S::Crashed => Some(StopReason::Crashed),
            S::Migrated => Some(StopReason::Migrated),
            S::Saved => Some(StopReason::Saved),
            S::Failed => Some(StopReason::Failed),
            S::FromSnapshot => Some(StopReason::FromSnapshot),
            S::Daemon => Some(StopReason::Daemon),
            S::Unknown => None,
        },
        Enum::Known(DomainStateReason::Crashed(Enum::Known(C::Panicked))) => {
            Some(StopReason::Panicked)
        }
        _ => None,
    }
}

/// libvirt's state as ours.
fn domain_state(state: virt::domain::DomainStateEnum) -> DomainState {
    match state {
        Enum::Known(VirtState::Running) => DomainState::Running,
        Enum::Known(VirtState::Blocked) => DomainState::Blocked,
        Enum::Known(VirtState::Paused) => DomainState::Paused,
        Enum::Known(VirtState::Shutdown) => DomainState::InShutdown,
        Enum::Known(VirtState::Shutoff) => DomainState::ShutOff,
        Enum::Known(VirtState::Crashed) => DomainState::Crashed,
        Enum::Known(VirtState::PMSuspended) => DomainState::PmSuspended,
        Enum::Known(VirtState::NoState) | Enum::Unknown(_) => DomainState::Other,
    }
}

impl Hypervisor for Libvirt {
    fn sleep(&self, uuid: Uuid, how: Sleep) -> Result<(), HvError> {
        let domain = self.conn.lookup_domain_by_uuid_string(&uuid.to_string())?;
        match how {
            Sleep::ManagedSave => domain.managed_save(0)?,
            // The power button, never the guest agent: the docs promise
            // an ACPI request, which a guest OS may decline.
            Sleep::Shutdown => {
                match domain.shutdown_flags(virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) {
                    // A driver without the power button (the test driver,
                    // LXC) shuts down its own graceful way: still a
                    // request, never a destroy.
                    Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::InvalidArg)) => {
                        domain.shutdown()?
                    }
                    done => done?,
                }
            }
            Sleep::Suspend => domain.suspend()?,
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<Listed>, HvError> {
        let domains = self.conn.list_all_domains(0)?;
        let mut listed = Vec::with_capacity(domains.len());
        let mut handles = HashMap::with_capacity(domains.len());
        for domain in domains {
            // Name and UUID travel with the listing: no round trip here. The
            // UUID is taken as bytes: formatting 10,000 of them as text was
            // most of a listing's cost.
            let (Ok(uuid), Ok(name)) = (domain.uuid(), domain.name()) else {
                continue;
            };
            let uuid = Uuid(uuid.as_u128());
            listed.push(Listed { uuid, name });
            handles.insert(uuid, domain);
        }
        *lock(&self.listing) = handles;
        Ok(listed)
    }

    fn records(&self, domains: &[Listed], progress: &(dyn Fn() + Sync)) -> Vec<DomainRecord> {
        let with_handles: Vec<(&Listed, Option<Domain>)> = {
            // Taken out, the rest dropped: the listing's handles are not
            // kept between refreshes. Dropping 10,000 of them takes ~20 ms
            // (a libvirt call each): a thread of its own does it, not the
            // wake that waits for this listing (without a thread, here).
            let mut listing = std::mem::take(&mut *lock(&self.listing));
            let wanted = domains
                .iter()
                .map(|listed| (listed, listing.remove(&listed.uuid)))
                .collect();
            if listing.len() > DOMAINS_PER_THREAD {
                let _ = std::thread::Builder::new()
                    .name("wol-free".into())
                    .spawn(move || drop(listing));
            }
            wanted
        };
        let fetch = |part: &[(&Listed, Option<Domain>)]| {
            part.iter()
                .map(|(listed, domain)| {
                    let record = record(listed, domain.clone());
                    progress();
                    record
                })
                .collect::<Vec<_>>()
        };
        let threads = (domains.len() / DOMAINS_PER_THREAD).clamp(1, SCAN_THREADS);
        if threads == 1 {
            return fetch(&with_handles);
        }
        let chunk = with_handles.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = with_handles
                .chunks(chunk)
                .map(|part| scope.spawn(move || fetch(part)))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default())
                .collect()
        })
    }

    fn domain(&self, uuid: Uuid) -> Result<DomainRecord, HvError> {
        let domain = self.lookup(uuid)?;
        let name = domain.name()?;
        // A failed fetch is the call's error, not an unreadable domain: a
        // cached handle has its name without libvirtd, so a dead connection
        // shows only here, and the caller must see it to reconnect.
        let xml = domain.xml_desc(0).map_err(|e| {
            let e = HvError::from(e);
            if e.kind == HvErrorKind::NoDomain {
                lock(&self.handles).remove(&uuid);
            }
            e
        })?;
        Ok(DomainRecord::from_xml(name, uuid, Ok(xml)))
    }

    fn find(&self, name: &str) -> Result<Option<Uuid>, HvError> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(domain) => {
                let uuid = Uuid::from_str(&domain.uuid_string()?)
                    .map_err(|e| HvError::other(e.to_string()))?;
                Ok(Some(uuid))
            }
            Err(e) => {
                let e = HvError::from(e);
                if e.kind == HvErrorKind::NoDomain {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn state(&self, uuid: Uuid) -> Result<DomainState, HvError> {
        let (state, _reason) = self.lookup(uuid)?.state()?;
        Ok(domain_state(state))
    }

    fn state_reason(&self, uuid: Uuid) -> Result<(DomainState, Option<StopReason>), HvError> {
        let (state, reason) = self.lookup(uuid)?.state()?;
        Ok((domain_state(state), stop_reason(reason)))
    }

    fn has_managed_save(&self, uuid: Uuid) -> Result<bool, HvError> {
        Ok(self.lookup(uuid)?.has_managed_save(0)?)
    }

    fn perform(&self, uuid: Uuid, action: Action) -> Result<(), HvError> {
        let domain = self.lookup(uuid)?;
        match action {
            Action::Start => domain.create()?,
            Action::Resume => domain.resume()?,
            Action::PmWakeup => domain.pm_wakeup(0)?,
        };
        Ok(())
    }

    fn ping(&self) -> Result<(), HvError> {
        self.conn.lib_version()?;
        Ok(())
    }

    fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }
}

/// What one `idle check` found on a host.
#[derive(Debug, Default)]
pub(crate) struct IdleLooks {
    /// Running domains with an idle policy.
    pub(crate) found: Vec<IdleLook>,
    /// Domains with a policy, or perhaps one, that could not be looked at:
    /// name, UUID if known, and why.
    pub(crate) failed: Vec<(String, Option<Uuid>, HvError)>,
}

/// One running domain with an idle policy, as a look found it.
#[derive(Debug, Clone)]
pub(crate) struct IdleLook {
    /// Its name.
    pub(crate) name: String,
    /// Its UUID.
    pub(crate) uuid: Uuid,
    /// Its policy.
    pub(crate) policy: IdlePolicy,
    /// Its counters.
    pub(crate) sample: Sample,
    /// A libvirt job (a migration, a save) runs on it.
    pub(crate) job: bool,
}

/// Looks at one running domain; `None`: it has no idle policy, or is not
/// running (paused: asleep already; shutting down: on its way).
fn idle_look(
    domain: &Domain,
    wall_ms: &(dyn Fn() -> u64 + Sync),
) -> Result<Option<IdleLook>, HvError> {
    let xml = domain.xml_desc(0)?;
    // XML that cannot be read tells no policy: never acted on, and not a
    // domain to warn about every minute (the gateway's own scans say it).
    let Ok(parsed) = domain_xml::parse(&xml) else {
        return Ok(None);
    };
    let Ok(read) = domain_xml::read_parsed(&parsed) else {
        return Ok(None);
    };
    if read.meta.idle.is_none() {
        return Ok(None);
    }
    // The owner's wish is the persistent definition's: a policy cleared
    // while the domain slept must not come back with the definition a
    // managed-save image restores.
    let policy = if domain.is_persistent()? {
        let inactive = domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?;
        domain_xml::read(&inactive).ok().and_then(|r| r.meta.idle)
    } else {
        read.meta.idle
    };
    let Some(policy) = policy else {
        return Ok(None);
    };
    let info = domain.info()?;
    if domain_state(info.state) != DomainState::Running {
        return Ok(None);
    }
    let uuid = Uuid::from_str(&domain.uuid_string()?).map_err(|e| HvError::other(e.to_string()))?;
    // An interface without a tap device (user-mode networking) or a disk
    // without counters has none: judged on the signals it has. An extra
    // MAC names no interface libvirt counts for.
    let interfaces = read.macs.iter().filter(|mac| !read.extra.contains(mac));
    let net = interfaces.filter_map(|mac| {
        let stats = domain.interface_stats(&mac.to_string()).ok()?;
        Some(counter(stats.rx_bytes)?.saturating_add(counter(stats.tx_bytes)?))
    });
    let net_bytes = net.reduce(u64::saturating_add);
    // The same parse: the XML was read once.
    let disks = domain_xml::disk_targets(&parsed);
    let disk = disks.iter().filter_map(|target| {
        let stats = domain.block_stats(target).ok()?;
        Some(counter(stats.rd_bytes)?.saturating_add(counter(stats.wr_bytes)?))
    });
    let disk_bytes = disk.reduce(u64::saturating_add);
    // VIR_DOMAIN_JOB_NONE is 0. A driver without job info has no jobs;
    // any other failure to ask is a failed look: left alone.
    let job = match domain.job_info() {
        Ok(job) => job.r#type != 0,
        Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoSupport)) => false,
        Err(e) => return Err(e.into()),
    };
    let sample = Sample {
        at_ms: wall_ms(),
        id: domain.id().unwrap_or(0),
        vcpus: info.nr_virt_cpu,
        cpu_ns: info.cpu_time,
        net_bytes,
        disk_bytes,
    };
    Ok(Some(IdleLook {
        name: domain.name()?,
        uuid,
        policy,
        sample,
        job,
    }))
}

/// A libvirt counter; `-1` (the driver keeps none) is no counter.
fn counter(value: i64) -> Option<u64> {
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_read_and_print_in_libvirts_form() {
        let text = "6695eb01-f6a4-8304-79aa-97f2502e193f";
        let parsed: Uuid = text.to_uppercase().parse().expect("uuid");
        assert_eq!(parsed.to_string(), text);
        for bad in [
            "",
            "6695eb01",
            "6695eb01-f6a4-8304-79aa-97f2502e193g",
            "+695eb01-f6a4-8304-79aa-97f2502e193f",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_in_process_test_driver_keeps_its_state_in_the_connection() {
        for (uri, independent) in [
            ("qemu:///system", true),
            ("qemu+ssh://wol@host2/system", true),
            ("test+unix:///default", true),
            ("test:///default", false),
            ("test:///var/lib/node.xml", false),
        ] {
            let connector = LibvirtConnector::new(uri);
            assert_eq!(connector.independent_connections(), independent, "{uri}");
        }
    }

    #[test]
    fn a_heartbeat_remembers_the_latest_answer() {
        let beat = Heartbeat::default();
        assert_eq!(beat.last(), None);
        let before = Instant::now();
        beat.beat();
        let first = beat.last().expect("beaten");
        assert!(first + Duration::from_millis(1) >= before);
        beat.clone().beat();
        assert!(beat.last().expect("beaten") >= first, "clones share it");
    }
}
