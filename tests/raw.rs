//! `RawListener` on its own: raw Ethernet Wake-on-LAN frames (ethertype
//! 0x0842) sent by the real `etherwake` on `lo`, and the error messages.
//!
//! AF_PACKET needs CAP_NET_RAW, so the frame tests are ignored by default:
//! `sudo apt-get install etherwake && sudo cargo test -- --ignored raw`.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
use wol_libvirt_gateway::ingress::packet;
use wol_libvirt_gateway::ingress::raw::RawListener;
use wol_libvirt_gateway::model::Mac;
use wol_libvirt_gateway::model::RawSource;

use crate::util::{DEADLINE, mac};

const NEEDS_ROOT: &str = "needs root (CAP_NET_RAW) and etherwake: sudo apt-get install etherwake && sudo cargo test -- --ignored raw";

/// Waits until `listener` is readable or `timeout` passes; true if readable.
fn readable(listener: &RawListener, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timespec = Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        match poll(&mut fds, Some(&timespec)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll failed: {e}"),
        }
    }
}

/// Receives the next frame, waiting at most `timeout`.
fn next_frame(listener: &RawListener, timeout: Duration) -> Option<(Vec<u8>, RawSource)> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while readable(listener, deadline.saturating_duration_since(Instant::now())) {
        match listener.recv(&mut buf) {
            Ok((len, source)) => return Some((buf[..len].to_vec(), source)),
            // Readable but only skipped frames (our own, another interface's).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv failed: {e}"),
        }
    }
    None
}

/// Serializes the tests that send on `lo`: every `lo` listener sees every
/// frame sent there.
static LO: Mutex<()> = Mutex::new(());

/// Runs the real etherwake on `interface` with `args` (ending with the MAC).
fn etherwake(interface: &str, args: &[&str]) {
    let output = Command::new("etherwake")
        .args(["-i", interface])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run etherwake ({e}); {NEEDS_ROOT}"));
    assert!(
        output.status.success(),
        "etherwake {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks that one frame for `target` arrives, and no copy of it after.
fn expect_one_frame(listener: &RawListener, target: Mac) -> Vec<u8> {
    let (payload, source) =
        next_frame(listener, DEADLINE).expect("no 0x0842 frame on lo before the deadline");
    assert_eq!(
        packet::parse(&payload),
        Ok(target),
        "payload {payload:02x?}"
    );
    // etherwake sends from the interface's own address, all zeros on lo.
    assert_eq!(source.mac, Mac([0; 6]));
    assert_eq!(&*source.interface, "lo");
    assert_eq!(source.to_string(), "00:00:00:00:00:00 on lo");
    // lo hands each frame to packet sockets once as outgoing and once as
    // incoming at most; the listener must pass on exactly one.
    if let Some((again, source)) = next_frame(listener, Duration::from_millis(300)) {
        panic!("a second frame ({} bytes) from {source}", again.len());
    }
    payload
}

#[test]
#[ignore = "needs root (CAP_NET_RAW) and etherwake: sudo apt-get install etherwake && sudo cargo test -- --ignored raw"]
fn raw_etherwake_frame_on_lo_gives_the_mac_once() {
    let _lo = LO.lock().unwrap_or_else(|e| e.into_inner());
    let listener = RawListener::open("lo").expect("open lo");
    assert_eq!(listener.interface(), "lo");
    // Nothing queued yet: a non-blocking socket says so at once.
    let mut buf = [0u8; 2048];
    let err = listener.recv(&mut buf).expect_err("no frame was sent yet");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);

    etherwake("lo", &["52:54:00:aa:bb:cc"]);
    let payload = expect_one_frame(&listener, mac("52:54:00:aa:bb:cc"));
    // The payload is the bare magic packet: the Ethernet header is stripped.
    assert_eq!(payload.len(), packet::MIN_PACKET_LEN);
    assert_eq!(payload[..6], [0xff; 6]);
}

#[test]
#[ignore = "needs root (CAP_NET_RAW) and etherwake: sudo apt-get install etherwake && sudo cargo test -- --ignored raw"]
fn raw_etherwake_broadcast_with_password_gives_the_mac() {
    let _lo = LO.lock().unwrap_or_else(|e| e.into_inner());
    let listener = RawListener::open("lo").expect("open lo");
    etherwake(
        "lo",
        &["-b", "-p", "00:22:44:66:88:aa", "52:54:00:aa:bb:dd"],
    );
    let payload = expect_one_frame(&listener, mac("52:54:00:aa:bb:dd"));
    assert_eq!(
        payload.len(),
        packet::MIN_PACKET_LEN + 6,
        "6-byte SecureOn password"
    );
}

#[test]
#[ignore = "needs root (CAP_NET_RAW) and etherwake: sudo apt-get install etherwake && sudo cargo test -- --ignored raw"]
fn raw_frame_over_veth_shows_the_sender_and_stays_on_its_interface() {
    // A veth pair: what etherwake sends out of one end arrives on the other,
    // as on a real NIC (incoming, addressed to another host's MAC).
    let (ours, theirs) = ("wolraw0", "wolraw1");
    let _ = Command::new("ip").args(["link", "del", ours]).output();
    ip(&["link", "add", ours, "type", "veth", "peer", "name", theirs]);
    let cleanup = DeleteLink(ours);
    ip(&["link", "set", theirs, "address", "52:54:00:12:34:56"]);
    ip(&["link", "set", theirs, "up"]);
    ip(&["link", "set", ours, "up"]);
    let listener = RawListener::open(ours).expect("open veth");
    // The lo listener of the other tests must not see this one's frame, nor
    // this one theirs.
    let _lo = LO.lock().unwrap_or_else(|e| e.into_inner());
    etherwake("lo", &["52:54:00:aa:bb:ef"]);
    assert!(next_frame(&listener, Duration::from_millis(300)).is_none());

    etherwake(theirs, &["52:54:00:aa:bb:ee"]);
    let (payload, source) = next_frame(&listener, DEADLINE).expect("no frame over veth");
    assert_eq!(packet::parse(&payload), Ok(mac("52:54:00:aa:bb:ee")));
    assert_eq!(source.to_string(), "52:54:00:12:34:56 on wolraw0");

    // Deleting the interface unbinds the socket for good: recv says so.
    drop(cleanup);
    let mut buf = [0u8; 2048];
    assert!(
        readable(&listener, DEADLINE),
        "no error reported on removal"
    );
    let err = listener.recv(&mut buf).expect_err("interface removed");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("wolraw0 was removed"), "{err}");
}

#[test]
#[ignore = "needs root (CAP_NET_RAW) and etherwake: sudo apt-get install etherwake && sudo cargo test -- --ignored raw"]
fn raw_bridge_port_is_refused_and_the_bridge_receives() {
    let (bridge, port, peer) = ("wolrawbr0", "wolraw2", "wolraw3");
    let _ = Command::new("ip").args(["link", "del", port]).output();
    let _ = Command::new("ip").args(["link", "del", bridge]).output();
    ip(&["link", "add", bridge, "type", "bridge"]);
    let _bridge = DeleteLink(bridge);
    ip(&["link", "add", port, "type", "veth", "peer", "name", peer]);
    let _port = DeleteLink(port);
    ip(&["link", "set", port, "master", bridge]);
    for link in [bridge, port, peer] {
        ip(&["link", "set", link, "up"]);
    }
    // A listener on the port would never see a frame: refused, with advice.
    let err = RawListener::open(port).expect_err("bridge port");
    assert_eq!(
        format!("{err:#}"),
        "cannot listen for raw Wake-on-LAN frames on wolraw2: it is a port of bridge \
         wolrawbr0, which receives its frames; use --raw-interface wolrawbr0"
    );
    // The bridge gets a broadcast frame (from a LAN host, here the veth peer).
    let listener = RawListener::open(bridge).expect("open bridge");
    etherwake(peer, &["-b", "52:54:00:aa:bb:f0"]);
    let (payload, source) = next_frame(&listener, DEADLINE).expect("no frame on the bridge");
    assert_eq!(packet::parse(&payload), Ok(mac("52:54:00:aa:bb:f0")));
    assert!(source.to_string().ends_with(" on wolrawbr0"), "{source}");
}

/// Runs `ip` with `args`, which must succeed.
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?}");
}

/// Deletes a network interface when dropped (also when the test panics).
struct DeleteLink(&'static str);

impl Drop for DeleteLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
    }
}

#[test]
fn raw_unknown_interface_is_named() {
    // No privilege needed: the interface is looked up before the socket.
    let err = RawListener::open("nosuchif0").expect_err("no such interface");
    let message = format!("{err:#}");
    assert_eq!(
        message,
        "cannot listen for raw Wake-on-LAN frames on nosuchif0: no such network interface \
         (see `ip link`)"
    );
}

#[test]
fn raw_without_cap_net_raw_says_so() {
    // Capabilities are per thread on Linux, and socket(2) checks the calling
    // thread's: drop CAP_NET_RAW in a thread of our own, which then ends,
    // leaving the rest of the test process as it was. Unprivileged, the
    // drop changes nothing and socket(2) fails the same way.
    let message = std::thread::spawn(|| {
        let mut caps = capabilities(None).expect("capget");
        caps.effective.remove(CapabilitySet::NET_RAW);
        caps.permitted.remove(CapabilitySet::NET_RAW);
        set_capabilities(None, caps).expect("capset");
        format!("{:#}", RawListener::open("lo").expect_err("no CAP_NET_RAW"))
    })
    .join()
    .expect("thread");
    assert_eq!(
        message,
        "cannot listen for raw Wake-on-LAN frames on lo: needs CAP_NET_RAW \
         (run as root or use the wol-libvirt-gateway-raw@.service unit)"
    );
}

/// The whole path: the real binary with `--raw-interface lo`, the real
/// `etherwake`, a domain of libvirt's `test:///` driver started.
#[test]
#[ignore = "needs root (CAP_NET_RAW) and etherwake: sudo apt-get install etherwake && sudo cargo test -- --ignored raw"]
fn raw_mode_wakes_a_domain_from_an_etherwake_frame() {
    use crate::util::{Launch, NodeFile, RunState, domain};
    let _lo = LO.lock().unwrap_or_else(|e| e.into_inner());
    let node = NodeFile::new(&[domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff)]);
    let mut gateway = Launch::new(&["--raw-interface", "lo", "--libvirt-uri", &node.uri()]).spawn();
    let listening = gateway.wait_for_log("listening on raw Ethernet on lo");
    // Raw mode binds no UDP socket and never idles out.
    assert!(listening.contains("running until stopped"), "{listening}");
    etherwake("lo", &["52:54:00:aa:bb:cc"]);
    let line = gateway.wait_for_log("started web01");
    assert!(
        line.contains("for 52:54:00:aa:bb:cc from 00:00:00:00:00:00 on lo"),
        "{line}"
    );
    gateway.signal("TERM");
    assert_eq!(
        gateway.wait_exit(DEADLINE).code(),
        Some(0),
        "{}",
        gateway.log()
    );
}
