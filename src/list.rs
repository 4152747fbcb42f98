//! `wol-libvirt-gateway list`: every domain, its state, its MACs, and what a
//! magic packet would do to it now, decided by the same [`plan`] and policy
//! as a real wake. It replaces "find your VM's MAC with virsh domiflist".

use std::fmt::Write as _;

use crate::hypervisor::{Action, Connector, DomainState};
use crate::index::DomainRef;
use crate::packet::Mac;
use crate::policy::Policy;
use crate::wake::{Candidate, HostError, Plan, Waker, plan};

/// One domain as the listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Which host (position in the URI list).
    pub host: usize,
    /// Name, UUID and opt-in.
    pub domain: DomainRef,
    /// Its MACs, or why they are unknown.
    pub macs: Result<Vec<Mac>, String>,
    /// Its state, if libvirt told.
    pub state: Option<DomainState>,
    /// It has a managed-save image (a start restores it).
    pub managed_save: bool,
}

/// What a magic packet for `mac` would do to `entry` now, among all
/// `entries` of all hosts.
pub fn on_wake(entry: &Entry, mac: Mac, entries: &[Entry], policy: &Policy) -> String {
    if let Err(reason) = policy.check(&entry.domain, mac) {
        return format!("nothing: refused ({reason})");
    }
    let others: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.macs.as_ref().is_ok_and(|m| m.contains(&mac)))
        .filter(|e| policy.check(&e.domain, mac).is_ok())
        .collect();
    let candidates: Vec<Candidate> = others
        .iter()
        .filter_map(|e| {
            Some(Candidate {
                name: e.domain.name.clone(),
                uuid: e.domain.uuid.clone(),
                state: e.state?,
                host: e.host,
            })
        })
        .collect();
    let is_this = |c: &Candidate| c.host == entry.host && c.uuid == entry.domain.uuid;
    match plan(&candidates) {
        Plan::Act { domain, action } if is_this(domain) => match action {
            Action::Start if entry.managed_save => "start (restores its managed save)".into(),
            Action::Start => "start".into(),
            Action::Resume => "resume".into(),
            Action::PmWakeup => "PM wake-up".into(),
        },
        Plan::AlreadyUp { domain } if is_this(domain) => {
            format!("nothing: already up ({})", domain.state)
        }
        Plan::AlreadyUp { domain } => {
            format!("nothing: {} has the same MAC and is up", domain.name)
        }
        Plan::Ambiguous => {
            let names: Vec<&str> = candidates
                .iter()
                .filter(|c| !is_this(c))
                .map(|c| c.name.as_str())
                .collect();
            format!("nothing: ambiguous MAC (also on {})", names.join(", "))
        }
        Plan::Act { .. } | Plan::NoMatch => "nothing: state unknown".into(),
    }
}

/// Lists every host's domains. Returns the table, and one line per host
/// that could not be listed.
pub fn list<C: Connector>(hosts: &mut [Waker<C>], policy: &Policy) -> (String, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (i, host) in hosts.iter_mut().enumerate() {
        match host.inventory() {
            Ok(found) => entries.extend(found.into_iter().map(|e| Entry { host: i, ..e })),
            Err(HostError::Unreachable(e) | HostError::Failed(e)) => {
                problems.push(format!("cannot list {}: {e}", host.uri()));
            }
        }
    }
    entries.sort_by(|a, b| (a.host, &a.domain.name).cmp(&(b.host, &b.domain.name)));
    let several = hosts.len() > 1;
    let mut rows = vec![[
        "URI".to_owned(),
        "DOMAIN".to_owned(),
        "STATE".to_owned(),
        "MAC".to_owned(),
        "ON A MAGIC PACKET".to_owned(),
    ]];
    for entry in &entries {
        let uri = hosts[entry.host].uri().to_owned();
        let state = entry.state.map_or("?", DomainState::as_str).to_owned();
        let row = |mac: String, effect: String| {
            [
                uri.clone(),
                entry.domain.name.clone(),
                state.clone(),
                mac,
                effect,
            ]
        };
        match &entry.macs {
            Err(reason) => rows.push(row("?".into(), format!("skipped: {reason}"))),
            Ok(macs) if macs.is_empty() => {
                rows.push(row("-".into(), "nothing: no network interface".into()))
            }
            Ok(macs) => {
                for mac in macs {
                    rows.push(row(mac.to_string(), on_wake(entry, *mac, &entries, policy)));
                }
            }
        }
    }
    let skip = usize::from(!several);
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut table = String::new();
    for row in &rows {
        let cells: Vec<String> = (skip..5)
            .map(|c| {
                if c == 4 {
                    row[c].clone()
                } else {
                    format!("{:width$}", row[c], width = widths[c])
                }
            })
            .collect();
        let _ = writeln!(table, "{}", cells.join("  ").trim_end());
    }
    (table, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AllowEntry;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    fn entry(host: usize, name: &str, state: DomainState) -> Entry {
        Entry {
            host,
            domain: DomainRef {
                name: name.into(),
                uuid: format!("uuid-{name}"),
                wake_opt_in: false,
            },
            macs: Ok(vec![MAC]),
            state: Some(state),
            managed_save: false,
        }
    }

    #[test]
    fn the_answer_follows_the_state_and_the_managed_save() {
        let open = Policy::default();
        let mut off = entry(0, "web01", DomainState::ShutOff);
        assert_eq!(
            on_wake(&off, MAC, std::slice::from_ref(&off), &open),
            "start"
        );
        off.managed_save = true;
        assert_eq!(
            on_wake(&off, MAC, std::slice::from_ref(&off), &open),
            "start (restores its managed save)"
        );
        let paused = entry(0, "db01", DomainState::Paused);
        assert_eq!(
            on_wake(&paused, MAC, std::slice::from_ref(&paused), &open),
            "resume"
        );
        let running = entry(0, "ci", DomainState::Running);
        assert_eq!(
            on_wake(&running, MAC, std::slice::from_ref(&running), &open),
            "nothing: already up (running)"
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
            "nothing: ambiguous MAC (also on twin)"
        );
        let up = entry(1, "twin", DomainState::Running);
        let all = [a.clone(), up];
        assert_eq!(
            on_wake(&a, MAC, &all, &open),
            "nothing: twin has the same MAC and is up"
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
            "nothing: refused (not named by any --allow)"
        );
        // The refused twin does not make db01's MAC ambiguous.
        assert_eq!(on_wake(&db, MAC, &all, &only_db), "start");
    }
}
