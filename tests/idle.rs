//! Idle policies (`idle set | clear`) and the idle check's plumbing on the
//! real `test:///` driver: in process on a node file, and through the
//! binary. The test driver's vCPU time is the wall clock (every running
//! domain uses all of one vCPU), so it can show a busy domain and the
//! samples the checks keep, never an idle one: that is
//! `tests/e2e_idle.rs`, with real KVM guests.

use std::time::Duration;

use assert_cmd::Command;
use wol_libvirt_gateway::commands::idle::{self, CheckLock, Samples};
use wol_libvirt_gateway::decide::idle::{IdlePolicy, Sleep};
use wol_libvirt_gateway::libvirt::hypervisor::Libvirt;
use wol_libvirt_gateway::store::CacheDirSource;

use wol_libvirt_gateway::model::DomainState;

use crate::util::{RunState, bin, domain, open_node, state_of};

#[test]
fn a_policy_is_kept_in_the_domains_metadata_until_cleared() {
    let (_node, conn) = open_node(&[
        domain("web01", "52:54:00:71:00:01", RunState::Running),
        domain("db01", "52:54:00:71:00:02", RunState::ShutOff),
    ]);
    let hv = Libvirt::from_connection(conn);
    let policy = IdlePolicy {
        cpu_permille: 20,
        ..IdlePolicy::new(Duration::from_secs(1800), Sleep::Shutdown)
    };
    idle::set(&hv, "web01", policy).expect("set");
    assert_eq!(hv.wake_meta("web01").expect("web01").idle, Some(policy));
    assert_eq!(hv.wake_meta("db01").expect("db01").idle, None);
    // Setting a policy opts nothing in to plain WOL.
    assert!(!hv.wake_meta("web01").expect("web01").opt_in);
    assert!(idle::clear(&hv, "web01").expect("clear"));
    assert_eq!(hv.wake_meta("web01").expect("web01").idle, None);
    assert!(!idle::clear(&hv, "web01").expect("clear again"), "had none");
}

#[test]
fn checks_keep_their_samples_and_a_foreign_file_means_first_sight() {
    let (node, conn) = open_node(&[
        domain("web01", "52:54:00:71:00:11", RunState::Running),
        domain("db01", "52:54:00:71:00:12", RunState::Running),
    ]);
    let hv = Libvirt::from_connection(conn.clone());
    idle::set(
        &hv,
        "web01",
        IdlePolicy::new(Duration::from_secs(1), Sleep::ManagedSave),
    )
    .expect("set");
    let cache = tempfile::tempdir().expect("tempdir");
    let lock = CheckLock::take(&CacheDirSource::Flag(cache.path().into()))
        .expect("a cache directory of our own")
        .expect("no other check");
    let samples = Samples::open(lock.dir(), &node.uri());
    // A second check meanwhile does nothing.
    let second = CheckLock::take(&CacheDirSource::Flag(cache.path().into())).expect("usable");
    assert!(second.is_none(), "the lock is held");

    // The first look never acts: only web01 has a policy.
    let first = idle::check(&hv, "test", Some(&samples), false).expect("check");
    assert_eq!(
        (first.looked, first.busy, first.idle, first.acted),
        (1, 0, 0, 0)
    );
    // The next check compares with what the first kept: all of a vCPU.
    let second = idle::check(&hv, "test", Some(&samples), false).expect("check");
    assert_eq!((second.looked, second.busy, second.acted), (1, 1, 0));

    // A file that is not ours: every window starts again.
    for entry in std::fs::read_dir(cache.path()).expect("ls").flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("idle-samples")
        {
            std::fs::write(entry.path(), b"{\"format\": \"something else\"}").expect("overwrite");
        }
    }
    let third = idle::check(&hv, "test", Some(&samples), false).expect("check");
    assert_eq!((third.looked, third.busy, third.idle), (1, 0, 0));
    // Without a place to keep samples, nothing is ever compared.
    let blind = idle::check(&hv, "test", None, false).expect("check");
    assert_eq!((blind.busy, blind.idle, blind.acted), (0, 0, 0));
    // Nothing was put to sleep.
    for name in ["web01", "db01"] {
        assert_eq!(state_of(&conn, name), DomainState::Running, "{name}");
    }
}

#[test]
fn idle_set_refuses_a_bad_share_or_action_with_one_line() {
    for (args, says) in [
        (&["--after", "30m", "--action", "destroy"][..], "destroy"),
        (&["--after", "30m", "--cpu", "150%"][..], "150%"),
        (&["--after", "0"][..], "longer than 0"),
    ] {
        let output = Command::new(bin())
            .args(["--libvirt-uri", "test:///default", "idle", "set", "test"])
            .args(args)
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.lines().next().is_some_and(|l| l.contains(says)),
            "{stderr}"
        );
    }
}
