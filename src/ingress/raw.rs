//! Raw Ethernet Wake-on-LAN: magic packets sent as bare frames of ethertype
//! `0x0842` (what `etherwake` and many routers send), which no UDP socket sees.
//!
//! systemd cannot socket-activate an `AF_PACKET` socket, so this is an opt-in,
//! always-on mode (`--raw-interface IFACE`) that opens its own sockets and
//! needs `CAP_NET_RAW`. A [`RawListener`] hands out the frame's payload, which
//! is the magic packet itself, so [`crate::ingress::packet::parse`] reads it unchanged.
//!
//! How, without `unsafe` (the crate forbids it): rustix creates the socket
//! (it takes any ethertype as the protocol), and nix supplies the two
//! `sockaddr_ll` pieces rustix 1.1 lacks: a link-layer address to `bind` to
//! (from `getifaddrs`, which lists one `AF_PACKET` address per interface) and
//! the sender's link-layer address from `recvfrom` (nix's `LinkAddr`).
//!
//! Which interface, on a VM host (checked with a Linux bridge and veth):
//! - Listen on the bridge (`br0`), not on its ports: a port hands every frame
//!   to the bridge before per-protocol listeners run, so a socket bound to a
//!   port sees nothing; [`RawListener::open`] refuses a bridge port.
//! - Broadcast frames (`etherwake -b`, most routers) always arrive. Frames
//!   addressed to the VM's own MAC (etherwake's default) reach `br0` only
//!   when it is promiscuous (`ip link set br0 promisc on`): a shut-off VM has
//!   no port, so the bridge floods the frame to its ports but hands it up to
//!   the host only in promiscuous mode. On a NIC that is no bridge port the
//!   same holds (the NIC's own filter drops them).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::socket::LinkAddr;
use rustix::io::Errno;
use rustix::net::{AddressFamily, Protocol, RawProtocol, SocketFlags, SocketType};

use crate::model::{Mac, RawSource};

/// The Wake-on-LAN ethertype (AMD Magic Packet over bare Ethernet).
pub(crate) const ETHERTYPE_WOL: u16 = 0x0842;

/// `PACKET_OUTGOING` (linux/if_packet.h): a frame this host sent.
const PACKET_OUTGOING: u8 = 4;

/// How many unwanted frames (our own, or another interface's) one
/// [`RawListener::recv`] call skips before it yields with `WouldBlock`, so a
/// flood of them cannot keep the caller inside `recv`; `poll` is
/// level-triggered and reports the socket readable again at once.
const MAX_SKIPPED: usize = 64;

/// An `AF_PACKET` socket that receives the Wake-on-LAN frames (ethertype
/// `0x0842`) arriving on one network interface.
///
/// Non-blocking: wait for it with `poll` (it implements [`AsFd`]), then call
/// [`RawListener::recv`] until it returns [`io::ErrorKind::WouldBlock`].
#[derive(Debug)]
pub struct RawListener {
    fd: OwnedFd,
    interface: Arc<str>,
    ifindex: usize,
}

impl RawListener {
    /// Opens a non-blocking `AF_PACKET` socket bound to `interface` that
    /// receives Wake-on-LAN frames (ethertype `0x0842`), without the Ethernet
    /// header.
    ///
    /// Fails with a one-line message for an unknown interface, one without a
    /// link-layer address, a bridge port (which never sees the frames; the
    /// message names the bridge), a process without `CAP_NET_RAW`, or a
    /// sandbox that forbids `AF_PACKET`.
    pub fn open(interface: &str) -> Result<RawListener> {
        // The interface first: this needs no privilege, so a typo is reported
        // as a typo even when CAP_NET_RAW is missing too.
        let link = link_address(interface)?;
        refuse_bridge_port(interface)?;
        let what = format!("cannot listen for raw Wake-on-LAN frames on {interface}");

        // SOCK_DGRAM: the kernel strips the link-layer header (14 bytes on
        // Ethernet, and on `lo`, which has an all-zero Ethernet header), so
        // the payload is the magic packet and the sender's address comes
        // separately, in the sockaddr_ll. The protocol is the ethertype in
        // network byte order (packet(7)); the kernel then filters on it, so
        // no other traffic ever reaches us.
        let protocol = RawProtocol::new(u32::from(ETHERTYPE_WOL.to_be()))
            .map(Protocol::from_raw)
            .expect("the ethertype is not zero");
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::DGRAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(protocol),
        )
        .map_err(|e| match e {
            Errno::PERM | Errno::ACCESS => anyhow!(
                "{what}: needs CAP_NET_RAW (run as root or use the \
                 wol-libvirt-gateway-raw@.service unit)"
            ),
            Errno::AFNOSUPPORT => anyhow!(
                "{what}: AF_PACKET sockets are not available (a sandbox whose \
                 RestrictAddressFamilies= lacks AF_PACKET, or a kernel without CONFIG_PACKET)"
            ),
            e => anyhow!("{what}: cannot create an AF_PACKET socket: {e}"),
        })?;

        // Bind to the interface. The address from getifaddrs carries the
        // interface index and protocol 0, which bind(2) on a packet socket
        // reads as "keep the socket's protocol" (0x0842). A down interface
        // is no error: the kernel binds, reports ENETDOWN once on the socket
        // and delivers frames when the interface comes up.
        nix::sys::socket::bind(fd.as_raw_fd(), &link).with_context(|| what.clone())?;

        Ok(RawListener {
            fd,
            interface: interface.into(),
            ifindex: link.ifindex(),
        })
    }

    /// The interface this listener is bound to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Receives the next Wake-on-LAN frame: copies its payload (the bytes
    /// after the Ethernet header, i.e. the magic packet and any password)
    /// into `buf`, truncating it to `buf.len()`, and returns its length and
    /// sender.
    ///
    /// Returns [`io::ErrorKind::WouldBlock`] when no frame is queued. Frames
    /// this host sent itself, and frames of another interface that queued
    /// up before the socket was bound, are skipped.
    ///
    /// When the interface goes down, returns one [`io::ErrorKind::NetworkDown`]
    /// error (not fatal: frames flow again once it is up). If the interface
    /// was deleted, the socket can never receive again (even if an interface
    /// of that name comes back): that error is [`io::ErrorKind::NotFound`],
    /// and the listener should be opened anew.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, RawSource)> {
        for _ in 0..MAX_SKIPPED {
            let (len, from) = match nix::sys::socket::recvfrom::<LinkAddr>(self.fd.as_raw_fd(), buf)
            {
                Ok(received) => received,
                Err(nix::errno::Errno::ENETDOWN) => return Err(self.network_down()),
                Err(e) => return Err(e.into()),
            };
            // The kernel always fills in a sockaddr_ll for packet sockets;
            // without one we could not tell where the frame came from.
            let Some(from) = from else { continue };
            // Our own frames: a socket bound to one ethertype is not handed
            // outgoing copies today (only ETH_P_ALL taps are), but nothing
            // promises that, and a wake request from ourselves is noise.
            if from.pkttype() == PACKET_OUTGOING {
                continue;
            }
            // Between socket() and bind() the socket receives 0x0842 frames
            // from every interface; drop those stragglers.
            if from.ifindex() != self.ifindex {
                continue;
            }
            // Not filtered on the destination: a frame addressed to the
            // sleeping VM's own MAC (etherwake's default) arrives as
            // PACKET_OTHERHOST and is exactly what we want.
            let mac = match (from.halen(), from.addr()) {
                (6, Some(addr)) => Mac(addr),
                _ => Mac([0; 6]),
            };
            return Ok((
                len,
                RawSource {
                    mac,
                    interface: Arc::clone(&self.interface),
                },
            ));
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Explains an ENETDOWN: the interface is down, or gone for good (the
    /// kernel unbinds a packet socket from a deleted interface and never
    /// rebinds it, even to a new interface of the same name).
    fn network_down(&self) -> io::Error {
        match link_address(&self.interface) {
            Ok(link) if link.ifindex() == self.ifindex => io::Error::new(
                io::ErrorKind::NetworkDown,
                format!(
                    "{} is down; raw Wake-on-LAN frames are received again once it is up",
                    self.interface
                ),
            ),
            _ => io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} was removed; no raw Wake-on-LAN frame can arrive until the listener is \
                     opened again",
                    self.interface
                ),
            ),
        }
    }
}

impl AsFd for RawListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Fails if `interface` is a port of a Linux bridge: the bridge takes every
/// frame from its ports before a per-protocol packet socket would see it, so
/// a listener there would silently never receive anything.
fn refuse_bridge_port(interface: &str) -> Result<()> {
    let sysfs = std::path::Path::new("/sys/class/net").join(interface);
    if !sysfs.join("brport").is_dir() {
        return Ok(());
    }
    let bridge = std::fs::read_link(sysfs.join("master"))
        .ok()
        .and_then(|master| Some(master.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "its bridge".to_owned());
    bail!(
        "cannot listen for raw Wake-on-LAN frames on {interface}: it is a port of bridge \
         {bridge}, which receives its frames; use --raw-interface {bridge}"
    )
}

/// The link-layer (`AF_PACKET`) address of `interface`, as `getifaddrs` lists
/// it: family, interface index and hardware address filled in, protocol 0.
fn link_address(interface: &str) -> Result<LinkAddr> {
    let mut found = false;
    let addrs = nix::ifaddrs::getifaddrs()
        .with_context(|| format!("cannot list network interfaces to find {interface}"))?;
    for entry in addrs.filter(|a| a.interface_name == interface) {
        found = true;
        if let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr()) {
            return Ok(*link);
        }
    }
    if found {
        // getifaddrs gives an AF_PACKET entry only to interfaces with a
        // hardware address; tun and WireGuard devices have none, and carry
        // no Ethernet frames either.
        bail!(
            "cannot listen for raw Wake-on-LAN frames on {interface}: it has no link-layer \
             (Ethernet) address"
        )
    }
    bail!(
        "cannot listen for raw Wake-on-LAN frames on {interface}: no such network interface \
         (see `ip link`)"
    )
}
