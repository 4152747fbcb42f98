//! Integration tests, split by purpose (ripgrep style: one test crate,
//! one module per concern, a shared harness in `util`).

mod util;

mod activation;
mod assets;
mod cli;
mod concurrency;
mod docs;
mod e2e_faults;
mod e2e_idle;
mod e2e_journald;
mod e2e_libvirtd;
mod e2e_lxc;
mod e2e_power;
mod e2e_remote;
mod host_b;
mod hosts;
mod http;
mod idle;
mod index_cache;
mod layout;
mod macs;
mod original;
mod power;
mod properties;
mod raw;
mod secureon;
mod standalone;
mod tokens;
mod wake_states;
