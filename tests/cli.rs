//! The command-line contract: help, version, exit statuses and one-line errors.

use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

use clap::CommandFactory;
use wol_libvirt_gateway::cli::Args;

use crate::util::{DEADLINE, Launch, NodeFile, bin, wake};

fn output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .env_remove("LISTEN_FDS")
        .output()
        .expect("run binary")
}

#[test]
fn help_documents_every_flag_with_its_default() {
    let out = output(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "--listen-address <IP:PORT>",
        "-a, --listen-address",
        "[alias: --address]",
        "-l, --libvirt-uri",
        "[env: WOL_LIBVIRT_URI=]",
        "[env: WOL_ALLOW=]",
        "127.0.0.1:9",
        "--raw-interface <IFACE>",
        "--dry-run",
        "--libvirt-uri <URI>",
        "[default: qemu:///system]",
        "--idle-timeout <DURATION>",
        "0 = never",
        "--dedupe-window <DURATION>",
        "[default: 10s]",
        "--rescan-interval <DURATION>",
        "--full-rescan-interval <DURATION>",
        "[default: 60s]",
        "--libvirt-timeout <DURATION>",
        "[default: 5s]",
        "--cache-dir <DIR>",
        "CACHE_DIRECTORY",
        "RUST_LOG",
        "--version",
    ] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
}

/// clap checks the definition itself (unique names and flags, references
/// to arguments that exist, ...) only when a debug build parses with it,
/// and a subcommand only when it is used: this checks the whole tree.
#[test]
fn every_environment_variable_is_documented() {
    let usage = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/usage.md"))
        .expect("docs/usage.md");
    let command = Args::command();
    let vars: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|var| var.to_string_lossy().into_owned())
        .collect();
    assert!(vars.len() >= 15, "{vars:?}");
    for var in vars {
        assert!(
            usage.contains(&format!("`{var}`")),
            "{var} is not in docs/usage.md"
        );
    }
}

#[test]
fn the_clap_definition_is_consistent() {
    Args::command().debug_assert();
}

#[test]
fn version_prints_the_package_version() {
    let out = output(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("wol-libvirt-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flag_values_exit_2_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (&["--idle-timeout", "soon"][..], "--idle-timeout"),
        (&["--dedupe-window", "1x"][..], "--dedupe-window"),
        (&["--libvirt-timeout", "0"][..], "--libvirt-timeout"),
        (
            &[
                "--libvirt-uri",
                "test:///default",
                "--libvirt-uri",
                "test:///default",
            ][..],
            "--libvirt-uri test:///default is given twice",
        ),
        // The same host by two ways that differ only in how to get there
        // (and shown without the key file's path); another socket= is
        // another daemon, and is accepted (not in this table).
        (
            &[
                "--libvirt-uri",
                "qemu+ssh://wol@host2/system?keyfile=/a",
                "--libvirt-uri",
                "qemu+ssh://wol@host2/system?keyfile=/b&no_tty=1",
            ][..],
            "--libvirt-uri qemu+ssh://wol@host2/system is given twice",
        ),
        (&["--listen-address", "localhost"][..], "--listen-address"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let out = output(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn unreachable_uri_exits_1_after_the_idle_timeout_naming_the_uri() {
    let missing = NodeFile::missing();
    let uri = missing.uri();
    let mut gateway = Launch::by_hand(&uri, &["--idle-timeout", "1s"]).spawn();
    wake(gateway.listen_addr(), "52:54:00:aa:bb:cc");
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "log:\n{}", gateway.log());
    let log = gateway.log();
    let reach = gateway.lines_with("cannot reach libvirt");
    assert_eq!(reach.len(), 1, "one error per outage:\n{log}");
    assert!(reach[0].contains(&uri));
    // The only host: an error (no wake can happen), not a warning.
    assert!(reach[0].contains(" ERROR "), "{}", reach[0]);
    let gave_up = gateway.lines_with("not acting on 1 wake request");
    assert_eq!(gave_up.len(), 1, "{log}");
    assert!(gave_up[0].contains("52:54:00:aa:bb:cc"));
}

#[test]
fn junk_does_not_make_the_gateway_contact_libvirt() {
    let missing = NodeFile::missing();
    let mut gateway = Launch::by_hand(&missing.uri(), &["--idle-timeout", "500ms"]).spawn();
    crate::util::send(gateway.listen_addr(), b"not a magic packet");
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    assert!(gateway.lines_with("cannot reach libvirt").is_empty());
    assert_eq!(
        gateway.lines_with("1 invalid").len(),
        1,
        "{}",
        gateway.log()
    );
}

fn passed_fd_error(fds: Vec<OwnedFd>, listen_fds: Option<&str>) -> String {
    let mut launch = Launch::new(&["--libvirt-uri", "test:///default"]);
    for fd in fds {
        launch = launch.pass_fd(fd);
    }
    if let Some(n) = listen_fds {
        launch = launch.env("LISTEN_FDS", n);
    }
    let mut gateway = launch.spawn();
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "log:\n{}", gateway.log());
    let log = gateway.log();
    assert_eq!(log.lines().count(), 1, "one line:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

#[test]
fn passed_unix_sockets_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = UnixListener::bind(dir.path().join("s")).expect("unix listener");
    let log = passed_fd_error(vec![stream.into()], None);
    assert!(
        log.contains("fd 3 (LISTEN_FDS) is a unix stream socket"),
        "{log}"
    );
    let datagram = UnixDatagram::bind(dir.path().join("d")).expect("unix datagram");
    let log = passed_fd_error(vec![datagram.into()], None);
    assert!(
        log.contains("fd 3 (LISTEN_FDS) is a unix datagram socket"),
        "{log}"
    );
}

#[test]
fn listen_fds_naming_more_fds_than_passed_is_refused() {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let log = passed_fd_error(vec![udp.into()], Some("2"));
    assert!(log.contains("fd 4 (LISTEN_FDS) is not a socket"), "{log}");
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut gateway = Launch::new(&["--listen-address", &addr]).spawn();
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = gateway.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
    assert!(log.contains("in use"), "{log}");
}

#[test]
fn a_closed_fd_number_is_refused() {
    // LISTEN_FDS=1 with nothing at fd 3.
    let mut gateway = Launch::new(&["--libvirt-uri", "test:///default"])
        .env("LISTEN_FDS", "1")
        .spawn();
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", gateway.log());
    let log = gateway.log();
    assert!(log.contains("fd 3 (LISTEN_FDS) is not a socket"), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
}
