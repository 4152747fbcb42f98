//! The pure decisions: what a request asks, the request book, who may wake
//! what, the plan for a MAC, and what came of it; when to put a domain
//! back to sleep, and a request to; limits per client and
//! throttles. No I/O and no libvirt: the clock is passed in, every rule is a
//! unit test on made-up instants.

pub(crate) mod ask;
pub(crate) mod backoff;
pub mod book;
pub(crate) mod client;
pub mod control;
pub(crate) mod failures;
pub(crate) mod guesses;
pub mod idle;
pub mod outcome;
pub(crate) mod plan;
pub mod policy;
pub(crate) mod sleep;
