//! The real binary run by hand: it binds its own socket.

use crate::util::{
    DEADLINE, Launch, NodeFile, NotifySocket, RunState, domain, summary_count, wake,
};

#[test]
fn run_by_hand_it_starts_the_domain_and_says_so() {
    let node = NodeFile::new(&[domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff)]);
    let gateway = Launch::by_hand(&node.uri(), &[]).spawn();
    wake(gateway.listen_addr(), "52:54:00:AA:BB:CC");
    let line = gateway.wait_for_log("started web01");
    assert!(line.contains("52:54:00:aa:bb:cc from 127.0.0.1:"), "{line}");
    assert!(line.contains("was shut off"), "{line}");
    // Without a passed socket there is no idle timeout: it is still serving.
    wake(gateway.listen_addr(), "52:54:00:aa:bb:cc");
    gateway.wait_for_log("duplicate wake request for 52:54:00:aa:bb:cc");
}

#[test]
fn libvirt_coming_back_before_the_idle_timeout_gets_the_pending_wake_done() {
    // A node file that does not exist yet makes test:/// fail to connect,
    // exactly like a stopped libvirtd: the request must wait, not vanish.
    let node = NodeFile::missing();
    let mut notify = NotifySocket::new();
    let mut gateway = Launch::by_hand(&node.uri(), &["--idle-timeout", "4s"])
        .env("NOTIFY_SOCKET", notify.path())
        .spawn();
    wake(gateway.listen_addr(), "52:54:00:aa:bb:cc");
    gateway.wait_for_log("cannot reach libvirt");
    notify.wait_for("waiting for libvirt at");
    node.write(&[domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff)]);
    gateway.wait_for_log("started web01");
    gateway.wait_for_log("reachable again");
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    assert_eq!(
        gateway.lines_with("cannot reach libvirt").len(),
        1,
        "{}",
        gateway.log()
    );
}

#[test]
fn sigterm_exits_0_and_tells_systemd_it_is_stopping_and_the_watchdog_is_fed() {
    let node = NodeFile::new(&[domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff)]);
    let mut notify = NotifySocket::new();
    let mut gateway = Launch::by_hand(&node.uri(), &[])
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "200000")
        .spawn();
    let ready = notify.wait_for("READY=1");
    // WatchdogSec=: pings at half the interval, even while idle.
    assert!(notify.wait_for("WATCHDOG=1") > ready);
    wake(gateway.listen_addr(), "52:54:00:aa:bb:cc");
    gateway.wait_for_log("started web01");
    gateway.signal("TERM");
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    let stopping = notify.wait_for("STOPPING=1");
    assert!(ready < stopping);
    assert_eq!(gateway.lines_with("exiting (signal)").len(), 1);
}

#[test]
fn a_refused_wake_is_logged_with_its_reason() {
    let node = NodeFile::new(&[
        domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff),
        domain("db01", "52:54:00:aa:bb:dd", RunState::ShutOff),
    ]);
    let gateway = Launch::by_hand(&node.uri(), &["--allow", "db01"]).spawn();
    gateway.wait_for_log("only the 1 domain(s) named by --allow");
    wake(gateway.listen_addr(), "52:54:00:aa:bb:cc");
    let line = gateway.wait_for_log("refused to wake web01");
    assert!(line.contains("not named by any --allow"), "{line}");
    wake(gateway.listen_addr(), "52:54:00:aa:bb:dd");
    gateway.wait_for_log("started db01");
}

#[test]
fn sigterm_in_the_middle_of_a_flood_exits_0_with_no_request_unaccounted() {
    let node = NodeFile::new(&[domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff)]);
    let mut notify = NotifySocket::new();
    let mut gateway = Launch::by_hand(&node.uri(), &[])
        .env("NOTIFY_SOCKET", notify.path())
        .spawn();
    let addr = gateway.listen_addr();
    notify.wait_for("READY=1");
    // Junk with wake requests for unknown MACs and web01 mixed in, then
    // SIGTERM while datagrams are still arriving.
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..20_000u32 {
        let payload = match i % 4 {
            0 => wol_libvirt_gateway::ingress::packet::magic_packet(
                wol_libvirt_gateway::model::Mac([0x52, 0x54, 0, 0xf0, (i >> 8) as u8, i as u8]),
            ),
            1 if i % 1000 == 1 => wol_libvirt_gateway::ingress::packet::magic_packet(
                crate::util::mac("52:54:00:aa:bb:cc"),
            ),
            _ => vec![0x42; 64],
        };
        let _ = sender.send_to(&payload, addr);
        if i == 10_000 {
            gateway.signal("TERM");
        }
    }
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    notify.wait_for("STOPPING=1");
    let log = gateway.log();
    assert_eq!(gateway.lines_with("exiting (signal)").len(), 1, "{log}");
    // Every datagram read is accounted for: rejected, a duplicate, dropped,
    // or a request that was either decided or is named as not acted on.
    let summary = gateway.lines_with("exiting (signal)").remove(0);
    let n = |what: &str| summary_count(&summary, what);
    assert_eq!(
        n("datagrams"),
        n("invalid")
            + n("duplicates")
            + n("wake requests handled")
            + n("not acted on")
            + n("dropped (too many pending)"),
        "{summary}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
