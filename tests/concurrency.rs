//! No wake waits on another, and a hung libvirt is survived: the real loop
//! and fleet in this process, on a fake hypervisor, because libvirt's
//! `test:///` driver can neither take 8 s to start a domain nor stop
//! answering. The same behaviour against the real things (a qemu hook that
//! sleeps, a SIGSTOPped libvirtd) is in `tests/e2e_libvirtd.rs`.
//!
//! Everything is asserted on data: decision records (the journal fields),
//! the exit statistics, outcomes, and the fake's gates and calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wol_libvirt_gateway::decide::outcome::{Exit, Outcome, WaitFor};
use wol_libvirt_gateway::decide::policy::Policy;
use wol_libvirt_gateway::libvirt::fleet::{Conclusion, Fleet, Timing};
use wol_libvirt_gateway::libvirt::host::Host;
use wol_libvirt_gateway::libvirt::host::health::Health;
use wol_libvirt_gateway::model::{Action, DomainState};

use crate::util::{DEADLINE, Fake, InProcess, host, mac, name_of, nics_xml, rescan, wait_until};

const WINDOW: Duration = Duration::from_secs(10);

fn mac_of(i: u8) -> String {
    format!("52:54:00:d0:00:{i:02x}")
}

/// A fake with domains `vm0`..`vm{n-1}`, shut off, MAC [`mac_of`] each.
fn fake_with(uri: &str, n: u8) -> Fake {
    let fake = Fake::new(uri);
    for i in 0..n {
        fake.add(
            &format!("vm{i}"),
            nics_xml(&[&mac_of(i)]),
            DomainState::ShutOff,
        );
    }
    fake
}

fn one_host(fake: &Fake, deadline: Duration) -> Fleet {
    let host = host(fake.clone(), rescan(Duration::from_secs(5)));
    Fleet::new(vec![host], false, Timing::with_deadline(deadline))
}

#[test]
fn a_slow_start_delays_no_other_wake() {
    let fake = fake_with("fake:///", 2);
    fake.slow_down("vm0");
    let mut gateway = InProcess::start(one_host(&fake, DEADLINE), WINDOW);
    gateway.wake(&mac_of(0));
    assert!(wait_until(DEADLINE, || fake.actions.waiting() == 1));
    gateway.wake(&mac_of(1));
    let b = gateway.decision(&mac_of(1), 0, DEADLINE);
    assert_eq!((b.domain.as_deref(), b.result), (Some("vm1"), Some("ok")));
    assert_eq!(fake.actions.waiting(), 1, "vm0's start is still running");
    assert_eq!(fake.state_of("vm0"), DomainState::ShutOff);
    fake.actions.open();
    let a = gateway.decision(&mac_of(0), 0, DEADLINE);
    assert_eq!((a.domain.as_deref(), a.result), (Some("vm0"), Some("ok")));
}

#[test]
fn two_macs_of_one_domain_never_act_at_once() {
    let fake = Fake::new("fake:///");
    fake.add(
        "dual",
        nics_xml(&[&mac_of(1), &mac_of(2)]),
        DomainState::ShutOff,
    );
    fake.slow_down("dual");
    let mut gateway = InProcess::start(one_host(&fake, DEADLINE), WINDOW);
    gateway.wake(&mac_of(1));
    assert!(wait_until(DEADLINE, || fake.actions.waiting() == 1));
    gateway.wake(&mac_of(2));
    // The second request waits for its turn on the domain, not at libvirt.
    assert!(!wait_until(Duration::from_millis(300), || fake
        .actions
        .waiting()
        > 1));
    fake.actions.open();
    let mut results = [
        gateway.decision(&mac_of(1), 0, DEADLINE).result,
        gateway.decision(&mac_of(2), 0, DEADLINE).result,
    ];
    results.sort();
    assert_eq!(results, [Some("already-up"), Some("ok")]);
    assert_eq!(fake.calls(), [("dual".to_owned(), Action::Start)]);
}

#[test]
fn at_most_eight_requests_are_handled_at_once_the_rest_wait_and_are_counted() {
    let fake = fake_with("fake:///", 10);
    fake.slow_down("*");
    let mut gateway = InProcess::start(one_host(&fake, DEADLINE), WINDOW);
    for i in 0..10 {
        gateway.wake(&mac_of(i));
    }
    assert!(wait_until(DEADLINE, || fake.actions.waiting() == 8));
    assert!(
        !wait_until(Duration::from_millis(300), || fake.actions.waiting() > 8),
        "never more than 8 in flight"
    );
    fake.actions.open();
    for i in 0..10 {
        assert_eq!(gateway.decision(&mac_of(i), 0, DEADLINE).result, Some("ok"));
    }
    let (exit, stats, _) = gateway.stop();
    assert_eq!(exit, Exit::Signal);
    assert_eq!(
        (stats.handled, stats.waited_for_slot, stats.unacted),
        (10, 2, 0)
    );
}

/// A gateway on a fake with `n` domains whose libvirt stops answering
/// (deadline 300 ms) once vm0's packet is in: returns when the host is
/// silent.
fn silenced(n: u8) -> (Fake, Arc<Host>, InProcess) {
    let fake = fake_with("fake:///", n);
    let fleet = one_host(&fake, Duration::from_millis(300));
    let host = Arc::clone(&fleet.hosts()[0]);
    let gateway = InProcess::start(fleet, WINDOW);
    (fake, host, gateway)
}

fn silence(fake: &Fake, host: &Host, gateway: &InProcess) {
    fake.all_calls.shut();
    gateway.wake(&mac_of(0));
    assert!(wait_until(DEADLINE, || matches!(
        host.health(),
        Health::Silent { .. }
    )));
}

#[test]
fn a_silent_libvirt_keeps_requests_pending_and_stopping_never_waits_for_it() {
    let (fake, host, mut gateway) = silenced(2);
    gateway.wake(&mac_of(1));
    assert_eq!(gateway.decision(&mac_of(1), 0, DEADLINE).result, Some("ok"));
    silence(&fake, &host, &gateway);
    // The loop still drains and de-duplicates: vm1's repeats are answered
    // while vm0's request waits for libvirt.
    gateway.wake(&mac_of(1));
    gateway.wake(&mac_of(1));
    assert!(wait_until(DEADLINE, || gateway
        .records()
        .iter()
        .filter(|r| r.result == Some("duplicate"))
        .count()
        == 2));
    let (exit, stats, took) = gateway.stop();
    assert_eq!(exit, Exit::Signal);
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    assert_eq!(
        (
            stats.datagrams,
            stats.handled,
            stats.duplicates,
            stats.unacted
        ),
        (4, 1, 2, 1)
    );
    fake.all_calls.open();
}

#[test]
fn when_a_silent_libvirt_answers_again_the_pending_requests_are_acted_on() {
    let (fake, host, mut gateway) = silenced(1);
    silence(&fake, &host, &gateway);
    fake.all_calls.open();
    let record = gateway.decision(&mac_of(0), 0, DEADLINE);
    assert_eq!(
        (record.domain.as_deref(), record.result),
        (Some("vm0"), Some("ok"))
    );
    assert_eq!(host.health(), Health::Answering);
    assert_eq!(fake.state_of("vm0"), DomainState::Running);
}

/// Two hosts: `a` never answers (its calls hang), `b` has vm0.
fn one_silent_host(deadline: Duration, grace: Duration) -> (Fake, Fake, Fleet) {
    let a = Fake::new("fake://a/");
    let b = fake_with("fake://b/", 1);
    a.all_calls.shut();
    let hosts = vec![
        host(a.clone(), rescan(Duration::from_secs(5))),
        Host::new(Box::new(b.clone()), rescan(Duration::from_secs(5))),
    ];
    (a, b, Fleet::new(hosts, false, Timing { deadline, grace }))
}

#[test]
fn a_silent_host_is_left_out_when_another_host_has_the_domain() {
    let (a, _b, fleet) = one_silent_host(Duration::from_secs(3600), Duration::from_millis(200));
    let started = Instant::now();
    match fleet.wake(mac(&mac_of(0))) {
        Conclusion::Decided(decision) => {
            assert!(
                matches!(&decision.outcome, Outcome::Done { domain, .. } if name_of(domain) == "vm0"),
                "{decision:?}"
            );
            assert_eq!(decision.left_out, [Arc::from("fake://a/")]);
        }
        other => panic!("{other:?}"),
    }
    // Decided after the grace, long before the silent host's deadline.
    assert!(started.elapsed() < Duration::from_secs(60));
    a.all_calls.open();
}

#[test]
fn without_the_domain_elsewhere_the_request_waits_for_the_silent_host() {
    let (a, _b, fleet) = one_silent_host(Duration::from_millis(300), Duration::from_millis(100));
    a.add("only-on-a", nics_xml(&[&mac_of(9)]), DomainState::ShutOff);
    assert_eq!(
        fleet.wake(mac(&mac_of(9))),
        Conclusion::Wait(WaitFor {
            hosts: vec![(Arc::from("fake://a/"), None)]
        })
    );
    assert!(matches!(fleet.hosts()[0].health(), Health::Silent { .. }));
    // While silent, the host gets no new call: the next request parks at once.
    assert!(matches!(fleet.wake(mac(&mac_of(9))), Conclusion::Wait(_)));
    assert_eq!(a.all_calls.waiting(), 1, "only the first call hangs");
    a.all_calls.open();
    assert!(wait_until(DEADLINE, || fleet.hosts()[0].health() == Health::Answering));
    match fleet.wake(mac(&mac_of(9))) {
        Conclusion::Decided(decision) => assert!(
            matches!(&decision.outcome, Outcome::Done { domain, .. } if name_of(domain) == "only-on-a"),
            "{decision:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_start_is_retried_at_the_next_packet_not_swallowed() {
    let fake = fake_with("fake:///", 1);
    fake.fail_next("vm0", "Cannot access storage file '/nonexistent/disk.img'");
    let mut gateway = InProcess::start(one_host(&fake, DEADLINE), WINDOW);
    gateway.wake(&mac_of(0));
    let failed = gateway.decision(&mac_of(0), 0, DEADLINE);
    assert_eq!(
        (failed.action, failed.result),
        (Some("start"), Some("failed"))
    );
    // The cause is fixed (the fake fails once) and the user retries at once:
    // acted on, a second after the failure at the earliest.
    gateway.wake(&mac_of(0));
    let retried = gateway.decision(&mac_of(0), 1, DEADLINE);
    assert_eq!(
        (retried.action, retried.result),
        (Some("start"), Some("ok"))
    );
    // A repeat after the success stays a quiet duplicate.
    gateway.wake(&mac_of(0));
    assert!(wait_until(DEADLINE, || gateway
        .records()
        .iter()
        .any(|r| r.result == Some("duplicate"))));
    let (_, stats, _) = gateway.stop();
    assert_eq!((stats.handled, stats.duplicates), (2, 1));
    assert_eq!(fake.calls().len(), 2);
}

#[test]
fn a_refused_packet_never_makes_a_later_one_a_duplicate() {
    let fake = fake_with("fake:///", 1);
    let policy = Policy {
        allow: Vec::new(),
        require_opt_in: true,
    };
    let host = host(fake.clone(), rescan(Duration::from_secs(5))).with_policy(policy);
    let fleet = Fleet::new(vec![host], false, Timing::with_deadline(DEADLINE));
    let mut gateway = InProcess::start(fleet, WINDOW);
    gateway.wake(&mac_of(0));
    assert_eq!(
        gateway.decision(&mac_of(0), 0, DEADLINE).result,
        Some("refused")
    );
    // The owner opts in; the next packet is acted on.
    fake.set_xml(
        "vm0",
        Ok(format!(
            "<domain><metadata><wol:wake xmlns:wol='{}'/></metadata><devices>\
             <interface type='bridge'><mac address='{}'/></interface></devices></domain>",
            wol_libvirt_gateway::libvirt::domain_xml::METADATA_NAMESPACE,
            mac_of(0)
        )),
    );
    gateway.wake(&mac_of(0));
    assert_eq!(gateway.decision(&mac_of(0), 1, DEADLINE).result, Some("ok"));
}

#[test]
fn the_idle_exit_waits_for_a_start_in_progress() {
    let fake = fake_with("fake:///", 1);
    fake.slow_down("vm0");
    let mut gateway = InProcess::start_with(
        one_host(&fake, DEADLINE),
        WINDOW,
        Some(Duration::from_millis(200)),
    );
    gateway.wake(&mac_of(0));
    assert!(wait_until(DEADLINE, || fake.actions.waiting() == 1));
    // Well past the idle timeout, the start still runs: the gateway waits.
    assert!(!wait_until(Duration::from_millis(600), || fake
        .actions
        .waiting()
        == 0));
    fake.actions.open();
    assert_eq!(gateway.decision(&mac_of(0), 0, DEADLINE).result, Some("ok"));
    let (exit, stats) = gateway.join();
    assert_eq!((exit, stats.handled), (Exit::Idle, 1));
}

#[test]
fn unknown_macs_are_answered_without_a_worker_while_every_slot_is_busy() {
    let fake = fake_with("fake:///", 8);
    fake.slow_down("*");
    let mut gateway = InProcess::start(one_host(&fake, DEADLINE), WINDOW);
    for i in 0..8 {
        gateway.wake(&mac_of(i));
    }
    assert!(wait_until(DEADLINE, || fake.actions.waiting() == 8));
    // The index was just built: a MAC it lacks needs no libvirt call, so no
    // slot either.
    for i in 0..100u8 {
        gateway.wake(&format!("52:54:00:d1:00:{i:02x}"));
    }
    for i in 0..100u8 {
        let record = gateway.decision(&format!("52:54:00:d1:00:{i:02x}"), 0, DEADLINE);
        assert_eq!(record.result, Some("no-match"));
    }
    assert_eq!(fake.actions.waiting(), 8, "the starts are still running");
    fake.actions.open();
    for i in 0..8 {
        assert_eq!(gateway.decision(&mac_of(i), 0, DEADLINE).result, Some("ok"));
    }
    let (_, stats, _) = gateway.stop();
    assert_eq!((stats.handled, stats.waited_for_slot), (108, 0));
}

#[test]
fn a_start_libvirt_never_answers_ends_as_a_waiting_request_not_a_stuck_one() {
    let fake = fake_with("fake:///", 1);
    fake.slow_down("vm0");
    let fleet = one_host(&fake, Duration::from_millis(300));
    let host = Arc::clone(&fleet.hosts()[0]);
    let mut gateway = InProcess::start_with(fleet, WINDOW, Some(Duration::from_millis(500)));
    gateway.wake(&mac_of(0));
    assert!(wait_until(DEADLINE, || fake.actions.waiting() == 1));
    // libvirtd stops answering in the middle of the start.
    fake.all_calls.shut();
    assert!(wait_until(DEADLINE, || matches!(
        host.health(),
        Health::Silent { .. }
    )));
    // The request waits for libvirt like any other: the idle exit comes,
    // as for an unreachable daemon.
    let (exit, stats) = gateway.join();
    assert_eq!(exit, Exit::GaveUp);
    assert_eq!((stats.handled, stats.unacted), (0, 1));
    fake.all_calls.open();
    fake.actions.open();
}

#[test]
fn unknown_macs_wait_for_a_listing_held_up_without_holding_a_worker() {
    let fake = fake_with("fake:///", 2);
    let host = host(fake.clone(), rescan(Duration::from_millis(200)));
    let fleet = Fleet::new(vec![host], false, Timing::with_deadline(DEADLINE));
    let mut gateway = InProcess::start(fleet, WINDOW);
    gateway.wake(&mac_of(0));
    assert_eq!(gateway.decision(&mac_of(0), 0, DEADLINE).result, Some("ok"));
    // Past the rescan interval, a listing is held up (a domain starting).
    std::thread::sleep(Duration::from_millis(250));
    fake.listings.shut();
    for i in 0..20u8 {
        gateway.wake(&format!("52:54:00:d2:00:{i:02x}"));
    }
    assert!(wait_until(DEADLINE, || fake.listings.waiting() == 1));
    // The unknown ones wait for the listing in the book, not in the eight
    // worker slots. A known MAC's wake past the rescan interval needs a
    // listing too before anything is started (a domain defined since may
    // share its MAC): it waits in its worker for the one under way.
    gateway.wake(&mac_of(1));
    assert_eq!(
        fake.listings.waiting(),
        1,
        "one listing, the others wait for it"
    );
    fake.listings.open();
    assert_eq!(gateway.decision(&mac_of(1), 0, DEADLINE).result, Some("ok"));
    for i in 0..20u8 {
        let record = gateway.decision(&format!("52:54:00:d2:00:{i:02x}"), 0, DEADLINE);
        assert_eq!(record.result, Some("no-match"));
    }
    let (_, stats, _) = gateway.stop();
    assert_eq!((stats.handled, stats.waited_for_slot), (22, 0));
}

#[test]
fn a_domain_that_stops_right_after_its_start_is_reported_before_the_idle_exit() {
    // The fake stands for a guest that dies at once (test:/// domains
    // cannot); tests/e2e_libvirtd.rs does it to a real guest.
    let fake = fake_with("fake:///", 2);
    let idle = Some(Duration::from_millis(500));
    let mut gateway = InProcess::start_with(one_host(&fake, DEADLINE), WINDOW, idle);
    gateway.wake(&mac_of(0));
    gateway.wake(&mac_of(1));
    for i in 0..2 {
        let started = gateway.decision(&mac_of(i), 0, DEADLINE);
        assert_eq!(started.result, Some("ok"), "{started:?}");
    }
    let acted = Instant::now();
    fake.set_state("vm0", DomainState::Crashed);
    // The idle timeout (0.5 s) passes long before the look (3 s): the loop
    // waits for it, then exits.
    let (exit, _) = gateway.join();
    assert_eq!(exit, Exit::Idle);
    assert!(
        acted.elapsed() >= Duration::from_secs(2),
        "{:?}",
        acted.elapsed()
    );
    let again: Vec<_> = gateway
        .records()
        .iter()
        .filter(|r| r.result == Some("stopped-again"))
        .cloned()
        .collect();
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(
        (again[0].domain.as_deref(), again[0].state, again[0].action),
        (Some("vm0"), Some("crashed"), Some("start"))
    );
}
