//! Several libvirt URIs at once, `list`, and `--dry-run`: the real binary
//! on node files of libvirt's `test:///` driver, plus a URI whose daemon is
//! not running.

use std::process::Command;

use crate::util::{DEADLINE, Launch, NodeFile, RunState, bin, domain, summary_count, wake};

const STOPPED_DAEMON: &str = "test+unix:///default?socket=/nonexistent/wolgw/libvirt-sock";

fn two_nodes() -> (NodeFile, NodeFile) {
    let a = NodeFile::new(&[
        domain("web01", "52:54:00:0a:00:01", RunState::ShutOff),
        domain("twin-a", "52:54:00:0a:00:99", RunState::ShutOff),
    ]);
    let b = NodeFile::new(&[
        domain("db01", "52:54:00:0b:00:01", RunState::Paused),
        domain("twin-b", "52:54:00:0a:00:99", RunState::ShutOff),
    ]);
    (a, b)
}

#[test]
fn a_mac_is_looked_up_on_every_host_and_a_stopped_daemon_blocks_nothing() {
    let (a, b) = two_nodes();
    let (uri_a, uri_b) = (a.uri(), b.uri());
    let mut gateway = Launch::by_hand(
        &uri_a,
        &["--libvirt-uri", STOPPED_DAEMON, "--libvirt-uri", &uri_b],
    )
    .spawn();
    let addr = gateway.listen_addr();
    wake(addr, "52:54:00:0a:00:01");
    gateway.wait_for_log(&format!("started web01 on {uri_a}"));
    wake(addr, "52:54:00:0b:00:01");
    gateway.wait_for_log(&format!("resumed db01 on {uri_b}"));
    // The same MAC on two hosts, both shut off: the ambiguity rule spans hosts.
    wake(addr, "52:54:00:0a:00:99");
    let line = gateway.wait_for_log("several shut-off domains");
    assert!(
        line.contains(&format!("twin-a on {uri_a}"))
            && line.contains(&format!("twin-b on {uri_b}")),
        "{line}"
    );
    // A MAC no answering host has may be on the stopped one: it waits.
    wake(addr, "52:54:00:0c:00:01");
    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(DEADLINE).code(), Some(0));
    let waited = gateway.lines_with("not acting on 1 wake request(s)");
    assert!(
        waited.len() == 1 && waited[0].contains("52:54:00:0c:00:01"),
        "{}",
        gateway.log()
    );
    assert!(gateway.lines_with("has MAC 52:54:00:0c:00:01").is_empty());
    // Shown with its socket= (another socket is another daemon).
    let down = gateway.lines_with(&format!("cannot reach libvirt at {STOPPED_DAEMON}:"));
    assert_eq!(down.len(), 1, "reported once:\n{}", gateway.log());
    // One host of three is out: a warning, not an error.
    assert!(down[0].contains(" WARN "), "{}", down[0]);
}

#[test]
fn list_shows_each_domain_and_what_a_packet_would_do() {
    let (a, b) = two_nodes();
    let out = Command::new(bin())
        .args(["list", "--libvirt-uri", &a.uri(), "--libvirt-uri", &b.uri()])
        .env("XDG_CACHE_HOME", a.dir())
        .output()
        .expect("run list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .to_owned()
    };
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("URI")),
        "{table}"
    );
    assert!(
        row("web01").ends_with("52:54:00:0a:00:01  start"),
        "{table}"
    );
    assert!(
        row("db01").contains("paused") && row("db01").ends_with("resume"),
        "{table}"
    );
    assert!(
        row("twin-a").contains("nothing: ambiguous MAC (also on twin-b)"),
        "{table}"
    );

    // With --allow, the others are refused; one URI: no URI column.
    let out = Command::new(bin())
        .args(["list", "--libvirt-uri", &a.uri(), "--allow", "web01"])
        .env("XDG_CACHE_HOME", a.dir())
        .output()
        .expect("run list");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("DOMAIN"), "{table}");
    let twin = table
        .lines()
        .find(|l| l.starts_with("twin-a"))
        .unwrap_or_default();
    assert!(
        twin.ends_with("nothing: refused (not named by any --allow)"),
        "{table}"
    );

    // An unreachable URI: the others are listed, the problem is reported, status 1.
    let out = Command::new(bin())
        .args([
            "list",
            "--libvirt-uri",
            &a.uri(),
            "--libvirt-uri",
            STOPPED_DAEMON,
        ])
        .env("XDG_CACHE_HOME", a.dir())
        .output()
        .expect("run list");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web01"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("cannot list {STOPPED_DAEMON}:"))
    );
}

#[test]
fn dry_run_logs_the_decision_and_changes_nothing() {
    let node = NodeFile::new(&[domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff)]);
    let gateway = Launch::by_hand(&node.uri(), &["--dry-run", "--dedupe-window", "0"]).spawn();
    let addr = gateway.listen_addr();
    wake(addr, "52:54:00:aa:bb:cc");
    gateway.wait_for_log("dry run: would start web01 (is shut off)");
    // Still shut off: the second packet gets the same answer.
    wake(addr, "52:54:00:aa:bb:cc");
    assert!(crate::util::wait_until(crate::util::DEADLINE, || {
        gateway.lines_with("dry run: would start web01").len() == 2
    }));
    assert!(
        gateway.lines_with("started web01").is_empty(),
        "{}",
        gateway.log()
    );
}

#[test]
fn a_request_waiting_for_one_stopped_host_of_two_ends_the_run_cleanly() {
    let (a, _b) = two_nodes();
    let mut gateway = Launch::by_hand(
        &a.uri(),
        &["--libvirt-uri", STOPPED_DAEMON, "--idle-timeout", "1s"],
    )
    .spawn();
    wake(gateway.listen_addr(), "52:54:00:0c:00:01");
    // Not a failure of the service (status 0): the other host answers; the
    // request is named as not acted on.
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    let summary = gateway.lines_with("exiting (idle timeout)").remove(0);
    assert_eq!(summary_count(&summary, "not acted on"), 1, "{summary}");
    assert_eq!(
        summary_count(&summary, "wake requests handled"),
        0,
        "{summary}"
    );
}
