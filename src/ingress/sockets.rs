//! Socket acquisition: the UDP sockets systemd passed in, or our own, and
//! the raw Ethernet listeners of `--raw-interface`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result, bail};
use listenfd::ListenFd;

use crate::ingress::raw::RawListener;
use crate::model::Source;

/// Something the gateway reads wake requests from.
#[derive(Debug)]
pub enum Listener {
    /// A UDP socket (passed by systemd or bound by us).
    Udp(UdpSocket),
    /// An AF_PACKET socket for ethertype 0x0842 on one interface.
    Raw(RawListener),
}

impl Listener {
    /// Reads one datagram or frame payload into `buf` (non-blocking).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Source)> {
        match self {
            // A dual-stack [::] socket reports IPv4 senders as
            // ::ffff:a.b.c.d; they are shown as the IPv4 address they are.
            Listener::Udp(socket) => socket.recv_from(buf).map(|(len, addr)| {
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                (len, Source::Udp(addr))
            }),
            Listener::Raw(raw) => raw.recv(buf).map(|(len, from)| (len, Source::Raw(from))),
        }
    }

    /// What it listens on, for the log (`127.0.0.1:9`, `raw eth0`).
    pub(crate) fn describe(&self) -> String {
        match self {
            Listener::Udp(socket) => socket
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Listener::Raw(raw) => format!("raw Ethernet on {}", raw.interface()),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Udp(socket) => socket.as_fd(),
            Listener::Raw(raw) => raw.as_fd(),
        }
    }
}

/// Datagrams read from one listener before the next gets its turn.
const QUANTUM: usize = 64;

/// What one drain round read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Datagrams read.
    pub(crate) read: usize,
    /// A listener whose interface disappeared (it can never receive again).
    pub(crate) lost: Option<usize>,
}

/// Reads the queued datagrams of every listener, up to `max` in all, and
/// hands each to `each`. The listeners take turns of [`QUANTUM`]
/// datagrams, so a flood on one cannot starve the others within a round.
pub(crate) fn drain(
    listeners: &[Listener],
    buf: &mut [u8],
    max: usize,
    mut each: impl FnMut(&[u8], Source),
) -> Drained {
    let mut drained = Drained::default();
    let mut open = vec![true; listeners.len()];
    while drained.read < max && open.contains(&true) {
        for (i, listener) in listeners.iter().enumerate() {
            let mut turn = 0;
            while open[i] && turn < QUANTUM && drained.read < max {
                match listener.recv(buf) {
                    Ok((len, source)) => {
                        turn += 1;
                        drained.read += 1;
                        each(&buf[..len.min(buf.len())], source);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        open[i] = false;
                        match e.kind() {
                            io::ErrorKind::WouldBlock => {}
                            io::ErrorKind::NotFound => {
                                tracing::error!("{}: {e}; exiting", listener.describe());
                                drained.lost = Some(i);
                            }
                            _ => tracing::warn!("{}: {e}", listener.describe()),
                        }
                    }
                }
            }
        }
    }
    drained
}

/// The address bound when neither systemd passes a socket nor
/// `--listen-address` or `--raw-interface` is given.
pub(crate) const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9";

/// Where the sockets came from; decides the default idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Passed by systemd (`LISTEN_FDS`): the socket outlives us, so exiting
    /// when idle loses nothing.
    Activated,
    /// Bound by this process from `--listen-address`.
    Bound,
}

/// The non-blocking listeners the gateway serves.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// UDP sockets in `LISTEN_FDS` or `--listen-address` order, then the raw
    /// listeners in `--raw-interface` order.
    pub(crate) listeners: Vec<Listener>,
    /// TCP sockets for the HTTP wake (passed, or bound for `--http-listen`).
    pub(crate) http: Vec<std::net::TcpListener>,
    /// Where the sockets came from.
    pub(crate) origin: Origin,
}

/// Takes every socket systemd passed (UDP for magic packets, TCP stream
/// sockets for the HTTP wake: told apart by their type, whatever their
/// order or `FileDescriptorName=`), or, with none passed, binds each of
/// `listen_addresses` (the default address if there are none, no raw
/// interface and no HTTP address either) and `http_addresses`; then opens
/// each raw interface.
pub(crate) fn acquire(
    listen_addresses: &[SocketAddr],
    raw_interfaces: &[String],
    http_addresses: &[SocketAddr],
) -> Result<Listeners> {
    let mut passed = ListenFd::from_env();
    let (sockets, http, origin) = if passed.len() > 0 {
        let (mut sockets, mut http) = (Vec::new(), Vec::new());
        for i in 0..passed.len() {
            match take_passed(&mut passed, i)? {
                Passed::Udp(socket) => sockets.push(socket),
                Passed::Tcp(listener) => http.push(listener),
            }
        }
        (sockets, http, Origin::Activated)
    } else {
        let default: Vec<SocketAddr> = match (listen_addresses, raw_interfaces, http_addresses) {
            ([], [], []) => DEFAULT_LISTEN_ADDRESS.parse().into_iter().collect(),
            _ => Vec::new(),
        };
        let sockets = listen_addresses
            .iter()
            .chain(&default)
            .map(|addr| bind(*addr))
            .collect::<Result<Vec<_>>>()?;
        let http = http_addresses
            .iter()
            .map(|addr| bind_http(*addr))
            .collect::<Result<Vec<_>>>()?;
        (sockets, http, Origin::Bound)
    };
    let mut listeners = Vec::with_capacity(sockets.len() + raw_interfaces.len());
    for socket in sockets {
        socket
            .set_nonblocking(true)
            .context("cannot make a listening socket non-blocking")?;
        listeners.push(Listener::Udp(socket));
    }
    for interface in raw_interfaces {
        listeners.push(Listener::Raw(RawListener::open(interface)?));
    }
    Ok(Listeners {
        listeners,
        http,
        origin,
    })
}

/// A socket systemd passed.
enum Passed {
    Udp(UdpSocket),
    Tcp(std::net::TcpListener),
}

/// Takes passed socket `i`, explaining what it is when it is neither UDP
/// nor a listening TCP socket.
fn take_passed(passed: &mut ListenFd, i: usize) -> Result<Passed> {
    let fd = 3 + i;
    let not_udp = match passed.take_udp_socket(i) {
        Ok(Some(socket)) => return Ok(Passed::Udp(socket)),
        Ok(None) => bail!("passed fd {fd} is missing"),
        Err(e) => e,
    };
    // listenfd leaves a rejected fd in place, so we can ask what it is.
    if let Ok(Some(listener)) = passed.take_tcp_listener(i) {
        return Ok(Passed::Tcp(listener));
    }
    let what = if passed.take_unix_listener(i).is_ok() {
        "a unix stream socket"
    } else if passed.take_unix_datagram(i).is_ok() {
        "a unix datagram socket"
    } else if not_udp.to_string().contains("not a socket") {
        "not a socket (a file, or a closed fd number)"
    } else {
        "a socket of another kind"
    };
    bail!(
        "passed fd {fd} (LISTEN_FDS) is {what}, not a UDP or TCP socket; \
         the .socket units must use ListenDatagram= (e.g. ListenDatagram=127.0.0.1:9) \
         or ListenStream= (e.g. ListenStream=127.0.0.1:8009)"
    )
}

fn bind_http(addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => "another program holds it; pick another --http-listen",
            io::ErrorKind::PermissionDenied => "ports below 1024 need privileges; pick another",
            io::ErrorKind::AddrNotAvailable => "no interface has that address",
            _ => "check the address",
        };
        anyhow::anyhow!("cannot listen for HTTP on {addr}: {e} ({hint})")
    })
}

fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                " (another WOL listener, or the wol-libvirt-gateway.socket \
                 unit, holds it, or a [::] address given too, which on Linux also takes \
                 IPv4; pick another --listen-address or stop that one)"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (Listener, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("addr");
        (Listener::Udp(socket), addr)
    }

    #[test]
    fn a_flood_on_one_listener_does_not_starve_another() {
        let (busy, busy_addr) = listener();
        let (quiet, quiet_addr) = listener();
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // 200: what a default receive buffer holds of small datagrams.
        for _ in 0..200 {
            sender.send_to(b"flood", busy_addr).expect("send");
        }
        sender.send_to(b"wake", quiet_addr).expect("send");
        let listeners = [busy, quiet];
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        let drained = drain(&listeners, &mut buf, 100, |payload, _| {
            seen.push(payload.to_vec())
        });
        assert_eq!(drained.read, 100);
        assert!(
            seen.iter().any(|p| p == b"wake"),
            "the quiet listener had its turn"
        );
        // The rest is read in later rounds; nothing is lost.
        let mut total = 100;
        loop {
            let more = drain(&listeners, &mut buf, 100, |_, _| {}).read;
            if more == 0 {
                break;
            }
            total += more;
        }
        assert_eq!(total, 201);
    }

    #[test]
    fn ipv4_senders_on_a_dual_stack_socket_are_shown_as_ipv4() {
        let Ok(socket) = UdpSocket::bind("[::]:0") else {
            return; // no IPv6 on this machine: nothing to show
        };
        socket.set_nonblocking(true).expect("nonblocking");
        let port = socket.local_addr().expect("addr").port();
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sender.send_to(b"x", ("127.0.0.1", port)).expect("send");
        let listeners = [Listener::Udp(socket)];
        let mut buf = [0u8; 16];
        let mut sources = Vec::new();
        for _ in 0..1000 {
            drain(&listeners, &mut buf, 10, |_, source| sources.push(source));
            if !sources.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let expected = sender.local_addr().expect("addr");
        assert_eq!(sources, [Source::Udp(expected)]);
        assert_eq!(sources[0].to_string(), expected.to_string());
    }
}
