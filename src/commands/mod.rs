//! The subcommands besides serving: `list`, `token`, `secureon`.

pub mod idle;
pub(crate) mod list;
pub mod secureon;
pub mod token;
