//! The MAC index: which domains own which MAC, as far as the gateway last
//! looked, and when to look again.
//!
//! The index is a hint, never the truth: a host confirms every owner it
//! names against the domain's current XML before acting (see
//! [`crate::libvirt::host`]). It lives independently of any libvirt connection: in
//! memory ([`MacIndex`]), in a file per URI that a freshly started process
//! reads ([`file`]), and is refreshed by the rules of [`refresh_for`]:
//!
//! - a **listing** (one call: every domain's UUID and name) finds domains
//!   defined or undefined since; only new domains' XML is read;
//! - a **full scan** re-reads every domain's XML, the only way to notice an
//!   interface added to a domain already known (libvirt's domain events
//!   would tell, but the `virt` bindings do not expose them).
//!
//! An unknown MAC costs at most one listing per rescan interval and a full
//! scan at most once per full-rescan interval, remembered in the file so a
//! fresh process knows when the last one ran.

pub(crate) mod cache;
pub mod file;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use crate::model::{Mac, Uuid};

/// MAC address to owning domains, and the set of domains whose XML was read.
///
/// The pairs are a sorted vector searched by binary search: at 10,000
/// domains with two NICs that is 640 KB, and it is rebuilt only when a
/// listing or scan changes something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MacIndex {
    /// Every domain read, with or without NICs (a listing must not read a
    /// NIC-less domain again and again).
    known: HashSet<Uuid>,
    /// (MAC, owner) pairs, sorted and without repeats.
    pairs: Vec<(Mac, Uuid)>,
}

impl MacIndex {
    /// An index of these domains and their MACs.
    pub(crate) fn from_domains(domains: impl IntoIterator<Item = (Uuid, Vec<Mac>)>) -> Self {
        let mut index = MacIndex::default();
        for (uuid, macs) in domains {
            index.known.insert(uuid);
            index.pairs.extend(macs.into_iter().map(|mac| (mac, uuid)));
        }
        index.pairs.sort_unstable();
        index.pairs.dedup();
        index
    }

    /// The domains that had `mac` when they were read.
    pub(crate) fn owners(&self, mac: Mac) -> Vec<Uuid> {
        let first = self.pairs.partition_point(|(m, _)| *m < mac);
        self.pairs[first..]
            .iter()
            .take_while(|(m, _)| *m == mac)
            .map(|(_, uuid)| *uuid)
            .collect()
    }

    /// True if this domain's XML has been read.
    pub(crate) fn knows(&self, uuid: Uuid) -> bool {
        self.known.contains(&uuid)
    }

    /// Every domain read.
    pub(crate) fn domains(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.known.iter().copied()
    }

    /// How many domains have been read (for the tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    /// Every (MAC, owner) pair, sorted by MAC.
    pub(crate) fn pairs(&self) -> &[(Mac, Uuid)] {
        &self.pairs
    }

    /// Records what one domain's current XML says; true if that changed
    /// the index.
    pub(crate) fn update(&mut self, uuid: Uuid, macs: &[Mac]) -> bool {
        let mut current: Vec<Mac> = self
            .pairs
            .iter()
            .filter(|(_, owner)| *owner == uuid)
            .map(|(mac, _)| *mac)
            .collect();
        let mut wanted = macs.to_vec();
        current.sort_unstable();
        wanted.sort_unstable();
        wanted.dedup();
        if self.known.contains(&uuid) && current == wanted {
            return false;
        }
        self.pairs.retain(|(_, owner)| *owner != uuid);
        self.pairs.extend(wanted.into_iter().map(|mac| (mac, uuid)));
        self.pairs.sort_unstable();
        self.known.insert(uuid);
        true
    }

    /// Forgets domains (undefined since they were read); true if any was known.
    pub(crate) fn forget(&mut self, gone: &HashSet<Uuid>) -> bool {
        let before = self.known.len();
        self.known.retain(|uuid| !gone.contains(uuid));
        if self.known.len() == before {
            return false;
        }
        self.pairs.retain(|(_, owner)| !gone.contains(owner));
        true
    }

    /// Adds domains read by a listing or scan (one sort for all of them);
    /// a domain already known has its MACs replaced.
    pub(crate) fn add(&mut self, domains: impl IntoIterator<Item = (Uuid, Vec<Mac>)>) {
        let mut replaced = HashSet::new();
        let mut added = Vec::new();
        for (uuid, macs) in domains {
            if !self.known.insert(uuid) {
                replaced.insert(uuid);
            }
            added.extend(macs.into_iter().map(|mac| (mac, uuid)));
        }
        if !replaced.is_empty() {
            self.pairs.retain(|(_, owner)| !replaced.contains(owner));
        }
        self.pairs.extend(added);
        self.pairs.sort_unstable();
        self.pairs.dedup();
    }
}

/// How often the index may be refreshed for an unknown MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescan {
    /// At most one listing (or scan) per this interval (`--rescan-interval`).
    pub interval: Duration,
    /// At most one full scan per this interval (`--full-rescan-interval`).
    pub full_interval: Duration,
}

/// When the index was last refreshed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// The last listing or full scan of this process (monotonic clock).
    pub(crate) listed_at: Option<Instant>,
    /// The last full scan of this process (monotonic clock).
    pub(crate) scanned_at: Option<Instant>,
    /// The last full scan of any process, from the index file (wall clock:
    /// a monotonic instant means nothing to another process).
    pub(crate) scanned_wall: Option<SystemTime>,
}

/// What to do before answering "no domain has this MAC".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// Nothing: the index was refreshed too recently to ask libvirt again.
    Nothing,
    /// List the domains; read the XML of the new ones.
    Listing,
    /// Read every domain's XML.
    Full,
}

/// Decides how to refresh the index for a MAC it does not know (or knew
/// wrongly: `stale`, an owner's current XML no longer has the MAC).
///
/// Nothing within the rescan interval of the last refresh; otherwise a full
/// scan when none ran within the full-rescan interval (in this process, and
/// according to the file for any process) or when the index was stale (a
/// domain was reconfigured: another may have gained the MAC; this happens
/// once per reconfiguration, not per packet, because the stale entry is
/// corrected on the spot); otherwise a listing.
pub(crate) fn refresh_for(
    fresh: &Freshness,
    stale: bool,
    rules: &Rescan,
    now: Instant,
    wall: SystemTime,
) -> Refresh {
    let within = |at: Option<Instant>, interval: Duration| {
        at.is_some_and(|at| now.saturating_duration_since(at) < interval)
    };
    if within(fresh.listed_at, rules.interval) {
        return Refresh::Nothing;
    }
    // A wall-clock scan time in the future (the clock was set back) counts
    // as old: the next full scan rewrites it.
    let file_says_recent = fresh
        .scanned_wall
        .and_then(|at| wall.duration_since(at).ok())
        .is_some_and(|age| age < rules.full_interval);
    let full_due = match fresh.scanned_at {
        Some(_) => !within(fresh.scanned_at, rules.full_interval),
        None => !file_says_recent,
    };
    if full_due || stale {
        Refresh::Full
    } else {
        Refresh::Listing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn uuid(n: u128) -> Uuid {
        Uuid(n)
    }

    #[test]
    fn owners_updates_and_forgetting() {
        let mut index = MacIndex::from_domains([
            (uuid(1), vec![mac(1), mac(2)]),
            (uuid(2), vec![mac(2)]),
            (uuid(3), vec![]),
        ]);
        assert_eq!(index.owners(mac(2)), [uuid(1), uuid(2)]);
        assert_eq!(index.owners(mac(9)), []);
        assert!(index.knows(uuid(3)), "a NIC-less domain is known");
        assert_eq!(index.len(), 3);

        assert!(!index.update(uuid(1), &[mac(2), mac(1)]), "same MACs");
        assert!(index.update(uuid(1), &[mac(7)]));
        assert_eq!(index.owners(mac(1)), []);
        assert_eq!(index.owners(mac(7)), [uuid(1)]);

        assert!(index.forget(&HashSet::from([uuid(2), uuid(9)])));
        assert_eq!(index.owners(mac(2)), []);
        assert!(!index.forget(&HashSet::from([uuid(9)])));

        index.add([(uuid(4), vec![mac(2), mac(2)])]);
        assert_eq!(index.owners(mac(2)), [uuid(4)]);
        assert_eq!(index.pairs().len(), 2);
    }

    const RULES: Rescan = Rescan {
        interval: Duration::from_secs(5),
        full_interval: Duration::from_secs(60),
    };

    #[test]
    fn a_fresh_process_scans_in_full_unless_the_file_says_a_scan_is_recent() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let nothing = Freshness::default();
        assert_eq!(
            refresh_for(&nothing, false, &RULES, now, wall),
            Refresh::Full
        );
        let file_recent = Freshness {
            scanned_wall: Some(wall - Duration::from_secs(59)),
            ..Freshness::default()
        };
        assert_eq!(
            refresh_for(&file_recent, false, &RULES, now, wall),
            Refresh::Listing
        );
        let file_old = Freshness {
            scanned_wall: Some(wall - Duration::from_secs(60)),
            ..Freshness::default()
        };
        assert_eq!(
            refresh_for(&file_old, false, &RULES, now, wall),
            Refresh::Full
        );
        let file_future = Freshness {
            scanned_wall: Some(wall + Duration::from_secs(3600)),
            ..Freshness::default()
        };
        assert_eq!(
            refresh_for(&file_future, false, &RULES, now, wall),
            Refresh::Full
        );
    }

    #[test]
    fn unknown_macs_cost_a_listing_per_interval_and_a_full_scan_per_full_interval() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut fresh = Freshness {
            listed_at: Some(t0),
            scanned_at: Some(t0),
            scanned_wall: Some(wall),
        };
        assert_eq!(
            refresh_for(&fresh, false, &RULES, at(4), wall),
            Refresh::Nothing
        );
        assert_eq!(
            refresh_for(&fresh, true, &RULES, at(4), wall),
            Refresh::Nothing,
            "stale, but too soon"
        );
        assert_eq!(
            refresh_for(&fresh, false, &RULES, at(5), wall),
            Refresh::Listing
        );
        assert_eq!(
            refresh_for(&fresh, true, &RULES, at(5), wall),
            Refresh::Full
        );
        fresh.listed_at = Some(at(55));
        assert_eq!(
            refresh_for(&fresh, false, &RULES, at(59), wall),
            Refresh::Nothing
        );
        assert_eq!(
            refresh_for(&fresh, false, &RULES, at(60), wall),
            Refresh::Full
        );
        // The process's own clock decides once it has scanned: a wall clock
        // jumping forward does not trigger scans early.
        let jumped = wall + Duration::from_secs(86_400);
        assert_eq!(
            refresh_for(&fresh, false, &RULES, at(30), jumped),
            Refresh::Nothing
        );
        fresh.listed_at = Some(at(20));
        assert_eq!(
            refresh_for(&fresh, false, &RULES, at(30), jumped),
            Refresh::Listing
        );
    }
}
