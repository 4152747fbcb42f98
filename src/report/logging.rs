//! Logging setup: native journald fields when stderr is the journal, a
//! readable line format on stderr otherwise. Never fatal.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// The `SYSLOG_IDENTIFIER` used in the journal.
pub(crate) const IDENTIFIER: &str = "wol-libvirt-gateway";

/// Installs the global subscriber. Verbosity comes from `RUST_LOG`
/// (default `info`); an invalid `RUST_LOG` is reported and replaced by `info`.
pub(crate) fn init() {
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{spec:?}: {e}"))),
        },
        _ => (EnvFilter::new("info"), None),
    };

    let journal = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(IDENTIFIER.to_owned())
                    // tracing-journald maps INFO to NOTICE (5) by default;
                    // syslog's levels map one to one: INFO is 6, DEBUG 7.
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    }),
            ),
            Err(e) => {
                eprintln!("{IDENTIFIER}: cannot reach journald ({e}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let stderr = journal.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            // Messages already say everything in words; the structured
            // fields (MAC, DOMAIN, ...) are for the journal.
            .fmt_fields(tracing_subscriber::fmt::format::debug_fn(
                |writer, field, value| {
                    if field.name() == "message" {
                        write!(writer, "{value:?}")
                    } else {
                        Ok(())
                    }
                },
            ))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(stderr)
        .try_init();
    if let Err(e) = installed {
        eprintln!("{IDENTIFIER}: cannot set up logging: {e}");
    }
    if let Some(problem) = bad_filter {
        tracing::warn!("ignoring invalid RUST_LOG {problem}; using 'info'");
    }
}

/// True when systemd connected stderr to the journal: `JOURNAL_STREAM` holds
/// `DEVICE:INODE` of stderr (see systemd.exec(5)). Checking the inode, not
/// just the variable, avoids writing to the journal when a child inherited
/// the variable but has stderr redirected.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}
