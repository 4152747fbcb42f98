//! Any datagram: parse must not panic, and a MAC it returns must be one a
//! domain could own, repeated 16 times after a sync stream in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wol_libvirt_gateway::ingress::packet::{self, magic_packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(mac) = packet::parse(data) {
        assert!(!mac.is_multicast() && !mac.is_zero());
        let pattern = magic_packet(mac);
        assert!(data.windows(pattern.len()).any(|w| w == pattern.as_slice()));
    }
});
