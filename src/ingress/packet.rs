//! Magic-packet parsing: a pure function from datagram bytes to a MAC address.
//!
//! A Wake-on-LAN magic packet is a "sync stream" of six `0xff` bytes followed by
//! sixteen repetitions of the target MAC address. AMD's specification lets the
//! pattern sit anywhere in the payload, and real senders add bytes after it (a
//! 4- or 6-byte SecureOn password, Plan 9's `wol` trailer, old pywakeonlan's
//! twenty repetitions), so [`parse`] searches the whole datagram and ignores
//! whatever surrounds the first valid pattern. A SecureOn password is the 4
//! or 6 bytes that end the datagram right after the pattern
//! ([`parse_with_password`]); only domains that set one check it.

use std::fmt;

use crate::decide::ask::{Ask, Credential, Target};
use crate::model::{Mac, Password};

/// Length of the sync stream (`0xff` repeated).
const SYNC_LEN: usize = 6;
/// How many times the MAC must follow the sync stream.
const REPETITIONS: usize = 16;
/// Length of a MAC address in bytes.
const MAC_LEN: usize = 6;
/// The smallest datagram that can hold a magic packet (102 bytes).
pub const MIN_PACKET_LEN: usize = SYNC_LEN + REPETITIONS * MAC_LEN;

/// Why a datagram is not a usable magic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Shorter than the 102 bytes a magic packet needs.
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// No run of six `0xff` bytes anywhere.
    NoSyncStream,
    /// A sync stream, but not followed by sixteen repetitions of one address.
    NoRepetitions,
    /// A well-formed packet for `ff:ff:ff:ff:ff:ff`.
    BroadcastMac,
    /// A well-formed packet for `00:00:00:00:00:00`.
    ZeroMac,
    /// A well-formed packet for a multicast address.
    MulticastMac(Mac),
}

impl Rejection {
    /// How specific this reason is: when several candidate patterns fail,
    /// report the one that came closest to being a wake request.
    fn rank(&self) -> u8 {
        match self {
            Rejection::TooShort { .. } => 0,
            Rejection::NoSyncStream => 1,
            Rejection::NoRepetitions => 2,
            Rejection::BroadcastMac | Rejection::ZeroMac | Rejection::MulticastMac(_) => 3,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooShort { len } => write!(
                f,
                "{len} bytes is too short for a magic packet ({MIN_PACKET_LEN} needed)"
            ),
            Rejection::NoSyncStream => f.write_str("no sync stream (six 0xff bytes)"),
            Rejection::NoRepetitions => {
                f.write_str("sync stream not followed by 16 repetitions of one MAC")
            }
            Rejection::BroadcastMac => f.write_str("broadcast MAC ff:ff:ff:ff:ff:ff"),
            Rejection::ZeroMac => f.write_str("all-zero MAC 00:00:00:00:00:00"),
            Rejection::MulticastMac(mac) => {
                write!(f, "multicast MAC {mac} (no VM can own it)")
            }
        }
    }
}

/// Finds the first magic packet in `datagram` and returns its MAC address.
///
/// Runs in time linear in the datagram's length and never allocates, so a
/// flood of junk costs no more than reading it.
pub fn parse(datagram: &[u8]) -> Result<Mac, Rejection> {
    parse_with_password(datagram).map(|magic| magic.mac)
}

/// What a magic packet asks for: a MAC, and a SecureOn password if it
/// carries one. Requests for the same MAC with different passwords are
/// different requests: a wrong password sent first must not make the right
/// one a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Magic {
    /// The MAC to wake.
    pub mac: Mac,
    /// The SecureOn password after the pattern, if any.
    pub password: Option<Password>,
}

impl From<Mac> for Magic {
    fn from(mac: Mac) -> Magic {
        Magic {
            mac,
            password: None,
        }
    }
}

/// [`parse`], and the SecureOn password: exactly 4 or 6 bytes between the
/// pattern and the end of the datagram (etherwake's `-p`). Any other
/// trailer (none, Plan 9's, extra repetitions) carries no password.
pub(crate) fn parse_with_password(datagram: &[u8]) -> Result<Magic, Rejection> {
    let (mac, end) = find(datagram)?;
    Ok(Magic {
        mac,
        password: Password::new(&datagram[end..]),
    })
}

/// The first valid pattern's MAC and the offset just after it.
fn find(datagram: &[u8]) -> Result<(Mac, usize), Rejection> {
    if datagram.len() < MIN_PACKET_LEN {
        return Err(Rejection::TooShort {
            len: datagram.len(),
        });
    }
    let mut best = Rejection::NoSyncStream;
    let mut from = 0;
    // Jump from one run of 0xff to the next (memchr is SIMD): junk without
    // 0xff costs one pass, however long.
    while let Some(offset) = memchr::memchr(0xff, &datagram[from..]) {
        let run_start = from + offset;
        let run_len = datagram[run_start..]
            .iter()
            .position(|&b| b != 0xff)
            .unwrap_or(datagram.len() - run_start);
        let after_run = run_start + run_len;
        if run_len >= MIN_PACKET_LEN {
            // 102 bytes of 0xff: a well-formed packet for the broadcast MAC.
            best = Rejection::BroadcastMac;
        }
        // A unicast MAC never starts with 0xff (its I/G bit would be set), so
        // the only candidate position is the first byte after a run of at
        // least six 0xff bytes. That keeps the scan linear.
        if run_len >= SYNC_LEN {
            let rejection = match candidate_at(datagram, after_run) {
                Ok(mac) => return Ok((mac, after_run + REPETITIONS * MAC_LEN)),
                Err(rejection) => rejection,
            };
            if rejection.rank() > best.rank() {
                best = rejection;
            }
        }
        from = after_run;
    }
    Err(best)
}

/// Checks for sixteen repetitions of one address starting at `start`.
fn candidate_at(datagram: &[u8], start: usize) -> Result<Mac, Rejection> {
    let Some(body) = datagram.get(start..start + REPETITIONS * MAC_LEN) else {
        return Err(Rejection::NoRepetitions);
    };
    let first = &body[..MAC_LEN];
    if !body.chunks_exact(MAC_LEN).all(|chunk| chunk == first) {
        return Err(Rejection::NoRepetitions);
    }
    let mut bytes = [0u8; MAC_LEN];
    bytes.copy_from_slice(first);
    let mac = Mac(bytes);
    if mac.is_zero() {
        Err(Rejection::ZeroMac)
    } else if mac == Mac::BROADCAST {
        Err(Rejection::BroadcastMac)
    } else if mac.is_multicast() {
        Err(Rejection::MulticastMac(mac))
    } else {
        Ok(mac)
    }
}

/// Builds the standard 102-byte magic packet for `mac` (what `wakeonlan` sends).
pub fn magic_packet(mac: Mac) -> Vec<u8> {
    let mut packet = vec![0xff; SYNC_LEN];
    for _ in 0..REPETITIONS {
        packet.extend_from_slice(&mac.0);
    }
    packet
}

impl From<Magic> for Ask {
    /// A magic packet asks for its MAC's domain, with its SecureOn password
    /// if it carries one.
    fn from(magic: Magic) -> Ask {
        Ask {
            target: Target::Mac(magic.mac),
            credential: magic
                .password
                .map_or(Credential::None, Credential::SecureOn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]);

    fn with_repetitions(mac: Mac, n: usize) -> Vec<u8> {
        let mut packet = vec![0xff; SYNC_LEN];
        for _ in 0..n {
            packet.extend_from_slice(&mac.0);
        }
        packet
    }

    #[test]
    fn standard_102_byte_packet() {
        let packet = magic_packet(MAC);
        assert_eq!(packet.len(), 102);
        assert_eq!(parse(&packet), Ok(MAC));
    }

    #[test]
    fn a_secureon_password_is_the_4_or_6_bytes_that_end_the_datagram() {
        let with = |trailer: &[u8]| {
            let mut packet = magic_packet(MAC);
            packet.extend_from_slice(trailer);
            parse_with_password(&packet).map(|m| (m.mac, m.password.map(|p| p.as_bytes().to_vec())))
        };
        assert_eq!(with(&[]), Ok((MAC, None)));
        assert_eq!(with(&[1, 2, 3, 4]), Ok((MAC, Some(vec![1, 2, 3, 4]))));
        assert_eq!(
            with(&[1, 2, 3, 4, 5, 6]),
            Ok((MAC, Some(vec![1, 2, 3, 4, 5, 6])))
        );
        for other in [
            &[1u8][..],
            &[1, 2, 3, 4, 5],
            &[1, 2, 3, 4, 5, 6, 7],
            &MAC.0.repeat(4),
        ] {
            assert_eq!(with(other), Ok((MAC, None)), "{other:?}");
        }
        // Bytes before the pattern are not a password.
        let mut led = vec![9, 9, 9, 9];
        led.extend_from_slice(&magic_packet(MAC));
        assert_eq!(parse_with_password(&led), Ok(Magic::from(MAC)));
        assert_eq!(
            format!("{:?}", Password::new(&[1, 2, 3, 4])),
            "Some(Password(4 bytes))"
        );
    }

    #[test]
    fn secureon_passwords_parse_in_the_usual_forms() {
        let six: Password = "01:02:03:04:05:0a".parse().expect("six");
        assert_eq!(six.as_bytes(), [1, 2, 3, 4, 5, 10]);
        assert_eq!("01-02-03-04-05-0A".parse::<Password>(), Ok(six));
        let four = Password::new(&[192, 168, 1, 1]);
        assert_eq!("192.168.1.1".parse::<Password>().ok(), four);
        assert_eq!("c0:a8:01:01".parse::<Password>().ok(), four);
        for bad in [
            "",
            "01:02:03",
            "01:02:03:04:05",
            "1:2:3:4",
            "zz:02:03:04",
            "1.2.3.256",
        ] {
            assert!(bad.parse::<Password>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secureon_passwords_of_4_and_6_bytes_are_ignored() {
        for password in [
            &[1u8, 2, 3, 4][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            let mut packet = magic_packet(MAC);
            packet.extend_from_slice(password);
            assert!(packet.len() == 106 || packet.len() == 108);
            assert_eq!(parse(&packet), Ok(MAC));
        }
    }

    #[test]
    fn plan9_wol_109_bytes() {
        let mut packet = magic_packet(MAC);
        packet.extend_from_slice(b"\0\0\0\0\0\0\0");
        assert_eq!(packet.len(), 109);
        assert_eq!(parse(&packet), Ok(MAC));
    }

    #[test]
    fn old_pywakeonlan_126_bytes_with_20_repetitions() {
        let packet = with_repetitions(MAC, 20);
        assert_eq!(packet.len(), 126);
        assert_eq!(parse(&packet), Ok(MAC));
    }

    #[test]
    fn packet_at_an_offset_after_a_header() {
        let mut packet = b"some header; 0xff \xff\xff\xff junk".to_vec();
        packet.extend(magic_packet(MAC));
        packet.extend_from_slice(b"trailer");
        assert_eq!(parse(&packet), Ok(MAC));
    }

    #[test]
    fn longer_sync_stream_still_matches() {
        let mut packet = vec![0xff; 10];
        packet.extend(magic_packet(MAC));
        assert_eq!(parse(&packet), Ok(MAC));
    }

    #[test]
    fn uppercase_and_lowercase_mac_strings_are_the_same_address() {
        let upper: Mac = "52:54:00:AA:BB:CC".parse().unwrap();
        let dashed: Mac = "52-54-00-aa-bb-cc".parse().unwrap();
        assert_eq!(upper, MAC);
        assert_eq!(dashed, MAC);
        assert_eq!(MAC.to_string(), "52:54:00:aa:bb:cc");
    }

    #[test]
    fn malformed_mac_strings_are_rejected() {
        for bad in [
            "",
            "52:54:00:aa:bb",
            "52:54:00:aa:bb:cc:dd",
            "52:54:00:aa:bb:c",
            "zz:54:00:aa:bb:cc",
            "525400aabbcc",
            "52:54-00:aa:bb:cc",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn too_short() {
        let packet = magic_packet(MAC);
        assert_eq!(parse(&packet[..101]), Err(Rejection::TooShort { len: 101 }));
        assert_eq!(parse(b""), Err(Rejection::TooShort { len: 0 }));
    }

    #[test]
    fn no_sync_stream() {
        assert_eq!(parse(&[0x42; 200]), Err(Rejection::NoSyncStream));
        let mut packet = magic_packet(MAC);
        packet[5] = 0xfe; // only five 0xff bytes
        assert_eq!(parse(&packet), Err(Rejection::NoSyncStream));
    }

    #[test]
    fn fifteen_repetitions_or_a_flipped_byte_is_rejected() {
        let mut short = with_repetitions(MAC, 15);
        short.resize(120, 0);
        assert_eq!(parse(&short), Err(Rejection::NoRepetitions));
        let mut flipped = magic_packet(MAC);
        flipped[100] ^= 0x01;
        assert_eq!(parse(&flipped), Err(Rejection::NoRepetitions));
    }

    #[test]
    fn broadcast_zero_and_multicast_macs_are_rejected() {
        assert_eq!(
            parse(&magic_packet(Mac::BROADCAST)),
            Err(Rejection::BroadcastMac)
        );
        assert_eq!(parse(&magic_packet(Mac([0; 6]))), Err(Rejection::ZeroMac));
        let multicast = Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
        assert_eq!(
            parse(&magic_packet(multicast)),
            Err(Rejection::MulticastMac(multicast))
        );
    }

    #[test]
    fn a_valid_packet_after_a_rejected_one_is_found() {
        let mut packet = magic_packet(Mac([0x01, 0, 0x5e, 0, 0, 1]));
        packet.extend(magic_packet(MAC));
        assert_eq!(parse(&packet), Ok(MAC));
    }

    #[test]
    fn rejection_messages_are_one_line_and_name_the_problem() {
        let messages = [
            Rejection::TooShort { len: 3 }.to_string(),
            Rejection::NoSyncStream.to_string(),
            Rejection::NoRepetitions.to_string(),
            Rejection::BroadcastMac.to_string(),
            Rejection::ZeroMac.to_string(),
            Rejection::MulticastMac(Mac([1, 0, 0x5e, 0, 0, 1])).to_string(),
        ];
        for message in messages {
            assert!(!message.contains('\n'));
        }
        assert!(
            Rejection::TooShort { len: 3 }
                .to_string()
                .contains("3 bytes")
        );
    }
}
