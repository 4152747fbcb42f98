//! The `wol-libvirt-gateway` binary; all logic lives in the library.

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(wol_libvirt_gateway::run());
}
