//! The wake policy against real libvirt (the in-process `test:///` driver),
//! and against a fake hypervisor only where the test driver cannot go.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use virt::connect::Connect;
use wol_libvirt_gateway::hypervisor::{
    Action, Connector, DomainRecord, DomainState, HvError, Hypervisor,
};
use wol_libvirt_gateway::policy::{Policy, Refusal};
use wol_libvirt_gateway::wake::{Outcome, Waker};

use crate::util::{
    DomainSpec, NodeFile, RunState, Shared, domain, lookup, mac, open_node, state_of,
};

fn setup(domains: &[DomainSpec], rescan: Duration) -> (NodeFile, Connect, Waker<Shared>) {
    let (node, conn) = open_node(domains);
    let waker = Waker::new(Shared(conn.clone()), rescan);
    (node, conn, waker)
}

#[test]
fn each_state_gets_its_action_on_the_real_test_driver() {
    let (_node, conn, mut waker) = setup(
        &[
            domain("off", "52:54:00:00:00:01", RunState::ShutOff),
            domain("crashed", "52:54:00:00:00:02", RunState::Crashed),
            domain("paused", "52:54:00:00:00:03", RunState::Paused),
            domain("running", "52:54:00:00:00:04", RunState::Running),
        ],
        Duration::from_secs(5),
    );
    let cases = [
        (
            "off",
            "52:54:00:00:00:01",
            Action::Start,
            DomainState::ShutOff,
        ),
        (
            "paused",
            "52:54:00:00:00:03",
            Action::Resume,
            DomainState::Paused,
        ),
    ];
    for (name, address, action, before) in cases {
        let outcome = waker.wake(mac(address)).expect("reachable");
        assert_eq!(
            outcome,
            Outcome::Done {
                domain: name.into(),
                state: before,
                action,
                restored: false
            }
        );
        assert_eq!(state_of(&conn, name), DomainState::Running, "{name}");
    }
    // A domain in the crashed state was preserved (on_crash=preserve) and
    // still holds its resources: the start is tried, as for any inactive
    // state, and libvirt's refusal reaches the log. We never destroy it: its
    // memory is there to be debugged.
    match waker.wake(mac("52:54:00:00:00:02")).expect("reachable") {
        Outcome::Failed {
            domain,
            state: DomainState::Crashed,
            action: Action::Start,
            error,
        } => {
            assert_eq!(domain, "crashed");
            assert!(error.0.contains("already running"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let outcome = waker.wake(mac("52:54:00:00:00:04")).expect("reachable");
    assert_eq!(
        outcome,
        Outcome::AlreadyUp {
            domain: "running".into(),
            state: DomainState::Running,
            others: vec![]
        }
    );
    assert_eq!(waker.scans(), 1, "one scan serves every known MAC");
}

#[test]
fn managed_save_image_is_restored_and_said_so() {
    let (_node, conn, mut waker) = setup(
        &[domain("saved", "52:54:00:00:00:10", RunState::Running)],
        Duration::from_secs(5),
    );
    let dom = lookup(&conn, "saved");
    dom.managed_save(0).expect("managed save");
    assert_eq!(state_of(&conn, "saved"), DomainState::ShutOff);
    let outcome = waker.wake(mac("52:54:00:00:00:10")).expect("reachable");
    assert_eq!(
        outcome,
        Outcome::Done {
            domain: "saved".into(),
            state: DomainState::ShutOff,
            action: Action::Start,
            restored: true
        }
    );
    assert_eq!(state_of(&conn, "saved"), DomainState::Running);
    assert!(!dom.has_managed_save(0).expect("query"), "image consumed");
}

#[test]
fn a_failing_libvirt_call_carries_libvirts_message() {
    // The test driver has no PM wake-up: a real libvirt error, as a user
    // would get from a driver that refuses the call.
    let (_node, conn, mut waker) = setup(
        &[domain("sleepy", "52:54:00:00:00:20", RunState::PmSuspended)],
        Duration::from_secs(5),
    );
    match waker.wake(mac("52:54:00:00:00:20")).expect("reachable") {
        Outcome::Failed {
            domain,
            action: Action::PmWakeup,
            error,
            ..
        } => {
            assert_eq!(domain, "sleepy");
            assert!(error.0.contains("not supported"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(state_of(&conn, "sleepy"), DomainState::PmSuspended);
}

#[test]
fn a_mac_on_several_domains_starts_none_unless_one_is_up() {
    let shared = "52:54:00:00:00:30";
    let (_node, conn, mut waker) = setup(
        &[
            domain("twin-a", shared, RunState::ShutOff),
            domain("twin-b", shared, RunState::ShutOff),
        ],
        Duration::from_secs(5),
    );
    match waker.wake(mac(shared)).expect("reachable") {
        Outcome::Ambiguous { mut domains } => {
            domains.sort();
            assert_eq!(domains, ["twin-a", "twin-b"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(state_of(&conn, "twin-a"), DomainState::ShutOff);
    assert_eq!(state_of(&conn, "twin-b"), DomainState::ShutOff);

    lookup(&conn, "twin-b").create().expect("start twin-b");
    let outcome = waker.wake(mac(shared)).expect("reachable");
    assert_eq!(
        outcome,
        Outcome::AlreadyUp {
            domain: "twin-b".into(),
            state: DomainState::Running,
            others: vec!["twin-a".into()]
        }
    );
    assert_eq!(state_of(&conn, "twin-a"), DomainState::ShutOff);
}

#[test]
fn unknown_macs_rescan_at_most_once_per_interval() {
    let (_node, conn, mut waker) = setup(
        &[domain("web01", "52:54:00:00:00:40", RunState::ShutOff)],
        Duration::from_secs(3600),
    );
    for i in 0..100u8 {
        let unknown = wol_libvirt_gateway::packet::Mac([0x52, 0x54, 0, 0, 1, i]);
        assert_eq!(waker.wake(unknown).expect("reachable"), Outcome::NoMatch);
    }
    assert_eq!(
        waker.scans(),
        1,
        "a stream of unknown MACs must not hammer libvirt"
    );

    // A domain defined after the scan is found once the interval allows a
    // rescan (here: a fresh waker with a zero interval on the same connection).
    let xml = "<domain type='test'><name>late</name><memory>65536</memory>\
               <os><type arch='x86_64'>hvm</type></os><devices>\
               <interface type='user'><mac address='52:54:00:00:00:41'/></interface>\
               </devices></domain>";
    conn.define_domain_xml(xml).expect("define");
    assert_eq!(
        waker.wake(mac("52:54:00:00:00:41")).expect("reachable"),
        Outcome::NoMatch
    );
    let mut eager = Waker::new(Shared(conn.clone()), Duration::ZERO);
    assert!(matches!(
        eager.wake(mac("52:54:00:00:00:41")).expect("reachable"),
        Outcome::Done { ref domain, .. } if domain == "late"
    ));
}

/// A scripted hypervisor, used only for what `test:///` cannot do: a
/// successful PM wake-up, and a domain whose XML cannot be read or parsed.
#[derive(Default)]
struct FakeState {
    domains: Vec<(String, Result<String, HvError>, DomainState)>,
    calls: Vec<(String, Action)>,
}

#[derive(Clone, Default)]
struct Fake(Rc<RefCell<FakeState>>);

impl Hypervisor for Fake {
    fn domains(&self) -> Result<Vec<DomainRecord>, HvError> {
        Ok(self
            .0
            .borrow()
            .domains
            .iter()
            .map(|(name, xml, _)| DomainRecord::from_xml(name.clone(), name.clone(), xml.clone()))
            .collect())
    }
    fn domain(&self, uuid: &str) -> Result<DomainRecord, HvError> {
        self.domains()?
            .into_iter()
            .find(|record| record.uuid == uuid)
            .ok_or_else(|| HvError("no such domain".into()))
    }
    fn state(&self, uuid: &str) -> Result<DomainState, HvError> {
        let state = self.0.borrow();
        let found = state.domains.iter().find(|(name, _, _)| name == uuid);
        found
            .map(|(_, _, s)| *s)
            .ok_or_else(|| HvError("no such domain".into()))
    }
    fn has_managed_save(&self, _uuid: &str) -> Result<bool, HvError> {
        Ok(false)
    }
    fn perform(&self, uuid: &str, action: Action) -> Result<(), HvError> {
        let mut state = self.0.borrow_mut();
        state.calls.push((uuid.to_owned(), action));
        if let Some(domain) = state.domains.iter_mut().find(|(name, _, _)| name == uuid) {
            domain.2 = DomainState::Running;
        }
        Ok(())
    }
    fn is_alive(&self) -> bool {
        true
    }
}

impl Connector for Fake {
    fn uri(&self) -> &str {
        "fake:///"
    }
    fn connect(&self) -> Result<Box<dyn Hypervisor>, HvError> {
        Ok(Box::new(self.clone()))
    }
}

fn nic(mac: &str) -> Result<String, HvError> {
    Ok(format!(
        "<domain><devices><interface type='bridge'><mac address='{mac}'/></interface></devices></domain>"
    ))
}

#[test]
fn pm_suspended_domain_gets_pm_wakeup_fake_hypervisor() {
    let fake = Fake::default();
    fake.0.borrow_mut().domains.push((
        "laptop-vm".into(),
        nic("52:54:00:00:00:50"),
        DomainState::PmSuspended,
    ));
    let mut waker = Waker::new(fake.clone(), Duration::from_secs(5));
    let outcome = waker.wake(mac("52:54:00:00:00:50")).expect("reachable");
    assert!(
        matches!(
            outcome,
            Outcome::Done {
                action: Action::PmWakeup,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        fake.0.borrow().calls,
        [("laptop-vm".to_owned(), Action::PmWakeup)]
    );
}

#[test]
fn unreadable_or_broken_domains_are_skipped_not_fatal_fake_hypervisor() {
    let fake = Fake::default();
    {
        let mut state = fake.0.borrow_mut();
        state.domains.push((
            "gone".into(),
            Err(HvError("Domain not found".into())),
            DomainState::ShutOff,
        ));
        state.domains.push((
            "garbled".into(),
            Ok("<domain><devices".into()),
            DomainState::ShutOff,
        ));
        state
            .domains
            .push(("badmac".into(), nic("52:54:00:00:00"), DomainState::ShutOff));
        state.domains.push((
            "web01".into(),
            nic("52:54:00:00:00:60"),
            DomainState::ShutOff,
        ));
    }
    let mut waker = Waker::new(fake.clone(), Duration::from_secs(5));
    let outcome = waker.wake(mac("52:54:00:00:00:60")).expect("reachable");
    assert!(
        matches!(outcome, Outcome::Done { ref domain, .. } if domain == "web01"),
        "{outcome:?}"
    );
}

/// What `virsh metadata DOM --uri https://wol-libvirt-gateway/xmlns/1 --key
/// wol --set '<wake/>' --config` does, through the API.
fn opt_in(conn: &Connect, name: &str) {
    lookup(conn, name)
        .set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some("<wake/>"),
            Some("wol"),
            Some(wol_libvirt_gateway::domain_xml::METADATA_NAMESPACE),
            virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
        )
        .expect("set metadata");
}

#[test]
fn allow_list_refuses_other_domains_and_says_why() {
    let (_node, conn, waker) = setup(
        &[
            domain("web01", "52:54:00:00:00:70", RunState::ShutOff),
            domain("db01", "52:54:00:00:00:71", RunState::ShutOff),
        ],
        Duration::from_secs(5),
    );
    let policy = Policy {
        allow: vec!["web01".parse().expect("entry")],
        require_opt_in: false,
    };
    let mut waker = waker.with_policy(policy);
    assert_eq!(
        waker.wake(mac("52:54:00:00:00:71")).expect("reachable"),
        Outcome::Refused {
            domains: vec!["db01".into()],
            reason: Refusal::NotAllowed
        }
    );
    assert_eq!(state_of(&conn, "db01"), DomainState::ShutOff);
    let outcome = waker.wake(mac("52:54:00:00:00:70")).expect("reachable");
    assert!(
        matches!(outcome, Outcome::Done { ref domain, .. } if domain == "web01"),
        "{outcome:?}"
    );
}

#[test]
fn opt_in_metadata_is_required_when_asked_for() {
    let (_node, conn, waker) = setup(
        &[
            domain("web01", "52:54:00:00:00:80", RunState::ShutOff),
            domain("db01", "52:54:00:00:00:81", RunState::ShutOff),
        ],
        Duration::from_secs(5),
    );
    opt_in(&conn, "web01");
    let policy = Policy {
        allow: vec![],
        require_opt_in: true,
    };
    let mut waker = waker.with_policy(policy);
    assert_eq!(
        waker.wake(mac("52:54:00:00:00:81")).expect("reachable"),
        Outcome::Refused {
            domains: vec!["db01".into()],
            reason: Refusal::NoOptIn
        }
    );
    assert_eq!(state_of(&conn, "db01"), DomainState::ShutOff);
    let outcome = waker.wake(mac("52:54:00:00:00:80")).expect("reachable");
    assert!(
        matches!(outcome, Outcome::Done { ref domain, .. } if domain == "web01"),
        "{outcome:?}"
    );
}

#[test]
fn huge_deeply_nested_or_non_xml_domains_are_skipped_fake_hypervisor() {
    let fake = Fake::default();
    {
        let mut state = fake.0.borrow_mut();
        let mut huge = String::from("<domain><devices>");
        while huge.len() < 8 << 20 {
            huge.push_str("<interface type='user'><mac address='52:54:00:00:00:99'/></interface>");
        }
        huge.push_str("</devices></domain>");
        let deep = format!(
            "<domain><devices>{}<interface type='user'><mac address='52:54:00:00:00:98'/></interface>{}</devices></domain>",
            "<x>".repeat(200_000),
            "</x>".repeat(200_000)
        );
        for (name, xml) in [
            ("huge", huge),
            ("deep", deep),
            ("binary", "\u{0}\u{1}\u{2}PK\u{3}\u{4}".into()),
        ] {
            state
                .domains
                .push((name.into(), Ok(xml), DomainState::ShutOff));
        }
        state.domains.push((
            "web01".into(),
            nic("52:54:00:00:00:90"),
            DomainState::ShutOff,
        ));
    }
    let mut waker = Waker::new(fake.clone(), Duration::from_secs(5));
    let outcome = waker.wake(mac("52:54:00:00:00:90")).expect("reachable");
    assert!(
        matches!(outcome, Outcome::Done { ref domain, .. } if domain == "web01"),
        "{outcome:?}"
    );
    // The huge one is refused for its size, not searched.
    assert_eq!(
        waker.wake(mac("52:54:00:00:00:99")).expect("reachable"),
        Outcome::NoMatch
    );
}
