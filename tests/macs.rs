//! Extra MACs (`mac add | remove | list`) on the real `test:///` driver: a
//! domain whose only NIC is a PCI device passed through (`<hostdev>`, no
//! MAC in its XML) given the NIC's MAC, in process through the library on a
//! node file, and through the binary, whose node file carries the element
//! exactly as `mac add` stored it.

use std::time::Duration;

use assert_cmd::Command;
use virt::connect::Connect;
use wol_libvirt_gateway::commands::mac::{self, Added, MacError};
use wol_libvirt_gateway::commands::token;
use wol_libvirt_gateway::decide::outcome::{Outcome, Verb};
use wol_libvirt_gateway::decide::policy::{AllowEntry, Policy, Refusal};
use wol_libvirt_gateway::libvirt::domain_xml;
use wol_libvirt_gateway::libvirt::hypervisor::Libvirt;

use crate::util::{
    DomainSpec, Launch, NodeFile, RunState, Shared, bin, domain, fleet, host, lookup, mac, name_of,
    open_node, rescan, state_of, wake, wake_through,
};

/// The passed-through NIC's own MAC, which libvirt never sees.
const VF: &str = "52:54:00:12:34:56";
const WEB: &str = "52:54:00:60:00:01";
const PCI: &str = "<hostdev mode='subsystem' type='pci' managed='yes'><source>\
    <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>";

/// A domain whose only NIC is a PCI device passed through.
fn gpu01(state: RunState) -> DomainSpec {
    let mut spec = domain("gpu01", VF, state).with_devices(PCI);
    spec.macs.clear();
    spec
}

fn web01(state: RunState) -> DomainSpec {
    domain("web01", WEB, state)
}

/// Our element as libvirt keeps it in `name`'s persistent definition (what
/// `virsh dumpxml --inactive` shows), for a node file; empty without one.
fn stored_element(conn: &Connect, name: &str) -> String {
    let xml = lookup(conn, name)
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .expect("xml");
    let Some(start) = xml.find("<wol:wake") else {
        return String::new();
    };
    let end = xml[start..]
        .find("</wol:wake>")
        .map(|at| start + at + "</wol:wake>".len())
        .or_else(|| xml[start..].find("/>").map(|at| start + at + 2))
        .expect("a whole element");
    xml[start..end].to_owned()
}

/// gpu01 with the extra MACs `macs` added by the library, as a spec whose
/// metadata is what `mac add` stored.
fn gpu01_given(state: RunState, macs: &[&str]) -> DomainSpec {
    let (_node, conn) = open_node(&[gpu01(state)]);
    let hv = Libvirt::from_connection(conn.clone());
    for extra in macs {
        assert_eq!(
            mac::add(&hv, "gpu01", mac(extra)).expect("add"),
            Added::Added
        );
    }
    gpu01(state).with_metadata(&stored_element(&conn, "gpu01"))
}

fn gateway(args: &[&str]) -> Command {
    let mut command = Command::new(bin());
    command.args(args).env("RUST_LOG", "info");
    command
}

#[test]
fn mac_add_keeps_the_mac_once_in_both_definitions_and_remove_takes_it_away() {
    let (_node, conn) = open_node(&[gpu01(RunState::Running), web01(RunState::ShutOff)]);
    let hv = Libvirt::from_connection(conn.clone());
    let phone = token::add(&hv, "gpu01", false).expect("a token beside it");

    assert_eq!(mac::add(&hv, "gpu01", mac(VF)).expect("add"), Added::Added);
    assert!(
        // libvirt writes the children with the element's prefix.
        stored_element(&conn, "gpu01").contains(&format!("<wol:mac address=\"{VF}\"/>")),
        "{}",
        stored_element(&conn, "gpu01")
    );
    // The running definition has it too: it counts without a restart.
    let live = lookup(&conn, "gpu01").xml_desc(0).expect("xml");
    assert_eq!(
        domain_xml::read(&live).expect("readable").meta.macs,
        vec![mac(VF)]
    );
    let meta = hv.wake_meta("gpu01").expect("meta");
    assert_eq!(meta.macs, vec![mac(VF)]);
    assert_eq!(meta.tokens, vec![phone.hash()], "the token is kept");
    assert!(!meta.opt_in, "an extra MAC does not opt the domain in");

    // Twice, or a MAC one of its interfaces has, changes nothing.
    assert_eq!(
        mac::add(&hv, "gpu01", mac(VF)).expect("again"),
        Added::AlreadyExtra
    );
    assert_eq!(hv.wake_meta("gpu01").expect("meta").macs, vec![mac(VF)]);
    assert_eq!(
        mac::add(&hv, "web01", mac(WEB)).expect("its own"),
        Added::OnInterface
    );
    assert_eq!(hv.wake_meta("web01").expect("meta"), Default::default());
    for group in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        assert!(matches!(
            mac::add(&hv, "gpu01", mac(group)),
            Err(MacError::NotWakeable(_))
        ));
    }

    let listed = mac::list(&hv).expect("list");
    assert_eq!(listed, vec![("gpu01".to_owned(), vec![mac(VF)])]);
    let rows: Vec<_> = listed.into_iter().map(|(n, m)| (None, n, m)).collect();
    assert_eq!(mac::table(&rows), format!("gpu01  {VF}\n"));

    // Only an extra MAC can be removed, and only one that is there.
    assert!(matches!(
        mac::remove(&hv, "gpu01", mac("52:54:00:12:34:57")),
        Err(MacError::NotExtra {
            on_interface: false,
            ..
        })
    ));
    let interface = mac::remove(&hv, "web01", mac(WEB)).expect_err("an interface's");
    assert!(matches!(
        interface,
        MacError::NotExtra {
            on_interface: true,
            ..
        }
    ));
    assert!(
        interface.to_string().contains("one of its interfaces'"),
        "{interface}"
    );
    mac::remove(&hv, "gpu01", mac(VF)).expect("remove");
    let meta = hv.wake_meta("gpu01").expect("meta");
    assert!(meta.macs.is_empty(), "{meta:?}");
    assert_eq!(meta.tokens, vec![phone.hash()], "the token is still kept");
    let live = lookup(&conn, "gpu01").xml_desc(0).expect("xml");
    assert_eq!(domain_xml::read(&live).expect("readable").meta.macs, vec![]);
    assert!(mac::list(&hv).expect("list").is_empty());
}

#[test]
fn an_extra_mac_is_found_allowed_and_judged_ambiguous_like_an_interfaces() {
    let (_node, conn) = open_node(&[gpu01(RunState::ShutOff), web01(RunState::ShutOff)]);
    let hv = Libvirt::from_connection(conn.clone());
    // A fleet of its own for each step: each index starts with a scan.
    let fleet_with = |policy: Policy| {
        fleet(vec![
            host(Shared(conn.clone()), rescan(Duration::ZERO)).with_policy(policy),
        ])
    };
    let open = || fleet_with(Policy::default());

    assert_eq!(wake_through(&open(), VF), Outcome::NoMatch);
    mac::add(&hv, "gpu01", mac(VF)).expect("add");

    // --allow MAC counts for an extra MAC as for an interface's.
    let only = |allowed: &str| Policy {
        allow: vec![AllowEntry::Mac(mac(allowed))],
        require_opt_in: false,
    };
    assert!(matches!(
        wake_through(&fleet_with(only(WEB)), VF),
        Outcome::Refused {
            reason: Refusal::NotAllowed,
            ..
        }
    ));
    let kept = open();
    match wake_through(&kept, VF) {
        Outcome::Done { domain, verb, .. } => {
            assert_eq!((name_of(&domain), verb), ("gpu01", Verb::Start));
        }
        other => panic!("not started: {other:?}"),
    }
    assert_eq!(
        state_of(&conn, "gpu01"),
        wol_libvirt_gateway::model::DomainState::Running
    );

    // Removed, the index that found it is corrected by the domain's
    // current XML: nothing has the MAC any more.
    lookup(&conn, "gpu01").destroy().expect("stop gpu01");
    mac::remove(&hv, "gpu01", mac(VF)).expect("remove");
    assert_eq!(wake_through(&kept, VF), Outcome::NoMatch);

    // One domain's extra MAC that is another's interface's: with both shut
    // off, a packet starts neither.
    mac::add(&hv, "gpu01", mac(WEB)).expect("add web01's MAC");
    match wake_through(&open(), WEB) {
        Outcome::Ambiguous { domains } => {
            let mut names: Vec<&str> = domains.iter().map(name_of).collect();
            names.sort_unstable();
            assert_eq!(names, ["gpu01", "web01"]);
        }
        other => panic!("not ambiguous: {other:?}"),
    }
    for name in ["gpu01", "web01"] {
        assert_eq!(
            state_of(&conn, name),
            wol_libvirt_gateway::model::DomainState::ShutOff
        );
    }
    // --allow with the shared MAC allows both: still neither.
    assert!(matches!(
        wake_through(&fleet_with(only(WEB)), WEB),
        Outcome::Ambiguous { .. }
    ));
}

#[test]
fn the_gateway_wakes_a_passed_through_domain_by_its_extra_mac_until_it_is_removed() {
    let node = NodeFile::new(&[
        gpu01_given(RunState::ShutOff, &[VF]),
        web01(RunState::ShutOff),
    ]);
    let gateway = Launch::by_hand(&node.uri(), &[]).spawn();
    wake(gateway.listen_addr(), VF);
    let line = gateway.wait_for_log("started gpu01");
    assert!(line.contains(&format!("{VF} from 127.0.0.1:")), "{line}");
    drop(gateway);

    // What `mac remove` leaves: no element at all, and no domain has it.
    let (_node, conn) = open_node(&[gpu01_given(RunState::ShutOff, &[VF])]);
    let hv = Libvirt::from_connection(conn.clone());
    mac::remove(&hv, "gpu01", mac(VF)).expect("remove");
    let element = stored_element(&conn, "gpu01");
    assert_eq!(element, "");
    let node = NodeFile::new(&[
        gpu01(RunState::ShutOff).with_metadata(&element),
        web01(RunState::ShutOff),
    ]);
    let gateway = Launch::by_hand(&node.uri(), &[]).spawn();
    wake(gateway.listen_addr(), VF);
    gateway.wait_for_log(&format!("has MAC {VF} (from 127.0.0.1:"));
    gateway.wait_for_log("nothing to do");
    assert!(
        gateway.lines_with("started").is_empty(),
        "{}",
        gateway.log()
    );
}

#[test]
fn the_gateway_starts_neither_of_two_shut_off_domains_sharing_an_extra_mac() {
    let node = NodeFile::new(&[
        gpu01_given(RunState::ShutOff, &[WEB]),
        web01(RunState::ShutOff),
    ]);
    let gateway = Launch::by_hand(&node.uri(), &[]).spawn();
    wake(gateway.listen_addr(), WEB);
    let line = gateway.wait_for_log("MAC is on several shut-off domains");
    assert!(line.contains("(gpu01, web01); starting none"), "{line}");
    assert!(
        gateway.lines_with("started").is_empty(),
        "{}",
        gateway.log()
    );
}

#[test]
fn list_marks_extra_macs_in_the_table_and_the_json() {
    let mut bare = domain("bare01", VF, RunState::ShutOff).with_devices(PCI);
    bare.macs.clear();
    let node = NodeFile::new(&[
        gpu01_given(RunState::ShutOff, &[VF]),
        web01(RunState::ShutOff),
        bare,
    ]);
    let out = gateway(&["list", "--libvirt-uri", &node.uri()])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("gpu01"), format!("gpu01 shut off - {VF} (extra) start"));
    assert_eq!(row("web01"), format!("web01 shut off - {WEB} start"));
    assert!(row("bare01").contains("`mac add` gives it one"), "{table}");

    let out = gateway(&["list", "--json", "--libvirt-uri", &node.uri()])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let macs = |name: &str| {
        let entry = list
            .as_array()
            .expect("an array")
            .iter()
            .find(|d| d["domain"] == name)
            .expect("listed");
        entry["macs"].clone()
    };
    assert_eq!(
        macs("gpu01"),
        serde_json::json!([{"mac": VF, "extra": true, "action": "start", "on_wake": "start"}])
    );
    assert_eq!(
        macs("web01"),
        serde_json::json!([{"mac": WEB, "extra": false, "action": "start", "on_wake": "start"}])
    );
    assert_eq!(macs("bare01"), serde_json::json!([]));
}

#[test]
fn the_cli_says_what_it_did_in_one_line_and_refuses_with_status_2() {
    let default = ["--libvirt-uri", "test:///default"];
    let run = |args: &[&str]| {
        let out = gateway(&[args, &default[..]].concat())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        (out.status.code(), stderr)
    };

    let (status, said) = run(&["mac", "add", "test", VF]);
    assert_eq!(status, Some(0), "{said}");
    assert_eq!(said, format!("test: magic packets for {VF} now wake it\n"));

    let (status, said) = run(&["mac", "add", "test", "52:54:00:zz"]);
    assert_eq!(status, Some(2), "{said}");
    assert!(
        said.contains("'52:54:00:zz' is not a MAC address"),
        "{said}"
    );

    let (status, said) = run(&["mac", "add", "test", "01:00:5e:00:00:01"]);
    assert_eq!(status, Some(2), "{said}");
    assert!(said.contains("never a magic packet's target"), "{said}");

    // Each process starts from the driver's defaults: nothing to remove.
    let (status, said) = run(&["mac", "remove", "test", VF]);
    assert_eq!(status, Some(2), "{said}");
    assert!(
        said.contains(&format!("test has no extra MAC {VF}")),
        "{said}"
    );

    let (status, said) = run(&["mac", "add", "web99", VF]);
    assert_eq!(status, Some(1), "{said}");
    assert!(said.contains("no domain named 'web99'"), "{said}");
}

#[test]
fn mac_add_warns_when_another_domain_has_the_mac() {
    let node = NodeFile::new(&[gpu01(RunState::ShutOff), web01(RunState::ShutOff)]);
    let out = gateway(&["mac", "add", "gpu01", WEB, "--libvirt-uri", &node.uri()])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0],
        format!("gpu01: magic packets for {WEB} now wake it")
    );
    assert!(
        lines[1].contains(&format!(
            "web01 has {WEB} too: while both are shut off, a packet for it starts neither"
        )),
        "{stderr}"
    );
}

#[test]
fn mac_add_twice_and_mac_list_through_the_binary() {
    // A node file whose gpu01 already has the MAC, as `mac add` stored it.
    let node = NodeFile::new(&[gpu01_given(RunState::ShutOff, &[VF])]);
    let out = gateway(&["mac", "add", "gpu01", VF, "--libvirt-uri", &node.uri()])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("gpu01 already has the extra MAC {VF}; nothing changed\n")
    );
    let out = gateway(&["mac", "list", "--libvirt-uri", &node.uri()])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("gpu01  {VF}\n")
    );
}
