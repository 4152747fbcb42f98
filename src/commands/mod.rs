//! The subcommands besides serving: `list`, `token`, `secureon`, `mac`,
//! `idle`, `wake` and `sleep`.

pub mod idle;
pub(crate) mod list;
pub mod mac;
pub(crate) mod power;
pub mod secureon;
pub mod token;
