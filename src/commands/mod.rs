//! The subcommands besides serving: `list`, `token`, `secureon`, `mac`,
//! `idle`, `wake` and `sleep`.

pub mod idle;
pub(crate) mod list;
pub mod mac;
pub(crate) mod power;
pub mod secureon;
pub mod token;

/// A table of one line per domain and its items (`token list`, `mac list`):
/// the URI first when there are several hosts, the names padded to one
/// width, each item as `cell` writes it.
pub(crate) fn per_domain<T>(
    rows: &[(Option<&str>, String, Vec<T>)],
    cell: impl Fn(&T) -> String,
) -> String {
    use std::fmt::Write as _;
    let width = rows
        .iter()
        .map(|(_, name, _)| name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (uri, name, items) in rows {
        let cells: Vec<String> = items.iter().map(&cell).collect();
        if let Some(uri) = uri {
            let _ = write!(out, "{uri}  ");
        }
        let _ = writeln!(out, "{name:width$}  {}", cells.join(" "));
    }
    out
}
