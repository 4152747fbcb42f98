//! A second libvirt host over a real network: host A is this machine's
//! libvirtd (`qemu:///system`, real QEMU/KVM guests), host B a libvirtd of
//! its own in a network namespace of its own, reached over TCP
//! (`qemu+tcp://`) and through sshd (`qemu+ssh://`), booted by
//! `tests/e2e/host-b.sh` (systemd-nspawn `--private-network` on a veth pair;
//! the only addresses used are that pair's). These need root, libvirtd,
//! QEMU and systemd-nspawn:
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh
//! sudo cargo test -- --ignored e2e_remote
//! ```
//!
//! The first test to need host B boots it (from the Debian root
//! `setup-host.sh` caches); it is powered off when this test process ends,
//! however it ends (`host-b.sh up --owner PID`). Tests that take B away
//! (its daemon stopped or frozen, its network down, its sshd refusing the
//! key) hold it alone, use a `test:///` node file as host A, and always give
//! B back.

use std::process::Command;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::e2e_libvirtd::{Guest, SLOW_DEADLINE, URI, activate, terminate, virsh_on, wakeonlan};
use crate::host_b::HostB;
use crate::util::{
    DEADLINE, Gateway, Launch, NodeFile, RunState, bin, domain, libvirtd_shared, systemd_socket,
    wait_until,
};

static HOST_B: OnceLock<Result<HostB, String>> = OnceLock::new();

/// Host B, booted by the first caller of this test process.
fn host_b() -> &'static HostB {
    match HOST_B.get_or_init(HostB::up) {
        Ok(host) => host,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `args` inside host B (all of its namespaces); its stdout, or what
/// went wrong.
fn in_b(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .args(["-t", &host_b().pid, "-a"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{args:?} in host B: {}{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `virsh` on host B, through its TCP listener.
fn b_virsh(args: &[&str]) -> (bool, String) {
    virsh_on(&host_b().tcp_uri, args)
}

/// Tests use B together; those that take it away hold it alone.
static HOST_B_USE: RwLock<()> = RwLock::new(());

fn host_b_shared() -> RwLockReadGuard<'static, ()> {
    HOST_B_USE.read().unwrap_or_else(|p| p.into_inner())
}

fn host_b_exclusive() -> RwLockWriteGuard<'static, ()> {
    HOST_B_USE.write().unwrap_or_else(|p| p.into_inner())
}

/// A throwaway guest on host B.
fn remote_guest(test: &str, mac: &str) -> Guest {
    let host = host_b();
    Guest::define_on(
        &host.tcp_uri,
        &host.virt_type,
        &format!("b-{test}"),
        mac,
        "",
    )
}

/// Log lines at warning or error level that name `uri`.
fn complaints(gateway: &Gateway, uri: &str) -> Vec<String> {
    gateway
        .lines_with(uri)
        .into_iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_a_guest_on_host_b_wakes_over_ssh_and_over_tcp() {
    let _libvirtd = libvirtd_shared();
    let _b = host_b_shared();
    let host = host_b();
    let local = Guest::define("remote-local", "52:54:00:e2:b0:01");
    let remote = remote_guest("wake", "52:54:00:e2:b0:02");
    for (uri, shown) in [
        (host.ssh_uri.clone(), host.ssh_shown()),
        (host.tcp_uri.clone(), host.tcp_uri.clone()),
    ] {
        let (socket, addr) = systemd_socket();
        let mut gateway = activate(&socket, &["--libvirt-uri", &uri]);
        wakeonlan(addr, &remote.mac);
        remote.wait_state_within("running", SLOW_DEADLINE);
        let started = gateway.wait_for_log(&format!(
            "started {} on {shown} (was shut off)",
            remote.name
        ));
        wakeonlan(addr, &local.mac);
        local.wait_state_within("running", SLOW_DEADLINE);
        gateway.wait_for_log(&format!("started {} on {URI} (was shut off)", local.name));
        terminate(&mut gateway);
        assert!(
            gateway.lines_with("keyfile=").is_empty() && gateway.lines_with("no_tty").is_empty(),
            "the URI's parameters are not logged: {started}\n{}",
            gateway.log()
        );
        assert!(complaints(&gateway, &shown).is_empty(), "{}", gateway.log());
        let (ok, text) = b_virsh(&["destroy", &remote.name]);
        assert!(ok, "{text}");
        let _ = Command::new("virsh")
            .args(["-q", "-c", URI, "destroy", &local.name])
            .status();
        local.wait_state("shut off");
    }
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_list_shows_both_hosts_and_the_ambiguity_rule_spans_them() {
    let _libvirtd = libvirtd_shared();
    let _b = host_b_shared();
    let host = host_b();
    const TWIN: &str = "52:54:00:e2:b0:10";
    let local = Guest::define("remote-twin", TWIN);
    let remote = remote_guest("twin", TWIN);
    let remote_only = remote_guest("only", "52:54:00:e2:b0:11");

    let out = Command::new(bin())
        .args(["list", "--json", "--libvirt-uri", URI, "--libvirt-uri"])
        .arg(&host.ssh_uri)
        .output()
        .expect("run list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    let entry = |name: &str| {
        listed
            .as_array()
            .and_then(|all| all.iter().find(|d| d["domain"] == name))
            .unwrap_or_else(|| panic!("{name} not listed: {listed:#}"))
            .clone()
    };
    let shown = host.ssh_shown();
    assert_eq!(entry(&local.name)["host"], URI);
    assert_eq!(entry(&remote.name)["host"], shown.as_str());
    assert_eq!(entry(&remote_only.name)["host"], shown.as_str());
    assert_eq!(entry(&remote_only.name)["macs"][0]["action"], "start");
    for twin in [&local.name, &remote.name] {
        let mac = &entry(twin)["macs"][0];
        assert_eq!(mac["action"], "none", "{twin}: {mac}");
        assert!(
            mac["on_wake"]
                .as_str()
                .is_some_and(|w| w.starts_with("nothing: ambiguous MAC")),
            "{twin}: {mac}"
        );
    }

    // The real packet: neither twin starts; the host-B-only guest does.
    let (socket, addr) = systemd_socket();
    let mut gateway = activate(&socket, &["--libvirt-uri", &host.ssh_uri]);
    wakeonlan(addr, TWIN);
    let line = gateway.wait_for_log(&format!("{TWIN} from"));
    assert!(
        line.contains(&format!("{} on {URI}", local.name))
            && line.contains(&format!("{} on {shown}", remote.name))
            && line.contains("starting none"),
        "{line}"
    );
    wakeonlan(addr, &remote_only.mac);
    remote_only.wait_state_within("running", SLOW_DEADLINE);
    gateway.wait_for_log(&format!("started {}", remote_only.name));
    terminate(&mut gateway);
    assert!(local.state().starts_with("shut off"), "{}", local.state());
    assert!(remote.state().starts_with("shut off"), "{}", remote.state());
}

/// Ways host B goes out of reach, each undone by [`Outage::end`] (and on
/// drop, so a failing test gives B back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// libvirtd and its sockets stopped: TCP connections are refused.
    DaemonStopped,
    /// libvirtd frozen (SIGSTOP): calls hang, the network answers.
    DaemonFrozen,
    /// B's end of the veth pair down: this machine still routes B's
    /// address to the pair, which has no carrier, so packets are dropped
    /// and nothing comes back, not even a reset (the host-side route stays:
    /// nothing is sent anywhere else).
    NetworkDown,
    /// sshd refuses the key (authorized_keys gone).
    KeyRefused,
}

impl Cause {
    /// What makes it happen, and what undoes it: commands run in B.
    fn commands(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Cause::DaemonStopped => (
                &[
                    "systemctl",
                    "stop",
                    "libvirtd-tcp.socket",
                    "libvirtd.socket",
                    "libvirtd-ro.socket",
                    "libvirtd-admin.socket",
                    "libvirtd.service",
                ],
                &[
                    "systemctl",
                    "start",
                    "libvirtd-tcp.socket",
                    "libvirtd.service",
                ],
            ),
            Cause::DaemonFrozen => (
                &["pkill", "-STOP", "-x", "libvirtd"],
                &["pkill", "-CONT", "-x", "libvirtd"],
            ),
            Cause::NetworkDown => (
                &["ip", "link", "set", "host0", "down"],
                &["ip", "link", "set", "host0", "up"],
            ),
            Cause::KeyRefused => (
                &["mv", AUTHORIZED_KEYS, AUTHORIZED_KEYS_OFF],
                &["mv", AUTHORIZED_KEYS_OFF, AUTHORIZED_KEYS],
            ),
        }
    }
}

const AUTHORIZED_KEYS: &str = "/home/wol/.ssh/authorized_keys";
const AUTHORIZED_KEYS_OFF: &str = "/home/wol/.ssh/authorized_keys.off";

/// Host B out of reach until [`Outage::end`] or drop.
struct Outage {
    cause: Cause,
    ended: bool,
}

impl Outage {
    fn begin(cause: Cause) -> Outage {
        // Made first: a command that half worked is still undone on drop.
        let outage = Outage {
            cause,
            ended: false,
        };
        let (begin, _) = cause.commands();
        let outcome = in_b(begin);
        assert!(outcome.is_ok(), "{cause:?}: {outcome:?}");
        outage
    }

    /// Gives B back. Never panics: it also runs while a failing test
    /// unwinds.
    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let (_, end) = self.cause.commands();
        if let Err(e) = in_b(end) {
            eprintln!("cannot end the outage {:?} of host B: {e}", self.cause);
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.end();
    }
}

/// Host A of the outage tests: a `test:///` node file with one shut-off
/// domain, in the gateway's own process. Its start takes no time, so how
/// long a wake of it takes is how long host B made it wait (with a real
/// QEMU start on a loaded machine, a second's bound would measure QEMU).
fn host_a(name: &str, mac: &str) -> NodeFile {
    NodeFile::new(&[domain(name, mac, RunState::ShutOff)])
}

/// The gateway, socket-activated as systemd would, on host A and `uri`.
fn gateway_on(socket: &std::net::UdpSocket, node: &NodeFile, uri: &str) -> Gateway {
    Launch::new(&[
        "--libvirt-uri",
        &node.uri(),
        "--libvirt-uri",
        uri,
        "--libvirt-timeout",
        "2s",
        "--idle-timeout",
        "5m",
    ])
    .pass_fd(socket.try_clone().expect("dup socket").into())
    .spawn()
}

/// Host B out of reach (`cause`) before the gateway starts, over `uri`
/// (shown as `shown`): a wake on host A is decided without waiting for B
/// beyond the one-second grace; B's guest waits, with one warning in all;
/// once B is back its guest is started by the same gateway process.
fn unreachable_host_b(cause: Cause, uri: &str, shown: &str) {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let _b = host_b_exclusive();
    let test = format!("{cause:?}").to_lowercase();
    let node = host_a("a-guest", "52:54:00:e2:b0:20");
    let remote = remote_guest(&test, "52:54:00:e2:b0:21");
    let outage = Outage::begin(cause);

    let (socket, addr) = systemd_socket();
    let gateway = gateway_on(&socket, &node, uri);
    let sent = Instant::now();
    wakeonlan(addr, "52:54:00:e2:b0:20");
    gateway.wait_for_log(&format!("started a-guest on {}", node.uri()));
    let took = sent.elapsed();
    assert!(
        took < TIMEOUT,
        "the wake on host A took {took:?} with host B out ({cause:?}); log:\n{}",
        gateway.log()
    );
    // B's guest: asked for three times while B is out.
    for _ in 0..3 {
        wakeonlan(addr, &remote.mac);
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        wait_until(DEADLINE, || !complaints(&gateway, shown).is_empty()),
        "host B's outage was not reported; log:\n{}",
        gateway.log()
    );
    back_again(outage, gateway, &remote, shown);
}

/// Ends `outage`, then: `waiting` (a guest on B asked for during it) is
/// started by the same gateway process, B is reported back, and the
/// gateway, stopped, said one warning about B in all (the outage's).
fn back_again(mut outage: Outage, mut gateway: Gateway, waiting: &Guest, shown: &str) {
    outage.end();
    waiting.wait_state_within("running", SLOW_DEADLINE);
    gateway.wait_for_log(&format!("started {} on {shown}", waiting.name));
    gateway.wait_for_log(&format!("libvirt at {shown} is reachable again"));
    terminate(&mut gateway);
    let complained = complaints(&gateway, shown);
    assert_eq!(complained.len(), 1, "one warning:\n{}", gateway.log());
    assert!(complained[0].contains(" WARN "), "{}", complained[0]);
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_host_b_with_its_daemon_stopped() {
    let host = host_b();
    unreachable_host_b(Cause::DaemonStopped, &host.tcp_uri, &host.tcp_uri);
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_host_b_with_its_network_down() {
    let host = host_b();
    unreachable_host_b(Cause::NetworkDown, &host.tcp_uri, &host.tcp_uri);
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_host_b_refusing_the_ssh_key() {
    let host = host_b();
    unreachable_host_b(Cause::KeyRefused, &host.ssh_uri, &host.ssh_shown());
}

/// A call to host B that hangs mid-request (`cause` after the gateway got
/// an answer from B): as a hung local daemon, one warning, wakes on host A
/// go on at once, and the pending wake is done when B answers again.
fn host_b_hangs_mid_request(cause: Cause, uri: &str, shown: &str) {
    let _b = host_b_exclusive();
    let test = format!("hang-{cause:?}").to_lowercase();
    let node = host_a("a-guest", "52:54:00:e2:b0:30");
    let first = remote_guest(&format!("{test}-1"), "52:54:00:e2:b0:31");
    let second = remote_guest(&format!("{test}-2"), "52:54:00:e2:b0:32");
    let (socket, addr) = systemd_socket();
    let mut gateway = gateway_on(&socket, &node, uri);
    // Connected: a normal wake on B first.
    wakeonlan(addr, &first.mac);
    first.wait_state_within("running", SLOW_DEADLINE);
    gateway.wait_for_log(&format!("started {} on {shown}", first.name));

    let outage = Outage::begin(cause);
    wakeonlan(addr, &second.mac);
    gateway.wait_for_log(&format!("libvirt at {shown} did not answer within 2 s"));
    // Host A, meanwhile: decided at once (B is known silent: not asked, no
    // grace to wait).
    let sent = Instant::now();
    wakeonlan(addr, "52:54:00:e2:b0:30");
    gateway.wait_for_log(&format!("started a-guest on {}", node.uri()));
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the wake on host A took {took:?} while host B hangs ({cause:?}); log:\n{}",
        gateway.log()
    );
    assert!(gateway.alive(), "{}", gateway.log());
    back_again(outage, gateway, &second, shown);
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_host_b_daemon_hangs_mid_request_over_ssh() {
    let host = host_b();
    host_b_hangs_mid_request(Cause::DaemonFrozen, &host.ssh_uri, &host.ssh_shown());
}

#[test]
#[ignore = "needs root, libvirtd, QEMU and systemd-nspawn: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_remote"]
fn e2e_remote_host_b_network_hangs_mid_request_over_tcp() {
    let host = host_b();
    host_b_hangs_mid_request(Cause::NetworkDown, &host.tcp_uri, &host.tcp_uri);
}
