//! Users of the original project (brunoproduit's wol-libvirt-gateway)
//! switch with no change: its flags (`-a`/`--address`, `-l`) are ours, and
//! every option also comes from a `WOL_...` environment variable (systemd's
//! `EnvironmentFile=`), a malformed one named in one line. Its unit file
//! under real systemd is in `tests/e2e/systemd-nspawn.sh`.

use crate::util::{Launch, NodeFile, RunState, command_on, domain, ran, systemd_socket, wake};

const WEB: &str = "52:54:00:90:00:01";
const DB: &str = "52:54:00:90:00:02";

fn node() -> NodeFile {
    NodeFile::new(&[
        domain("web01", WEB, RunState::ShutOff),
        domain("db01", DB, RunState::ShutOff),
    ])
}

#[test]
fn the_original_projects_flags_run_the_gateway() {
    let node = node();
    let uri = node.uri();
    // Its README's long names, its binary's short ones.
    for args in [
        ["--address", "127.0.0.1:0", "--libvirt-uri", uri.as_str()],
        ["-a", "127.0.0.1:0", "-l", uri.as_str()],
    ] {
        let gateway = Launch::new(&args).spawn();
        wake(gateway.listen_addr(), WEB);
        gateway.wait_for_log("started web01");
    }
}

#[test]
fn every_option_also_comes_from_the_environment() {
    let node = node();
    let gateway = Launch::new(&[])
        .env("WOL_LISTEN_ADDRESS", "127.0.0.1:0")
        .env("WOL_LIBVIRT_URI", node.uri())
        .env("WOL_ALLOW", "db01,52:54:00:90:00:09")
        .spawn();
    // --allow from the environment: web01 is refused, db01 started.
    wake(gateway.listen_addr(), WEB);
    gateway.wait_for_log("refused to wake web01");
    wake(gateway.listen_addr(), DB);
    gateway.wait_for_log("started db01");
    // The command line wins over the environment.
    let gateway = Launch::new(&["--allow", "web01"])
        .env("WOL_LISTEN_ADDRESS", "127.0.0.1:0")
        .env("WOL_LIBVIRT_URI", node.uri())
        .env("WOL_ALLOW", "db01")
        .spawn();
    wake(gateway.listen_addr(), WEB);
    gateway.wait_for_log("started web01");
    // Replaced, not merged: db01, named only by the variable, is refused.
    wake(gateway.listen_addr(), DB);
    gateway.wait_for_log("refused to wake db01");
}

#[test]
fn a_malformed_variable_is_one_line_naming_it() {
    for (var, value) in [
        ("WOL_LIBVIRT_TIMEOUT", "0"),
        ("WOL_IDLE_TIMEOUT", "soon"),
        ("WOL_LISTEN_ADDRESS", "127.0.0.1:0,localhost"),
        ("WOL_DRY_RUN", "maybe"),
    ] {
        // `list`: were the value taken, the command would end at once
        // (status 0), never serve.
        let (code, _, stderr) = ran(command_on("test:///default", &["list"]).env(var, value));
        assert_eq!(code, 2, "{var}={value}");
        assert_eq!(stderr.lines().count(), 1, "{var}={value}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {var} in the environment: ")),
            "{var}={value}: {stderr}"
        );
    }
}

#[test]
fn a_bad_value_on_the_command_line_is_not_blamed_on_the_environment() {
    let command = &mut command_on("test:///default", &["--idle-timeout", "soon", "list"]);
    let (code, _, stderr) = ran(command.env("WOL_IDLE_TIMEOUT", "soon"));
    assert_eq!(code, 2);
    assert!(!stderr.contains("WOL_IDLE_TIMEOUT"), "{stderr}");
}

#[test]
fn the_original_unit_activated_by_our_socket_serves_the_socket_and_stays() {
    // The original's unit left in /etc shadows ours; enabling our socket
    // then starts it with the socket passed: the passed socket is served,
    // its --address is said to be unused, and it does not idle out (its
    // Restart=always would only start it again).
    let node = node();
    let (socket, addr) = systemd_socket();
    let gateway = Launch::new(&["--address", "0.0.0.0:9", "--libvirt-uri", &node.uri()])
        .pass_fd(socket.into())
        .spawn();
    let unused = gateway.wait_for_log("is not used");
    assert!(unused.contains("--listen-address 0.0.0.0:9"), "{unused}");
    let listening = gateway.wait_for_log("listening on");
    assert!(listening.contains("running until stopped"), "{listening}");
    wake(addr, WEB);
    gateway.wait_for_log("started web01");
}
