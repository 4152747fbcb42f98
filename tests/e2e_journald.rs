//! Journald for real: a `systemd-journald` started by hand (PID 1 is not
//! systemd here), the real binary with its stderr connected to the journal
//! as systemd connects it, and the entries read back with `journalctl`.
//!
//! Needs root: `sudo cargo test -- --ignored e2e_journald`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use wol_libvirt_gateway::ingress::packet::magic_packet;

use crate::util::{
    DEADLINE, Launch, NodeFile, RunState, bin, domain, mac, secureon_element, wait_until,
};

const JOURNALD: &str = "/lib/systemd/systemd-journald";
const SOCKET_DIR: &str = "/run/systemd/journal";
/// The native protocol socket (what tracing-journald writes to).
const NATIVE_SOCKET: &str = "/run/systemd/journal/socket";
/// The stream socket systemd connects a unit's stdout/stderr to.
const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";
/// Where journald keeps a volatile journal (no /var/log/journal here).
const RUNTIME_JOURNAL: &str = "/run/log/journal";
/// The sockets journald binds; left behind, dead, when it exits.
const SOCKETS: &[&str] = &["socket", "stdout", "dev-log", "io.systemd.journal"];

const IDENTIFIER: &str = "wol-libvirt-gateway";
const WEB01_MAC: &str = "52:54:00:aa:bb:cc";
const UNKNOWN_MAC: &str = "52:54:00:de:ad:01";

/// One journald at a time for the tests of this module.
static JOURNALD_LOCK: Mutex<()> = Mutex::new(());

/// A journald this module may use; stops it on drop if it started it.
pub struct Journald {
    /// `None`: one was running already, and is left alone.
    started: Option<Child>,
    created: Vec<&'static str>,
}

/// True when a journald answers on the native socket. A socket file alone
/// proves nothing: journald does not remove its sockets when it exits. The
/// check is on this host's /run, so a journald inside a container (which
/// `pgrep` would see) does not count.
fn journald_running() -> bool {
    UnixDatagram::unbound()
        .and_then(|socket| socket.connect(NATIVE_SOCKET))
        .is_ok()
}

/// Starts `systemd-journald` unless one already answers on this host, and
/// waits for its sockets. Idempotent: with journald running it does nothing.
///
/// Not `setsid`: in the test's process group a Ctrl-C stops journald too
/// instead of leaving it behind.
pub fn ensure_journald() -> Journald {
    if journald_running() {
        return Journald {
            started: None,
            created: Vec::new(),
        };
    }
    let mut created = Vec::new();
    for dir in [SOCKET_DIR, RUNTIME_JOURNAL] {
        if !Path::new(dir).exists() {
            created.push(dir);
        }
    }
    std::fs::create_dir_all(SOCKET_DIR).unwrap_or_else(|e| panic!("mkdir {SOCKET_DIR}: {e}"));
    // Dead sockets of an earlier journald would pass for live ones below.
    remove_sockets();
    let child = Command::new(JOURNALD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {JOURNALD}: {e}"));
    let mut journald = Journald {
        started: Some(child),
        created,
    };
    let mut exited = None;
    let up = wait_until(DEADLINE, || {
        if let Some(child) = journald.started.as_mut() {
            exited = child.try_wait().ok().flatten();
        }
        exited.is_some() || (journald_running() && UnixStream::connect(STDOUT_SOCKET).is_ok())
    });
    assert!(
        up && exited.is_none(),
        "{JOURNALD} did not come up within {DEADLINE:?} (exit: {exited:?}); root is needed"
    );
    journald
}

fn remove_sockets() {
    for name in SOCKETS {
        let _ = std::fs::remove_file(Path::new(SOCKET_DIR).join(name));
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let Some(mut child) = self.started.take() else {
            return;
        };
        // SIGTERM, so that it syncs and exits cleanly; SIGKILL if it hangs.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        if !wait_until(DEADLINE, || matches!(child.try_wait(), Ok(Some(_)))) {
            let _ = child.kill();
        }
        let _ = child.wait();
        remove_sockets();
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A connection to journald's stdout stream socket, made the way systemd
/// makes it for `StandardError=journal`: the stream header, then the write
/// end only. Returns the fd and its `DEVICE:INODE` for `JOURNAL_STREAM`.
fn journal_stream(identifier: &str) -> (OwnedFd, String) {
    let mut stream = UnixStream::connect(STDOUT_SOCKET)
        .unwrap_or_else(|e| panic!("connect {STDOUT_SOCKET}: {e}"));
    // identifier, unit id, priority (6 = info), level prefix, forward to
    // syslog, to kmsg, to console: systemd's defaults for a service.
    write!(stream, "{identifier}\n\n6\n1\n0\n0\n0\n").expect("write stream header");
    stream.shutdown(Shutdown::Read).expect("shutdown read side");
    let file = File::from(OwnedFd::from(stream));
    let meta = file.metadata().expect("fstat journal stream");
    (
        OwnedFd::from(file),
        format!("{}:{}", meta.dev(), meta.ino()),
    )
}

/// The real binary, run standalone, with stdout and stderr on the journal
/// stream and `JOURNAL_STREAM` naming it, as systemd runs a service.
struct Connected {
    child: Child,
    _cache: TempDir,
}

impl Connected {
    fn spawn(args: &[&str]) -> Connected {
        let (stream, journal_stream) = journal_stream(IDENTIFIER);
        let stdout = stream.try_clone().expect("dup journal stream");
        let cache = tempfile::tempdir().expect("tempdir");
        let child = Command::new(bin())
            .args(args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("CACHE_DIRECTORY")
            .env("JOURNAL_STREAM", journal_stream)
            .env("XDG_CACHE_HOME", cache.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stream)
            .spawn()
            .expect("spawn gateway");
        Connected {
            child,
            _cache: cache,
        }
    }
}

impl Connected {
    /// The binary on `node`'s `test:///` URI, by hand on an ephemeral
    /// loopback port, and that port, read back from its own journal entry
    /// (entries since `since`).
    fn listening(node: &NodeFile, since: u64) -> (Connected, SocketAddr) {
        let uri = node.uri();
        let gateway = Connected::spawn(&["--listen-address", "127.0.0.1:0", "--libvirt-uri", &uri]);
        let listening = wait_for_entry(since, gateway.child.id(), "listening on ");
        let addr = listen_addr(field(&listening, "MESSAGE"));
        (gateway, addr)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Entry = HashMap<String, String>;

fn now_usec() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_micros()).expect("time fits u64")
}

/// Entries of this identifier since `since_usec` matching `matches`, read
/// with `journalctl -o json` from the default location (/run/log/journal
/// and /var/log/journal).
fn journal(since_usec: u64, matches: &[String]) -> Vec<Entry> {
    let output = Command::new("journalctl")
        .args(["--output=json", "--all", "--no-pager", "--quiet"])
        .arg(format!("--since=@{}", since_usec / 1_000_000))
        .arg(format!("SYSLOG_IDENTIFIER={IDENTIFIER}"))
        .args(matches)
        .output()
        .expect("run journalctl");
    assert!(
        output.status.success(),
        "journalctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            parse_entry(line).unwrap_or_else(|e| panic!("bad journalctl JSON ({e}): {line}"))
        })
        // --since has whole seconds; the timestamp is exact.
        .filter(|e| {
            e.get("__REALTIME_TIMESTAMP")
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t >= since_usec)
        })
        .collect()
}

/// Waits until process `pid` has logged an entry whose MESSAGE contains
/// `needle` (journald writes it a moment after it is sent).
fn wait_for_entry(since_usec: u64, pid: u32, needle: &str) -> Entry {
    let matches = [format!("_PID={pid}")];
    let mut found = None;
    let mut seen = Vec::new();
    let ok = wait_until(DEADLINE, || {
        seen = journal(since_usec, &matches);
        found = seen
            .iter()
            .find(|e| e.get("MESSAGE").is_some_and(|m| m.contains(needle)))
            .cloned();
        found.is_some()
    });
    assert!(
        ok,
        "no journal entry of pid {pid} with {needle:?} within {DEADLINE:?}; entries: {seen:#?}"
    );
    found.unwrap_or_default()
}

/// A field that must be there.
fn field<'a>(entry: &'a Entry, name: &str) -> &'a str {
    entry
        .get(name)
        .unwrap_or_else(|| panic!("no field {name} in {entry:#?}"))
}

/// Reads one flat `journalctl -o json` object. String values are kept as
/// they are; other values (null, numbers, arrays for binary or repeated
/// fields) as their JSON text.
fn parse_entry(line: &str) -> serde_json::Result<Entry> {
    let object: HashMap<String, serde_json::Value> = serde_json::from_str(line)?;
    Ok(object
        .into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => (name, text),
            other => (name, other.to_string()),
        })
        .collect())
}

/// The address in a "listening on ADDR; ..." message.
fn listen_addr(message: &str) -> SocketAddr {
    let rest = &message[message.find("listening on ").expect("listening") + 13..];
    let addr = rest.split([';', ',']).next().unwrap_or_default().trim();
    addr.parse()
        .unwrap_or_else(|_| panic!("cannot parse address from {message:?}"))
}

#[test]
#[ignore = "needs root to start systemd-journald by hand: sudo cargo test -- --ignored e2e_journald"]
fn on_the_journal_each_decision_is_an_entry_with_fields_and_its_syslog_priority() {
    let _lock = JOURNALD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _journald = ensure_journald();
    let since = now_usec();
    let node = NodeFile::new(&[domain("web01", WEB01_MAC, RunState::ShutOff)]);
    let (gateway, addr) = Connected::listening(&node, since);
    let pid = gateway.child.id();
    let listening = wait_for_entry(since, pid, "listening on ");
    // Native protocol, not a line on the stderr stream: detection worked.
    assert_eq!(field(&listening, "_TRANSPORT"), "journal", "{listening:#?}");
    assert_eq!(field(&listening, "PRIORITY"), "6", "{listening:#?}");

    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let source = sender.local_addr().expect("sender addr").to_string();
    sender
        .send_to(&magic_packet(mac("52:54:00:AA:BB:CC")), addr)
        .expect("send");
    let started = wait_for_entry(since, pid, "started web01");
    for (name, want) in [
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("_TRANSPORT", "journal"),
        ("PRIORITY", "6"),
        ("MAC", WEB01_MAC),
        ("DOMAIN", "web01"),
        ("ACTION", "start"),
        ("RESULT", "ok"),
        ("SOURCE", source.as_str()),
        ("STATE", "shut off"),
    ] {
        assert_eq!(field(&started, name), want, "{name} in {started:#?}");
    }
    // Fields are named in capitals, with no prefix (no F_MAC, no "mac").
    assert!(
        !started.contains_key("F_MAC") && !started.contains_key("mac"),
        "{started:#?}"
    );

    sender
        .send_to(&magic_packet(mac(UNKNOWN_MAC)), addr)
        .expect("send");
    let unknown = wait_for_entry(since, pid, &format!("has MAC {UNKNOWN_MAC}"));
    assert!(
        field(&unknown, "MESSAGE").starts_with("no domain "),
        "{unknown:#?}"
    );
    for (name, want) in [
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("_TRANSPORT", "journal"),
        ("PRIORITY", "4"),
        ("MAC", UNKNOWN_MAC),
        ("ACTION", "none"),
        ("RESULT", "no-match"),
        ("SOURCE", source.as_str()),
    ] {
        assert_eq!(field(&unknown, name), want, "{name} in {unknown:#?}");
    }
    assert!(!unknown.contains_key("DOMAIN"), "{unknown:#?}");
}

#[test]
#[ignore = "needs root to start systemd-journald by hand: sudo cargo test -- --ignored e2e_journald"]
fn with_journal_stream_naming_another_fd_it_writes_readable_lines_to_stderr() {
    let _lock = JOURNALD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _journald = ensure_journald();
    let since = now_usec();
    let node = NodeFile::new(&[domain("web01", WEB01_MAC, RunState::ShutOff)]);
    // A real, live journal stream, inherited as a variable only: stderr is
    // the harness's pipe, as for a child of a service that redirected it.
    let (_stream, other) = journal_stream(IDENTIFIER);
    let gateway = Launch::by_hand(&node.uri(), &[])
        .env("JOURNAL_STREAM", other)
        .spawn();
    crate::util::wake(gateway.listen_addr(), WEB01_MAC);
    let line = gateway.wait_for_log("started web01");
    assert!(
        line.contains("for 52:54:00:aa:bb:cc from 127.0.0.1:") && !line.contains("mac="),
        "{line}"
    );
    let pid = gateway.pid();
    let native = journal(since, &[format!("_PID={pid}")]);
    assert!(native.is_empty(), "{native:#?}");
}

#[test]
#[ignore = "needs root to start systemd-journald by hand: sudo cargo test -- --ignored e2e_journald"]
fn on_the_journal_throttled_guesses_are_an_entry_with_fields() {
    // Security review, finding 6: wrong SecureOn passwords are throttled,
    // and the journal says so with the gateway's fields.
    let _lock = JOURNALD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _journald = ensure_journald();
    let since = now_usec();
    let element = secureon_element(&[9, 8, 7, 6, 5, 4]);
    let node =
        NodeFile::new(&[domain("web01", WEB01_MAC, RunState::ShutOff).with_metadata(&element)]);
    let (gateway, addr) = Connected::listening(&node, since);
    let pid = gateway.child.id();
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let source = sender.local_addr().expect("sender addr").to_string();
    let guess = |password: u8| {
        let mut packet = magic_packet(mac(WEB01_MAC));
        packet.extend_from_slice(&[password, 0, 0, 0, 0, 0]);
        sender.send_to(&packet, addr).expect("send");
    };
    // Five wrong ones, each decided (refused) before the next is sent...
    for password in 0..5u8 {
        guess(password);
        let refused = [format!("_PID={pid}"), "RESULT=refused".to_owned()];
        let decided = wait_until(DEADLINE, || {
            journal(since, &refused).len() > usize::from(password)
        });
        assert!(decided, "wrong password {password} not refused in time");
    }
    // ...then the sixth is not looked up.
    guess(9);
    let throttled = wait_for_entry(since, pid, "not looking up the SecureOn password");
    for (name, want) in [
        ("PRIORITY", "4"),
        ("MAC", WEB01_MAC),
        ("SOURCE", source.as_str()),
        ("VIA", "udp"),
        ("ACTION", "none"),
        ("RESULT", "throttled"),
    ] {
        assert_eq!(field(&throttled, name), want, "{name} in {throttled:#?}");
    }
}
