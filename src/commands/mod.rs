//! The subcommands besides serving: `list`, `token`, `secureon`.

pub(crate) mod list;
pub mod secureon;
pub mod token;
