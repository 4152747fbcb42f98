//! Socket acquisition: the UDP sockets systemd passed in, or our own.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context, Result, bail};
use listenfd::ListenFd;

/// Where the sockets came from; decides the default idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd (`LISTEN_FDS`): the socket outlives us, so exiting
    /// when idle loses nothing.
    Activated,
    /// Bound by this process from `--listen-address`.
    Bound,
}

/// The non-blocking UDP sockets the gateway serves.
#[derive(Debug)]
pub struct Listeners {
    /// The sockets, in `LISTEN_FDS` or `--listen-address` order.
    pub sockets: Vec<UdpSocket>,
    /// Where they came from.
    pub origin: Origin,
}

/// Takes every socket systemd passed, or, with none passed, binds each of
/// `listen_addresses`.
pub fn acquire(listen_addresses: &[SocketAddr]) -> Result<Listeners> {
    let mut passed = ListenFd::from_env();
    let (sockets, origin) = if passed.len() > 0 {
        let sockets = (0..passed.len())
            .map(|i| take_udp(&mut passed, i))
            .collect::<Result<Vec<_>>>()?;
        (sockets, Origin::Activated)
    } else {
        let sockets = listen_addresses
            .iter()
            .map(|addr| bind(*addr))
            .collect::<Result<Vec<_>>>()?;
        (sockets, Origin::Bound)
    };
    for socket in &sockets {
        socket
            .set_nonblocking(true)
            .context("cannot make a listening socket non-blocking")?;
    }
    Ok(Listeners { sockets, origin })
}

/// Takes passed socket `i`, explaining what it is when it is not UDP.
fn take_udp(passed: &mut ListenFd, i: usize) -> Result<UdpSocket> {
    let fd = 3 + i;
    let not_udp = match passed.take_udp_socket(i) {
        Ok(Some(socket)) => return Ok(socket),
        Ok(None) => bail!("passed fd {fd} is missing"),
        Err(e) => e,
    };
    // listenfd leaves a rejected fd in place, so we can ask what it is.
    let what = if passed.take_tcp_listener(i).is_ok() {
        "a TCP socket"
    } else if passed.take_unix_listener(i).is_ok() {
        "a unix stream socket"
    } else if passed.take_unix_datagram(i).is_ok() {
        "a unix datagram socket"
    } else if not_udp.to_string().contains("not a socket") {
        "not a socket (a file, or a closed fd number)"
    } else {
        "a socket of another kind"
    };
    bail!(
        "passed fd {fd} (LISTEN_FDS) is {what}, not a UDP socket; \
         the .socket unit must use ListenDatagram= (e.g. ListenDatagram=127.0.0.1:9)"
    )
}

fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (another WOL listener, or the wol-libvirt-gateway.socket unit, holds it; \
                 pick another --listen-address or stop that one)"
                    .to_owned()
            }
            io::ErrorKind::PermissionDenied => format!(
                " (ports below 1024 need privileges: use the systemd socket unit, which \
                 passes the socket in, or a port above 1023, e.g. --listen-address {}:9009)",
                addr.ip()
            ),
            io::ErrorKind::AddrNotAvailable => {
                " (no local interface has that IP address)".to_owned()
            }
            _ => String::new(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}{hint}")
    })
}
