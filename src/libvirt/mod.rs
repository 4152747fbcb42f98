//! Everything that talks to libvirt: the hypervisor trait and its `virt`
//! implementation, one host per URI with its connection, health and MAC
//! index, the fleet that asks every host for one request, the reader of
//! domain XML, and how a URI is shown.

pub mod domain_xml;
pub mod fleet;
pub mod host;
pub mod hypervisor;
pub mod index;
pub mod uri;
