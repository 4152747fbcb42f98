//! Who a network client is, for every per-client limit (HTTP connections,
//! failed authentications, wrong SecureOn passwords): an IPv4 address, or an
//! IPv6 /64. One IPv6 host can use any of the 2^64 addresses of its /64, so
//! limits counted per exact IPv6 address would not limit it at all; a /64 is
//! what one subscriber, one LAN, or one VM gets. Several users behind one
//! IPv4 NAT (or one reverse proxy) are one client and share its limits.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A client: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Client {
    /// An IPv4 address (also an IPv4-mapped IPv6 one).
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Client {
    /// The client `address` belongs to.
    pub(crate) fn of(address: IpAddr) -> Client {
        match address.to_canonical() {
            IpAddr::V4(v4) => Client::V4(v4),
            IpAddr::V6(v6) => Client::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl From<IpAddr> for Client {
    fn from(address: IpAddr) -> Client {
        Client::of(address)
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::V4(v4) => v4.fmt(f),
            Client::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> Client {
        Client::of(s.parse().expect("an address"))
    }

    #[test]
    fn one_ipv6_64_is_one_client_and_ipv4_is_per_address() {
        assert_eq!(client("2001:db8:1:2::1"), client("2001:db8:1:2:ffff::9"));
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
        assert_ne!(client("192.0.2.1"), client("192.0.2.2"));
        assert_eq!(client("::ffff:192.0.2.1"), client("192.0.2.1"));
        assert_eq!(client("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(client("192.0.2.1").to_string(), "192.0.2.1");
    }
}
