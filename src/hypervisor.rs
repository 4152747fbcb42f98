//! The libvirt edge: everything the gateway asks of a hypervisor, behind a small
//! trait so the wake logic can be driven by the real libvirt (`test:///` in
//! tests, `qemu:///system` in production) and, only where libvirt's test driver
//! cannot go (it has no PM wake-up), by a fake.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use virt::connect::Connect;
use virt::domain::{Domain, DomainState as VirtState};
use virt::enumutil::Enum;

use crate::domain_xml;
use crate::packet::Mac;

/// A domain's run state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running.
    Running,
    /// Blocked on a resource (still running).
    Blocked,
    /// Paused by an admin or libvirt.
    Paused,
    /// Being shut down (still active).
    InShutdown,
    /// Shut off.
    ShutOff,
    /// Crashed.
    Crashed,
    /// Suspended by guest power management (S3/S4).
    PmSuspended,
    /// No state, or a state this build does not know.
    Other,
}

impl DomainState {
    /// True for states in which the domain has a running process. A domain in
    /// any of these counts as "up" for the ambiguity rule.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::ShutOff | DomainState::Crashed)
    }

    /// The word `virsh domstate` would print.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::InShutdown => "in shutdown",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
            DomainState::Other => "no state",
        }
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gateway does to a domain to bring it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `virDomainCreate`: boot a shut-off domain, or restore its managed-save image.
    Start,
    /// `virDomainResume`: continue a paused domain.
    Resume,
    /// `virDomainPMWakeup`: wake a guest suspended by power management.
    PmWakeup,
}

impl Action {
    /// The verb used in logs and the `ACTION` journal field.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Resume => "resume",
            Action::PmWakeup => "pm-wakeup",
        }
    }
}

/// A libvirt error, carrying libvirt's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvError(pub String);

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HvError {}

impl From<virt::error::Error> for HvError {
    fn from(e: virt::error::Error) -> Self {
        // libvirt messages can span lines (an XML parser's caret diagram);
        // our log lines are one line each.
        let lines: Vec<&str> = e.message().lines().map(str::trim).collect();
        HvError(lines.join(" "))
    }
}

/// One defined domain and the MACs of its interfaces (or why they are
/// unknown: its XML could not be fetched or read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID, the stable handle used for every later call.
    pub uuid: String,
    /// The MACs of its interfaces, or why they are unknown.
    pub macs: Result<Vec<Mac>, String>,
    /// Its `<metadata>` opts in to being woken (see `--require-opt-in`).
    pub wake_opt_in: bool,
}

impl DomainRecord {
    /// Reads the MACs (and the opt-in) from a fetched XML description.
    pub fn from_xml(name: String, uuid: String, xml: Result<String, HvError>) -> Self {
        let nics = match xml {
            Ok(xml) => domain_xml::read(&xml).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot read its XML: {e}")),
        };
        let wake_opt_in = nics.as_ref().is_ok_and(|n| n.wake_opt_in);
        DomainRecord {
            name,
            uuid,
            macs: nics.map(|n| n.macs),
            wake_opt_in,
        }
    }
}

/// An open connection to one hypervisor.
pub trait Hypervisor {
    /// Every domain, persistent and transient, active and inactive, with
    /// its MACs.
    fn domains(&self) -> Result<Vec<DomainRecord>, HvError>;
    /// One domain and its current MACs, by UUID (to confirm a hint from the
    /// index file).
    fn domain(&self, uuid: &str) -> Result<DomainRecord, HvError>;
    /// The current state of the domain with this UUID.
    fn state(&self, uuid: &str) -> Result<DomainState, HvError>;
    /// Whether the domain has a managed-save image that a start will restore.
    fn has_managed_save(&self, uuid: &str) -> Result<bool, HvError>;
    /// Performs `action` on the domain.
    fn perform(&self, uuid: &str, action: Action) -> Result<(), HvError>;
    /// False once the connection is known to be dead (daemon restarted, ...).
    fn is_alive(&self) -> bool;
}

/// Opens hypervisor connections; the seam that lets tests simulate an
/// unreachable libvirt.
pub trait Connector {
    /// The URI connections go to, for messages.
    fn uri(&self) -> &str;
    /// Opens a new connection.
    fn connect(&self) -> Result<Box<dyn Hypervisor>, HvError>;
}

/// Connects to libvirt through the `virt` bindings.
#[derive(Debug, Clone)]
pub struct LibvirtConnector {
    uri: String,
}

impl LibvirtConnector {
    /// A connector for `uri` (e.g. `qemu:///system`).
    pub fn new(uri: impl Into<String>) -> Self {
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

    fn connect(&self) -> Result<Box<dyn Hypervisor>, HvError> {
        Ok(Box::new(Libvirt::open(&self.uri)?))
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

/// A live libvirt connection.
#[derive(Debug)]
pub struct Libvirt {
    conn: Connect,
    /// Domains looked up by UUID in this connection: a wake asks for the
    /// same domain's XML, state and action, one lookup serves all three.
    handles: RefCell<HashMap<String, Domain>>,
}

impl Libvirt {
    /// Opens a read-write connection to `uri`.
    pub fn open(uri: &str) -> Result<Self, HvError> {
        virt::error::clear_error_callback();
        Ok(Libvirt::from_connection(Connect::open(Some(uri))?))
    }

    /// Wraps an open connection. A `test:///PATH` node file's state is
    /// private to one connection, so tests share one this way.
    pub fn from_connection(conn: Connect) -> Self {
        Libvirt {
            conn,
            handles: RefCell::new(HashMap::new()),
        }
    }

    fn lookup(&self, uuid: &str) -> Result<Domain, HvError> {
        if let Some(domain) = self.handles.borrow().get(uuid) {
            return Ok(domain.clone());
        }
        let domain = self.conn.lookup_domain_by_uuid_string(uuid)?;
        self.handles
            .borrow_mut()
            .insert(uuid.to_owned(), domain.clone());
        Ok(domain)
    }
}

/// Fetches and reads one domain's XML. Runs in the scan threads, so parsing
/// overlaps the other threads' round trips to libvirtd.
fn record(domain: &Domain) -> Option<DomainRecord> {
    // A domain undefined between the listing and here is simply gone.
    let uuid = domain.uuid_string().ok()?;
    let name = domain.name().unwrap_or_else(|_| uuid.clone());
    let xml = domain.xml_desc(0).map_err(HvError::from);
    Some(DomainRecord::from_xml(name, uuid, xml))
}

impl Hypervisor for Libvirt {
    fn domains(&self) -> Result<Vec<DomainRecord>, HvError> {
        let domains = self.conn.list_all_domains(0)?;
        let threads = (domains.len() / DOMAINS_PER_THREAD).clamp(1, SCAN_THREADS);
        if threads == 1 {
            return Ok(domains.iter().filter_map(record).collect());
        }
        let chunk = domains.len().div_ceil(threads);
        let records = std::thread::scope(|scope| {
            let workers: Vec<_> = domains
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().filter_map(record).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default())
                .collect()
        });
        Ok(records)
    }

    fn domain(&self, uuid: &str) -> Result<DomainRecord, HvError> {
        let domain = self.lookup(uuid)?;
        let name = domain.name()?;
        let xml = domain.xml_desc(0).map_err(HvError::from);
        Ok(DomainRecord::from_xml(name, uuid.to_owned(), xml))
    }

    fn state(&self, uuid: &str) -> Result<DomainState, HvError> {
        let (state, _reason) = self.lookup(uuid)?.state()?;
        Ok(match state {
            Enum::Known(VirtState::Running) => DomainState::Running,
            Enum::Known(VirtState::Blocked) => DomainState::Blocked,
            Enum::Known(VirtState::Paused) => DomainState::Paused,
            Enum::Known(VirtState::Shutdown) => DomainState::InShutdown,
            Enum::Known(VirtState::Shutoff) => DomainState::ShutOff,
            Enum::Known(VirtState::Crashed) => DomainState::Crashed,
            Enum::Known(VirtState::PMSuspended) => DomainState::PmSuspended,
            Enum::Known(VirtState::NoState) | Enum::Unknown(_) => DomainState::Other,
        })
    }

    fn has_managed_save(&self, uuid: &str) -> Result<bool, HvError> {
        Ok(self.lookup(uuid)?.has_managed_save(0)?)
    }

    fn perform(&self, uuid: &str, action: Action) -> Result<(), HvError> {
        let domain = self.lookup(uuid)?;
        match action {
            Action::Start => domain.create()?,
            Action::Resume => domain.resume()?,
            Action::PmWakeup => domain.pm_wakeup(0)?,
        };
        Ok(())
    }

    fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }
}
