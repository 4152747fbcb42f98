//! The persistent MAC index against the real `test:///` driver: each
//! `Waker` stands for one activation (a fresh process), the index file in a
//! shared cache directory is what survives between them.

use std::path::Path;
use std::time::Duration;

use virt::connect::Connect;
use wol_libvirt_gateway::cache::{CacheDirSource, IndexFile};
use wol_libvirt_gateway::hypervisor::{Action, DomainState};
use wol_libvirt_gateway::wake::{Outcome, Waker};

use crate::util::{RunState, Shared, domain, lookup, mac, open_node, redefine, state_of, uuid_for};

const MAC1: &str = "52:54:00:c0:00:01";
const MAC2: &str = "52:54:00:c0:00:02";
const URI: &str = "test:///cache-test";

fn index_file(dir: &Path, uri: &str) -> IndexFile {
    IndexFile::open(&CacheDirSource::Flag(dir.to_owned()), uri).expect("cache dir usable")
}

/// A fresh activation: new waker, same connection (libvirt's state), same
/// cache directory.
fn activation(conn: &Connect, dir: &Path, uri: &str) -> Waker<Shared> {
    Waker::new(Shared(conn.clone()), Duration::from_secs(5)).with_cache(index_file(dir, uri))
}

fn started(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Done {
            domain,
            action: Action::Start,
            ..
        } => Some(domain),
        _ => None,
    }
}

/// The names of the domains the index file lists for `address`.
fn cached_owners(dir: &Path, uri: &str, address: &str) -> Vec<String> {
    let uuids = index_file(dir, uri)
        .lookup(mac(address))
        .expect("valid")
        .expect("exists");
    let names = ["a", "b", "c", "one", "two"];
    uuids
        .iter()
        .map(|uuid| {
            names
                .iter()
                .find(|n| uuid_for(n) == *uuid)
                .map_or_else(|| uuid.clone(), |n| (*n).to_owned())
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
    let mut first = activation(&conn, cache.path(), URI);
    first.wake(mac(MAC2)).expect("reachable");
    assert_eq!(first.scans(), 1, "no index yet: one scan");
    assert_eq!(cached_owners(cache.path(), URI, MAC1), ["a"]);

    let mut second = activation(&conn, cache.path(), URI);
    let outcome = second.wake(mac(MAC1)).expect("reachable");
    assert_eq!(started(&outcome), Some("a"), "{outcome:?}");
    assert_eq!(second.scans(), 0, "the index file answered");
    assert_eq!(state_of(&conn, "a"), DomainState::Running);
}

#[test]
fn a_stale_hit_for_a_mac_that_moved_rescans_and_wakes_the_new_owner() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    activation(&conn, cache.path(), URI)
        .wake(mac(MAC2))
        .expect("reachable");
    redefine(&conn, "a", &["52:54:00:c0:00:0a"]);
    redefine(&conn, "b", &[MAC1]);

    let mut next = activation(&conn, cache.path(), URI);
    let outcome = next.wake(mac(MAC1)).expect("reachable");
    assert_eq!(started(&outcome), Some("b"), "{outcome:?}");
    assert_eq!(next.scans(), 1);
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
    activation(&conn, cache.path(), URI)
        .wake(mac(MAC2))
        .expect("reachable");
    redefine(&conn, "a", &[]);

    let mut next = activation(&conn, cache.path(), URI);
    assert_eq!(next.wake(mac(MAC1)).expect("reachable"), Outcome::NoMatch);
    assert_eq!(next.scans(), 1);
    assert!(cached_owners(cache.path(), URI, MAC1).is_empty());
    assert_eq!(state_of(&conn, "a"), DomainState::ShutOff);
}

#[test]
fn an_undefined_domain_is_no_match() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    activation(&conn, cache.path(), URI)
        .wake(mac(MAC2))
        .expect("reachable");
    lookup(&conn, "a").undefine().expect("undefine");

    let mut next = activation(&conn, cache.path(), URI);
    assert_eq!(next.wake(mac(MAC1)).expect("reachable"), Outcome::NoMatch);
    assert_eq!(next.scans(), 1);
    assert!(cached_owners(cache.path(), URI, MAC1).is_empty());
}

#[test]
fn a_corrupt_file_is_ignored_and_replaced() {
    let (_node, conn) = three_domains();
    let cache = tempfile::tempdir().expect("tempdir");
    let file = index_file(cache.path(), URI);
    std::fs::write(file.path(), b"\xff\xfe not an index\n52:54").expect("write garbage");
    assert!(file.lookup(mac(MAC1)).is_err());

    let mut waker = activation(&conn, cache.path(), URI);
    let outcome = waker.wake(mac(MAC1)).expect("reachable");
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
    assert!(err.contains("not a directory"), "{err}");
    // A directory where the file cannot be written: the wake still happens.
    let file = index_file(cache.path(), URI);
    let blocker = file
        .path()
        .with_extension(format!("tmp.{}", std::process::id()));
    std::fs::create_dir(&blocker).expect("block the temporary file");
    let mut waker = Waker::new(Shared(conn.clone()), Duration::from_secs(5)).with_cache(file);
    let outcome = waker.wake(mac(MAC1)).expect("reachable");
    assert_eq!(started(&outcome), Some("a"), "{outcome:?}");
    assert!(!index_file(cache.path(), URI).path().exists());
}

#[test]
fn two_uris_keep_separate_indexes() {
    let (_one, conn_one) = open_node(&[domain("one", MAC1, RunState::ShutOff)]);
    let (_two, conn_two) = open_node(&[domain("two", MAC1, RunState::ShutOff)]);
    let cache = tempfile::tempdir().expect("tempdir");
    let (uri_one, uri_two) = ("test:///one", "test:///two");
    let outcome = activation(&conn_one, cache.path(), uri_one).wake(mac(MAC1));
    assert_eq!(started(&outcome.expect("reachable")), Some("one"));
    let outcome = activation(&conn_two, cache.path(), uri_two).wake(mac(MAC1));
    assert_eq!(started(&outcome.expect("reachable")), Some("two"));
    assert_eq!(cached_owners(cache.path(), uri_one, MAC1), ["one"]);
    assert_eq!(cached_owners(cache.path(), uri_two, MAC1), ["two"]);
    assert_eq!(std::fs::read_dir(cache.path()).expect("ls").count(), 2);
}
