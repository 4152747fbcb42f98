//! Any text as a domain's XML: reading it must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wol_libvirt_gateway::libvirt::domain_xml;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = domain_xml::read(text);
    }
});
