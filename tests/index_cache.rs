//! The persistent MAC index against the real `test:///` driver: each
//! new `Host` stands for one activation (a fresh process), the index file in a
//! shared cache directory is what survives between them.

use std::path::Path;
use std::time::Duration;

use virt::connect::Connect;
use wol_libvirt_gateway::decide::outcome::{Outcome, Verb};
use wol_libvirt_gateway::libvirt::fleet::Fleet;
use wol_libvirt_gateway::libvirt::index::Rescan;
use wol_libvirt_gateway::libvirt::index::file::IndexFile;
use wol_libvirt_gateway::model::DomainState;
use wol_libvirt_gateway::store::CacheDirSource;

use crate::util::{
    RunState, Shared, domain, fleet, host, lookup, name_of, open_node, redefine, rescan, state_of,
    uuid_for, wake_through,
};

const MAC1: &str = "52:54:00:c0:00:01";
const MAC2: &str = "52:54:00:c0:00:02";
const URI: &str = "test:///cache-test";

fn index_file(dir: &Path, uri: &str) -> IndexFile {
    IndexFile::open(&CacheDirSource::Flag(dir.to_owned()), uri).expect("cache dir usable")
}

/// A fresh activation: a new host, same connection (libvirt's state), same
/// cache directory.
fn activation_with(conn: &Connect, dir: &Path, uri: &str, rules: Rescan) -> Fleet {
    let host = host(Shared(conn.clone()), rules).with_index_file(index_file(dir, uri));
    fleet(vec![host])
}

fn activation(conn: &Connect, dir: &Path, uri: &str) -> Fleet {
    activation_with(conn, dir, uri, rescan(Duration::from_secs(5)))
}

/// (full scans, listings) of the fleet's one host.
fn refreshes(fleet: &Fleet) -> (u64, u64) {
    let host = &fleet.hosts()[0];
    (host.full_scans(), host.listings())
}

fn started(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Done {
            domain,
            verb: Verb::Start,
            ..
        } => Some(name_of(domain)),
        _ => None,
    }
}

/// The names of the domains the index file lists for `address`.
fn cached_owners(dir: &Path, uri: &str, address: &str) -> Vec<String> {
    let uuids = index_file(dir, uri)
        .lookup(address.parse().expect("mac"))
        .expect("valid")
        .expect("exists");
    let names = ["a", "b", "c", "d", "one", "two"];
    uuids
        .iter()
        .map(|uuid| {
            names
                .iter()
                .find(|n| uuid_for(n) == uuid.to_string())
                .map_or_else(|| uuid.to_string(), |n| (*n).to_owned())
        })
        .collect()
}

fn three_domains() -> (crate::util::NodeFile, Connect) {
    open_node(&[
        domain("a", MAC1, RunState::ShutOff),
        domain("b", "52:54:00:c0:00:09", RunState::ShutOff),
        domain("c", MAC2, RunState::Running),
    ])
}

#[test]
fn a_hit_wakes_without_scanning() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    let first = activation(&conn, cache.path(), URI);
    wake_through(&first, MAC2);
    assert_eq!(refreshes(&first), (1, 0), "no index yet: one scan");
    assert_eq!(cached_owners(cache.path(), URI, MAC1), ["a"]);

    let second = activation(&conn, cache.path(), URI);
    let outcome = wake_through(&second, MAC1);
    assert_eq!(started(&outcome), Some("a"), "{outcome:?}");
    assert_eq!(
        refreshes(&second),
        (0, 1),
        "the index file answered; a listing made sure no domain it does not know has the MAC"
    );
    assert_eq!(state_of(&conn, "a"), DomainState::Running);
}

#[test]
fn a_fresh_process_knows_a_full_scan_is_recent_and_only_lists() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    wake_through(&activation(&conn, cache.path(), URI), MAC2);
    redefine(&conn, "d", &["52:54:00:c0:00:0d"]);

    let rules = Rescan {
        interval: Duration::from_secs(5),
        full_interval: Duration::from_secs(60),
    };
    let next = activation_with(&conn, cache.path(), URI, rules);
    let outcome = wake_through(&next, "52:54:00:c0:00:0d");
    assert_eq!(started(&outcome), Some("d"), "{outcome:?}");
    assert_eq!(
        refreshes(&next),
        (0, 1),
        "the file says a full scan ran under a minute ago: a listing finds the new domain"
    );
    assert_eq!(cached_owners(cache.path(), URI, "52:54:00:c0:00:0d"), ["d"]);
}

#[test]
fn a_stale_hit_for_a_mac_that_moved_rescans_and_wakes_the_new_owner() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    wake_through(&activation(&conn, cache.path(), URI), MAC2);
    redefine(&conn, "a", &["52:54:00:c0:00:0a"]);
    redefine(&conn, "b", &[MAC1]);

    let next = activation(&conn, cache.path(), URI);
    let outcome = wake_through(&next, MAC1);
    assert_eq!(started(&outcome), Some("b"), "{outcome:?}");
    assert_eq!(
        refreshes(&next),
        (1, 0),
        "a stale hit is a reconfiguration: one full scan"
    );
    assert_eq!(
        state_of(&conn, "a"),
        DomainState::ShutOff,
        "old owner untouched"
    );
    assert_eq!(
        cached_owners(cache.path(), URI, MAC1),
        ["b"],
        "file rewritten"
    );
}

#[test]
fn a_removed_mac_is_no_match_and_leaves_the_file() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    wake_through(&activation(&conn, cache.path(), URI), MAC2);
    redefine(&conn, "a", &[]);

    let next = activation(&conn, cache.path(), URI);
    assert_eq!(wake_through(&next, MAC1), Outcome::NoMatch);
    assert_eq!(refreshes(&next), (1, 0));
    assert!(cached_owners(cache.path(), URI, MAC1).is_empty());
    assert_eq!(state_of(&conn, "a"), DomainState::ShutOff);
}

#[test]
fn an_undefined_domain_is_no_match() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    wake_through(&activation(&conn, cache.path(), URI), MAC2);
    lookup(&conn, "a").undefine().expect("undefine");

    let next = activation(&conn, cache.path(), URI);
    assert_eq!(wake_through(&next, MAC1), Outcome::NoMatch);
    assert_eq!(refreshes(&next), (1, 0));
    assert!(cached_owners(cache.path(), URI, MAC1).is_empty());
}

#[test]
fn a_corrupt_file_is_ignored_and_replaced() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    let file = index_file(cache.path(), URI);
    std::fs::write(file.path(), b"\xff\xfe not an index\n52:54").expect("write garbage");
    assert!(file.lookup(MAC1.parse().expect("mac")).is_err());

    let fleet = activation(&conn, cache.path(), URI);
    let outcome = wake_through(&fleet, MAC1);
    assert_eq!(started(&outcome), Some("a"), "{outcome:?}");
    assert_eq!(
        cached_owners(cache.path(), URI, MAC1),
        ["a"],
        "replaced by a valid file"
    );
}

#[test]
fn an_unusable_cache_directory_only_disables_the_cache() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    // Not a directory: refused when opening (root could write anywhere, so
    // permissions would not make this test fail for root).
    let not_a_dir = cache.path().join("file");
    std::fs::write(&not_a_dir, b"").expect("write");
    let err = IndexFile::open(&CacheDirSource::Flag(not_a_dir), URI).expect_err("refused");
    assert!(err.to_string().contains("not a directory"), "{err}");
    // A directory where the file cannot be written (a directory in its
    // place: the rename fails, for root too): the wake still happens.
    let file = index_file(cache.path(), URI);
    std::fs::create_dir(file.path()).expect("block the index file");
    let fleet = fleet(vec![
        host(Shared(conn.clone()), rescan(Duration::from_secs(5))).with_index_file(file),
    ]);
    let outcome = wake_through(&fleet, MAC1);
    assert_eq!(started(&outcome), Some("a"), "{outcome:?}");
    assert!(index_file(cache.path(), URI).path().is_dir(), "not written");
    let left: Vec<String> = std::fs::read_dir(cache.path())
        .expect("ls")
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.contains(".tmp."))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn two_uris_keep_separate_indexes() {
    let (_one, conn_one) = open_node(&[domain("one", MAC1, RunState::ShutOff)]);
    let (_two, conn_two) = open_node(&[domain("two", MAC1, RunState::ShutOff)]);
    let cache = tempfile::tempdir().expect("tempdir");
    let (uri_one, uri_two) = ("test:///one", "test:///two");
    let outcome = wake_through(&activation(&conn_one, cache.path(), uri_one), MAC1);
    assert_eq!(started(&outcome), Some("one"));
    let outcome = wake_through(&activation(&conn_two, cache.path(), uri_two), MAC1);
    assert_eq!(started(&outcome), Some("two"));
    assert_eq!(cached_owners(cache.path(), uri_one, MAC1), ["one"]);
    assert_eq!(cached_owners(cache.path(), uri_two, MAC1), ["two"]);
    assert_eq!(std::fs::read_dir(cache.path()).expect("ls").count(), 2);
}

#[test]
fn a_domain_the_index_does_not_know_makes_a_known_mac_ambiguous() {
    // Security review, finding 4: "a" was woken (the index file records it
    // as MAC1's owner), then stopped, and a new domain "d" with the same MAC
    // was defined: a fresh process started "a" from the index instead of
    // refusing the MAC as ambiguous, as it does without an index.
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    let first = activation(&conn, cache.path(), URI);
    assert_eq!(started(&wake_through(&first, MAC1)), Some("a"));
    assert_eq!(cached_owners(cache.path(), URI, MAC1), ["a"]);
    lookup(&conn, "a").destroy().expect("destroy");
    redefine(&conn, "d", &[MAC1]);

    let next = activation(&conn, cache.path(), URI);
    let outcome = wake_through(&next, MAC1);
    let Outcome::Ambiguous { domains } = &outcome else {
        panic!("{outcome:?}")
    };
    let mut names: Vec<&str> = domains.iter().map(name_of).collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "d"]);
    assert_eq!(state_of(&conn, "a"), DomainState::ShutOff);
    assert_eq!(state_of(&conn, "d"), DomainState::ShutOff);
    assert_eq!(refreshes(&next), (0, 1), "one listing; only d's XML read");
    let mut cached = cached_owners(cache.path(), URI, MAC1);
    cached.sort_unstable();
    assert_eq!(cached, ["a", "d"]);
}
