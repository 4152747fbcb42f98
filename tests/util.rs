//! Test harness: node files for libvirt's `test:///` driver, the real binary
//! run as a user or as systemd would run it, and waits with deadlines.

#![allow(dead_code)] // each test module uses a different part

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use tempfile::TempDir;
use virt::connect::Connect;
use virt::domain::Domain;
use wol_libvirt_gateway::decide::book::Rules;
use wol_libvirt_gateway::decide::control::{Config, Stats};
use wol_libvirt_gateway::decide::outcome::Exit;
use wol_libvirt_gateway::decide::outcome::{Named, Outcome};
use wol_libvirt_gateway::gateway::{Gateway as InProcessGateway, Shutdown, Trigger};
use wol_libvirt_gateway::ingress::packet::magic_packet;
use wol_libvirt_gateway::ingress::sockets::Listener;
use wol_libvirt_gateway::libvirt::fleet::{Conclusion, Fleet, Timing};
use wol_libvirt_gateway::libvirt::host::Host;
use wol_libvirt_gateway::libvirt::hypervisor::{
    Connector, DomainRecord, Hypervisor, Libvirt, Listed,
};
use wol_libvirt_gateway::libvirt::index::Rescan;
use wol_libvirt_gateway::model::Mac;
use wol_libvirt_gateway::model::{Action, DomainState, HvError, HvErrorKind, Uuid};
use wol_libvirt_gateway::report::notify::Notifier;
use wol_libvirt_gateway::report::{Record, Reporter};

/// Generous deadline for anything the gateway should do "at once".
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wol-libvirt-gateway")
}

/// Parses a MAC literal.
pub fn mac(s: &str) -> Mac {
    s.parse().expect("test MAC literal")
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// libvirt run states as written in a node file (`<test:runstate>`).
#[derive(Debug, Clone, Copy)]
pub enum RunState {
    Running = 1,
    Paused = 3,
    ShutOff = 5,
    Crashed = 6,
    PmSuspended = 7,
}

/// A domain for a node file.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub macs: Vec<String>,
    pub state: RunState,
    /// Written inside `<metadata>` (e.g. the gateway's `<wol:wake>`).
    pub metadata: String,
    /// Written inside `<devices>` before the NICs (e.g. a `<hostdev>`).
    pub devices: String,
}

impl DomainSpec {
    /// The same domain with `element` in its `<metadata>`.
    pub fn with_metadata(mut self, element: &str) -> DomainSpec {
        self.metadata = element.to_owned();
        self
    }

    /// The same domain with `devices` besides its NICs.
    pub fn with_devices(mut self, devices: &str) -> DomainSpec {
        self.devices = devices.to_owned();
        self
    }
}

/// Shorthand for a domain with one NIC.
pub fn domain(name: &str, mac: &str, state: RunState) -> DomainSpec {
    DomainSpec {
        name: name.into(),
        macs: vec![mac.into()],
        state,
        metadata: String::new(),
        devices: String::new(),
    }
}

/// The metadata element `secureon set` stores for `password` (a salted
/// hash), in the namespace a node file needs.
pub fn secureon_element(password: &[u8]) -> String {
    use wol_libvirt_gateway::decide::policy::WakeMeta;
    use wol_libvirt_gateway::model::Password;
    use wol_libvirt_gateway::secret::Sealed;
    let sealed = Sealed::seal(&Password::new(password).expect("4 or 6 bytes")).expect("random");
    WakeMeta {
        secureon: Some(sealed),
        ..WakeMeta::default()
    }
    .render()
    .expect("an element")
    .replacen(
        "<wake",
        "<wol:wake xmlns:wol='https://wol-libvirt-gateway/xmlns/1'",
        1,
    )
    .replace("</wake>", "</wol:wake>")
}

/// A node file for `test:///PATH` in its own temporary directory.
pub struct NodeFile {
    dir: TempDir,
    path: PathBuf,
}

impl NodeFile {
    /// Writes a node file holding `domains`.
    pub fn new(domains: &[DomainSpec]) -> NodeFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.xml");
        std::fs::write(&path, node_xml(domains)).expect("write node file");
        NodeFile { dir, path }
    }

    /// A path in the same directory where no node file exists (yet).
    pub fn missing() -> NodeFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.xml");
        NodeFile { dir, path }
    }

    /// (Re)writes the file.
    pub fn write(&self, domains: &[DomainSpec]) {
        let tmp = self.dir.path().join("node.xml.tmp");
        std::fs::write(&tmp, node_xml(domains)).expect("write node file");
        std::fs::rename(&tmp, &self.path).expect("rename node file");
    }

    /// The libvirt URI for this node.
    pub fn uri(&self) -> String {
        format!("test://{}", self.path.display())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// [`uuid_for`] as the gateway's type.
pub fn uuid_of(name: &str) -> Uuid {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    Uuid(u128::from(hash) << 64 | u128::from(hash.rotate_left(17) ^ 0x5a5a))
}

/// A UUID derived from the domain name, stable across runs.
pub fn uuid_for(name: &str) -> String {
    uuid_of(name).to_string()
}

fn node_xml(domains: &[DomainSpec]) -> String {
    let mut xml = String::from(
        "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz><model>i686</model></cpu><memory>8388608</memory>\n",
    );
    for d in domains {
        let _ = write!(
            xml,
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\
             <name>{}</name><uuid>{}</uuid><memory>65536</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type></os><metadata>{}</metadata><devices>{}",
            d.name,
            uuid_for(&d.name),
            d.metadata,
            d.devices
        );
        for mac in &d.macs {
            let _ = write!(
                xml,
                "<interface type='user'><mac address='{mac}'/></interface>"
            );
        }
        let _ = writeln!(
            xml,
            "</devices><test:runstate>{}</test:runstate></domain>",
            d.state as u32
        );
    }
    xml.push_str("</node>\n");
    xml
}

/// Sends one datagram to `addr`.
pub fn send(addr: SocketAddr, payload: &[u8]) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    socket.send_to(payload, addr).expect("send datagram");
}

/// Sends a standard magic packet for `mac` to `addr`.
pub fn wake(addr: SocketAddr, mac_text: &str) {
    send(addr, &magic_packet(mac(mac_text)));
}

/// A UDP socket the test holds like systemd holds the `.socket` unit's.
pub fn systemd_socket() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind activation socket");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}

/// The binary, running, with its stderr collected.
pub struct Gateway {
    child: Child,
    log: Arc<Mutex<String>>,
    /// The thread copying stderr into `log`; it ends at end of file, when
    /// the process (and any child holding the pipe) has exited.
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
    _cache: TempDir,
}

/// Builder for a gateway run.
pub struct Launch {
    command: Command,
    fds: Vec<FdMapping>,
    cache: TempDir,
}

/// Takes the test process's own `WOL_...` variables out of `command`'s
/// environment: options from the environment are each test's to set.
fn without_options_from_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WOL_") {
            command.env_remove(key);
        }
    }
}

/// The binary as a command that runs to its end (`list`, `wake`, `idle
/// check`, ...): `--libvirt-uri uri`, then `args`; no `WOL_...` variable
/// of the test process, no passed socket. Run it with [`ran`].
pub fn command_on(uri: &str, args: &[&str]) -> Command {
    let mut command = Command::new(bin());
    without_options_from_env(&mut command);
    command
        .args(["--libvirt-uri", uri])
        .args(args)
        .env_remove("LISTEN_FDS");
    command
}

/// Runs `command` to its end: its exit status (-1 after a signal), its
/// stdout and its stderr.
pub fn ran(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Launch {
    /// The binary with `args`, logging at `info` unless `RUST_LOG` is set
    /// later, with its own empty XDG cache directory.
    pub fn new(args: &[&str]) -> Launch {
        let cache = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(bin());
        without_options_from_env(&mut command);
        command
            .args(args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("CACHE_DIRECTORY")
            .env("XDG_CACHE_HOME", cache.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Launch {
            command,
            fds: Vec::new(),
            cache,
        }
    }

    /// The binary run by hand: its own socket on an ephemeral loopback port
    /// (see [`Gateway::listen_addr`]), libvirt at `uri`, then `args`.
    pub fn by_hand(uri: &str, args: &[&str]) -> Launch {
        let mut all = vec!["--listen-address", "127.0.0.1:0", "--libvirt-uri", uri];
        all.extend_from_slice(args);
        Launch::new(&all)
    }

    /// Passes `fd` as systemd passes a socket: at fd 3 + index, with LISTEN_FDS.
    pub fn pass_fd(mut self, fd: OwnedFd) -> Launch {
        let child_fd = 3 + self.fds.len() as i32;
        self.fds.push(FdMapping {
            parent_fd: fd,
            child_fd,
        });
        self.command.env("LISTEN_FDS", self.fds.len().to_string());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Launch {
        self.command.env(key, value);
        self
    }

    /// Starts it.
    pub fn spawn(mut self) -> Gateway {
        self.command
            .fd_mappings(self.fds)
            .expect("distinct child fds");
        let mut child = self.command.spawn().expect("spawn gateway");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Gateway {
            child,
            log,
            reader: Some(reader),
            status: None,
            _cache: self.cache,
        }
    }
}

impl Gateway {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// A field of /proc/PID/status in KiB (VmHWM, VmRSS, ...).
    pub fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Lines of the log containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until a log line contains `needle`; panics with the log if not.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let mut found = None;
        let ok = wait_until(DEADLINE, || {
            found = self.lines_with(needle).into_iter().next();
            found.is_some()
        });
        assert!(
            ok,
            "no log line with {needle:?} within {DEADLINE:?}; log:\n{}",
            self.log()
        );
        found.unwrap_or_default()
    }

    /// The address the gateway logged it listens on (first one).
    pub fn listen_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("listening on ");
        let rest = &line[line.find("listening on ").map_or(0, |i| i + 13)..];
        let addr = rest.split([';', ',']).next().unwrap_or_default();
        addr.trim()
            .parse()
            .unwrap_or_else(|_| panic!("cannot parse address from {line:?}"))
    }

    /// Waits for the process to exit; panics with the log if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let child = &mut self.child;
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            let _ = self.child.kill();
            panic!(
                "gateway still running after {timeout:?}; log:\n{}",
                self.log()
            );
        }
        let status = status.expect("exited");
        self.status = Some(status);
        // The log is complete once the reader reaches end of file, whatever
        // the last line says (a failed start never logs "exiting").
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader thread");
        }
        status
    }

    /// Sends a signal with the system's `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A count in the exit summary ("…: 8 datagrams, 3 wake requests handled,
/// …"): the number before `what`, 0 if absent (zero counts are left out).
pub fn summary_count(summary: &str, what: &str) -> u64 {
    summary
        .split([':', ',', ';'])
        .find_map(|part| part.trim().strip_suffix(what))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`.
pub struct NotifySocket {
    _dir: TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    messages: Vec<String>,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        NotifySocket {
            _dir: dir,
            path,
            socket,
            messages: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every message received so far (each `KEY=VALUE\n...` datagram).
    pub fn messages(&mut self) -> &[String] {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.messages
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        &self.messages
    }

    /// Index of the first message containing `needle`, waiting for it.
    pub fn wait_for(&mut self, needle: &str) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.messages().iter().position(|m| m.contains(needle)) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no notify message with {needle:?}; got {:?}",
                self.messages
            );
        }
    }
}

/// Writes a node file and opens it in-process.
pub fn open_node(domains: &[DomainSpec]) -> (NodeFile, Connect) {
    let node = NodeFile::new(domains);
    virt::error::clear_error_callback();
    let conn = Connect::open(Some(&node.uri())).expect("open test:/// node file");
    (node, conn)
}

/// A domain's state, through the shared connection.
pub fn state_of(conn: &Connect, name: &str) -> DomainState {
    Libvirt::from_connection(conn.clone())
        .state(uuid_of(name))
        .expect("state")
}

/// A domain by name.
pub fn lookup(conn: &Connect, name: &str) -> Domain {
    conn.lookup_domain_by_name(name).expect("lookup")
}

/// Redefines a (shut-off) domain with its NICs replaced by `macs`.
pub fn redefine(conn: &Connect, name: &str, macs: &[&str]) {
    let nics: String = macs
        .iter()
        .map(|m| format!("<interface type='user'><mac address='{m}'/></interface>"))
        .collect();
    let xml = format!(
        "<domain type='test'><name>{name}</name><uuid>{}</uuid><memory>65536</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices>{nics}</devices></domain>",
        uuid_for(name)
    );
    conn.define_domain_xml(&xml).expect("redefine domain");
}

/// Tests that need libvirtd take this lock: most share it, the ones that
/// stop or restart the daemon take it alone, so they never pull the daemon
/// out from under another test.
static LIBVIRTD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Shared use of libvirtd.
pub fn libvirtd_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    LIBVIRTD
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sole use of libvirtd (the test may stop and start it).
pub fn libvirtd_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    LIBVIRTD
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One `test:///` connection shared by hosts and the test: a node file's
/// state is private to the connection that opened it.
pub struct Shared(pub Connect);

impl Connector for Shared {
    fn uri(&self) -> &str {
        "test:///shared"
    }
    fn connect(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
        Ok(Arc::new(Libvirt::from_connection(self.0.clone())))
    }
}

/// Rescan rules for hosts in tests: `interval` for listings, a full scan
/// at most once an hour.
pub fn rescan(interval: Duration) -> Rescan {
    Rescan {
        interval,
        full_interval: Duration::from_secs(3600),
    }
}

/// A host on `connector`, first of its fleet.
pub fn host(connector: impl Connector + 'static, rules: Rescan) -> Host {
    Host::new(Box::new(connector), rules)
}

/// A fleet of `hosts` with a 10 s deadline (tests of timing set their own).
pub fn fleet(hosts: Vec<Host>) -> Fleet {
    Fleet::new(hosts, false, Timing::with_deadline(Duration::from_secs(10)))
}

/// The outcome of one wake through `fleet`; panics if it had to wait.
pub fn wake_through(fleet: &Fleet, address: &str) -> Outcome {
    match fleet.wake(mac(address)) {
        Conclusion::Decided(decision) => decision.outcome,
        Conclusion::Wait(waiting) => panic!("waiting for {waiting:?}"),
    }
}

/// The name in a [`Named`] (outcomes name domains with their host).
pub fn name_of(named: &Named) -> &str {
    &named.name
}

/// A gate calls wait at while it is shut.
#[derive(Default)]
pub struct Gate {
    shut: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    pub fn shut(&self) {
        *self.shut.lock().expect("gate") = true;
    }
    pub fn open(&self) {
        *self.shut.lock().expect("gate") = false;
        self.opened.notify_all();
    }
    /// Calls waiting at it now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
    fn pass(&self) {
        let mut shut = self.shut.lock().expect("gate");
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while *shut {
            shut = self.opened.wait(shut).expect("gate");
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A domain of the fake hypervisor.
pub struct FakeDomain {
    pub name: String,
    pub xml: Result<String, HvError>,
    pub state: DomainState,
    /// Errors the next actions return, in order, before they succeed.
    pub failures: Vec<HvError>,
}

/// A domain XML with these NICs.
pub fn nics_xml(macs: &[&str]) -> Result<String, HvError> {
    let nics: String = macs
        .iter()
        .map(|m| format!("<interface type='bridge'><mac address='{m}'/></interface>"))
        .collect();
    Ok(format!("<domain><devices>{nics}</devices></domain>"))
}

#[derive(Default)]
pub struct FakeState {
    pub domains: Vec<FakeDomain>,
    /// Every action performed: (domain name, action).
    pub calls: Vec<(String, Action)>,
}

/// A scripted hypervisor, for what libvirt's `test:///` driver cannot do: a
/// successful PM wake-up, unreadable domain XML, and calls that take long or
/// never return (the real ones: a slow qemu hook and a stopped libvirtd, in
/// `tests/e2e_libvirtd.rs`). Domains are addressed by [`uuid_for`] their name.
#[derive(Clone)]
pub struct Fake {
    uri: String,
    pub state: Arc<Mutex<FakeState>>,
    /// Every call waits here: shut it to make the host silent.
    pub all_calls: Arc<Gate>,
    /// Actions wait here: shut it for a slow start.
    pub actions: Arc<Gate>,
    /// Listings wait here: shut it for a listing held up (as libvirtd holds
    /// every listing while a domain starts).
    pub listings: Arc<Gate>,
    /// Actions on these domains (by name; `*`: all) wait at `actions`.
    pub slow: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    pub fn new(uri: &str) -> Fake {
        Fake {
            uri: uri.to_owned(),
            state: Arc::default(),
            all_calls: Arc::default(),
            actions: Arc::default(),
            listings: Arc::default(),
            slow: Arc::default(),
        }
    }

    pub fn add(&self, name: &str, xml: Result<String, HvError>, state: DomainState) {
        self.state.lock().expect("fake").domains.push(FakeDomain {
            name: name.into(),
            xml,
            state,
            failures: Vec::new(),
        });
    }

    /// Changes `name`'s state (as a crash or `virsh destroy` would).
    pub fn set_state(&self, name: &str, new: DomainState) {
        let mut state = self.state.lock().expect("fake");
        let domain = state.domains.iter_mut().find(|d| d.name == name);
        domain.expect("fake domain").state = new;
    }

    pub fn state_of(&self, name: &str) -> DomainState {
        let state = self.state.lock().expect("fake");
        let domain = state.domains.iter().find(|d| d.name == name);
        domain.expect("fake domain").state
    }

    /// Makes actions on `name` (or `*`) wait at the `actions` gate, shut.
    pub fn slow_down(&self, name: &str) {
        self.actions.shut();
        self.slow.lock().expect("fake").push(name.to_owned());
    }

    /// Replaces a domain's XML.
    pub fn set_xml(&self, name: &str, xml: Result<String, HvError>) {
        let mut state = self.state.lock().expect("fake");
        if let Some(d) = state.domains.iter_mut().find(|d| d.name == name) {
            d.xml = xml;
        }
    }

    pub fn fail_next(&self, name: &str, error: &str) {
        let mut state = self.state.lock().expect("fake");
        if let Some(d) = state.domains.iter_mut().find(|d| d.name == name) {
            d.failures.push(HvError::other(error));
        }
    }

    pub fn calls(&self) -> Vec<(String, Action)> {
        self.state.lock().expect("fake").calls.clone()
    }

    fn with<T>(&self, uuid: Uuid, f: impl FnOnce(&mut FakeDomain) -> T) -> Result<T, HvError> {
        self.all_calls.pass();
        let mut state = self.state.lock().expect("fake");
        state
            .domains
            .iter_mut()
            .find(|d| uuid_of(&d.name) == uuid)
            .map(f)
            .ok_or(HvError {
                kind: HvErrorKind::NoDomain,
                message: "no such domain".into(),
            })
    }
}

impl Hypervisor for Fake {
    fn list(&self) -> Result<Vec<Listed>, HvError> {
        self.all_calls.pass();
        self.listings.pass();
        let state = self.state.lock().expect("fake");
        Ok(state
            .domains
            .iter()
            .map(|d| Listed {
                uuid: uuid_of(&d.name),
                name: d.name.clone(),
            })
            .collect())
    }
    fn records(&self, domains: &[Listed], progress: &(dyn Fn() + Sync)) -> Vec<DomainRecord> {
        domains
            .iter()
            .filter_map(|l| {
                let record = self.domain(l.uuid).ok();
                progress();
                record
            })
            .collect()
    }
    fn domain(&self, uuid: Uuid) -> Result<DomainRecord, HvError> {
        self.with(uuid, |d| {
            DomainRecord::from_xml(d.name.clone(), uuid, d.xml.clone())
        })
    }
    fn state(&self, uuid: Uuid) -> Result<DomainState, HvError> {
        self.with(uuid, |d| d.state)
    }
    fn has_managed_save(&self, uuid: Uuid) -> Result<bool, HvError> {
        self.with(uuid, |_| false)
    }
    fn perform(&self, uuid: Uuid, action: Action) -> Result<(), HvError> {
        let name = self.with(uuid, |d| d.name.clone())?;
        let slow = self.slow.lock().expect("fake").clone();
        if slow.iter().any(|s| s == "*" || *s == name) {
            self.actions.pass();
        }
        let mut state = self.state.lock().expect("fake");
        state.calls.push((name.clone(), action));
        let domain = state.domains.iter_mut().find(|d| d.name == name);
        let domain = domain.ok_or(HvError::other("gone"))?;
        if !domain.failures.is_empty() {
            return Err(domain.failures.remove(0));
        }
        domain.state = DomainState::Running;
        Ok(())
    }
    fn ping(&self) -> Result<(), HvError> {
        self.all_calls.pass();
        Ok(())
    }
    fn is_alive(&self) -> bool {
        true
    }
}

impl Connector for Fake {
    fn uri(&self) -> &str {
        &self.uri
    }
    fn connect(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
        self.all_calls.pass();
        Ok(Arc::new(self.clone()))
    }
}

/// The real loop in this process: sockets on ephemeral loopback ports, a
/// fleet of the test's hosts, a stop trigger in place of SIGTERM, and every
/// log record collected as data.
pub struct InProcess {
    pub addr: SocketAddr,
    records: Receiver<Record>,
    seen: Vec<Record>,
    trigger: Trigger,
    thread: Option<JoinHandle<(Exit, Stats)>>,
}

impl InProcess {
    /// Serves `fleet` with `dedupe_window`, until stopped (no idle exit).
    pub fn start(fleet: Fleet, dedupe_window: Duration) -> InProcess {
        InProcess::start_with(fleet, dedupe_window, None)
    }

    /// The same with an idle timeout.
    pub fn start_with(fleet: Fleet, dedupe_window: Duration, idle: Option<Duration>) -> InProcess {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("addr");
        let (shutdown, trigger) = Shutdown::manual().expect("shutdown pipe");
        let (tx, records) = std::sync::mpsc::channel();
        let several = fleet.hosts().len() > 1;
        let config = Config {
            idle_timeout: idle,
            rules: Rules::with_dedupe_window(dedupe_window),
            max_in_flight: wol_libvirt_gateway::MAX_IN_FLIGHT,
        };
        let gateway = InProcessGateway::new(
            vec![Listener::Udp(socket)],
            fleet,
            config,
            shutdown,
            Notifier::from_env(),
            Reporter::new(several).with_sink(tx),
        )
        .expect("gateway");
        let thread = std::thread::spawn(move || gateway.run());
        InProcess {
            addr,
            records,
            seen: Vec::new(),
            trigger,
            thread: Some(thread),
        }
    }

    /// Sends a magic packet for `address`.
    pub fn wake(&self, address: &str) {
        wake(self.addr, address);
    }

    /// Waits (up to `timeout`) for a decision record about `address` beyond
    /// the first `skip` ones; panics with what was seen if none comes.
    pub fn decision(&mut self, address: &str, skip: usize, timeout: Duration) -> Record {
        let wanted = mac(address);
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .seen
                .iter()
                .filter(|r| r.mac == Some(wanted) && r.result != Some("duplicate"))
                .nth(skip);
            if let Some(record) = found {
                return record.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.records.recv_timeout(left) {
                Ok(record) => self.seen.push(record),
                Err(_) => panic!(
                    "no decision #{skip} for {address} within {timeout:?}; records: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Every record received so far.
    pub fn records(&mut self) -> &[Record] {
        while let Ok(record) = self.records.try_recv() {
            self.seen.push(record);
        }
        &self.seen
    }

    /// Stops the loop as SIGTERM would; returns how it ended and how long
    /// stopping took.
    pub fn stop(mut self) -> (Exit, Stats, Duration) {
        let asked = Instant::now();
        self.trigger.stop();
        let (exit, stats) = self.join();
        (exit, stats, asked.elapsed())
    }

    /// Waits for the loop to end by itself.
    pub fn join(&mut self) -> (Exit, Stats) {
        let thread = self.thread.take().expect("joined once");
        thread.join().expect("the loop does not panic")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.trigger.stop();
            let _ = thread.join();
        }
    }
}

/// A network namespace of the test's own (`ip netns add`), with loopback up
/// and more addresses on it (IPv6 ones without duplicate detection, usable
/// at once), so a test can be many clients, also many of one IPv6 /64,
/// without touching the machine's own network. Deleted on drop. Needs root.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A namespace whose loopback also has `addresses` (`fd00::1/128`, …).
    pub fn new(addresses: &[&str]) -> NetNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wolgw-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for address in addresses {
            let mut args = vec!["-n", &ns.name, "address", "add", address, "dev", "lo"];
            if address.contains(':') {
                args.push("nodad");
            }
            ip(&args);
        }
        ns
    }

    /// Runs `f` on a thread inside the namespace: the sockets it makes live
    /// there, whichever thread uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&path).expect("the namespace's file");
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&ns),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .expect("setns");
                    f()
                })
                .join()
                .expect("thread in the namespace")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A TCP connection to `server` from the address `from` (made on the
/// calling thread: inside a [`NetNs::run`] for addresses of a namespace).
pub fn connect_from(from: std::net::IpAddr, server: SocketAddr) -> std::net::TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let family = if from.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = socket(family, SocketType::STREAM, None).expect("socket");
    bind(&fd, &SocketAddr::new(from, 0)).expect("bind the source address");
    connect(&fd, &server).expect("connect");
    std::net::TcpStream::from(fd)
}

/// `GET path` with `token` (if any) over `stream`, `Connection: close`; the
/// status and the body.
pub fn http_get(mut stream: std::net::TcpStream, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: gateway\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

/// Sends `request` (a whole HTTP/1.1 request) on `stream` and reads one
/// answer: its status and whether it says `Connection: close`. `None` when
/// the connection closed (or stalled past [`DEADLINE`]) before an answer.
pub fn http_exchange(stream: &mut std::net::TcpStream, request: &str) -> Option<(u16, bool)> {
    let (status, head, _) = http_round(stream, request.as_bytes())?;
    Some((status, head.contains("connection: close")))
}

/// Sends `request` (whole HTTP/1.1 request bytes) on `stream` and reads one
/// answer: its status, its head in lower case, and its body (by
/// `Content-Length`). `None` when the connection closed first.
pub fn http_round(
    stream: &mut std::net::TcpStream,
    request: &[u8],
) -> Option<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    stream.write_all(request).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let body = got[end..end + length].to_vec();
    Some((status, head, body))
}
