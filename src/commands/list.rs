//! `wol-libvirt-gateway list`: every domain, its state, its MACs, and what a
//! magic packet would do to it now, decided by the same [`plan`] and policy
//! as a real wake, in the same words as the log. It replaces "find your VM's
//! MAC with virsh domiflist".

use std::borrow::Borrow;
use std::fmt::Write as _;

use std::collections::HashMap;

use crate::decide::idle::{IdlePolicy, Signals};
use crate::decide::outcome::Verb;
use crate::decide::plan::{Candidate, Plan, plan};
use crate::decide::policy::Policy;
use crate::libvirt::host::{DomainInfo, Host};
use crate::model::Mac;
use crate::model::Uuid;
use crate::report::{self, Effect};

/// One domain as the listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Which host (position in the URI list).
    pub(crate) host: usize,
    /// What the host told about it.
    pub(crate) info: DomainInfo,
    /// The signals the last idle check judged it on (`None`: no check has
    /// looked at it, or `list` was not told where the checks keep them).
    pub(crate) signals: Option<Signals>,
}

/// What a magic packet for `mac` would do to `entry` now, among all
/// `entries` of all hosts.
pub(crate) fn on_wake(entry: &Entry, mac: Mac, entries: &[Entry], policy: &Policy) -> Effect {
    if let Err(reason) = policy.check(&entry.info.domain, &[mac]) {
        return Effect::Refused(reason);
    }
    let candidates: Vec<Candidate> = entries
        .iter()
        .filter(|e| e.info.macs.as_ref().is_ok_and(|m| m.contains(&mac)))
        .filter(|e| policy.check(&e.info.domain, &[mac]).is_ok())
        .filter_map(|e| {
            Some(Candidate {
                name: e.info.domain.name.clone(),
                uuid: e.info.domain.uuid,
                state: e.info.state?,
                managed_save: e.info.managed_save,
                host: e.host,
                epoch: 0,
            })
        })
        .collect();
    let is_this = |c: &Candidate| c.host == entry.host && entry.info.domain.uuid == c.uuid;
    match plan(&candidates) {
        Plan::Act { domain, action } if is_this(domain) => {
            Effect::Act(Verb::of(action, domain.managed_save))
        }
        Plan::AlreadyUp { domain } if is_this(domain) => Effect::AlreadyUp(domain.state),
        Plan::AlreadyUp { domain } => Effect::SharedWithUp(domain.name.clone()),
        Plan::Ambiguous => Effect::Ambiguous(
            candidates
                .iter()
                .filter(|c| !is_this(c))
                .map(|c| c.name.clone())
                .collect(),
        ),
        Plan::Act { .. } | Plan::NoMatch => Effect::Unknown,
    }
}

/// Tells `entries` of host `host` which signals the last idle check judged
/// each on.
pub(crate) fn add_signals(entries: &mut [Entry], host: usize, signals: &HashMap<Uuid, Signals>) {
    for entry in entries.iter_mut().filter(|e| e.host == host) {
        entry.signals = signals.get(&entry.info.domain.uuid).copied();
    }
}

/// Every host's domains, sorted by host and name, and one line per host
/// that could not be listed.
pub(crate) fn entries<H: Borrow<Host>>(hosts: &[H]) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let host = host.borrow();
        match host.inventory() {
            Ok(found) => entries.extend(found.into_iter().map(|info| Entry {
                host: i,
                info,
                signals: None,
            })),
            Err(e) => problems.push(report::cannot_list(host.uri(), &e)),
        }
    }
    entries.sort_by(|a, b| (a.host, &a.info.domain.name).cmp(&(b.host, &b.info.domain.name)));
    (entries, problems)
}

/// One domain in `list --json` (and the HTTP API's domain list).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DomainView {
    /// The domain's name.
    pub(crate) domain: String,
    /// Its UUID.
    pub(crate) uuid: String,
    /// The libvirt URI of its host.
    pub(crate) host: String,
    /// Its state in the log's words (`shut off`, `running`, ...), if known.
    pub(crate) state: Option<&'static str>,
    /// It has a managed-save image (a start restores it).
    pub(crate) managed_save: bool,
    /// Its `<metadata>` opts in to being woken (`--require-opt-in`).
    pub(crate) opt_in: bool,
    /// How many HTTP wake tokens it has.
    pub(crate) tokens: usize,
    /// Magic packets for it must carry its SecureOn password.
    pub(crate) secureon: bool,
    /// When it is put back to sleep (`idle set`); `null`: never.
    pub(crate) idle: Option<IdlePolicy>,
    /// What the last idle check judged it on (`cpu`, `net`, `disk`);
    /// absent before a check has looked at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idle_signals: Option<Vec<&'static str>>,
    /// Its MACs and what a wake for each would do now; empty when it has no
    /// NIC or they could not be read (then `unreadable` says why).
    pub(crate) macs: Vec<MacView>,
    /// Why its MACs are unknown.
    pub(crate) unreadable: Option<String>,
}

/// One MAC of a domain and what a wake for it would do now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct MacView {
    /// The MAC.
    pub(crate) mac: String,
    /// It is one of the domain's extra MACs (`mac add`), not an
    /// interface's.
    pub(crate) extra: bool,
    /// `start`, `restore`, `resume`, `pm-wakeup`, or `none`: the journal's
    /// `ACTION` words.
    pub(crate) action: &'static str,
    /// The whole answer in `list`'s words (why `none`).
    pub(crate) on_wake: String,
}

/// The view of one entry.
pub(crate) fn view<H: Borrow<Host>>(
    hosts: &[H],
    entry: &Entry,
    entries: &[Entry],
    policy: &Policy,
) -> DomainView {
    view_showing(hosts, entry, entries, policy, &|_| true)
}

/// The view of one entry, naming other domains only where `visible` says
/// so (the HTTP wake's caller may see only the domains its token opens):
/// others are "another domain".
pub(crate) fn view_showing<H: Borrow<Host>>(
    hosts: &[H],
    entry: &Entry,
    entries: &[Entry],
    policy: &Policy,
    visible: &dyn Fn(&str) -> bool,
) -> DomainView {
    let (macs, unreadable) = match &entry.info.macs {
        Ok(macs) => (
            macs.iter()
                .map(|mac| {
                    let hide = |name: String| {
                        if visible(&name) {
                            name
                        } else {
                            "another domain".to_owned()
                        }
                    };
                    let effect = match on_wake(entry, *mac, entries, policy) {
                        Effect::SharedWithUp(other) => Effect::SharedWithUp(hide(other)),
                        Effect::Ambiguous(others) => {
                            Effect::Ambiguous(others.into_iter().map(hide).collect())
                        }
                        effect => effect,
                    };
                    MacView {
                        mac: mac.to_string(),
                        extra: entry.info.extra.contains(mac),
                        action: report::action_words(effect.verb()),
                        on_wake: report::effect_words(&effect),
                    }
                })
                .collect(),
            None,
        ),
        Err(reason) => (Vec::new(), Some(reason.to_string())),
    };
    DomainView {
        domain: entry.info.domain.name.clone(),
        uuid: entry.info.domain.uuid.to_string(),
        host: hosts[entry.host].borrow().uri().to_string(),
        state: entry.info.state.map(|s| s.as_str()),
        managed_save: entry.info.managed_save,
        opt_in: entry.info.domain.wake_opt_in,
        tokens: entry.info.tokens.len(),
        secureon: entry.info.secureon,
        idle: entry.info.idle,
        idle_signals: (entry.signals)
            .filter(|_| entry.info.idle.is_some())
            .map(|signals| report::idle::signal_names(&signals)),
        macs,
        unreadable,
    }
}

/// `list --json`: an array of [`DomainView`]s, pretty-printed.
pub(crate) fn json<H: Borrow<Host>>(hosts: &[H], entries: &[Entry], policy: &Policy) -> String {
    let views: Vec<DomainView> = entries
        .iter()
        .map(|entry| view(hosts, entry, entries, policy))
        .collect();
    // Plain data of strings, numbers and booleans: serialising cannot fail.
    serde_json::to_string_pretty(&views).unwrap_or_else(|_| "[]".into())
}

/// The table's columns; the last is not padded.
const COLUMNS: usize = 6;

/// `list`'s table.
pub(crate) fn table<H: Borrow<Host>>(hosts: &[H], entries: &[Entry], policy: &Policy) -> String {
    let several = hosts.len() > 1;
    let mut rows = vec![[
        "URI".to_owned(),
        "DOMAIN".to_owned(),
        "STATE".to_owned(),
        "WHEN IDLE".to_owned(),
        "MAC".to_owned(),
        "ON A MAGIC PACKET".to_owned(),
    ]];
    for entry in entries {
        let uri = hosts[entry.host].borrow().uri().to_string();
        let state = entry.info.state.map_or("?", |s| s.as_str()).to_owned();
        let idle = match (&entry.info.idle, &entry.signals) {
            (None, _) => "-".to_owned(),
            (Some(policy), None) => report::idle::short_words(policy),
            (Some(policy), Some(signals)) => format!(
                "{} ({})",
                report::idle::short_words(policy),
                report::idle::signal_names(signals).join(", ")
            ),
        };
        let row = |mac: String, effect: String| {
            [
                uri.clone(),
                entry.info.domain.name.clone(),
                state.clone(),
                idle.clone(),
                mac,
                effect,
            ]
        };
        match &entry.info.macs {
            Err(reason) => rows.push(row("?".into(), report::skipped_words(reason))),
            Ok(macs) if macs.is_empty() => rows.push(row("-".into(), report::NO_NIC_WORDS.into())),
            Ok(macs) => {
                for mac in macs {
                    let effect = on_wake(entry, *mac, entries, policy);
                    let shown = if entry.info.extra.contains(mac) {
                        format!("{mac} {}", report::EXTRA_MAC_WORDS)
                    } else {
                        mac.to_string()
                    };
                    rows.push(row(shown, report::effect_words(&effect)));
                }
            }
        }
    }
    let skip = usize::from(!several);
    let widths: Vec<usize> = (0..COLUMNS)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut table = String::new();
    for row in &rows {
        let cells: Vec<String> = (skip..COLUMNS)
            .map(|c| {
                if c == COLUMNS - 1 {
                    row[c].clone()
                } else {
                    format!("{:width$}", row[c], width = widths[c])
                }
            })
            .collect();
        let _ = writeln!(table, "{}", cells.join("  ").trim_end());
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::policy::{AllowEntry, DomainRef, Refusal};
    use crate::model::{DomainState, Uuid};

    const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    fn entry(host: usize, name: &str, state: DomainState) -> Entry {
        let n = name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        Entry {
            host,
            info: DomainInfo {
                domain: DomainRef {
                    name: name.into(),
                    uuid: Uuid(u128::from(n)),
                    wake_opt_in: false,
                },
                macs: Ok(vec![MAC]),
                extra: Vec::new(),
                state: Some(state),
                managed_save: false,
                tokens: Vec::new(),
                secureon: false,
                idle: None,
            },
            signals: None,
        }
    }

    #[test]
    fn the_answer_follows_the_state_and_the_managed_save() {
        let open = Policy::default();
        let mut off = entry(0, "web01", DomainState::ShutOff);
        let alone = |e: &Entry| on_wake(e, MAC, std::slice::from_ref(e), &open);
        assert_eq!(alone(&off), Effect::Act(Verb::Start));
        off.info.managed_save = true;
        assert_eq!(alone(&off), Effect::Act(Verb::Restore));
        assert_eq!(
            alone(&entry(0, "db01", DomainState::Paused)),
            Effect::Act(Verb::Resume)
        );
        assert_eq!(
            alone(&entry(0, "ci", DomainState::Running)),
            Effect::AlreadyUp(DomainState::Running)
        );
    }

    #[test]
    fn a_shared_mac_is_judged_across_hosts() {
        let open = Policy::default();
        let a = entry(0, "twin", DomainState::ShutOff);
        let b = entry(1, "twin", DomainState::ShutOff);
        let all = [a.clone(), b.clone()];
        assert_eq!(
            on_wake(&a, MAC, &all, &open),
            Effect::Ambiguous(vec!["twin".into()])
        );
        let up = entry(1, "twin", DomainState::Running);
        let all = [a.clone(), up];
        assert_eq!(
            on_wake(&a, MAC, &all, &open),
            Effect::SharedWithUp("twin".into())
        );
    }

    #[test]
    fn the_policy_decides_first() {
        let only_db = Policy {
            allow: vec![AllowEntry::Name("db01".into())],
            require_opt_in: false,
        };
        let web = entry(0, "web01", DomainState::ShutOff);
        let db = entry(0, "db01", DomainState::ShutOff);
        let all = [web.clone(), db.clone()];
        assert_eq!(
            on_wake(&web, MAC, &all, &only_db),
            Effect::Refused(Refusal::NotAllowed)
        );
        // The refused twin does not make db01's MAC ambiguous.
        assert_eq!(on_wake(&db, MAC, &all, &only_db), Effect::Act(Verb::Start));
    }
}
