//! The subcommands besides serving: `list`, `token`, `secureon`.

pub mod list;
pub mod secureon;
pub mod token;
