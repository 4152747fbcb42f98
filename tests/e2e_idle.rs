//! The idle check end to end, through libvirtd with real QEMU/KVM guests:
//! `idle set` writes the policy into the guest's metadata, the real binary's
//! `idle check` runs again and again as the timer would (a second apart
//! instead of a minute, with policies of seconds), and the guest's state in
//! libvirt says what happened.
//!
//! These need root, libvirtd and QEMU, so `cargo test` skips them:
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh
//! sudo cargo test -- --ignored e2e_idle
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::e2e_libvirtd::{Guest, SLOW_DEADLINE, URI, activate, terminate, virsh_ok, wakeonlan};
use crate::util::{command_on, libvirtd_exclusive, ran, summary_count, systemd_socket};

/// Runs `wol-libvirt-gateway --libvirt-uri qemu:///system idle ARGS`;
/// panics with its output unless it succeeds.
fn idle(args: &[&str]) -> String {
    let command = &mut command_on(URI, &[&["idle"], args].concat());
    let (code, stdout, stderr) = ran(command.env("RUST_LOG", "debug"));
    let text = format!("{stdout}{stderr}");
    assert_eq!(code, 0, "idle {args:?} failed:\n{text}");
    text
}

/// A guest of this test's own (`extra` devices beside its NIC), started,
/// with a policy: asleep with `action` after `after` idle.
fn started_with_policy(test: &str, mac: &str, extra: &str, after: &str, action: &str) -> Guest {
    let guest = Guest::define_with(test, mac, extra);
    guest.start();
    idle(&["set", &guest.name, "--after", after, "--action", action]);
    guest
}

/// The timer, a second apart: runs `idle check` with its samples in
/// `cache` until `done` holds for the checks' summary lines so far (see
/// [`count`]), or `within` passes; returns the summaries.
fn checks_until(
    cache: &Path,
    within: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let cache = cache.to_string_lossy();
    let deadline = Instant::now() + within;
    let mut outputs = Vec::new();
    loop {
        let tick = Instant::now();
        let output = idle(&["check", "--cache-dir", &cache]);
        let summaries: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("idle check on"))
            .collect();
        assert_eq!(summaries.len(), 1, "one summary a check:\n{output}");
        outputs.push(summaries[0].to_owned());
        if done(&outputs) {
            return outputs;
        }
        assert!(
            Instant::now() < deadline,
            "not done within {within:?}; the checks said:\n{}",
            outputs.join("\n---\n")
        );
        // The timer's next tick, not a guess at when something is ready.
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
}

/// The count before `what` in a check's summary line.
fn count(summary: &str, what: &str) -> u64 {
    summary_count(summary, what)
}

/// The sum of `what` over the checks' summaries.
fn total(checks: &[String], what: &str) -> u64 {
    checks.iter().map(|c| count(c, what)).sum()
}

/// A magic packet for `guest` to the socket-activated gateway brings it
/// back to running, and the gateway says it `did` so (`restored`,
/// `resumed`).
fn woken_by_a_packet(guest: &Guest, did: &str) {
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let mut gateway = activate(&socket, &[]);
    guest.wait_state_within("running", SLOW_DEADLINE);
    gateway.wait_for_log(&format!("{did} {}", guest.name));
    terminate(&mut gateway);
}

/// A raw disk image that QEMU can open (not in a 0700 temporary directory),
/// removed on drop.
struct Image(PathBuf);

impl Image {
    /// A 512-byte boot sector that spins: `jmp $` (`EB FE`) and the `55 AA`
    /// signature. The BIOS boots it, and it keeps one vCPU at 100 %.
    fn spinning(test: &str) -> Image {
        let path = PathBuf::from(format!(
            "/var/tmp/wolgw-e2e-{test}-{}.img",
            std::process::id()
        ));
        let mut sector = [0u8; 512];
        sector[..2].copy_from_slice(&[0xEB, 0xFE]);
        sector[510..].copy_from_slice(&[0x55, 0xAA]);
        std::fs::write(&path, sector).expect("write the boot sector");
        Image(path)
    }

    fn disk(&self) -> String {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='hda' bus='ide'/></disk>",
            self.0.display()
        )
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_idle"]
fn e2e_idle_an_idle_guest_is_managed_saved_and_the_next_packet_restores_it() {
    // Alone: a check looks at every guest with a policy, other tests' too.
    let _libvirtd = libvirtd_exclusive();
    let guest = started_with_policy("idle-save", "52:54:00:e2:10:01", "", "3s", "managedsave");
    let cache = tempfile::tempdir().expect("tempdir");
    let checks = checks_until(cache.path(), SLOW_DEADLINE, |_| {
        guest.state().starts_with("shut off")
    });
    // Seen, busy a moment while its firmware looks for something to boot,
    // then idle for at least the policy's 3 s without a gap, then put to
    // sleep, once.
    assert_eq!(total(&checks, "put to sleep"), 1, "{checks:#?}");
    let last_busy = checks.iter().rposition(|c| count(c, "busy") > 0);
    let idle_after = checks[last_busy.map_or(0, |at| at + 1)..].iter();
    assert!(
        idle_after.filter(|c| count(c, "idle") == 1).count() >= 2,
        "{checks:#?}"
    );
    assert!(guest.state().contains("saved"), "{}", guest.state());
    let info = virsh_ok(&["dominfo", &guest.name]);
    assert!(info.contains("Managed save:   yes"), "{info}");

    // The next magic packet restores it, as any managed save.
    woken_by_a_packet(&guest, "restored");
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_idle"]
fn e2e_idle_a_busy_guest_stays_up() {
    // Alone: a check looks at every guest with a policy, other tests' too.
    let _libvirtd = libvirtd_exclusive();
    let image = Image::spinning("idle-busy");
    let guest = started_with_policy(
        "idle-busy",
        "52:54:00:e2:10:02",
        &image.disk(),
        "2s",
        "managedsave",
    );
    let cache = tempfile::tempdir().expect("tempdir");
    // Ten checks, five times the policy: after the first sight, each finds
    // the vCPU busy.
    let checks = checks_until(cache.path(), SLOW_DEADLINE, |checks| checks.len() == 10);
    assert!(guest.state().starts_with("running"), "{}", guest.state());
    assert_eq!(total(&checks, "busy"), 9, "{checks:#?}");
    assert_eq!(total(&checks, "put to sleep"), 0, "{checks:#?}");
    // Judged on its vCPU and its IDE disk: user-mode networking has no tap
    // device, so no network counters, and `list` says so.
    let (_, stdout, _) = ran(command_on(URI, &["list", "--json", "--cache-dir"]).arg(cache.path()));
    let listed: serde_json::Value = serde_json::from_str(&stdout).expect("list --json");
    let this = (listed.as_array().expect("an array").iter())
        .find(|d| d["domain"] == guest.name.as_str())
        .expect("listed");
    assert_eq!(
        this["idle_signals"],
        serde_json::json!(["cpu", "disk"]),
        "{this}"
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_idle"]
fn e2e_idle_a_shutdown_the_guest_ignores_is_said_once_and_never_forced() {
    // Alone: a check looks at every guest with a policy, other tests' too.
    let _libvirtd = libvirtd_exclusive();
    // No OS: the ACPI power button is pressed for nobody.
    let guest = started_with_policy("idle-acpi", "52:54:00:e2:10:03", "", "2s", "shutdown");
    let cache = tempfile::tempdir().expect("tempdir");
    // Asked once the window is full, then found still running: said once,
    // and three more checks neither say it again nor ask again.
    let checks = checks_until(cache.path(), SLOW_DEADLINE, |checks| {
        let said = checks
            .iter()
            .position(|c| count(c, "ignoring a shutdown") == 1);
        said.is_some_and(|at| checks.len() >= at + 4)
    });
    assert_eq!(total(&checks, "ignoring a shutdown"), 1, "{checks:#?}");
    assert_eq!(total(&checks, "put to sleep"), 1, "asked once: {checks:#?}");
    assert!(
        guest.state().starts_with("running"),
        "never forced: {}",
        guest.state()
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_idle"]
fn e2e_idle_a_suspended_guest_is_resumed_by_the_next_packet() {
    // Alone: a check looks at every guest with a policy, other tests' too.
    let _libvirtd = libvirtd_exclusive();
    let guest = started_with_policy("idle-pause", "52:54:00:e2:10:04", "", "2s", "suspend");
    let cache = tempfile::tempdir().expect("tempdir");
    checks_until(cache.path(), SLOW_DEADLINE, |_| {
        guest.state().starts_with("paused")
    });
    woken_by_a_packet(&guest, "resumed");
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_idle"]
fn e2e_idle_a_policy_cleared_while_the_guest_slept_does_not_come_back_with_its_image() {
    // Alone: a check looks at every guest with a policy, other tests' too.
    let _libvirtd = libvirtd_exclusive();
    let guest = started_with_policy("idle-cleared", "52:54:00:e2:10:05", "", "2s", "managedsave");
    virsh_ok(&["managedsave", &guest.name]);
    idle(&["clear", &guest.name]);
    // The image holds the definition as it was, policy included.
    guest.start();
    let live = virsh_ok(&["dumpxml", &guest.name]);
    assert!(
        live.contains("<wol:idle "),
        "the image brought the policy back: {live}"
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let checks = checks_until(cache.path(), SLOW_DEADLINE, |checks| checks.len() == 6);
    assert_eq!(
        total(&checks, "running domain(s) with a policy"),
        0,
        "{checks:#?}"
    );
    assert!(guest.state().starts_with("running"), "{}", guest.state());
}
