//! End to end through libvirtd: real QEMU guests on `qemu:///system`, the real
//! binary socket-activated (the test holds the socket, as systemd does), and
//! packets from the real `wakeonlan` command.
//!
//! These need root, libvirtd and QEMU, so `cargo test` skips them. Run them
//! with:
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh
//! sudo cargo test -- --ignored e2e_libvirtd
//! ```
//!
//! Each test defines its own guest (32 MiB, no disk, one user-mode NIC with a
//! fixed MAC, boot ROM off: it boots nothing and idles) and removes it at the
//! end, even when the test fails. The slow-start tests use the qemu hook
//! `setup-host.sh` installs: the start of a guest whose name contains
//! `slowhook` sleeps 8 s in `prepare`, as a VFIO / GPU-passthrough start does.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{
    DEADLINE, Gateway, Launch, libvirtd_exclusive, libvirtd_shared, summary_count, systemd_socket,
    wait_until,
};

pub(crate) const URI: &str = "qemu:///system";

pub(crate) fn virsh(args: &[&str]) -> (bool, String) {
    virsh_on(URI, args)
}

/// `virsh -c uri args`: whether it succeeded, and what it printed.
pub(crate) fn virsh_on(uri: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run virsh (tests/e2e/setup-host.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_owned())
}

pub(crate) fn virsh_ok(args: &[&str]) -> String {
    let (ok, text) = virsh(args);
    assert!(ok, "virsh {args:?} failed: {text}");
    text
}

/// A throwaway guest of the libvirt at `uri` (this machine's, or host B's
/// in `tests/e2e_remote.rs`), destroyed and undefined on drop.
pub(crate) struct Guest {
    pub(crate) name: String,
    pub(crate) mac: String,
    uri: String,
}

impl Guest {
    pub(crate) fn define(test: &str, mac: &str) -> Guest {
        Guest::define_with(test, mac, "")
    }

    /// A guest with `extra` devices (e.g. a disk) besides its NIC.
    pub(crate) fn define_with(test: &str, mac: &str, extra: &str) -> Guest {
        let virt_type = if std::path::Path::new("/dev/kvm").exists() {
            "kvm"
        } else {
            "qemu"
        };
        Guest::define_on(URI, virt_type, test, mac, extra)
    }

    /// A guest of type `virt_type` on the libvirt at `uri`.
    pub(crate) fn define_on(
        uri: &str,
        virt_type: &str,
        test: &str,
        mac: &str,
        extra: &str,
    ) -> Guest {
        let name = format!("wolgw-e2e-{test}-{}", std::process::id());
        let (_dir, path) = guest_xml(&name, mac, virt_type, extra);
        let guest = Guest {
            name,
            mac: mac.to_owned(),
            uri: uri.to_owned(),
        };
        // Leftovers of an earlier run killed before its guests' drop (same
        // test, another process id) go first: they hold the same MAC, and
        // the gateway would rightly refuse the ambiguity.
        let prefix = format!("wolgw-e2e-{test}-");
        for stale in guest.virsh_ok(&["list", "--all", "--name"]).lines() {
            if stale
                .strip_prefix(&prefix)
                .is_some_and(|pid| pid.parse::<u32>().is_ok())
            {
                guest.remove_named(stale.trim());
            }
        }
        guest.virsh_ok(&["define", &path.to_string_lossy()]);
        guest
    }

    /// `virsh` on this guest's libvirt; panics with its output on failure.
    fn virsh_ok(&self, args: &[&str]) -> String {
        let (ok, text) = virsh_on(&self.uri, args);
        assert!(ok, "virsh -c {} {args:?} failed: {text}", self.uri);
        text
    }

    pub(crate) fn state(&self) -> String {
        self.virsh_ok(&["domstate", &self.name, "--reason"])
    }

    pub(crate) fn wait_state(&self, prefix: &str) -> String {
        self.wait_state_within(prefix, DEADLINE)
    }

    /// Waits up to `timeout` for a state starting with `prefix`. (`virsh
    /// domstate` itself waits while the domain's start sits in a hook.)
    pub(crate) fn wait_state_within(&self, prefix: &str, timeout: Duration) -> String {
        let mut last = String::new();
        let reached = wait_until(timeout, || {
            last = if self.uri == URI {
                self.state()
            } else {
                // Across a network (host B) a read may fail for a moment,
                // e.g. "No route to host" while the neighbour entry is
                // renewed after B's network came back: not yet, not a
                // failure.
                virsh_on(&self.uri, &["domstate", &self.name, "--reason"]).1
            };
            last.starts_with(prefix)
        });
        assert!(
            reached,
            "{} did not reach {prefix:?}; last state {last:?}",
            self.name
        );
        last
    }

    pub(crate) fn start(&self) {
        self.virsh_ok(&["start", &self.name]);
        self.wait_state("running");
    }

    fn remove(&self) {
        self.remove_named(&self.name);
    }

    /// Removes the domain `name` of this guest's libvirt.
    fn remove_named(&self, name: &str) {
        let _ = virsh_on(&self.uri, &["destroy", name]);
        let _ = virsh_on(&self.uri, &["undefine", "--managed-save", name]);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The test guests' definition (32 MiB, no disk unless `extra` adds one,
/// one user-mode NIC with `mac`, boot ROM off: it boots nothing and idles),
/// written to a file in a temporary directory (kept while the first value
/// lives).
fn guest_xml(name: &str, mac: &str, virt_type: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let xml = format!(
        "<domain type='{virt_type}'><name>{name}</name><memory unit='MiB'>32</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <devices>{extra}<interface type='user'><mac address='{mac}'/><model type='virtio'/>\
         <rom enabled='no'/></interface>\
         <graphics type='vnc' port='-1' listen='127.0.0.1'/></devices></domain>"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guest.xml");
    std::fs::write(&path, xml).expect("write guest xml");
    (dir, path)
}

/// Sends a magic packet with Debian's `wakeonlan`.
pub(crate) fn wakeonlan(addr: SocketAddr, mac: &str) {
    let status = Command::new("wakeonlan")
        .args([
            "-i",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            mac,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run wakeonlan (tests/e2e/setup-host.sh installs it)");
    assert!(status.success(), "wakeonlan failed");
}

/// Long enough for a QEMU start on a busy 2-core machine, after a slow hook
/// (this test's, or a concurrent test's that holds up libvirtd's listings).
pub(crate) const SLOW_DEADLINE: Duration = Duration::from_secs(60);

/// Starts the gateway on the held socket, as systemd would (the test keeps
/// holding it), with `args` after the URI; it runs until [`terminate`]d.
pub(crate) fn activate(socket: &UdpSocket, args: &[&str]) -> Gateway {
    let mut all = vec!["--libvirt-uri", URI, "--idle-timeout", "5m"];
    all.extend_from_slice(args);
    Launch::new(&all)
        .pass_fd(socket.try_clone().expect("dup socket").into())
        .spawn()
}

/// Sends SIGTERM, asserts exit status 0, and returns how long the exit took
/// from the signal and the exit summary line.
pub(crate) fn terminate(gateway: &mut Gateway) -> (Duration, String) {
    let asked = Instant::now();
    gateway.signal("TERM");
    let status = gateway.wait_exit(DEADLINE);
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", gateway.log());
    let summary = gateway.lines_with("exiting (signal): ");
    assert_eq!(summary.len(), 1, "one summary; log:\n{}", gateway.log());
    (took, summary[0].clone())
}

/// SIGTERM with one request in flight for `mac`: the process exits 0
/// within 2 s, the summary counts `handled` requests and the one not acted
/// on, and the not-acting-on line names `mac` as being handled.
pub(crate) fn terminate_with_one_in_flight(gateway: &mut Gateway, mac: &str, handled: u64) {
    let (took, summary) = terminate(gateway);
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} after SIGTERM; log:\n{}",
        gateway.log()
    );
    assert_eq!(summary_count(&summary, "not acted on"), 1, "{summary}");
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        handled,
        "{summary}"
    );
    let not_acting = gateway.lines_with("signal: not acting on 1 wake request(s) read: ");
    assert_eq!(not_acting.len(), 1, "{}", gateway.log());
    assert!(
        not_acting[0].contains(&format!("{mac} (being handled)")),
        "{}",
        not_acting[0]
    );
}

/// The qemu hook `tests/e2e/setup-host.sh` installs: `prepare` of a domain
/// whose name contains `slowhook` sleeps [`HOOK_SLEEP`] and appends a line to
/// [`HOOK_LOG`], as a VFIO / GPU-passthrough start looks to a client.
const HOOK: &str = "/etc/libvirt/hooks/qemu";
const HOOK_MARKER: &str = "# wol-libvirt-gateway e2e hook";
const HOOK_LOG: &str = "/var/log/libvirt/wolgw-e2e-hook.log";
const HOOK_SLEEP: Duration = Duration::from_secs(8);

fn require_slow_hook() {
    let hook = std::fs::read_to_string(HOOK).unwrap_or_default();
    assert!(
        hook.lines().any(|l| l == HOOK_MARKER),
        "{HOOK} is not the end-to-end hook: run sudo tests/e2e/setup-host.sh"
    );
}

/// Slow `prepare`s the hook has logged for the domain `name`.
fn hook_prepares(name: &str) -> usize {
    let needle = format!(" {name} prepare:");
    std::fs::read_to_string(HOOK_LOG)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Waits until the hook has logged more than `before` prepares of `name`.
fn wait_for_prepare(name: &str, before: usize, gateway: &Gateway) {
    assert!(
        wait_until(SLOW_DEADLINE, || hook_prepares(name) > before),
        "no slow prepare of {name} in {HOOK_LOG} (was libvirtd restarted after the hook was \
         installed? sudo tests/e2e/setup-host.sh does it); gateway log:\n{}",
        gateway.log()
    );
}

/// Whether a QEMU process runs for the domain `name` (libvirt names it with
/// `-name guest=NAME,...`). Unlike virsh, this answers while the domain's
/// start sits in a hook: libvirtd holds the domain, and every query of it
/// waits, for the hook's whole duration.
fn has_qemu_process(name: &str) -> bool {
    let needle = format!("guest={name},");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
    })
}

/// A file removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the gateway on the held socket, as systemd would, and waits for it
/// to exit after its idle timeout.
fn activate_and_wait(socket: &UdpSocket) -> Gateway {
    let mut gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "2s"])
        .pass_fd(socket.try_clone().expect("dup socket").into())
        .spawn();
    let status = gateway.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "log:\n{}", gateway.log());
    gateway
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_shut_off_guest_is_started() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("off", "52:54:00:e2:00:01");
    assert!(guest.state().starts_with("shut off"));
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let gateway = activate_and_wait(&socket);
    guest.wait_state("running");
    let started = gateway.lines_with(&format!("started {}", guest.name));
    assert_eq!(started.len(), 1, "{}", gateway.log());
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_paused_guest_is_resumed() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("paused", "52:54:00:e2:00:02");
    guest.start();
    virsh_ok(&["suspend", &guest.name]);
    guest.wait_state("paused");
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let gateway = activate_and_wait(&socket);
    let state = guest.wait_state("running");
    assert!(state.contains("unpaused"), "{state}");
    assert_eq!(
        gateway.lines_with(&format!("resumed {}", guest.name)).len(),
        1,
        "{}",
        gateway.log()
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_managed_saved_guest_is_restored_from_its_image() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("saved", "52:54:00:e2:00:03");
    guest.start();
    virsh_ok(&["managedsave", &guest.name]);
    let saved = guest.wait_state("shut off");
    assert!(saved.contains("saved"), "{saved}");
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let gateway = activate_and_wait(&socket);
    let state = guest.wait_state("running");
    assert!(
        state.contains("restored"),
        "restored from the image, not booted: {state}"
    );
    let info = virsh_ok(&["dominfo", &guest.name]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Managed save:") && l.ends_with("no")),
        "image consumed: {info}"
    );
    let line = gateway.lines_with(&format!(
        "restored {} from its managed-save image",
        guest.name
    ));
    assert_eq!(line.len(), 1, "{}", gateway.log());
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_running_guest_is_left_alone() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("running", "52:54:00:e2:00:04");
    guest.start();
    let before = guest.state();
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let gateway = activate_and_wait(&socket);
    assert_eq!(guest.state(), before);
    let line = gateway.lines_with(&format!("{} is already up (running)", guest.name));
    assert_eq!(line.len(), 1, "{}", gateway.log());
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_unknown_mac_changes_nothing_and_warns_once() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("bystander", "52:54:00:e2:00:05");
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, "52:54:00:e2:ff:ff");
    let gateway = activate_and_wait(&socket);
    assert!(guest.state().starts_with("shut off"));
    let warnings = gateway.lines_with("WARN");
    assert_eq!(warnings.len(), 1, "{}", gateway.log());
    assert!(warnings[0].contains("no domain on qemu:///system has MAC 52:54:00:e2:ff:ff"));
    assert!(
        gateway.lines_with("started").is_empty(),
        "{}",
        gateway.log()
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_burst_of_five_is_one_start() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("burst", "52:54:00:e2:00:06");
    let (socket, addr) = systemd_socket();
    for _ in 0..5 {
        wakeonlan(addr, &guest.mac);
    }
    let gateway = activate_and_wait(&socket);
    guest.wait_state("running");
    let actions = gateway.lines_with(&format!("for {} from", guest.mac));
    assert_eq!(
        actions.len(),
        1,
        "one action for five packets:\n{}",
        gateway.log()
    );
    assert!(
        actions[0].contains(&format!("started {}", guest.name)),
        "{}",
        actions[0]
    );
    assert!(
        actions[0].contains("4 duplicate packets in this burst ignored"),
        "{}",
        actions[0]
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_two_guests_queued_before_activation_both_run() {
    let _libvirtd = libvirtd_shared();
    let first = Guest::define("two-a", "52:54:00:e2:00:07");
    let second = Guest::define("two-b", "52:54:00:e2:00:08");
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &first.mac);
    wakeonlan(addr, &second.mac);
    let gateway = activate_and_wait(&socket);
    first.wait_state("running");
    second.wait_state("running");
    for guest in [&first, &second] {
        assert_eq!(
            gateway.lines_with(&format!("started {}", guest.name)).len(),
            1,
            "{}",
            gateway.log()
        );
    }
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_a_slow_hook_delays_no_other_wake() {
    // Alone: while a domain starts, libvirtd answers no listing, and the
    // other tests' gateways listing meanwhile would use up its workers.
    let _libvirtd = libvirtd_exclusive();
    require_slow_hook();
    let slow = Guest::define("slowhook-a", "52:54:00:e2:00:09");
    let fast = Guest::define("fast-b", "52:54:00:e2:00:0a");
    let prepares = hook_prepares(&slow.name);
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &slow.mac);
    let sent = Instant::now();
    let mut gateway = activate(&socket, &[]);
    std::thread::sleep(Duration::from_millis(200).saturating_sub(sent.elapsed()));
    wakeonlan(addr, &fast.mac);

    fast.wait_state_within("running", SLOW_DEADLINE);
    let fast_up = sent.elapsed();
    // The slow guest's start was asked for (the hook logged its prepare) and
    // sits in the hook: no QEMU process yet, so it is not running.
    wait_for_prepare(&slow.name, prepares, &gateway);
    assert!(
        !has_qemu_process(&slow.name),
        "{} already has a QEMU process when {} is up {fast_up:?} after the first packet; \
         log:\n{}",
        slow.name,
        fast.name,
        gateway.log()
    );
    slow.wait_state_within("running", SLOW_DEADLINE);
    let slow_up = sent.elapsed();
    assert!(
        slow_up >= fast_up + HOOK_SLEEP / 2,
        "{} up after {fast_up:?}, {} after {slow_up:?}: the fast one waited for the hook; \
         log:\n{}",
        fast.name,
        slow.name,
        gateway.log()
    );
    assert_eq!(hook_prepares(&slow.name), prepares + 1, "one start asked");
    // The guest runs once libvirtd has started it; the gateway's decision
    // follows a moment later.
    gateway.wait_for_log(&format!("started {} (was shut off)", slow.name));

    let (_, summary) = terminate(&mut gateway);
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        2,
        "{summary}"
    );
    assert_eq!(summary_count(&summary, "not acted on"), 0, "{summary}");
    // Smoke: the fast guest's line comes first.
    let log = gateway.log();
    let at = |guest: &Guest| log.find(&format!("started {} (was shut off)", guest.name));
    let (fast_line, slow_line) = (at(&fast), at(&slow));
    assert!(
        fast_line.is_some() && slow_line.is_some() && fast_line < slow_line,
        "{log}"
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_sigterm_during_a_slow_start_exits_at_once_and_libvirtd_finishes_it() {
    // Alone: while a domain starts, libvirtd answers no listing, and the
    // other tests' gateways listing meanwhile would use up its workers.
    let _libvirtd = libvirtd_exclusive();
    require_slow_hook();
    let slow = Guest::define("slowhook-term", "52:54:00:e2:00:0b");
    let prepares = hook_prepares(&slow.name);
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &slow.mac);
    let mut gateway = activate(&socket, &[]);
    wait_for_prepare(&slow.name, prepares, &gateway);

    terminate_with_one_in_flight(&mut gateway, &slow.mac, 0);
    // libvirtd completes the start it received.
    slow.wait_state_within("running", SLOW_DEADLINE);
    assert_eq!(hook_prepares(&slow.name), prepares + 1, "one start asked");
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_a_failed_start_is_retried_after_its_cause_is_fixed() {
    let _libvirtd = libvirtd_shared();
    // Where QEMU can open it once it exists: not in a 0700 temporary
    // directory. Removed after the guest (declared first, dropped last).
    let image = RemoveOnDrop(PathBuf::from(format!(
        "/var/tmp/wolgw-e2e-retry-{}.img",
        std::process::id()
    )));
    let _ = std::fs::remove_file(&image.0);
    let guest = Guest::define_with(
        "retry",
        "52:54:00:e2:00:0c",
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            image.0.display()
        ),
    );
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let mut gateway = activate(&socket, &[]);
    let failure = gateway.wait_for_log(&format!("cannot start {}", guest.name));
    assert!(
        failure.contains("Cannot access storage file"),
        "libvirt's message: {failure}"
    );
    assert!(guest.state().starts_with("shut off"), "{}", guest.state());

    // The cause is fixed; the next packet is acted on, not taken for a
    // duplicate of the failed one.
    std::fs::File::create(&image.0)
        .and_then(|file| file.set_len(1 << 20))
        .expect("create the disk image");
    wakeonlan(addr, &guest.mac);
    guest.wait_state_within("running", SLOW_DEADLINE);
    gateway.wait_for_log(&format!("started {} (was shut off)", guest.name));

    let (_, summary) = terminate(&mut gateway);
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        2,
        "{summary}"
    );
    assert_eq!(summary_count(&summary, "duplicates"), 0, "{summary}");
    assert_eq!(summary_count(&summary, "not acted on"), 0, "{summary}");
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_a_guest_that_stops_right_after_its_start_is_reported_once() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("stops-again", "52:54:00:e2:00:0d");
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let mut gateway = activate(&socket, &[]);
    guest.wait_state("running");
    // What a guest that dies at once looks like to libvirt: off again,
    // with a reason.
    virsh_ok(&["destroy", &guest.name]);
    let line = gateway.wait_for_log(&format!("{} stopped again", guest.name));
    assert!(
        line.contains("after it was started: shut off (destroyed)"),
        "{line}"
    );
    let (_, summary) = terminate(&mut gateway);
    assert_eq!(gateway.lines_with("stopped again").len(), 1, "{summary}");
}

/// `token add` for `guest` through the real binary on the real daemon:
/// returns the token, after checking only its hash landed in the
/// persistent definition.
fn token_for(guest: &Guest) -> String {
    let out = Command::new(crate::util::bin())
        .args(["token", "add", &guest.name, "--libvirt-uri", URI])
        .output()
        .expect("token add");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let inactive = virsh_ok(&["dumpxml", "--inactive", &guest.name]);
    let hash = wol_libvirt_gateway::secret::token_hash(&token).to_string();
    assert!(inactive.contains(&hash) && !inactive.contains(&token));
    token
}

/// The gateway with an HTTP socket; a client thread already sent
/// `GET /v1/wake/NAME?wait=SECONDS` with `token`, whose (status, body) the
/// handle returns.
fn http_wake(
    guest: &Guest,
    token: String,
    wait: u64,
) -> (Gateway, std::thread::JoinHandle<(u16, String)>) {
    let (udp, _) = systemd_socket();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let url = format!(
        "http://{}/v1/wake/{}?wait={wait}",
        tcp.local_addr().expect("addr"),
        guest.name
    );
    let gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "5m"])
        .pass_fd(udp.into())
        .pass_fd(tcp.into())
        .spawn();
    let client = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("an answer");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().expect("body"))
    });
    (gateway, client)
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_an_http_wake_with_wait_says_when_the_guest_stopped_again() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("http-wait", "52:54:00:e2:00:0e");
    let token = token_for(&guest);
    let (mut gateway, client) = http_wake(&guest, token, 30);
    guest.wait_state("running");
    virsh_ok(&["destroy", &guest.name]);
    let (status, body) = client.join().expect("client");
    assert_eq!(status, 502, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["result"], "stopped-again", "{body}");
    assert_eq!(answer["state"], "shut off", "{body}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("destroyed")),
        "{body}"
    );
    let _ = terminate(&mut gateway);
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_an_http_wake_with_wait_waits_for_the_guest_agent() {
    let _libvirtd = libvirtd_shared();
    // A guest agent channel, and no guest OS to open it: the wait ends with
    // the agent not connected (a real agent's connection needs a real OS).
    let guest = Guest::define_with(
        "http-agent",
        "52:54:00:e2:00:0f",
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
    );
    let token = token_for(&guest);
    let asked = Instant::now();
    let (mut gateway, client) = http_wake(&guest, token, 4);
    let (status, body) = client.join().expect("client");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["state"], "running", "{body}");
    assert_eq!(answer["waited_for"], "guest-agent", "{body}");
    assert_eq!(answer["guest_agent"], "not connected", "{body}");
    assert!(asked.elapsed() >= Duration::from_secs(4), "{body}");
    let _ = terminate(&mut gateway);
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_libvirtd"]
fn e2e_libvirtd_an_http_wake_that_libvirt_refuses_is_502_with_its_message() {
    let _libvirtd = libvirtd_shared();
    let missing = format!("/var/tmp/wolgw-e2e-http-502-{}.img", std::process::id());
    let _ = std::fs::remove_file(&missing);
    let guest = Guest::define_with(
        "http-502",
        "52:54:00:e2:00:10",
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{missing}'/><target dev='vda' bus='virtio'/></disk>"
        ),
    );
    let token = token_for(&guest);
    let (mut gateway, client) = http_wake(&guest, token, 0);
    let (status, body) = client.join().expect("client");
    assert_eq!(status, 502, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (
            &answer["result"],
            &answer["action"],
            &answer["state_before"]
        ),
        (
            &serde_json::json!("failed"),
            &serde_json::json!("start"),
            &serde_json::json!("shut off")
        ),
        "{body}"
    );
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("Cannot access storage file")),
        "{body}"
    );
    let _ = terminate(&mut gateway);
}
