//! The subcommands besides serving: `list`, `token`, `secureon`, `idle`,
//! `wake` and `sleep`.

pub mod idle;
pub(crate) mod list;
pub(crate) mod power;
pub mod secureon;
pub mod token;
