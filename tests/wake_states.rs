//! The wake decision against real libvirt (the in-process `test:///`
//! driver), and against a fake hypervisor only where the test driver cannot
//! go (a successful PM wake-up, unreadable XML).

use std::time::Duration;

use virt::connect::Connect;
use wol_libvirt_gateway::decide::outcome::{Outcome, Verb};
use wol_libvirt_gateway::decide::policy::{Policy, Refusal};
use wol_libvirt_gateway::libvirt::fleet::Fleet;
use wol_libvirt_gateway::libvirt::index::Rescan;
use wol_libvirt_gateway::model::{Action, DomainState};

use crate::util::{
    DomainSpec, Fake, NodeFile, RunState, Shared, domain, fleet, host, lookup, name_of, nics_xml,
    open_node, redefine, rescan, state_of, wake_through,
};

fn setup(domains: &[DomainSpec], rules: Rescan) -> (NodeFile, Connect, Fleet) {
    let (node, conn) = open_node(domains);
    let fleet = fleet(vec![host(Shared(conn.clone()), rules)]);
    (node, conn, fleet)
}

fn setup_with(domains: &[DomainSpec], policy: Policy) -> (NodeFile, Connect, Fleet) {
    let (node, conn) = open_node(domains);
    let host = host(Shared(conn.clone()), rescan(Duration::from_secs(5))).with_policy(policy);
    (node, conn, fleet(vec![host]))
}

/// The name and verb of a `Done` outcome.
fn done(outcome: &Outcome) -> Option<(&str, Verb)> {
    match outcome {
        Outcome::Done { domain, verb, .. } => Some((name_of(domain), *verb)),
        _ => None,
    }
}

#[test]
fn each_state_gets_its_action_on_the_real_test_driver() {
    let (_node, conn, fleet) = setup(
        &[
            domain("off", "52:54:00:00:00:01", RunState::ShutOff),
            domain("crashed", "52:54:00:00:00:02", RunState::Crashed),
            domain("paused", "52:54:00:00:00:03", RunState::Paused),
            domain("running", "52:54:00:00:00:04", RunState::Running),
        ],
        rescan(Duration::from_secs(5)),
    );
    for (name, address, verb, before) in [
        (
            "off",
            "52:54:00:00:00:01",
            Verb::Start,
            DomainState::ShutOff,
        ),
        (
            "paused",
            "52:54:00:00:00:03",
            Verb::Resume,
            DomainState::Paused,
        ),
    ] {
        let outcome = wake_through(&fleet, address);
        assert_eq!(done(&outcome), Some((name, verb)), "{outcome:?}");
        assert!(
            matches!(outcome, Outcome::Done { state, .. } if state == before),
            "{outcome:?}"
        );
        assert_eq!(state_of(&conn, name), DomainState::Running, "{name}");
    }
    // A domain in the crashed state was preserved (on_crash=preserve) and
    // still holds its resources: the start is tried, as for any inactive
    // state, and libvirt's refusal is the outcome. We never destroy it: its
    // memory is there to be debugged.
    match wake_through(&fleet, "52:54:00:00:00:02") {
        Outcome::Failed {
            domain,
            state: DomainState::Crashed,
            verb: Verb::Start,
            error,
        } => {
            assert_eq!(name_of(&domain), "crashed");
            assert!(error.message.contains("already running"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    match wake_through(&fleet, "52:54:00:00:00:04") {
        Outcome::AlreadyUp {
            domain,
            state: DomainState::Running,
            others,
        } => assert!(name_of(&domain) == "running" && others.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    let host = &fleet.hosts()[0];
    assert_eq!(
        (host.full_scans(), host.listings()),
        (1, 0),
        "one scan serves every known MAC"
    );
}

#[test]
fn managed_save_image_is_restored_and_said_so() {
    let (_node, conn, fleet) = setup(
        &[domain("saved", "52:54:00:00:00:10", RunState::Running)],
        rescan(Duration::from_secs(5)),
    );
    let dom = lookup(&conn, "saved");
    dom.managed_save(0).expect("managed save");
    assert_eq!(state_of(&conn, "saved"), DomainState::ShutOff);
    let outcome = wake_through(&fleet, "52:54:00:00:00:10");
    assert_eq!(
        done(&outcome),
        Some(("saved", Verb::Restore)),
        "{outcome:?}"
    );
    assert_eq!(state_of(&conn, "saved"), DomainState::Running);
    assert!(!dom.has_managed_save(0).expect("query"), "image consumed");
}

#[test]
fn a_failing_libvirt_call_carries_libvirts_message() {
    // The test driver has no PM wake-up: a real libvirt error, as a user
    // would get from a driver that refuses the call.
    let (_node, conn, fleet) = setup(
        &[domain("sleepy", "52:54:00:00:00:20", RunState::PmSuspended)],
        rescan(Duration::from_secs(5)),
    );
    match wake_through(&fleet, "52:54:00:00:00:20") {
        Outcome::Failed {
            domain,
            verb: Verb::PmWakeup,
            error,
            ..
        } => {
            assert_eq!(name_of(&domain), "sleepy");
            assert!(error.message.contains("not supported"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(state_of(&conn, "sleepy"), DomainState::PmSuspended);
}

#[test]
fn a_mac_on_several_domains_starts_none_unless_one_is_up() {
    let shared = "52:54:00:00:00:30";
    let (_node, conn, fleet) = setup(
        &[
            domain("twin-a", shared, RunState::ShutOff),
            domain("twin-b", shared, RunState::ShutOff),
        ],
        rescan(Duration::from_secs(5)),
    );
    match wake_through(&fleet, shared) {
        Outcome::Ambiguous { domains } => {
            let mut names: Vec<&str> = domains.iter().map(name_of).collect();
            names.sort();
            assert_eq!(names, ["twin-a", "twin-b"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(state_of(&conn, "twin-a"), DomainState::ShutOff);
    assert_eq!(state_of(&conn, "twin-b"), DomainState::ShutOff);

    lookup(&conn, "twin-b").create().expect("start twin-b");
    match wake_through(&fleet, shared) {
        Outcome::AlreadyUp {
            domain,
            state: DomainState::Running,
            others,
        } => {
            assert_eq!(name_of(&domain), "twin-b");
            assert_eq!(others.iter().map(name_of).collect::<Vec<_>>(), ["twin-a"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(state_of(&conn, "twin-a"), DomainState::ShutOff);
}

#[test]
fn unknown_macs_cost_one_scan_then_nothing_within_the_interval() {
    let (_node, _conn, fleet) = setup(
        &[domain("web01", "52:54:00:00:00:40", RunState::ShutOff)],
        rescan(Duration::from_secs(3600)),
    );
    for i in 0..100u8 {
        let unknown = format!("52:54:00:00:01:{i:02x}");
        assert_eq!(wake_through(&fleet, &unknown), Outcome::NoMatch);
    }
    let host = &fleet.hosts()[0];
    assert_eq!(
        (host.full_scans(), host.listings()),
        (1, 0),
        "a stream of unknown MACs must not hammer libvirt"
    );
}

#[test]
fn a_new_domain_is_found_by_a_listing_and_a_new_nic_by_the_next_full_scan() {
    let full_interval = Duration::from_millis(300);
    let (_node, conn, fleet) = setup(
        &[domain("web01", "52:54:00:00:00:40", RunState::ShutOff)],
        Rescan {
            interval: Duration::ZERO,
            full_interval,
        },
    );
    assert!(done(&wake_through(&fleet, "52:54:00:00:00:40")).is_some());
    let host = &fleet.hosts()[0];
    assert_eq!((host.full_scans(), host.listings()), (1, 0));

    // A domain defined since: the first packet for its MAC finds it, with a
    // listing and one domain's XML, not a scan.
    redefine(&conn, "late", &["52:54:00:00:00:41"]);
    let outcome = wake_through(&fleet, "52:54:00:00:00:41");
    assert_eq!(done(&outcome), Some(("late", Verb::Start)), "{outcome:?}");
    assert_eq!((host.full_scans(), host.listings()), (1, 1));

    // A NIC added to a domain already read: a listing cannot see it...
    lookup(&conn, "late").destroy().expect("stop late");
    redefine(&conn, "late", &["52:54:00:00:00:41", "52:54:00:00:00:42"]);
    assert_eq!(wake_through(&fleet, "52:54:00:00:00:42"), Outcome::NoMatch);
    assert_eq!((host.full_scans(), host.listings()), (1, 2));
    // ...the first packet after the full-rescan interval does. Waiting for
    // the interval is the rule under test, not a guess.
    std::thread::sleep(full_interval);
    let outcome = wake_through(&fleet, "52:54:00:00:00:42");
    assert_eq!(done(&outcome), Some(("late", Verb::Start)), "{outcome:?}");
    assert_eq!((host.full_scans(), host.listings()), (2, 2));
}

/// What `virsh metadata DOM --uri https://wol-libvirt-gateway/xmlns/1 --key
/// wol --set '<wake/>' --config` does, through the API.
fn opt_in(conn: &Connect, name: &str) {
    lookup(conn, name)
        .set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some("<wake/>"),
            Some("wol"),
            Some(wol_libvirt_gateway::libvirt::domain_xml::METADATA_NAMESPACE),
            virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
        )
        .expect("set metadata");
}

fn refused(outcome: &Outcome) -> Option<(Vec<&str>, Refusal)> {
    match outcome {
        Outcome::Refused { domains, reason } => {
            Some((domains.iter().map(name_of).collect(), *reason))
        }
        _ => None,
    }
}

#[test]
fn allow_list_refuses_other_domains_and_says_why() {
    let policy = Policy {
        allow: vec!["web01".parse().expect("entry")],
        require_opt_in: false,
    };
    let (_node, conn, fleet) = setup_with(
        &[
            domain("web01", "52:54:00:00:00:70", RunState::ShutOff),
            domain("db01", "52:54:00:00:00:71", RunState::ShutOff),
        ],
        policy,
    );
    let outcome = wake_through(&fleet, "52:54:00:00:00:71");
    assert_eq!(refused(&outcome), Some((vec!["db01"], Refusal::NotAllowed)));
    assert_eq!(state_of(&conn, "db01"), DomainState::ShutOff);
    let outcome = wake_through(&fleet, "52:54:00:00:00:70");
    assert_eq!(done(&outcome), Some(("web01", Verb::Start)), "{outcome:?}");
}

#[test]
fn opt_in_metadata_is_required_when_asked_for_and_read_at_wake_time() {
    let policy = Policy {
        allow: vec![],
        require_opt_in: true,
    };
    let (_node, conn, fleet) = setup_with(
        &[
            domain("web01", "52:54:00:00:00:80", RunState::ShutOff),
            domain("db01", "52:54:00:00:00:81", RunState::ShutOff),
        ],
        policy,
    );
    opt_in(&conn, "web01");
    let outcome = wake_through(&fleet, "52:54:00:00:00:81");
    assert_eq!(refused(&outcome), Some((vec!["db01"], Refusal::NoOptIn)));
    assert_eq!(state_of(&conn, "db01"), DomainState::ShutOff);
    // An opt-in given after the index was built counts at once: every
    // wake reads the domain's current XML.
    opt_in(&conn, "db01");
    let outcome = wake_through(&fleet, "52:54:00:00:00:81");
    assert_eq!(done(&outcome), Some(("db01", Verb::Start)), "{outcome:?}");
    let outcome = wake_through(&fleet, "52:54:00:00:00:80");
    assert_eq!(done(&outcome), Some(("web01", Verb::Start)), "{outcome:?}");
}

#[test]
fn pm_suspended_domain_gets_pm_wakeup_fake_hypervisor() {
    let fake = Fake::new("fake:///");
    fake.add(
        "laptop-vm",
        nics_xml(&["52:54:00:00:00:50"]),
        DomainState::PmSuspended,
    );
    let fleet = fleet(vec![host(fake.clone(), rescan(Duration::from_secs(5)))]);
    let outcome = wake_through(&fleet, "52:54:00:00:00:50");
    assert_eq!(
        done(&outcome),
        Some(("laptop-vm", Verb::PmWakeup)),
        "{outcome:?}"
    );
    assert_eq!(fake.calls(), [("laptop-vm".to_owned(), Action::PmWakeup)]);
}

#[test]
fn unreadable_or_broken_domains_are_skipped_not_fatal_fake_hypervisor() {
    let fake = Fake::new("fake:///");
    fake.add(
        "garbled",
        Ok("<domain><devices".into()),
        DomainState::ShutOff,
    );
    fake.add(
        "badmac",
        nics_xml(&["52:54:00:00:00"]),
        DomainState::ShutOff,
    );
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
    fake.add("huge", Ok(huge), DomainState::ShutOff);
    fake.add("deep", Ok(deep), DomainState::ShutOff);
    fake.add(
        "binary",
        Ok("\u{0}\u{1}\u{2}PK\u{3}\u{4}".into()),
        DomainState::ShutOff,
    );
    fake.add(
        "web01",
        nics_xml(&["52:54:00:00:00:60"]),
        DomainState::ShutOff,
    );
    let fleet = fleet(vec![host(fake.clone(), rescan(Duration::from_secs(5)))]);
    let outcome = wake_through(&fleet, "52:54:00:00:00:60");
    assert_eq!(done(&outcome), Some(("web01", Verb::Start)), "{outcome:?}");
    // The huge one is refused for its size, not searched; the deep one for
    // its nesting.
    assert_eq!(wake_through(&fleet, "52:54:00:00:00:99"), Outcome::NoMatch);
    assert_eq!(wake_through(&fleet, "52:54:00:00:00:98"), Outcome::NoMatch);
    assert_eq!(fake.calls(), [("web01".to_owned(), Action::Start)]);
}
