//! Per-domain SecureOn passwords on the real `test:///` driver: stored by
//! `secureon set` (in process, on a node file), and enforced on magic
//! packets by the real binary (the node file carries the stored element,
//! as `secureon set` writes it).

use std::time::Duration;

use wol_libvirt_gateway::commands::secureon;
use wol_libvirt_gateway::decide::outcome::{Outcome, Verb};
use wol_libvirt_gateway::decide::policy::Refusal;
use wol_libvirt_gateway::decide::policy::WakeMeta;
use wol_libvirt_gateway::ingress::packet::{Magic, magic_packet};
use wol_libvirt_gateway::libvirt::hypervisor::Libvirt;
use wol_libvirt_gateway::model::{Mac, Password};

use crate::util::{
    DEADLINE, Launch, NodeFile, RunState, Shared, domain, fleet, host, mac, open_node, rescan,
    secureon_element, send, summary_count,
};

const WEB: &str = "52:54:00:50:00:01";

fn password(text: &str) -> Password {
    text.parse().expect("password")
}

fn ask(mac_text: &str, password: Option<&str>) -> Magic {
    Magic {
        mac: mac(mac_text),
        password: password.map(self::password),
    }
}

fn packet(mac: Mac, password: &[u8]) -> Vec<u8> {
    let mut packet = magic_packet(mac);
    packet.extend_from_slice(password);
    packet
}

#[test]
fn a_domain_with_a_password_wakes_only_for_it() {
    let (_node, conn) = open_node(&[
        domain("web01", WEB, RunState::ShutOff),
        domain("db01", "52:54:00:50:00:02", RunState::ShutOff),
    ]);
    let hv = Libvirt::from_connection(conn.clone());
    secureon::set(&hv, "web01", &password("01:02:03:04:05:06")).expect("set");
    let fleet = fleet(vec![host(Shared(conn), rescan(Duration::from_secs(5)))]);
    let refused = |outcome: Outcome| match outcome {
        Outcome::Refused { reason, .. } => reason,
        other => panic!("not refused: {other:?}"),
    };
    let decide = |magic| match fleet.wake(magic) {
        wol_libvirt_gateway::libvirt::fleet::Conclusion::Decided(decision) => decision.outcome,
        other => panic!("{other:?}"),
    };

    assert_eq!(refused(decide(ask(WEB, None))), Refusal::SecureOnMissing);
    let wrong = ask(WEB, Some("01:02:03:04:05:07"));
    assert_eq!(refused(decide(wrong)), Refusal::SecureOnWrong);
    let four = ask(WEB, Some("01:02:03:04"));
    assert_eq!(refused(decide(four)), Refusal::SecureOnWrong);
    assert!(matches!(
        decide(ask(WEB, Some("01:02:03:04:05:06"))),
        Outcome::Done {
            verb: Verb::Start,
            ..
        }
    ));
    // A domain without one takes any packet, with or without a password.
    assert!(matches!(
        decide(ask("52:54:00:50:00:02", Some("09:09:09:09"))),
        Outcome::Done { .. }
    ));
}

#[test]
fn set_stores_only_a_salted_hash_and_clear_removes_it() {
    let (_node, conn) = open_node(&[domain("web01", WEB, RunState::ShutOff)]);
    let hv = Libvirt::from_connection(conn.clone());
    let secret = password("0a:0b:0c:0d:0e:0f");
    secureon::set(&hv, "web01", &secret).expect("set");
    let xml = conn
        .lookup_domain_by_name("web01")
        .and_then(|d| d.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE))
        .expect("xml");
    for shown in ["0a:0b:0c:0d:0e:0f", "0a0b0c0d0e0f", "0A0B0C0D0E0F"] {
        assert!(!xml.contains(shown), "{xml}");
    }
    let sealed = hv.wake_meta("web01").expect("meta").secureon.expect("set");
    assert!(sealed.opens(&secret));
    assert!(!hv.wake_meta("web01").expect("meta").opt_in);

    assert!(secureon::clear(&hv, "web01").expect("clear"));
    assert_eq!(hv.wake_meta("web01").expect("meta"), WakeMeta::default());
    assert!(!secureon::clear(&hv, "web01").expect("clear again"));
}

#[test]
fn the_gateway_refuses_a_missing_or_wrong_password_and_never_logs_it() {
    let secret = [0x5e, 0xc7, 0xe7, 0x01, 0x02, 0x03];
    let element = secureon_element(&secret);
    let node = NodeFile::new(&[domain("web01", WEB, RunState::ShutOff).with_metadata(&element)]);
    let mut gateway = Launch::by_hand(&node.uri(), &["--idle-timeout", "2s"]).spawn();
    let addr = gateway.listen_addr();

    send(addr, &magic_packet(mac(WEB)));
    let missing = gateway.wait_for_log("refused to wake web01");
    assert!(missing.contains("SecureOn password missing"), "{missing}");
    send(
        addr,
        &packet(mac(WEB), &[0x5e, 0xc7, 0xe7, 0x01, 0x02, 0x04]),
    );
    wait_for_count(&gateway, "SecureOn password wrong", 1);
    // The right one right after the wrong one: not taken for a duplicate.
    send(addr, &packet(mac(WEB), &secret));
    gateway.wait_for_log("started web01");

    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    let log = gateway.log();
    let summary = gateway.wait_for_log("exiting (idle timeout)");
    assert_eq!(summary_count(&summary, "wake requests handled"), 3, "{log}");
    assert_eq!(summary_count(&summary, "duplicates"), 0, "{log}");
    for shown in ["5e:c7:e7", "5ec7e7", "5E:C7:E7", "94.199.231"] {
        assert!(!log.contains(shown), "the password is in the log:\n{log}");
    }
}

fn wait_for_count(gateway: &crate::util::Gateway, needle: &str, count: usize) {
    let reached = crate::util::wait_until(DEADLINE, || gateway.lines_with(needle).len() >= count);
    assert!(
        reached,
        "no {count} lines with {needle:?}:\n{}",
        gateway.log()
    );
}

#[test]
fn a_malformed_password_is_one_line_naming_the_forms() {
    let out = assert_cmd::Command::new(crate::util::bin())
        .args([
            "secureon",
            "set",
            "web01",
            "01:02:03",
            "--libvirt-uri",
            "test:///default",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'01:02:03'"), "{stderr}");
    assert!(stderr.contains("4 or 6 bytes"), "{stderr}");
}

#[test]
fn guessing_passwords_is_throttled_per_mac_and_said_in_the_journal() {
    // Security review, finding 6: about 10,000 wrong passwords a second were
    // decided; a 4-byte password fell in days.
    let secret = [0x5e, 0xc7, 0xe7, 0x01];
    let element = secureon_element(&secret);
    let node = NodeFile::new(&[domain("web01", WEB, RunState::ShutOff).with_metadata(&element)]);
    let mut gateway = Launch::by_hand(&node.uri(), &["--idle-timeout", "5m"]).spawn();
    let addr = gateway.listen_addr();
    for guess in 0..5u8 {
        send(addr, &packet(mac(WEB), &[guess, 0, 0, 0]));
        wait_for_count(&gateway, "SecureOn password wrong", usize::from(guess) + 1);
    }
    // The sixth, the right one, is not looked up: the MAC is throttled.
    send(addr, &packet(mac(WEB), &secret));
    gateway.wait_for_log("not looking up the SecureOn password");
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(DEADLINE).code(), Some(0));
    let summary = gateway.wait_for_log("exiting (signal)");
    assert_eq!(
        summary_count(&summary, "throttled (wrong SecureOn passwords)"),
        1,
        "{summary}"
    );
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        5,
        "{summary}"
    );
    assert!(
        gateway.lines_with("started web01").is_empty(),
        "{}",
        gateway.log()
    );
}
