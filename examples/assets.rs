//! Generates the man page(s) and shell completions from the clap definition
//! (`wol_libvirt_gateway::cli::Args`), so they cannot drift from `--help`.
//!
//! ```sh
//! cargo run --example assets -- OUT_DIR
//! ```
//!
//! writes
//!
//! - `OUT_DIR/wol-libvirt-gateway.1`, plus `wol-libvirt-gateway-SUB.1` for
//!   each (visible) subcommand (roff, uncompressed);
//! - `OUT_DIR/completions/wol-libvirt-gateway` (bash-completion),
//!   `OUT_DIR/completions/_wol-libvirt-gateway` (zsh) and
//!   `OUT_DIR/completions/wol-libvirt-gateway.fish` (fish).
//!
//! `packaging/stage-assets.sh` runs it into `target/assets` for the Debian
//! and RPM packages; `tests/assets.rs` checks the output mentions every flag.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use wol_libvirt_gateway::cli::Args;

const BIN: &str = "wol-libvirt-gateway";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example assets -- OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out_dir)) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every asset below `out_dir` and returns the paths written.
fn generate(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let completions = out_dir.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;

    let mut written = man_pages(out_dir)?;
    // File names as bash-completion, zsh's vendor-completions and fish's
    // vendor_completions.d look them up (clap_complete's own names would be
    // `wol-libvirt-gateway.bash` etc.).
    for (shell, name) in [
        (Shell::Bash, BIN.to_owned()),
        (Shell::Zsh, format!("_{BIN}")),
        (Shell::Fish, format!("{BIN}.fish")),
    ] {
        let path = completions.join(name);
        write_file(&path, |w| {
            clap_complete::generate(shell, &mut Args::command(), BIN, w);
            Ok(())
        })?;
        written.push(path);
    }
    Ok(written)
}

/// One page for the command and one per visible subcommand, named like
/// `clap_mangen::generate_to` names them (`wol-libvirt-gateway-list.1`).
fn man_pages(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Args::command().disable_help_subcommand(true);
    // Building fills in the subcommands' display names (`BIN-SUB`).
    cmd.build();
    // The footer names the program and version on every page (subcommands
    // have no version of their own).
    let source = format!("{BIN} {}", cmd.get_version().unwrap_or_default());
    let mut pages = Vec::new();
    collect(&cmd, &mut pages);
    let mut written = Vec::new();
    for page in pages {
        let man = clap_mangen::Man::new(page).source(&source);
        let path = out_dir.join(man.get_filename());
        write_file(&path, |w| Ok(man.render(w)?))?;
        written.push(path);
    }
    Ok(written)
}

fn collect(cmd: &clap::Command, pages: &mut Vec<clap::Command>) {
    pages.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages);
    }
}

fn write_file(path: &Path, body: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let context = || format!("cannot write {}", path.display());
    let mut w = BufWriter::new(File::create(path).with_context(context)?);
    body(&mut w).with_context(context)?;
    w.flush().with_context(context)
}
