//! The man page and shell completions (examples/assets.rs, packaged by
//! packaging/build-deb.sh) are generated from the clap definition. These
//! tests render them the same way and check that they cover every flag of
//! `Args::command()` and every default that `--help` shows. The flag list is
//! taken from clap itself, so a new flag or subcommand is covered at once.

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use wol_libvirt_gateway::cli::Args;

/// The command tree as examples/assets.rs renders it: built (so that
/// subcommands have their `wol-libvirt-gateway-SUB` display names and the
/// automatic --help/--version flags exist), without the `help` subcommand.
fn built_command() -> Command {
    let mut cmd = Args::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The command and its visible subcommands, recursively: one man page each.
fn pages(cmd: &Command) -> Vec<&Command> {
    let mut all = vec![cmd];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        all.extend(pages(sub));
    }
    all
}

/// A man page as roff, with the escapes that would hide a flag undone
/// (`\-` for a hyphen, `\*(Aq` for an apostrophe).
fn man_page(cmd: &Command) -> String {
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut roff)
        .expect("render the man page");
    String::from_utf8(roff)
        .expect("man page is UTF-8")
        .replace("\\-", "-")
        .replace("\\*(Aq", "'")
}

/// What the man page must show for each visible argument of `cmd`: `--long`,
/// `-s`, or a positional's value name.
fn expected_mentions(cmd: &Command) -> Vec<String> {
    let mut mentions = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long() {
            mentions.push(format!("--{long}"));
        }
        if let Some(short) = arg.get_short() {
            mentions.push(format!("-{short}"));
        }
        // Its environment variable (WOL_...), as --help names it.
        if let Some(env) = arg.get_env() {
            mentions.push(env.to_string_lossy().into_owned());
        }
        if arg.is_positional() {
            match arg.get_value_names() {
                Some(names) => mentions.extend(names.iter().map(|n| n.to_string())),
                None => mentions.push(arg.get_id().to_string()),
            }
        }
    }
    mentions
}

/// Every `[default: …]` that `--help` shows for `cmd`.
fn help_defaults(cmd: &Command) -> Vec<String> {
    let help = cmd.clone().render_long_help().to_string();
    help.match_indices("[default: ")
        .map(|(start, _)| {
            let end = start + help[start..].find(']').expect("closing bracket");
            help[start..=end].to_owned()
        })
        .collect()
}

#[test]
fn man_page_mentions_every_flag_and_default() {
    let root = built_command();
    let mut checked_flags = 0;
    for cmd in pages(&root) {
        let page = man_page(cmd);
        let name = cmd.get_display_name().unwrap_or(cmd.get_name());
        for mention in expected_mentions(cmd) {
            assert!(
                page.contains(&mention),
                "man page {name}.1 does not mention {mention}:\n{page}"
            );
            checked_flags += 1;
        }
        for default in help_defaults(cmd) {
            assert!(
                page.contains(&default),
                "man page {name}.1 does not show {default} (which --help shows):\n{page}"
            );
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                page.contains(sub.get_name()),
                "man page {name}.1 does not list subcommand {}",
                sub.get_name()
            );
        }
    }
    // Guards against the derivation above silently finding nothing.
    assert!(checked_flags >= 10, "only {checked_flags} flags found");
    // Defaults that --help states in a flag's text rather than as a clap
    // `[default: …]` (e.g. --listen-address's, which depends on
    // --raw-interface) reach the man page through that text.
    let help = root.clone().render_long_help().to_string();
    let page = man_page(&root);
    for known in ["qemu:///system", "127.0.0.1:9"] {
        assert!(help.contains(known), "--help no longer shows {known}");
        assert!(
            page.contains(known),
            "man page does not show {known}:\n{page}"
        );
    }
}

/// Every long flag of every (sub)command, as `--long`.
fn all_long_flags(cmd: &Command) -> Vec<String> {
    pages(cmd)
        .into_iter()
        .flat_map(|c| c.get_arguments())
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

fn completion(shell: Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "wol-libvirt-gateway", &mut out);
    String::from_utf8(out).expect("completion script is UTF-8")
}

#[test]
fn bash_and_zsh_completions_offer_every_long_flag() {
    let root = built_command();
    let flags = all_long_flags(&root);
    assert!(flags.iter().any(|f| f == "--libvirt-uri"), "{flags:?}");
    for shell in [Shell::Bash, Shell::Zsh] {
        let script = completion(shell);
        for flag in &flags {
            assert!(
                script.contains(flag.as_str()),
                "{shell} completion does not offer {flag}"
            );
        }
        for sub in pages(&root).into_iter().skip(1) {
            assert!(
                script.contains(sub.get_name()),
                "{shell} completion does not offer subcommand {}",
                sub.get_name()
            );
        }
    }
}

#[test]
fn fish_completion_offers_every_long_flag() {
    // fish names long options without the dashes: `complete ... -l NAME`.
    let script = completion(Shell::Fish);
    for flag in all_long_flags(&built_command()) {
        let long = flag.trim_start_matches("--");
        assert!(
            script.contains(&format!("-l {long}")),
            "fish completion does not offer {flag}"
        );
    }
}
