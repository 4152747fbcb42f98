//! Floods and faults through libvirtd with real QEMU guests: what the network
//! and the host can throw at the gateway. Like `e2e_libvirtd`, these need
//! root, libvirtd and QEMU:
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh
//! sudo cargo test -- --ignored e2e_faults
//! ```
//!
//! Tests that stop or restart libvirtd hold the daemon alone (see
//! `util::libvirtd_exclusive`) and always leave it running.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use proptest::prelude::RngCore;
use proptest::test_runner::{RngAlgorithm, TestRng};
use wol_libvirt_gateway::ingress::packet::magic_packet;
use wol_libvirt_gateway::model::Mac;

use crate::e2e_libvirtd::{
    Guest, SLOW_DEADLINE, URI, terminate, terminate_with_one_in_flight, wakeonlan,
};
use crate::util::{
    DEADLINE, Launch, NodeFile, NotifySocket, RunState, domain, libvirtd_exclusive,
    libvirtd_shared, summary_count, systemd_socket, wait_until,
};

fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `pgrep`/`pkill` arguments for this machine's own libvirtd: host B of
/// `tests/e2e_remote.rs` runs another one in its own namespaces, which
/// these tests must never stop. Its mount namespace may be its own
/// (`tests/e2e/start-libvirtd.sh`): not compared.
fn own_libvirtd() -> [String; 6] {
    [
        "--ns".into(),
        std::process::id().to_string(),
        "--nslist".into(),
        "pid,net,ipc,uts".into(),
        "-x".into(),
        "libvirtd".into(),
    ]
}

/// Starts this machine's libvirtd as `tests/e2e/setup-host.sh` does.
fn run_libvirtd() -> bool {
    Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/start-libvirtd.sh"
    ))
    .status()
    .is_ok_and(|status| status.success())
}

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(own_libvirtd())
        .output()
        .is_ok_and(|o| o.status.success())
}

fn stop_libvirtd() {
    let _ = Command::new("pkill").args(own_libvirtd()).status();
    assert!(
        wait_until(DEADLINE, || !libvirtd_running()),
        "libvirtd did not stop"
    );
}

fn start_libvirtd() {
    if !libvirtd_running() {
        assert!(run_libvirtd(), "tests/e2e/start-libvirtd.sh failed");
    }
    assert!(
        wait_until(DEADLINE, libvirtd_answers),
        "libvirtd does not answer"
    );
}

/// Starts libvirtd again when dropped, so a failing test cannot leave the
/// daemon down for the others.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if !libvirtd_running() {
            let _ = run_libvirtd();
            let _ = wait_until(DEADLINE, libvirtd_answers);
        }
    }
}

/// The running libvirtd frozen with SIGSTOP: every call to it hangs, with
/// no error and no timeout, as a hung daemon's would. Resumed (SIGCONT) on
/// drop whatever happens, so a failing test never leaves it stopped; take it
/// after the guests, so it is dropped before them (removing a guest needs
/// the daemon).
struct Frozen {
    pid: String,
}

impl Frozen {
    fn freeze() -> Frozen {
        let out = Command::new("pgrep")
            .args(own_libvirtd())
            .output()
            .expect("run pgrep");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !pid.is_empty() && pid.lines().count() == 1,
            "one libvirtd expected, found {pid:?}"
        );
        let frozen = Frozen { pid };
        frozen.signal("STOP");
        assert!(
            wait_until(DEADLINE, || frozen.stopped()),
            "libvirtd {} did not stop",
            frozen.pid
        );
        frozen
    }

    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(&self.pid)
            .status();
    }

    /// True while the process is stopped ("T" in /proc/PID/stat).
    fn stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    }

    fn thaw(&self) {
        self.signal("CONT");
        assert!(
            wait_until(DEADLINE, || !self.stopped()),
            "libvirtd {} did not resume",
            self.pid
        );
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.signal("CONT");
    }
}

/// Notify messages from index `from` on that contain `needle`.
fn count_from(notify: &mut NotifySocket, from: usize, needle: &str) -> usize {
    notify.messages()[from..]
        .iter()
        .filter(|m| m.contains(needle))
        .count()
}

/// Waits for a notify message from index `from` on containing `needle`.
fn wait_for_notify(notify: &mut NotifySocket, from: usize, needle: &str) {
    let seen = wait_until(DEADLINE, || count_from(notify, from, needle) > 0);
    assert!(
        seen,
        "no notify message with {needle:?} after #{from}; got {:?}",
        notify.messages()
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_libvirtd_down_at_first_packet_then_started_within_the_idle_timeout() {
    let _libvirtd = libvirtd_exclusive();
    let guest = Guest::define("late-daemon", "52:54:00:e2:00:40");
    let _restart = RestartOnDrop;
    stop_libvirtd();

    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &guest.mac);
    let mut gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "20s"])
        .pass_fd(socket.into())
        .spawn();
    let waiting = gateway.wait_for_log("cannot reach libvirt at qemu:///system");
    assert!(
        waiting.contains("Wake requests that need it wait until it answers"),
        "{waiting}"
    );
    // The scenario: the daemon comes up 3 s after the packet.
    std::thread::sleep(Duration::from_secs(3));
    start_libvirtd();
    gateway.wait_for_log(&format!("started {}", guest.name));
    guest.wait_state("running");
    gateway.wait_for_log("libvirt at qemu:///system is reachable again after");
    assert_eq!(
        gateway.lines_with("cannot reach libvirt").len(),
        1,
        "{}",
        gateway.log()
    );
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_libvirtd_restarted_while_the_gateway_runs() {
    let _libvirtd = libvirtd_exclusive();
    let first = Guest::define("before-restart", "52:54:00:e2:00:41");
    let second = Guest::define("after-restart", "52:54:00:e2:00:42");
    let _restart = RestartOnDrop;
    let (socket, addr) = systemd_socket();
    let mut gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "30s"])
        .pass_fd(socket.into())
        .spawn();
    wakeonlan(addr, &first.mac);
    gateway.wait_for_log(&format!("started {}", first.name));

    stop_libvirtd();
    start_libvirtd();
    wakeonlan(addr, &second.mac);
    gateway.wait_for_log(&format!("started {}", second.name));
    second.wait_state("running");
    // The dead connection is replaced at once: no outage is reported.
    assert!(
        gateway.lines_with("cannot reach libvirt").is_empty(),
        "{}",
        gateway.log()
    );
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_a_failing_start_names_the_domain_and_the_next_wake_still_works() {
    let _libvirtd = libvirtd_shared();
    let broken = Guest::define_with(
        "missing-disk",
        "52:54:00:e2:00:43",
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='/nonexistent/wolgw-missing.img'/><target dev='vda' bus='virtio'/></disk>",
    );
    let fine = Guest::define("after-failure", "52:54:00:e2:00:44");
    let (socket, addr) = systemd_socket();
    let mut gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "30s"])
        .pass_fd(socket.into())
        .spawn();
    wakeonlan(addr, &broken.mac);
    let error = gateway.wait_for_log(&format!("cannot start {}", broken.name));
    assert!(error.contains("ERROR"), "{error}");
    assert!(
        error.contains("/nonexistent/wolgw-missing.img"),
        "libvirt's message: {error}"
    );
    assert!(broken.state().starts_with("shut off"));
    wakeonlan(addr, &fine.mac);
    gateway.wait_for_log(&format!("started {}", fine.name));
    fine.wait_state("running");
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_flood_of_200000_datagrams_with_one_real_wake() {
    const DATAGRAMS: usize = 200_000;
    const SPREAD: Duration = Duration::from_millis(2500);
    // Alone: it counts every datagram of a flood on a 2-core machine, where
    // other tests' guests (and host B's container) would compete for the CPU.
    let _libvirtd = libvirtd_exclusive();
    let guest = Guest::define("flood", "52:54:00:e2:00:50");
    let (socket, addr) = systemd_socket();
    // Room to queue the flood while the gateway waits for QEMU to start (as
    // systemd's ReceiveBuffer= would give): a datagram the kernel drops never
    // reaches the gateway, and this test counts every one.
    rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, 256 << 20)
        .expect("SO_RCVBUFFORCE (needs root)");
    let mut gateway = Launch::new(&[
        "--libvirt-uri",
        URI,
        "--idle-timeout",
        "3s",
        "--rescan-interval",
        "1s",
    ])
    .pass_fd(socket.try_clone().expect("dup").into())
    .spawn();
    gateway.wait_for_log("listening on");

    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let target: Mac = guest.mac.parse().expect("mac");
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::XorShift);
    let mut junk = [0u8; 300];
    let started = Instant::now();
    let mut rss_mid = 0;
    for i in 0..DATAGRAMS {
        if i == DATAGRAMS / 2 {
            sender
                .send_to(&magic_packet(target), addr)
                .expect("send wake");
            rss_mid = gateway.memory_kib("VmRSS").unwrap_or(0);
        }
        let r = rng.next_u64();
        match i % 3 {
            0 => {
                let len = 1 + (r % 299) as usize;
                rng.fill_bytes(&mut junk[..len]);
                sender.send_to(&junk[..len], addr).expect("send junk");
            }
            1 => {
                let packet = magic_packet(Mac([0x52, 0x54, 0, 0xf1, (r >> 8) as u8, r as u8]));
                sender.send_to(&packet[..60], addr).expect("send truncated");
            }
            _ => {
                let unknown = Mac([0x52, 0x54, 0, 0xf0, (r >> 8) as u8, r as u8]);
                sender
                    .send_to(&magic_packet(unknown), addr)
                    .expect("send unknown");
            }
        }
        // Spread over a few seconds, as a flood from the LAN would be.
        if i % 1000 == 999 {
            let due = SPREAD.mul_f64((i + 1) as f64 / DATAGRAMS as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    let flood_time = started.elapsed();
    assert!(
        gateway.alive(),
        "gateway died during the flood:\n{}",
        gateway.log()
    );
    guest.wait_state("running");
    let rss_end = gateway.memory_kib("VmRSS").unwrap_or(0);
    let peak = gateway.memory_kib("VmHWM").unwrap_or(0);
    let status = gateway.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    let run_time = started.elapsed();

    let log = gateway.log();
    let lines = log.lines().count();
    assert_eq!(
        gateway.lines_with(&format!("started {}", guest.name)).len(),
        1,
        "{log}"
    );
    let summary = gateway.lines_with("exiting (idle timeout)");
    assert_eq!(summary.len(), 1, "{log}");
    let summary = &summary[0];
    // Nothing lost: every datagram sent was read (the flood plus the wake).
    assert!(
        summary.contains(&format!("{} datagrams", DATAGRAMS + 1)),
        "{summary}"
    );
    // "…; N domain listings, M full scans; …"
    let count = |suffix: &str| -> u64 {
        summary
            .split([';', ','])
            .find_map(|part| part.trim().strip_suffix(suffix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {suffix:?} in {summary}"))
    };
    let (listings, full_scans) = (count(" domain listings"), count(" full scans"));
    // At most one listing per rescan interval (1 s) while unknown MACs came
    // in, and the one full scan of a fresh process.
    let allowed = flood_time.as_secs() + 2;
    assert!(
        listings <= allowed && full_scans == 1,
        "{listings} listings, {full_scans} full scans in {flood_time:?}: {summary}"
    );
    assert!(lines <= 100, "{lines} log lines for the flood:\n{log}");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert!(
        rss_end < rss_mid + 16 * 1024,
        "RSS grew from {rss_mid} KiB to {rss_end} KiB during the second half"
    );
    eprintln!(
        "flood: {} datagrams in {:.2} s; gateway exited after {:.2} s with {lines} log lines, \
         {listings} listings, {full_scans} full scans; VmRSS {} KiB at half-time, {} KiB at the end, peak {} KiB\n{summary}",
        DATAGRAMS + 1,
        flood_time.as_secs_f64(),
        run_time.as_secs_f64(),
        rss_mid,
        rss_end,
        peak
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_a_stopped_libvirtd_is_survived_and_pending_wakes_done_after_it_resumes() {
    let _libvirtd = libvirtd_exclusive();
    let first = Guest::define("before-stop", "52:54:00:e2:00:45");
    let second = Guest::define("during-stop", "52:54:00:e2:00:46");
    let mut notify = NotifySocket::new();
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &first.mac);
    let mut gateway = Launch::new(&[
        "--libvirt-uri",
        URI,
        "--idle-timeout",
        "5m",
        "--libvirt-timeout",
        "1s",
    ])
    .pass_fd(socket.into())
    .env("NOTIFY_SOCKET", notify.path())
    .env("WATCHDOG_USEC", "400000")
    .spawn();
    // A normal wake first: the gateway holds a connection to the daemon.
    first.wait_state_within("running", SLOW_DEADLINE);
    notify.wait_for(&format!("started {} ({})", first.name, first.mac));

    let frozen = Frozen::freeze();
    let frozen_at = Instant::now();
    let from = notify.messages().len();
    for _ in 0..4 {
        wakeonlan(addr, &second.mac);
    }
    gateway.wait_for_log("libvirt at qemu:///system did not answer within 1 s");
    wait_for_notify(
        &mut notify,
        from,
        "waiting for libvirt at qemu:///system (1 wake request(s) pending)",
    );
    // The loop carries on: watchdog pings keep coming after the daemon was
    // found silent, about one per half WATCHDOG_USEC (200 ms).
    let silent_pings = count_from(&mut notify, from, "WATCHDOG=1");
    assert!(
        wait_until(DEADLINE, || count_from(&mut notify, from, "WATCHDOG=1")
            >= silent_pings + 3),
        "no watchdog pings while libvirtd is stopped; got {:?}",
        notify.messages()
    );
    assert!(gateway.alive(), "{}", gateway.log());
    let (stopped_for, pings) = (
        frozen_at.elapsed(),
        count_from(&mut notify, from, "WATCHDOG=1"),
    );
    assert!(
        pings as f64 >= stopped_for.as_secs_f64() / 0.4 - 1.0,
        "{pings} watchdog pings in {stopped_for:?} with WATCHDOG_USEC=400000"
    );

    frozen.thaw();
    second.wait_state_within("running", SLOW_DEADLINE);
    gateway.wait_for_log("libvirt at qemu:///system is reachable again after");
    // The guest runs as soon as libvirtd has started it; the gateway's
    // decision follows a moment later.
    notify.wait_for(&format!("started {} ({})", second.name, second.mac));
    let (_, summary) = terminate(&mut gateway);
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        2,
        "{summary}"
    );
    assert_eq!(summary_count(&summary, "duplicates"), 3, "{summary}");
    assert_eq!(summary_count(&summary, "not acted on"), 0, "{summary}");
    assert_eq!(
        gateway.lines_with("did not answer within").len(),
        1,
        "said once: {}",
        gateway.log()
    );
    assert_eq!(
        gateway
            .lines_with(&format!("started {} (was shut off)", second.name))
            .len(),
        1,
        "{}",
        gateway.log()
    );
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_sigterm_while_libvirtd_is_stopped_exits_within_two_seconds() {
    let _libvirtd = libvirtd_exclusive();
    let first = Guest::define("term-first", "52:54:00:e2:00:47");
    let stuck = Guest::define("term-stuck", "52:54:00:e2:00:48");
    let mut notify = NotifySocket::new();
    let (socket, addr) = systemd_socket();
    wakeonlan(addr, &first.mac);
    let mut gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "5m"])
        .pass_fd(socket.into())
        .env("NOTIFY_SOCKET", notify.path())
        .spawn();
    first.wait_state_within("running", SLOW_DEADLINE);
    notify.wait_for(&format!("started {} ({})", first.name, first.mac));

    let frozen = Frozen::freeze();
    let from = notify.messages().len();
    wakeonlan(addr, &stuck.mac);
    let sent = Instant::now();
    // Its lookup hangs in the stopped daemon; with the default
    // --libvirt-timeout (5 s) the host is not yet called silent, so the
    // request is still being handled when the signal comes.
    wait_for_notify(&mut notify, from, "1 wake request(s) in progress");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(sent.elapsed()));

    terminate_with_one_in_flight(&mut gateway, &stuck.mac, 1);
    assert!(
        notify
            .messages()
            .last()
            .is_some_and(|m| m.contains("STOPPING=1")),
        "{:?}",
        notify.messages()
    );
    // Only a lookup had reached the daemon: the guest stays off.
    frozen.thaw();
    assert!(stuck.state().starts_with("shut off"), "{}", stuck.state());
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_faults"]
fn e2e_faults_a_stopped_libvirtd_delays_no_wake_on_another_host() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let _libvirtd = libvirtd_exclusive();
    let node_domain = "wolgw-e2e-node";
    let node = NodeFile::new(&[domain(node_domain, "52:54:00:e2:00:49", RunState::ShutOff)]);
    let nowhere = "52:54:00:e2:00:4a";
    let mut notify = NotifySocket::new();
    let (socket, addr) = systemd_socket();
    // Stopped before the gateway's first packet: it never got an answer.
    let _frozen = Frozen::freeze();
    wakeonlan(addr, "52:54:00:e2:00:49");
    wakeonlan(addr, nowhere);
    let sent = Instant::now();
    let node_uri = node.uri();
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let mut gateway = Launch::new(&[
        "--libvirt-uri",
        URI,
        "--libvirt-uri",
        &node_uri,
        "--libvirt-timeout",
        &timeout,
        "--idle-timeout",
        "5m",
    ])
    .pass_fd(socket.into())
    .env("NOTIFY_SOCKET", notify.path())
    .spawn();
    let started = gateway.wait_for_log(&format!(
        "started {node_domain} on {node_uri} (was shut off) for 52:54:00:e2:00:49"
    ));
    let took = sent.elapsed();
    // Decided after the grace for the other host's answer (1 s), before
    // that host counts as silent (--libvirt-timeout).
    assert!(
        took < TIMEOUT,
        "started {took:?} after the packet; log:\n{}",
        gateway.log()
    );
    assert!(
        started.contains("decided without qemu:///system"),
        "{started}"
    );

    // The MAC no answering host has waits for the stopped one.
    gateway.wait_for_log("libvirt at qemu:///system did not answer within 3 s");
    wait_for_notify(
        &mut notify,
        0,
        "waiting for libvirt at qemu:///system (1 wake request(s) pending)",
    );
    let (took, summary) = terminate(&mut gateway);
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} after SIGTERM; log:\n{}",
        gateway.log()
    );
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        1,
        "{summary}"
    );
    assert_eq!(summary_count(&summary, "not acted on"), 1, "{summary}");
    let not_acting = gateway.lines_with("signal: not acting on 1 wake request(s) read: ");
    assert_eq!(not_acting.len(), 1, "{}", gateway.log());
    assert!(not_acting[0].contains(nowhere), "{}", not_acting[0]);
    assert!(
        gateway.lines_with(&format!("has MAC {nowhere}")).is_empty(),
        "not decided as unknown: {}",
        gateway.log()
    );
}
