//! The idle check's words: one journal line per action, with the gateway's
//! fields (`DOMAIN`, `HOST`, `ACTION`, `RESULT`, `VIA=idle`) and what the
//! decision rested on (`IDLE_FOR_S`, `CPU_PERMILLE`, `NET_BPS`,
//! `DISK_BPS`). A check runs once a minute and says at most one line per
//! domain; what repeats (an ignored shutdown, a refusal) is said once.

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::decide::idle::{Rates, Sleep};
use crate::model::HvError;

/// How an action on an idle domain went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slept<'a> {
    /// Done (a shutdown: asked).
    Done,
    /// `--dry-run`: only said.
    DryRun,
    /// libvirt refused it, with its message; tried again after `retry`;
    /// `first`: not refused before (the retries' refusals are debug lines).
    Refused(&'a HvError, Duration, bool),
}

/// What an action's line is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle<'a> {
    /// The host's URI, as shown.
    pub(crate) host: &'a str,
    /// The domain.
    pub(crate) domain: &'a str,
    /// How long it was idle.
    pub(crate) idle_for: Duration,
    /// The last rates.
    pub(crate) rates: Rates,
}

/// A policy in words, e.g. for `idle set`'s answer and `list`.
pub(crate) fn policy_words(policy: &crate::decide::idle::IdlePolicy) -> String {
    format!(
        "{} after {} idle (CPU below {}.{} % of its vCPUs, network below {} B/s, disk below {} B/s)",
        policy.action,
        minutes(policy.after),
        policy.cpu_permille / 10,
        policy.cpu_permille % 10,
        policy.net_bps,
        policy.disk_bps
    )
}

/// A policy in `list`'s column: `managedsave 30 min`.
pub(crate) fn short_words(policy: &crate::decide::idle::IdlePolicy) -> String {
    format!("{} {}", policy.action, minutes(policy.after))
}

/// The signals a domain is judged on, for `list`: `cpu`, `net`, `disk`.
pub(crate) fn signal_names(signals: &crate::decide::idle::Signals) -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if signals.net {
        names.push("net");
    }
    if signals.disk {
        names.push("disk");
    }
    names
}

/// `0.4 %`, `120 B/s`, `no counters`.
fn rates_words(rates: &Rates) -> String {
    let bytes =
        |rate: Option<u64>| rate.map_or_else(|| "no counters".to_owned(), |r| format!("{r} B/s"));
    format!(
        "CPU {}.{} % of its vCPUs, network {}, disk {}",
        rates.cpu_permille / 10,
        rates.cpu_permille % 10,
        bytes(rates.net_bps),
        bytes(rates.disk_bps)
    )
}

fn minutes(d: Duration) -> String {
    let m = d.as_secs() / 60;
    if m > 0 {
        format!("{m} min")
    } else {
        format!("{} s", d.as_secs())
    }
}

macro_rules! idle_event {
    ($level:ident, $idle:expr, $action:expr, $result:expr, $($message:tt)+) => {
        $level!(
            domain = $idle.domain,
            host = $idle.host,
            action = $action.as_str(),
            result = $result,
            via = "idle",
            idle_for_s = $idle.idle_for.as_secs(),
            cpu_permille = $idle.rates.cpu_permille,
            net_bps = $idle.rates.net_bps,
            disk_bps = $idle.rates.disk_bps,
            $($message)+
        )
    };
}

/// The one line for an action on an idle domain.
pub(crate) fn slept(idle: &Idle<'_>, action: Sleep, how: Slept<'_>) {
    let (idle_for, rates) = (minutes(idle.idle_for), rates_words(&idle.rates));
    let domain = idle.domain;
    match (how, action) {
        (Slept::Done, Sleep::Shutdown) => idle_event!(
            info,
            idle,
            action,
            "ok",
            "asked {domain} to shut down after {idle_for} idle ({rates})"
        ),
        (Slept::Done, _) => idle_event!(
            info,
            idle,
            action,
            "ok",
            "put {domain} to sleep ({action}) after {idle_for} idle ({rates})"
        ),
        (Slept::DryRun, _) => idle_event!(
            info,
            idle,
            action,
            "dry-run",
            "dry run: would put {domain} to sleep ({action}) after {idle_for} idle ({rates})"
        ),
        (Slept::Refused(error, retry, true), _) => idle_event!(
            warn,
            idle,
            action,
            "failed",
            "cannot put {domain} to sleep ({action}) after {idle_for} idle: {error}; \
             tried again in {}, then less often",
            minutes(retry)
        ),
        (Slept::Refused(error, retry, false), _) => idle_event!(
            debug,
            idle,
            action,
            "failed",
            "still cannot put {domain} to sleep ({action}): {error}; tried again in {}",
            minutes(retry)
        ),
    }
}

/// A shutdown the guest ignores: said once, never forced.
pub(crate) fn ignored(idle: &Idle<'_>, asked_ago: Duration) {
    let domain = idle.domain;
    idle_event!(
        warn,
        idle,
        Sleep::Shutdown,
        "ignored",
        "{domain} was asked to shut down {} ago and still runs; not forced, and not asked \
         again until it has been busy (its guest OS may not handle ACPI power-button \
         events: see docs/idle.md)",
        minutes(asked_ago)
    );
}

/// A running domain with a policy that could not be looked at: never acted on.
pub(crate) fn cannot_look(host: &str, domain: &str, error: &HvError) {
    warn!(
        domain,
        host,
        via = "idle",
        "cannot look at {domain}'s use: {error}; left alone"
    );
}

/// The kept samples could not be used: every domain is at first sight.
pub(crate) fn samples_ignored(path: &std::path::Path, reason: &impl std::fmt::Display) {
    info!(
        "ignoring {} ({reason}): the idle windows start again",
        path.display()
    );
}

/// The samples could not be kept: the next check starts afresh.
pub(crate) fn samples_unwritable(path: &std::path::Path, error: &std::io::Error) {
    warn!(
        "cannot write {}: {error}; the next check starts every idle window again",
        path.display()
    );
}

/// The check's last line: counts, in the exit summary's form (`N what`
/// separated by `,` and `;`).
pub(crate) fn summary(host: &str, checked: &crate::decide::idle::Checked) -> String {
    format!(
        "idle check on {host}: {} running domain(s) with a policy; {} busy, {} idle, \
         {} put to sleep, {} refused, {} ignoring a shutdown; {} unreadable",
        checked.looked,
        checked.busy,
        checked.idle,
        checked.acted,
        checked.refused,
        checked.ignoring,
        checked.unreadable
    )
}

/// What a check saw of a domain, for `RUST_LOG=debug`.
pub(crate) fn seen(host: &str, domain: &str, verdict: &impl std::fmt::Debug) {
    debug!(domain, host, via = "idle", "{domain}: {verdict:?}");
}
