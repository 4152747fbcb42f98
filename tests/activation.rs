//! The real binary socket-activated, with the test playing systemd: it owns
//! the UDP socket, queues datagrams before the process exists, passes the
//! socket as fd 3 with LISTEN_FDS=1, and starts the binary again for
//! datagrams that arrive after it exited.

use crate::util::{
    DEADLINE, Launch, NodeFile, NotifySocket, RunState, domain, send, systemd_socket, wait_until,
    wake,
};

#[test]
fn queued_packets_are_each_handled_once_then_it_exits_idle_and_comes_back() {
    let node = NodeFile::new(&[
        domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff),
        domain("db01", "52:54:00:aa:bb:dd", RunState::Paused),
        domain("build01", "52:54:00:aa:bb:ee", RunState::Running),
    ]);
    let uri = node.uri();
    let (socket, addr) = systemd_socket();

    // Queued before the gateway exists: a burst of 4 for web01 (as wakeonlan
    // and Moonlight repeat), one for db01, two junk datagrams, an unknown MAC.
    for _ in 0..4 {
        wake(addr, "52:54:00:aa:bb:cc");
    }
    wake(addr, "52:54:00:aa:bb:dd");
    send(addr, b"hello");
    send(addr, &[0xff; 300]);
    wake(addr, "52:54:00:00:00:99");

    let mut notify = NotifySocket::new();
    let launch = |notify: &NotifySocket| {
        Launch::new(&["--libvirt-uri", &uri, "--idle-timeout", "1s"])
            .env("NOTIFY_SOCKET", notify.path())
            .pass_fd(socket.try_clone().expect("dup socket").into())
            .spawn()
    };
    let mut first = launch(&notify);
    let status = first.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", first.log());

    let web = first.lines_with("for 52:54:00:aa:bb:cc");
    assert_eq!(web.len(), 1, "one action for the burst:\n{}", first.log());
    assert!(web[0].contains("started web01"), "{}", web[0]);
    assert!(
        web[0].contains("3 duplicate packets in this burst ignored"),
        "{}",
        web[0]
    );
    assert_eq!(first.lines_with("resumed db01").len(), 1, "{}", first.log());
    assert_eq!(
        first.lines_with("MAC 52:54:00:00:00:99").len(),
        1,
        "{}",
        first.log()
    );
    let summary = first.lines_with("exiting (idle timeout)");
    assert_eq!(summary.len(), 1, "{}", first.log());
    assert!(
        summary[0].contains("8 datagrams, 3 wake requests handled, 3 duplicates, 2 invalid"),
        "{}",
        summary[0]
    );
    let ready = notify.wait_for("READY=1");
    let stopping = notify.wait_for("STOPPING=1");
    assert!(ready < stopping, "{:?}", notify.messages());
    assert!(
        notify
            .messages()
            .iter()
            .any(|m| m.contains("STATUS=") && m.contains("idle, exiting in")),
        "{:?}",
        notify.messages()
    );

    // After the exit the socket is still ours (systemd's): packets queue,
    // and the next activation handles them. The test driver's state lives in
    // the process, so web01 is shut off again for the new one.
    wake(addr, "52:54:00:aa:bb:cc");
    wake(addr, "52:54:00:aa:bb:ee");
    assert!(wait_until(DEADLINE, || readable(&socket)));
    let mut second = launch(&notify);
    let status = second.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", second.log());
    assert_eq!(
        second.lines_with("started web01").len(),
        1,
        "{}",
        second.log()
    );
    assert_eq!(
        second.lines_with("build01 is already up").len(),
        1,
        "{}",
        second.log()
    );
}

fn readable(socket: &std::net::UdpSocket) -> bool {
    let mut buf = [0u8; 1];
    socket
        .set_nonblocking(true)
        .and_then(|()| socket.peek(&mut buf))
        .is_ok()
}

#[test]
fn several_passed_sockets_are_served_together() {
    let node = NodeFile::new(&[
        domain("web01", "52:54:00:aa:bb:cc", RunState::ShutOff),
        domain("db01", "52:54:00:aa:bb:dd", RunState::ShutOff),
    ]);
    let (seven, seven_addr) = systemd_socket();
    let (nine, nine_addr) = systemd_socket();
    wake(seven_addr, "52:54:00:aa:bb:cc");
    wake(nine_addr, "52:54:00:aa:bb:dd");
    wake(nine_addr, "52:54:00:aa:bb:cc"); // Moonlight: same packet, other port
    let mut gateway = Launch::new(&["--libvirt-uri", &node.uri(), "--idle-timeout", "500ms"])
        .pass_fd(seven.into())
        .pass_fd(nine.into())
        .spawn();
    let status = gateway.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    assert_eq!(
        gateway.lines_with("started web01").len(),
        1,
        "{}",
        gateway.log()
    );
    assert_eq!(
        gateway.lines_with("started db01").len(),
        1,
        "{}",
        gateway.log()
    );
}
