//! Wake policy: which domain a MAC chooses, and what to do to it.
//!
//! [`plan`] is the pure decision (state table and ambiguity rule); [`Waker`]
//! runs it against a live hypervisor: it owns the connection and the MAC index,
//! rescans when a MAC is unknown (at most once per rescan interval) and tells a
//! failing call apart from a lost connection, so the caller can keep a request
//! pending while libvirt is away.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::cache::IndexFile;
use crate::hypervisor::{Action, Connector, DomainState, HvError, Hypervisor};
use crate::index::{DomainRef, MacIndex};
use crate::packet::Mac;
use crate::policy::{Policy, Refusal};

/// A domain that owns the requested MAC, with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
    /// Its state right now.
    pub state: DomainState,
    /// Which host (position in the list of URIs) it is on.
    pub host: usize,
}

/// The decision for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan<'a> {
    /// Bring `domain` up with `action`.
    Act {
        /// The one domain with the MAC.
        domain: &'a Candidate,
        /// What to do to it.
        action: Action,
    },
    /// A domain with the MAC is already up: nothing to do.
    AlreadyUp {
        /// The (first) active domain with the MAC.
        domain: &'a Candidate,
    },
    /// Several inactive domains share the MAC: starting any would be a guess.
    Ambiguous,
    /// No domain has the MAC.
    NoMatch,
}

/// Decides what a magic packet for a MAC does, given every domain with it.
///
/// One domain: shut off or crashed is started (restoring a managed-save
/// image if there is one), paused is resumed, PM-suspended is woken, anything
/// else is already up. Several domains: if any is active the MAC's machine is
/// up and nothing happens; if none is, starting one would be a guess, so none
/// is started.
pub fn plan(candidates: &[Candidate]) -> Plan<'_> {
    match candidates {
        [] => Plan::NoMatch,
        [domain] => match domain.state {
            DomainState::ShutOff | DomainState::Crashed => Plan::Act {
                domain,
                action: Action::Start,
            },
            DomainState::Paused => Plan::Act {
                domain,
                action: Action::Resume,
            },
            DomainState::PmSuspended => Plan::Act {
                domain,
                action: Action::PmWakeup,
            },
            DomainState::Running
            | DomainState::Blocked
            | DomainState::InShutdown
            | DomainState::Other => Plan::AlreadyUp { domain },
        },
        many => match many.iter().find(|c| c.state.is_active()) {
            Some(domain) => Plan::AlreadyUp { domain },
            None => Plan::Ambiguous,
        },
    }
}

/// What happened to one wake request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `action` succeeded on `domain`.
    Done {
        /// The domain acted on.
        domain: String,
        /// Its state before.
        state: DomainState,
        /// What was done.
        action: Action,
        /// A start that restored a managed-save image.
        restored: bool,
    },
    /// `action` on `domain` failed with libvirt's message.
    Failed {
        /// The domain acted on.
        domain: String,
        /// Its state before.
        state: DomainState,
        /// What was tried.
        action: Action,
        /// libvirt's error.
        error: HvError,
    },
    /// The MAC's domain is already up; nothing was done.
    AlreadyUp {
        /// The active domain.
        domain: String,
        /// Its state.
        state: DomainState,
        /// Other (inactive) domains that share the MAC.
        others: Vec<String>,
    },
    /// The operator's policy refuses every domain with the MAC.
    Refused {
        /// The refused domains.
        domains: Vec<String>,
        /// Why (for the first of them).
        reason: Refusal,
    },
    /// Several shut-off domains share the MAC; none was started.
    Ambiguous {
        /// All of them.
        domains: Vec<String>,
    },
    /// No domain on the hypervisor has the MAC.
    NoMatch,
    /// A dry run: `action` would have been done to `domain`.
    DryRun {
        /// The domain that would be acted on.
        domain: String,
        /// Its state.
        state: DomainState,
        /// What would be done.
        action: Action,
        /// The start would restore a managed-save image.
        restored: bool,
    },
    /// Listing domains failed although the connection is alive.
    LookupFailed {
        /// libvirt's error.
        error: HvError,
    },
}

impl Outcome {
    /// A short phrase for `systemctl status`.
    pub fn summary(&self, mac: Mac) -> String {
        match self {
            Outcome::Done {
                domain,
                action: Action::Start,
                restored: true,
                ..
            } => format!("restored {domain} ({mac})"),
            Outcome::Done { domain, .. } => format!("woke {domain} ({mac})"),
            Outcome::Failed { domain, action, .. } => {
                format!("failed to {} {domain} ({mac})", action.as_str())
            }
            Outcome::AlreadyUp { domain, .. } => format!("{domain} ({mac}) already up"),
            Outcome::Ambiguous { .. } => format!("{mac} is ambiguous, nothing started"),
            Outcome::Refused { domains, .. } => {
                format!("refused to wake {} ({mac})", domains.join(", "))
            }
            Outcome::NoMatch => format!("no domain has {mac}"),
            Outcome::DryRun { domain, action, .. } => {
                format!("dry run: would {} {domain} ({mac})", action.as_str())
            }
            Outcome::LookupFailed { .. } => format!("lookup of {mac} failed"),
        }
    }
}

/// libvirt cannot be reached (connection refused, permission denied, daemon
/// restarted); the request should be kept and retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub HvError);

/// Every configured libvirt URI, searched together for each MAC.
pub struct Fleet<C: Connector> {
    hosts: Vec<Waker<C>>,
    dry_run: bool,
    uris: String,
}

impl<C: Connector> Fleet<C> {
    /// The hosts, in `--libvirt-uri` order; with `dry_run` nothing is changed.
    pub fn new(hosts: Vec<Waker<C>>, dry_run: bool) -> Self {
        let uris = hosts.iter().map(Waker::uri).collect::<Vec<_>>().join(", ");
        Fleet {
            hosts,
            dry_run,
            uris,
        }
    }

    /// Finds the domain owning `mac` on any host and brings it up.
    pub fn wake(&mut self, mac: Mac) -> Result<Outcome, Unreachable> {
        wake_across(&mut self.hosts, mac, self.dry_run)
    }

    /// The URIs, for messages.
    pub fn uris(&self) -> &str {
        &self.uris
    }

    /// Full domain scans made so far, on all hosts.
    pub fn scans(&self) -> u64 {
        self.hosts.iter().map(Waker::scans).sum()
    }
}

/// What one host knows about a MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Domains with the MAC that the policy permits, with their state.
    pub candidates: Vec<Candidate>,
    /// Domains with the MAC that the policy refuses, and why.
    pub refused: Vec<(String, Refusal)>,
}

/// Why a host could not answer a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// Not reachable (or the connection died): retry later.
    Unreachable(HvError),
    /// Reachable, but listing its domains failed.
    Failed(HvError),
}

/// A successful (or, in a dry run, planned) action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// A start that restores (or would restore) a managed-save image.
    pub restored: bool,
}

/// Decides and acts for `mac` across every host: the candidates of all
/// reachable hosts go through one [`plan`], so the ambiguity rule spans
/// hosts. A host that cannot be reached does not block the others; only
/// when no host answered is the request `Unreachable` (to be retried). With
/// `dry_run` nothing is changed and the outcome says what would have been.
pub fn wake_across<C: Connector>(
    hosts: &mut [Waker<C>],
    mac: Mac,
    dry_run: bool,
) -> Result<Outcome, Unreachable> {
    let several = hosts.len() > 1;
    let label = |host: &Waker<C>, name: &str| {
        if several {
            format!("{name} on {}", host.uri())
        } else {
            name.to_owned()
        }
    };
    let mut candidates = Vec::new();
    let mut refused = Vec::new();
    let mut unreachable = Vec::new();
    let mut failed = None;
    for (i, host) in hosts.iter_mut().enumerate() {
        let result = host.lookup(mac);
        if several {
            // With one host the gateway reports the outage itself; with
            // several, each host's outage is reported once here, since the
            // others carry on.
            match &result {
                Err(HostError::Unreachable(e)) if !host.reported_down => {
                    warn!(
                        "cannot reach libvirt at {}: {e}; searching the other hosts until it answers",
                        host.uri()
                    );
                    host.reported_down = true;
                }
                Ok(_) if host.reported_down => {
                    info!("libvirt at {} is reachable again", host.uri());
                    host.reported_down = false;
                }
                _ => {}
            }
        }
        match result {
            Ok(lookup) => {
                candidates.extend(lookup.candidates.into_iter().map(|c| Candidate {
                    name: label(host, &c.name),
                    host: i,
                    ..c
                }));
                refused.extend(
                    lookup
                        .refused
                        .into_iter()
                        .map(|(n, r)| (label(host, &n), r)),
                );
            }
            Err(HostError::Unreachable(e)) => {
                let error = if several {
                    HvError(format!("{}: {e}", host.uri()))
                } else {
                    e
                };
                unreachable.push(error);
            }
            Err(HostError::Failed(e)) => failed = Some(e),
        }
    }
    if !unreachable.is_empty() && unreachable.len() == hosts.len() {
        let messages: Vec<String> = unreachable.iter().map(|e| e.0.clone()).collect();
        return Err(Unreachable(HvError(messages.join("; "))));
    }
    for error in &unreachable {
        debug!("not searched for {mac}: {error}");
    }
    let outcome = match plan(&candidates) {
        Plan::NoMatch => match (failed, refused.first()) {
            (Some(error), _) => Outcome::LookupFailed { error },
            (None, Some((_, reason))) => Outcome::Refused {
                reason: *reason,
                domains: refused.into_iter().map(|(name, _)| name).collect(),
            },
            (None, None) => Outcome::NoMatch,
        },
        Plan::Ambiguous => Outcome::Ambiguous {
            domains: candidates.iter().map(|c| c.name.clone()).collect(),
        },
        Plan::AlreadyUp { domain } => Outcome::AlreadyUp {
            domain: domain.name.clone(),
            state: domain.state,
            others: candidates
                .iter()
                .filter(|c| (c.host, &c.uuid) != (domain.host, &domain.uuid))
                .map(|c| c.name.clone())
                .collect(),
        },
        Plan::Act { domain, action } => match hosts[domain.host].act(domain, action, dry_run)? {
            Ok(Started { restored }) if dry_run => Outcome::DryRun {
                domain: domain.name.clone(),
                state: domain.state,
                action,
                restored,
            },
            Ok(Started { restored }) => Outcome::Done {
                domain: domain.name.clone(),
                state: domain.state,
                action,
                restored,
            },
            Err(error) => Outcome::Failed {
                domain: domain.name.clone(),
                state: domain.state,
                action,
                error,
            },
        },
    };
    Ok(outcome)
}

/// Runs wake requests against one libvirt URI.
pub struct Waker<C: Connector> {
    connector: C,
    connection: Option<Box<dyn Hypervisor>>,
    /// The in-memory index from this process's last scan.
    index: Option<MacIndex>,
    /// The persistent index (see [`crate::cache`]), if enabled.
    cache: Option<IndexFile>,
    /// Until this process has scanned, the index file is worth asking.
    consult_file: bool,
    policy: Policy,
    /// Reported as unreachable (with several hosts), until it answers again.
    reported_down: bool,
    rescan_interval: Duration,
    scans: u64,
}

impl<C: Connector> Waker<C> {
    /// A waker that connects through `connector` on first use and rescans
    /// for an unknown MAC at most once per `rescan_interval`.
    pub fn new(connector: C, rescan_interval: Duration) -> Self {
        Waker {
            connector,
            connection: None,
            index: None,
            cache: None,
            consult_file: true,
            policy: Policy::default(),
            reported_down: false,
            rescan_interval,
            scans: 0,
        }
    }

    /// Restricts which domains may be woken.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps the MAC index in `file` across processes.
    pub fn with_cache(mut self, file: IndexFile) -> Self {
        self.cache = Some(file);
        self
    }

    /// The libvirt URI.
    pub fn uri(&self) -> &str {
        self.connector.uri()
    }

    /// How many full domain scans this waker has made.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// Connects now if not connected.
    pub fn connect(&mut self) -> Result<&dyn Hypervisor, Unreachable> {
        if self.connection.is_none() {
            let connection = self.connector.connect().map_err(Unreachable)?;
            self.connection = Some(connection);
        }
        match self.connection.as_deref() {
            Some(connection) => Ok(connection),
            None => Err(Unreachable(HvError("not connected".into()))),
        }
    }

    /// Finds the domain owning `mac` on this host and brings it up (see
    /// [`wake_across`], of which this is the one-host case).
    pub fn wake(&mut self, mac: Mac) -> Result<Outcome, Unreachable> {
        wake_across(std::slice::from_mut(self), mac, false)
    }

    /// The domains on this host that own `mac`, with their current state,
    /// and those the policy refuses.
    ///
    /// A connection that died since the last request (libvirtd restarted)
    /// gets one immediate reconnect before the host counts as unreachable.
    pub fn lookup(&mut self, mac: Mac) -> Result<Lookup, HostError> {
        let mut reconnected = false;
        loop {
            self.connect()
                .map_err(|Unreachable(e)| HostError::Unreachable(e))?;
            match self.try_lookup(mac) {
                Ok(lookup) => return Ok(lookup),
                Err(error) if self.connection.as_ref().is_some_and(|c| c.is_alive()) => {
                    return Err(HostError::Failed(error));
                }
                Err(error) => {
                    // Dead connection: drop it (and the index, which may be
                    // stale after a daemon restart).
                    self.drop_connection();
                    if reconnected {
                        return Err(HostError::Unreachable(error));
                    }
                    debug!("connection to {} lost ({error}); reconnecting", self.uri());
                    reconnected = true;
                }
            }
        }
    }

    fn drop_connection(&mut self) {
        self.connection = None;
        self.index = None;
    }

    fn try_lookup(&mut self, mac: Mac) -> Result<Lookup, HvError> {
        let mut owners = self.owners(mac)?;
        let mut refused = Vec::new();
        owners.retain(|owner| match self.policy.check(owner, mac) {
            Ok(()) => true,
            Err(reason) => {
                refused.push((owner.name.clone(), reason));
                false
            }
        });
        let Some(hv) = self.connection.as_deref() else {
            return Err(HvError("not connected".into()));
        };
        let mut candidates = Vec::with_capacity(owners.len());
        for owner in owners {
            match hv.state(&owner.uuid) {
                Ok(state) => candidates.push(Candidate {
                    name: owner.name,
                    uuid: owner.uuid,
                    state,
                    host: 0,
                }),
                Err(e) if hv.is_alive() => {
                    // Undefined since the scan: forget the index so the next
                    // request sees the current set of domains.
                    debug!(domain = %owner.name, "domain vanished since the last scan: {e}");
                    self.index = None;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Lookup {
            candidates,
            refused,
        })
    }

    /// Performs `action` on `domain` (or only says what it would do, with
    /// `dry_run`). The outer `Err` means the connection died.
    pub fn act(
        &mut self,
        domain: &Candidate,
        action: Action,
        dry_run: bool,
    ) -> Result<Result<Started, HvError>, Unreachable> {
        let Some(hv) = self.connection.as_deref() else {
            return Err(Unreachable(HvError("not connected".into())));
        };
        // Only a start can restore an image; a failing query just means the
        // log will not mention it.
        let restored =
            action == Action::Start && hv.has_managed_save(&domain.uuid).unwrap_or(false);
        if dry_run {
            return Ok(Ok(Started { restored }));
        }
        match hv.perform(&domain.uuid, action) {
            Ok(()) => Ok(Ok(Started { restored })),
            Err(e) if !hv.is_alive() => {
                self.drop_connection();
                Err(Unreachable(e))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Every domain of this host with its MACs, state and managed-save image,
    /// for `list`.
    pub fn inventory(&mut self) -> Result<Vec<crate::list::Entry>, HostError> {
        let hv = self
            .connect()
            .map_err(|Unreachable(e)| HostError::Unreachable(e))?;
        let records = hv.domains().map_err(HostError::Failed)?;
        Ok(records
            .into_iter()
            .map(|record| {
                let state = hv.state(&record.uuid).ok();
                let managed_save = state == Some(DomainState::ShutOff)
                    && hv.has_managed_save(&record.uuid).unwrap_or(false);
                crate::list::Entry {
                    host: 0,
                    domain: DomainRef {
                        name: record.name,
                        uuid: record.uuid,
                        wake_opt_in: record.wake_opt_in,
                    },
                    macs: record.macs,
                    state,
                    managed_save,
                }
            })
            .collect())
    }

    /// The domains the index says own `mac`. Until this process has scanned,
    /// a confirmed entry of the index file answers without a scan. Otherwise
    /// it scans if there is no index, or if the MAC is unknown and the index
    /// is older than the rescan interval (so a stream of unknown MACs cannot
    /// hammer libvirtd).
    fn owners(&mut self, mac: Mac) -> Result<Vec<DomainRef>, HvError> {
        if self.index.is_none() {
            if let Some(owners) = self.confirmed_hint(mac)? {
                return Ok(owners);
            }
        }
        let stale = match &self.index {
            None => true,
            Some(index) => {
                index.owners(mac).next().is_none()
                    && index.built_at().elapsed() >= self.rescan_interval
            }
        };
        if stale {
            self.scan()?;
        }
        Ok(self
            .index
            .as_ref()
            .map(|index| index.owners(mac).cloned().collect())
            .unwrap_or_default())
    }

    /// The index file's owners of `mac`, if every one of them still has the
    /// MAC in its current XML; `None` (so: scan) on a miss or a stale entry.
    fn confirmed_hint(&mut self, mac: Mac) -> Result<Option<Vec<DomainRef>>, HvError> {
        let (true, Some(file), Some(hv)) =
            (self.consult_file, &self.cache, self.connection.as_deref())
        else {
            return Ok(None);
        };
        let uuids = match file.lookup(mac) {
            Ok(Some(uuids)) if !uuids.is_empty() => uuids,
            Ok(_) => return Ok(None),
            Err(reason) => {
                info!(
                    "ignoring index file {} ({reason}); it will be rebuilt",
                    file.path().display()
                );
                return Ok(None);
            }
        };
        let mut confirmed = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            let still_there = match hv.domain(&uuid) {
                Ok(record) => record
                    .macs
                    .ok()
                    .filter(|macs| macs.contains(&mac))
                    .map(|_| DomainRef {
                        name: record.name,
                        uuid: record.uuid,
                        wake_opt_in: record.wake_opt_in,
                    }),
                Err(_) if hv.is_alive() => None,
                Err(e) => return Err(e),
            };
            match still_there {
                Some(domain) => confirmed.push(domain),
                None => {
                    debug!(mac = %mac, "index file is stale for {mac} (domain {uuid} changed); rescanning");
                    return Ok(None);
                }
            }
        }
        Ok(Some(confirmed))
    }

    fn scan(&mut self) -> Result<(), HvError> {
        let Some(hv) = self.connection.as_deref() else {
            return Err(HvError("not connected".into()));
        };
        let started = Instant::now();
        let records = hv.domains()?;
        let count = records.len();
        let (index, skipped) = MacIndex::build(records);
        for skip in &skipped {
            warn!(domain = %skip.name, "skipping domain {}: {}", skip.name, skip.reason);
        }
        self.scans += 1;
        debug!(
            scans = self.scans,
            "scanned {count} domains on {} in {:.1} ms ({} skipped)",
            self.connector.uri(),
            started.elapsed().as_secs_f64() * 1e3,
            skipped.len()
        );
        if let Some(file) = &self.cache {
            let entries = index.entries().map(|(mac, d)| (mac, d.uuid.as_str()));
            if let Err(e) = file.store(entries) {
                warn!(
                    "cannot write the MAC index {}: {e}; continuing without it \
                     (every activation will read all domains)",
                    file.path().display()
                );
                self.cache = None;
            }
        }
        // From now on this process's own index answers; the file was a hint.
        self.consult_file = false;
        self.index = Some(index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, state: DomainState) -> Candidate {
        Candidate {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            state,
            host: 0,
        }
    }

    #[test]
    fn state_table_for_one_domain() {
        let table = [
            (DomainState::ShutOff, Some(Action::Start)),
            (DomainState::Crashed, Some(Action::Start)),
            (DomainState::Paused, Some(Action::Resume)),
            (DomainState::PmSuspended, Some(Action::PmWakeup)),
            (DomainState::Running, None),
            (DomainState::Blocked, None),
            (DomainState::InShutdown, None),
            (DomainState::Other, None),
        ];
        for (state, expected) in table {
            let domains = [candidate("vm", state)];
            let got = match plan(&domains) {
                Plan::Act { action, .. } => Some(action),
                Plan::AlreadyUp { .. } => None,
                other => panic!("{state}: unexpected {other:?}"),
            };
            assert_eq!(got, expected, "state {state}");
        }
    }

    #[test]
    fn several_domains_with_one_active_means_nothing_to_do() {
        let domains = [
            candidate("a", DomainState::ShutOff),
            candidate("b", DomainState::Paused),
        ];
        assert_eq!(
            plan(&domains),
            Plan::AlreadyUp {
                domain: &domains[1]
            }
        );
    }

    #[test]
    fn several_inactive_domains_are_ambiguous() {
        let domains = [
            candidate("a", DomainState::ShutOff),
            candidate("b", DomainState::Crashed),
        ];
        assert_eq!(plan(&domains), Plan::Ambiguous);
        assert_eq!(plan(&[]), Plan::NoMatch);
    }
}
