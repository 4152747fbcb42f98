//! Generated inputs for the pure parsers: nothing panics, and a valid packet
//! is found wherever it sits.

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use wol_libvirt_gateway::ingress::packet::{self, Rejection, magic_packet};
use wol_libvirt_gateway::libvirt::domain_xml;
use wol_libvirt_gateway::model::Mac;

fn unicast_mac() -> impl Strategy<Value = Mac> {
    any::<[u8; 6]>()
        .prop_map(|mut b| {
            b[0] &= 0xfe; // clear the group bit
            Mac(b)
        })
        .prop_filter("not all-zero", |m| !m.is_zero())
}

proptest! {
    #[test]
    fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = packet::parse(&bytes);
    }

    #[test]
    fn a_valid_packet_anywhere_in_random_bytes_is_found(
        mac in unicast_mac(),
        prefix in proptest::collection::vec(any::<u8>(), 0..300),
        suffix in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut datagram = prefix;
        datagram.extend(magic_packet(mac));
        datagram.extend(suffix);
        // Random prefix bytes could, in theory, hold an earlier valid packet;
        // it would have to be 102 specific bytes, so accept only our MAC.
        prop_assert_eq!(packet::parse(&datagram), Ok(mac));
    }

    #[test]
    fn one_flipped_byte_in_the_repetitions_is_rejected(
        mac in unicast_mac(),
        position in 6usize..102,
        flip in 1u8..=255,
    ) {
        let mut datagram = magic_packet(mac);
        datagram[position] ^= flip;
        let result = packet::parse(&datagram);
        prop_assert!(result.is_err(), "{:?}", result);
    }

    #[test]
    fn a_sync_stream_of_five_bytes_is_rejected(
        mac in unicast_mac(),
        broken in 0usize..6,
        prefix in proptest::collection::vec(0u8..0xff, 0..50),
    ) {
        // Random bytes before it, but never 0xff, so the sync cannot be
        // completed from the prefix.
        let mut datagram = prefix;
        let mut packet = magic_packet(mac);
        packet[broken] = 0x00;
        datagram.extend(packet);
        prop_assert!(packet::parse(&datagram).is_err());
    }

    #[test]
    fn fifteen_repetitions_are_rejected(mac in unicast_mac()) {
        let mut datagram = magic_packet(mac);
        datagram.truncate(96);
        datagram.extend([0u8; 20]);
        prop_assert_eq!(packet::parse(&datagram), Err(Rejection::NoRepetitions));
    }

    #[test]
    fn domain_xml_reader_never_panics(text in ".{0,400}") {
        let _ = domain_xml::read(&text);
    }

    #[test]
    fn domain_xml_reader_never_panics_on_markup_soup(
        text in r#"([<>/!?\[\]'"= -]|domain|devices|interface|mac|address|CDATA|--|52:54:00:aa:bb:cc){0,120}"#
    ) {
        let _ = domain_xml::read(&text);
    }
}

/// A random unicast, non-zero MAC.
fn random_unicast_mac(rng: &mut TestRng) -> Mac {
    loop {
        let mut b: [u8; 6] = rng.random();
        b[0] &= 0xfe;
        if b != [0; 6] {
            return Mac(b);
        }
    }
}

/// Ten million generated cases, a third of each kind: random bytes (some
/// rich in 0xff) never panic; a valid packet anywhere in random bytes is
/// found; a near miss (15 repetitions, a flipped byte, a 5-byte sync) is
/// rejected.
#[test]
#[ignore = "ten million cases (~1.5 min in a debug build); run with: cargo test -- --ignored long_property_run"]
fn long_property_run() {
    const CASES: u64 = 10_000_000;
    // XorShift, not proptest's default ChaCha: in a debug build ChaCha makes
    // this run about seven times slower.
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::XorShift);
    let mut buf = vec![0u8; 512];
    for case in 0..CASES {
        match case % 3 {
            0 => {
                let len = rng.random_range(0..buf.len());
                rng.fill_bytes(&mut buf[..len]);
                if case % 2 == 0 {
                    // Sprinkle 0xff runs so the sync search has work to do.
                    for _ in 0..rng.random_range(0..8) {
                        let at = rng.random_range(0..len.max(1));
                        let run = rng.random_range(0..12).min(len - at.min(len));
                        buf[at..at + run].fill(0xff);
                    }
                }
                let _ = packet::parse(&buf[..len]);
            }
            1 => {
                let mac = random_unicast_mac(&mut rng);
                let packet = magic_packet(mac);
                let prefix = rng.random_range(0..200);
                let suffix = rng.random_range(0..200);
                rng.fill_bytes(&mut buf[..prefix + packet.len() + suffix]);
                buf[prefix..prefix + packet.len()].copy_from_slice(&packet);
                let found = packet::parse(&buf[..prefix + packet.len() + suffix]);
                assert_eq!(found, Ok(mac), "case {case}: packet at offset {prefix}");
            }
            _ => {
                let mac = random_unicast_mac(&mut rng);
                let mut near = magic_packet(mac);
                match rng.random_range(0..3) {
                    0 => near.truncate(6 + 15 * 6),
                    1 => {
                        let at = rng.random_range(6..102);
                        near[at] ^= rng.random_range(1..=255u8);
                    }
                    _ => near[rng.random_range(0..6)] = 0x00,
                }
                near.resize(near.len().max(packet::MIN_PACKET_LEN), 0);
                let result = packet::parse(&near);
                assert!(
                    result.is_err(),
                    "case {case}: near miss accepted: {result:?}"
                );
            }
        }
    }
}
