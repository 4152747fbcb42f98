//! Generated inputs for the pure parsers: nothing panics, and a valid packet
//! is found wherever it sits.

use proptest::prelude::*;
use wol_libvirt_gateway::domain_xml;
use wol_libvirt_gateway::packet::{self, Mac, Rejection, magic_packet};

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

/// xorshift64*: fast, deterministic, good enough to generate inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn unicast_mac(&mut self) -> Mac {
        loop {
            let mut b = [0u8; 6];
            self.fill(&mut b);
            b[0] &= 0xfe;
            if b != [0; 6] {
                return Mac(b);
            }
        }
    }
}

/// Ten million generated cases, a third of each kind: random bytes (some
/// rich in 0xff) never panic; a valid packet anywhere in random bytes is
/// found; a near miss (15 repetitions, a flipped byte, a 5-byte sync) is
/// rejected.
#[test]
#[ignore = "ten million cases (~1 min in a debug build); run with: cargo test -- --ignored long_property_run"]
fn long_property_run() {
    const CASES: u64 = 10_000_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 512];
    for case in 0..CASES {
        match case % 3 {
            0 => {
                let len = rng.below(buf.len());
                rng.fill(&mut buf[..len]);
                if case % 2 == 0 {
                    // Sprinkle 0xff runs so the sync search has work to do.
                    for _ in 0..rng.below(8) {
                        let at = rng.below(len.max(1));
                        let run = rng.below(12).min(len - at.min(len));
                        buf[at..at + run].fill(0xff);
                    }
                }
                let _ = packet::parse(&buf[..len]);
            }
            1 => {
                let mac = rng.unicast_mac();
                let packet = magic_packet(mac);
                let prefix = rng.below(200);
                let suffix = rng.below(200);
                rng.fill(&mut buf[..prefix + packet.len() + suffix]);
                buf[prefix..prefix + packet.len()].copy_from_slice(&packet);
                let found = packet::parse(&buf[..prefix + packet.len() + suffix]);
                assert_eq!(found, Ok(mac), "case {case}: packet at offset {prefix}");
            }
            _ => {
                let mac = rng.unicast_mac();
                let mut near = magic_packet(mac);
                match rng.below(3) {
                    0 => near.truncate(6 + 15 * 6),
                    1 => {
                        let at = 6 + rng.below(96);
                        near[at] ^= 1 + rng.below(255) as u8;
                    }
                    _ => near[rng.below(6)] = 0x00,
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
