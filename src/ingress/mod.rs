//! Where requests enter: the sockets systemd passes (or the gateway binds), raw
//! Ethernet frames, the magic-packet parser, and the HTTP wake.

pub mod http;
pub mod packet;
pub mod raw;
pub mod sockets;
