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
    fn fifteen_repetitions_are_rejected(mac in unicast_mac()) {
        let mut datagram = magic_packet(mac);
        datagram.truncate(96);
        datagram.extend([0u8; 20]);
        prop_assert_eq!(packet::parse(&datagram), Err(Rejection::NoRepetitions));
    }

    #[test]
    fn domain_xml_reader_never_panics(text in ".{0,400}") {
        let _ = domain_xml::macs(&text);
    }
}
