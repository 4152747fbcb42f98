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
//! end, even when the test fails.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::util::{DEADLINE, Gateway, Launch, libvirtd_shared, systemd_socket, wait_until};

pub(crate) const URI: &str = "qemu:///system";

pub(crate) fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(URI)
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

/// A throwaway guest, destroyed and undefined on drop.
pub(crate) struct Guest {
    pub(crate) name: String,
    pub(crate) mac: String,
}

impl Guest {
    pub(crate) fn define(test: &str, mac: &str) -> Guest {
        Guest::define_with(test, mac, "")
    }

    /// A guest with `extra` devices (e.g. a disk) besides its NIC.
    pub(crate) fn define_with(test: &str, mac: &str, extra: &str) -> Guest {
        let name = format!("wolgw-e2e-{test}-{}", std::process::id());
        let virt_type = if std::path::Path::new("/dev/kvm").exists() {
            "kvm"
        } else {
            "qemu"
        };
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
        let guest = Guest {
            name,
            mac: mac.to_owned(),
        };
        // Leftovers of an aborted earlier run with the same name go first.
        guest.remove();
        virsh_ok(&["define", &path.to_string_lossy()]);
        guest
    }

    pub(crate) fn state(&self) -> String {
        virsh_ok(&["domstate", &self.name, "--reason"])
    }

    pub(crate) fn wait_state(&self, prefix: &str) -> String {
        let mut last = String::new();
        let reached = wait_until(DEADLINE, || {
            last = self.state();
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
        virsh_ok(&["start", &self.name]);
        self.wait_state("running");
    }

    fn remove(&self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", "--managed-save", &self.name]);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.remove();
    }
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
