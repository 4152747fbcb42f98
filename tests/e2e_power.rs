//! The power switch end to end, through libvirtd with a real QEMU/KVM
//! guest: Home Assistant's `rest` switch (its exact requests) turns the
//! guest off (a managed save, its idle policy's action) and on (a restore),
//! a wake-only token is refused, and `sleep` and `wake` on the command line
//! do the same. Needs root, libvirtd and QEMU, so `cargo test` skips it:
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh
//! sudo cargo test -- --ignored e2e_power
//! ```

use std::net::{TcpListener, TcpStream};

use crate::e2e_libvirtd::{Guest, SLOW_DEADLINE, URI, terminate, virsh_ok};
use crate::power::home_assistant_with;
use crate::util::{Launch, command_on, http_round, libvirtd_shared, ran, systemd_socket};

/// Runs the binary on `qemu:///system` with `args`: exit code, stdout, and
/// stdout and stderr together.
fn run(args: &[&str]) -> (i32, String, String) {
    let (code, stdout, stderr) = ran(&mut command_on(URI, args));
    let all = format!("{stdout}{stderr}");
    (code, stdout, all)
}

#[test]
#[ignore = "needs root, libvirtd and QEMU: sudo tests/e2e/setup-host.sh && sudo cargo test -- --ignored e2e_power"]
fn e2e_power_the_switch_and_the_command_line_put_a_guest_to_sleep_and_wake_it() {
    let _libvirtd = libvirtd_shared();
    let guest = Guest::define("power", "52:54:00:e2:20:01");
    guest.start();
    let name = guest.name.as_str();
    // A policy of half an hour: its action is what a sleep request does;
    // no idle check would act on it in this test's time.
    let (code, _, said) = run(&["idle", "set", name, "--after", "30m"]);
    assert_eq!(code, 0, "{said}");
    let (code, switch_token, said) = run(&["token", "add", name, "--may", "sleep"]);
    assert_eq!(code, 0, "{said}");
    let (code, wake_token, said) = run(&["token", "add", name]);
    assert_eq!(code, 0, "{said}");
    let (switch_token, wake_token) = (switch_token.trim(), wake_token.trim());

    let (udp, _) = systemd_socket();
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
    let http = tcp.local_addr().expect("addr");
    let mut gateway = Launch::new(&["--libvirt-uri", URI, "--idle-timeout", "5m"])
        .pass_fd(udp.into())
        .pass_fd(tcp.into())
        .spawn();
    gateway.wait_for_log("listening on ");
    let host = http.to_string();
    let path = format!("/v1/power/{name}");
    let mut stream = TcpStream::connect(http).expect("connect");
    let mut switch = |token: &str, method: &str, body: &str| {
        let request = home_assistant_with(token, method, &path, &host, body, false);
        let (status, _, body) = http_round(&mut stream, request.as_bytes()).expect("an answer");
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(switch(switch_token, "GET", ""), (200, "ON".into()));
    // The wake-only token may read and wake, not put to sleep.
    let (status, answer) = switch(wake_token, "POST", "OFF");
    assert_eq!(status, 403, "{answer}");
    assert!(guest.state().starts_with("running"), "{}", guest.state());
    // Off: the policy's managed save; on: the restore.
    let (status, answer) = switch(switch_token, "POST", "OFF");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"result\":\"ok\""), "{answer}");
    assert!(guest.state().starts_with("shut off"), "{}", guest.state());
    let info = virsh_ok(&["dominfo", name]);
    assert!(info.contains("Managed save:   yes"), "{info}");
    assert_eq!(switch(switch_token, "GET", ""), (200, "OFF".into()));
    let (status, answer) = switch(switch_token, "POST", "ON");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"action\":\"restore\""), "{answer}");
    guest.wait_state_within("running", SLOW_DEADLINE);
    assert_eq!(switch(switch_token, "GET", ""), (200, "ON".into()));
    assert_eq!(
        gateway
            .lines_with(&format!("put {name} to sleep (managedsave"))
            .len(),
        1
    );
    terminate(&mut gateway);

    // The same from the command line, as an OnCalendar= timer runs it.
    let (code, _, said) = run(&["sleep", name, "--wait", "60s"]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!("put {name} to sleep (managedsave")),
        "{said}"
    );
    assert!(guest.state().starts_with("shut off"), "{}", guest.state());
    let (code, _, said) = run(&["wake", name, "--wait", "60s"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains(&format!("restored {name}")), "{said}");
    assert!(guest.state().starts_with("running"), "{}", guest.state());
}
