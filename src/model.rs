//! The plain data every part shares: addresses, domains' identities and
//! states, what was done to a domain, libvirt's errors as values, and where a
//! request came from. No I/O and no libvirt here: the pure decisions
//! ([`crate::decide::book`], [`crate::decide::plan`], [`crate::decide::policy`], …) import these, not
//! the modules that talk to sockets or libvirt.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// A 48-bit Ethernet MAC address.
///
/// Displays as lowercase, colon-separated hex (`52:54:00:aa:bb:cc`), the form
/// libvirt writes, and compares byte-wise, so `52:54:00:AA:BB:CC` in a domain
/// XML and `52:54:00:aa:bb:cc` from a packet are the same address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub(crate) const BROADCAST: Mac = Mac([0xff; 6]);

    /// True for group (multicast or broadcast) addresses: the I/G bit of the
    /// first octet is set. No NIC, and so no libvirt domain, owns one.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// True if a magic packet can name it: neither the zero address nor a
    /// group one, which the packet parser refuses.
    pub fn is_wakeable(&self) -> bool {
        !self.is_zero() && !self.is_multicast()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacParseError(String);

impl fmt::Display for MacParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a MAC address (expected six hex pairs such as 52:54:00:aa:bb:cc)",
            self.0
        )
    }
}

impl std::error::Error for MacParseError {}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Parses `52:54:00:aa:bb:cc` or `52-54-00-AA-BB-CC`, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_owned());
        let separator = if s.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(separator);
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(bytes))
    }
}

/// A SecureOn password as a packet carries it: 4 or 6 bytes. Its bytes are
/// never shown (Debug says only its length).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Password {
    len: u8,
    bytes: [u8; 6],
}

impl Password {
    /// The password in `bytes`, if there are 4 or 6.
    pub fn new(bytes: &[u8]) -> Option<Password> {
        let len = bytes.len();
        if len != 4 && len != 6 {
            return None;
        }
        let mut all = [0u8; 6];
        all[..len].copy_from_slice(bytes);
        Some(Password {
            len: len as u8,
            bytes: all,
        })
    }

    /// Its bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl FromStr for Password {
    type Err = String;

    /// `01:02:03:04:05:06` or `01:02:03:04` (also with `-`), as etherwake's
    /// `-p` takes it; a 4-byte one may also be written `192.168.1.1`.
    fn from_str(s: &str) -> Result<Password, String> {
        let bytes: Option<Vec<u8>> = if s.contains('.') {
            s.split('.').map(|part| part.parse::<u8>().ok()).collect()
        } else {
            s.split([':', '-'])
                .map(|part| {
                    (part.len() == 2)
                        .then(|| u8::from_str_radix(part, 16).ok())
                        .flatten()
                })
                .collect()
        };
        bytes.and_then(|b| Password::new(&b)).ok_or_else(|| {
            "a SecureOn password is 4 or 6 bytes: six hex pairs such as 01:02:03:04:05:06, \
             or four (01:02:03:04 or 192.168.1.1)"
                .to_owned()
        })
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password({} bytes)", self.len)
    }
}

/// A domain's run state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running.
    Running,
    /// Blocked on a resource (still running).
    Blocked,
    /// Paused by an admin or libvirt.
    Paused,
    /// Being shut down (still active).
    InShutdown,
    /// Shut off.
    ShutOff,
    /// Crashed.
    Crashed,
    /// Suspended by guest power management (S3/S4).
    PmSuspended,
    /// No state, or a state this build does not know.
    Other,
}

impl DomainState {
    /// True for states in which the domain has a running process. A domain in
    /// any of these counts as "up" for the ambiguity rule.
    pub(crate) fn is_active(self) -> bool {
        !matches!(self, DomainState::ShutOff | DomainState::Crashed)
    }

    /// The word `virsh domstate` would print (also the `STATE` journal field).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::InShutdown => "in shutdown",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
            DomainState::Other => "no state",
        }
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A domain's UUID, stored as 16 bytes: the index holds one per (MAC,
/// domain) pair, and 10,000 domains should cost kilobytes, not megabytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub u128);

impl fmt::Display for Uuid {
    /// libvirt's canonical form: lowercase 8-4-4-4-12 hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a canonical UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a UUID (expected 8-4-4-4-12 hex digits)")]
pub struct UuidParseError(String);

impl FromStr for Uuid {
    type Err = UuidParseError;

    /// Parses the 8-4-4-4-12 form, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UuidParseError(s.to_owned());
        let groups: Vec<&str> = s.split('-').collect();
        if !groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) {
            return Err(bad());
        }
        let hex: String = groups.concat();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u128::from_str_radix(&hex, 16).map(Uuid).map_err(|_| bad())
    }
}

/// The libvirt call that brings a domain up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `virDomainCreate`: boot a shut-off domain, or restore its managed-save image.
    Start,
    /// `virDomainResume`: continue a paused domain.
    Resume,
    /// `virDomainPMWakeup`: wake a guest suspended by power management.
    PmWakeup,
}

/// What kind of failure a libvirt call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvErrorKind {
    /// The domain does not exist (any more).
    NoDomain,
    /// Anything else; whether the connection is still usable is asked
    /// separately ([`crate::libvirt::hypervisor::Hypervisor::is_alive`]).
    Other,
}

/// A libvirt error, carrying libvirt's own message (one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HvError {
    /// What kind of failure.
    pub kind: HvErrorKind,
    /// libvirt's message.
    pub message: String,
}

impl HvError {
    /// An error of kind [`HvErrorKind::Other`] with this message.
    pub fn other(message: impl Into<String>) -> Self {
        HvError {
            kind: HvErrorKind::Other,
            message: message.into(),
        }
    }
}

/// Why a domain stopped, as libvirt tells it (the state's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Shut down from inside the guest.
    Shutdown,
    /// Destroyed (forced off) through libvirt.
    Destroyed,
    /// QEMU crashed, or the guest did (shut off with reason crashed).
    Crashed,
    /// Migrated away.
    Migrated,
    /// Saved to a file.
    Saved,
    /// Failed to start.
    Failed,
    /// Restored from a snapshot that was off.
    FromSnapshot,
    /// Stopped by the daemon (e.g. at its restart).
    Daemon,
    /// The guest panicked (crashed state).
    Panicked,
}

/// Where a wake request came from: a UDP sender, or a raw Ethernet frame's
/// sender on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A UDP datagram's source address.
    Udp(SocketAddr),
    /// A raw frame's source MAC and interface.
    Raw(RawSource),
    /// An HTTP wake request's peer.
    Http(SocketAddr),
    /// The command line (`wake`, `sleep`).
    Cli,
}

impl Source {
    /// How it arrived, for the `VIA` journal field: `udp`, `raw`, `http`
    /// or `cli`.
    pub(crate) fn via(&self) -> &'static str {
        match self {
            Source::Udp(_) => "udp",
            Source::Raw(_) => "raw",
            Source::Http(_) => "http",
            Source::Cli => "cli",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Udp(addr) => addr.fmt(f),
            Source::Raw(raw) => raw.fmt(f),
            Source::Http(addr) => write!(f, "{addr} (HTTP)"),
            Source::Cli => f.write_str("the command line"),
        }
    }
}

/// Who sent a raw frame: the sender's hardware address and the interface it
/// arrived on. Displays as `52:54:00:12:34:56 on eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSource {
    /// The frame's Ethernet source address (what the sender claims: it is
    /// not authenticated any more than a UDP source address is). All zeros
    /// for frames sent on `lo`, whose own address is all zeros.
    pub mac: Mac,
    /// The interface the frame arrived on.
    pub interface: Arc<str>,
}

impl fmt::Display for RawSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.mac, self.interface)
    }
}
