//! HTTP wake tokens (`token add | list | revoke`) and `list --json`, on the
//! real `test:///` driver: in process through the library on a node file
//! (its state lives in the connection), and through the binary on
//! `test:///default` (each process starts from the driver's defaults).

use assert_cmd::Command;
use wol_libvirt_gateway::commands::token::{self, TokenError};
use wol_libvirt_gateway::decide::policy::WakeMeta;
use wol_libvirt_gateway::libvirt::domain_xml;
use wol_libvirt_gateway::libvirt::hypervisor::Libvirt;
use wol_libvirt_gateway::secret::token_hash;

use crate::util::{NodeFile, RunState, bin, domain, lookup, open_node};

fn gateway(args: &[&str]) -> Command {
    let mut command = Command::new(bin());
    command.args(args).env("RUST_LOG", "info");
    command
}

/// What `virsh dumpxml --inactive` would show of the domain's metadata.
fn stored(hv: &Libvirt, name: &str) -> WakeMeta {
    hv.wake_meta(name).expect("domain")
}

#[test]
fn a_token_is_stored_only_as_its_hash_in_both_definitions() {
    let (_node, conn) = open_node(&[
        domain("web01", "52:54:00:70:00:01", RunState::Running),
        domain("db01", "52:54:00:70:00:02", RunState::ShutOff),
    ]);
    let hv = Libvirt::from_connection(conn.clone());
    let token = token::add(&hv, "web01", false).expect("add");

    // The persistent definition has the hash, and not the token.
    let inactive = lookup(&conn, "web01")
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .expect("xml");
    assert!(inactive.contains(&token_hash(token.reveal()).to_string()));
    assert!(!inactive.contains(token.reveal()));
    // The running definition has it too: it counts without a restart.
    let live = lookup(&conn, "web01").xml_desc(0).expect("xml");
    let meta = domain_xml::read(&live).expect("readable").meta;
    assert_eq!(meta.tokens, vec![token.hash()]);
    // Adding a token does not opt the domain in to plain WOL.
    assert!(!meta.opt_in, "{live}");
    assert_eq!(stored(&hv, "db01"), WakeMeta::default());
}

#[test]
fn tokens_are_listed_by_prefix_and_revoked_one_or_all() {
    let (_node, conn) = open_node(&[
        domain("web01", "52:54:00:70:00:11", RunState::ShutOff),
        domain("db01", "52:54:00:70:00:12", RunState::ShutOff),
        domain("ci", "52:54:00:70:00:13", RunState::ShutOff),
    ]);
    let hv = Libvirt::from_connection(conn);
    let phone = token::add(&hv, "web01", false).expect("add").hash();
    // The laptop's may also put web01 to sleep (`--may sleep`).
    let laptop = token::add(&hv, "web01", true).expect("add").hash();
    let db = token::add(&hv, "db01", false).expect("add").hash();
    let listed = token::list(&hv).expect("list");
    assert_eq!(
        listed,
        vec![
            ("db01".to_owned(), vec![(db, false)]),
            ("web01".to_owned(), vec![(phone, false), (laptop, true)]),
        ]
    );
    assert_eq!(stored(&hv, "web01").sleepers, vec![laptop]);

    let rows: Vec<_> = listed.into_iter().map(|(n, h)| (None, n, h)).collect();
    assert_eq!(
        token::table(&rows),
        format!(
            "db01   {}\nweb01  {} {}+sleep\n",
            db.prefix(),
            phone.prefix(),
            laptop.prefix()
        )
    );

    // One by its prefix (any letter case)...
    let removed = token::revoke(&hv, "web01", Some(&phone.prefix().to_uppercase()));
    assert_eq!(removed.expect("revoke one"), vec![phone]);
    assert_eq!(stored(&hv, "web01").tokens, vec![laptop]);
    // ...a prefix no token has changes nothing...
    let other = if laptop.prefix().starts_with('0') {
        "1"
    } else {
        "0"
    };
    assert!(matches!(
        token::revoke(&hv, "web01", Some(other)),
        Err(TokenError::NoMatch { .. })
    ));
    assert!(matches!(
        token::revoke(&hv, "web01", Some("xyz")),
        Err(TokenError::BadPrefix(_))
    ));
    assert_eq!(stored(&hv, "web01").tokens, vec![laptop]);
    // ...and all of them, which removes the element.
    assert_eq!(
        token::revoke(&hv, "web01", None).expect("all"),
        vec![laptop]
    );
    assert_eq!(stored(&hv, "web01"), WakeMeta::default());
    assert_eq!(token::list(&hv).expect("list").len(), 1);
}

#[test]
fn a_prefix_shared_by_two_tokens_removes_neither() {
    let (_node, conn) = open_node(&[domain("web01", "52:54:00:70:00:21", RunState::ShutOff)]);
    let hv = Libvirt::from_connection(conn);
    // Seventeen tokens: two of them share a first hex digit.
    let hashes: Vec<_> = (0..17)
        .map(|_| token::add(&hv, "web01", false).expect("add").hash())
        .collect();
    let digit = hashes
        .iter()
        .map(|h| h.prefix()[..1].to_owned())
        .find(|d| hashes.iter().filter(|h| h.prefix().starts_with(d)).count() > 1)
        .expect("pigeonhole");
    assert!(matches!(
        token::revoke(&hv, "web01", Some(&digit)),
        Err(TokenError::Ambiguous { count, .. }) if count > 1
    ));
    assert_eq!(stored(&hv, "web01").tokens, hashes);
}

#[test]
fn the_opt_in_survives_token_changes() {
    let (_node, conn) = open_node(&[domain("web01", "52:54:00:70:00:31", RunState::ShutOff)]);
    lookup(&conn, "web01")
        .set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some("<wake/>"),
            Some(domain_xml::METADATA_KEY),
            Some(domain_xml::METADATA_NAMESPACE),
            virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
        )
        .expect("opt in as docs/access.md says");
    let hv = Libvirt::from_connection(conn);
    let token = token::add(&hv, "web01", false).expect("add");
    assert!(stored(&hv, "web01").opt_in);
    token::revoke(&hv, "web01", None).expect("revoke");
    let meta = stored(&hv, "web01");
    assert!(meta.opt_in && meta.tokens.is_empty(), "{meta:?}");
    assert!(!meta.tokens.contains(&token.hash()));
}

#[test]
fn the_cli_prints_the_token_once_on_stdout() {
    let out = gateway(&["token", "add", "test", "--libvirt-uri", "test:///default"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(token.len(), 43, "{token}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "test: token {} added (it may wake the domain); it is shown only this once: give it \
             to one client\n",
            token_hash(token).prefix()
        )
    );
}

#[test]
fn the_cli_names_a_missing_domain_and_a_wrong_prefix() {
    let out = gateway(&["token", "add", "web99", "--libvirt-uri", "test:///default"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no domain named 'web99' on test:///default"),
        "{stderr}"
    );

    let out = gateway(&[
        "token",
        "revoke",
        "test",
        "0123",
        "--libvirt-uri",
        "test:///default",
    ])
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("test has no token starting with 0123"),
        "{stderr}"
    );
}

#[test]
fn list_json_gives_each_domain_its_state_macs_and_wake() {
    let node = NodeFile::new(&[
        domain("web01", "52:54:00:70:00:41", RunState::ShutOff),
        domain("db01", "52:54:00:70:00:42", RunState::Paused),
    ]);
    let out = gateway(&["list", "--json", "--libvirt-uri", &node.uri()])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let expected = serde_json::json!([
        {
            "domain": "db01",
            "uuid": crate::util::uuid_for("db01"),
            "host": node.uri(),
            "state": "paused",
            "managed_save": false,
            "opt_in": false,
            "tokens": 0,
            "secureon": false,
            "idle": null,
            "macs": [{"mac": "52:54:00:70:00:42", "extra": false, "action": "resume", "on_wake": "resume"}],
            "unreadable": null
        },
        {
            "domain": "web01",
            "uuid": crate::util::uuid_for("web01"),
            "host": node.uri(),
            "state": "shut off",
            "managed_save": false,
            "opt_in": false,
            "tokens": 0,
            "secureon": false,
            "idle": null,
            "macs": [{"mac": "52:54:00:70:00:41", "extra": false, "action": "start", "on_wake": "start"}],
            "unreadable": null
        }
    ]);
    assert_eq!(list, expected);
}
