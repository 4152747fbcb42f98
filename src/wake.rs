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
            Outcome::LookupFailed { .. } => format!("lookup of {mac} failed"),
        }
    }
}

/// libvirt cannot be reached (connection refused, permission denied, daemon
/// restarted); the request should be kept and retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub HvError);

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

    /// The open connection, if any (tests inspect `test:///` state through it).
    pub fn connection(&self) -> Option<&dyn Hypervisor> {
        self.connection.as_deref()
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

    /// Finds the domain owning `mac` and brings it up.
    ///
    /// `Err(Unreachable)` means nothing was decided: libvirt could not be
    /// reached, or the connection died mid-request. Every other result,
    /// including libvirt refusing the action, is an [`Outcome`].
    pub fn wake(&mut self, mac: Mac) -> Result<Outcome, Unreachable> {
        // A connection that died since the last request (libvirtd restarted)
        // gets one immediate reconnect before libvirt counts as unreachable.
        let mut reconnected = false;
        loop {
            self.connect()?;
            match self.try_wake(mac) {
                Ok(outcome) => return Ok(outcome),
                Err(error) if self.connection.as_ref().is_some_and(|c| c.is_alive()) => {
                    return Ok(Outcome::LookupFailed { error });
                }
                Err(error) => {
                    // Dead connection: drop it (and the index, which may be
                    // stale after a daemon restart).
                    self.connection = None;
                    self.index = None;
                    if reconnected {
                        return Err(Unreachable(error));
                    }
                    debug!("connection to {} lost ({error}); reconnecting", self.uri());
                    reconnected = true;
                }
            }
        }
    }

    fn try_wake(&mut self, mac: Mac) -> Result<Outcome, HvError> {
        let mut owners = self.owners(mac)?;
        let mut refused = Vec::new();
        owners.retain(|owner| match self.policy.check(owner, mac) {
            Ok(()) => true,
            Err(reason) => {
                refused.push((owner.name.clone(), reason));
                false
            }
        });
        if owners.is_empty() {
            if let Some((_, reason)) = refused.first() {
                return Ok(Outcome::Refused {
                    reason: *reason,
                    domains: refused.into_iter().map(|(name, _)| name).collect(),
                });
            }
        }
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
        let outcome = match plan(&candidates) {
            Plan::NoMatch => Outcome::NoMatch,
            Plan::Ambiguous => Outcome::Ambiguous {
                domains: candidates.iter().map(|c| c.name.clone()).collect(),
            },
            Plan::AlreadyUp { domain } => Outcome::AlreadyUp {
                domain: domain.name.clone(),
                state: domain.state,
                others: candidates
                    .iter()
                    .filter(|c| c.uuid != domain.uuid)
                    .map(|c| c.name.clone())
                    .collect(),
            },
            Plan::Act { domain, action } => {
                // Only a start can restore an image; a failing query just
                // means the log will not mention it.
                let restored =
                    action == Action::Start && hv.has_managed_save(&domain.uuid).unwrap_or(false);
                match hv.perform(&domain.uuid, action) {
                    Ok(()) => Outcome::Done {
                        domain: domain.name.clone(),
                        state: domain.state,
                        action,
                        restored,
                    },
                    Err(e) if !hv.is_alive() => return Err(e),
                    Err(error) => Outcome::Failed {
                        domain: domain.name.clone(),
                        state: domain.state,
                        action,
                        error,
                    },
                }
            }
        };
        Ok(outcome)
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
