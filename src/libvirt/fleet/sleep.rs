//! A sleep request across every host: the domain its target names is found
//! as a wake finds it (the same lookup, so the same credential check and
//! operator's policy), then the one that is up is put to sleep on its host
//! ([`Host::sleep`]). Every call runs on a watched thread: a host that does
//! not answer within the deadline is left out, never waited for.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::decide::ask::{Ask, Credential};
use crate::decide::outcome::{Named, WaitFor};
use crate::decide::sleep::{Outcome, Plan, plan};
use crate::libvirt::host::{HostError, Put};
use crate::lock::lock;
use crate::model::{DomainState, HvError, Source};
use crate::report;

use super::{Answer, Fleet, caught};

impl Fleet {
    /// Puts the domain `ask` (from `source`) names to sleep, or says why
    /// not, and logs the one line of what came of it. The lookup is bounded
    /// by the hosts' deadline; the action (a managed save writes all of the
    /// guest's RAM) is waited for at most `patience` (`None`: to its end),
    /// then [`Outcome::Underway`] is returned and the action's thread logs
    /// its line when done, holding `hold` (the gateway's "busy") till then.
    pub(crate) fn sleep(
        &self,
        ask: &Ask,
        source: &Source,
        patience: Option<Duration>,
        hold: impl Send + 'static,
    ) -> Outcome {
        let outcome = caught(
            || self.sleep_caught(ask, source, patience, hold),
            |error| Outcome::LookupFailed {
                uri: Arc::from(self.uris()),
                error,
            },
        );
        // An action under way says its own line when done.
        if !matches!(outcome, Outcome::Underway { .. }) {
            report::sleep::request(&ask.target, source, &outcome);
        }
        outcome
    }

    fn sleep_caught(
        &self,
        ask: &Ask,
        source: &Source,
        patience: Option<Duration>,
        hold: impl Send + 'static,
    ) -> Outcome {
        let answers = self.look_everywhere(ask);
        let gathered = self.gather(&answers);
        match plan(&gathered.candidates) {
            Plan::Act(domain) => {
                let token = match ask.credential {
                    Credential::Token(token) => Some(token),
                    _ => None,
                };
                let named = self.named(&domain.name, domain.host);
                let host = Arc::clone(&self.hosts[domain.host]);
                let handoff = Arc::new(Handoff::default());
                let (candidate, dry_run) = (domain.clone(), self.dry_run);
                let (theirs, target, source_) =
                    (Arc::clone(&handoff), ask.target.clone(), source.clone());
                let named_ = named.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("wol-sleep".into())
                        .spawn(move || {
                            let put = caught(
                                || host.sleep(&candidate, token, dry_run),
                                |e| Err(HostError::Failed(e)),
                            );
                            // Let go before the caller hears: whatever it tells
                            // its own caller next must find the action over.
                            drop(hold);
                            let outcome = put_outcome(named_, candidate.state, put, dry_run);
                            if let Some(late) = theirs.hand(outcome) {
                                report::sleep::request(&target, &source_, &late);
                            }
                        });
                match spawned {
                    Ok(_) => handoff.take(patience).unwrap_or(Outcome::Underway {
                        domain: named,
                        state: domain.state,
                    }),
                    Err(e) => Outcome::LookupFailed {
                        uri: named.uri,
                        error: HvError::other(format!("cannot start a thread: {e}")),
                    },
                }
            }
            Plan::AlreadyDown(domain) => Outcome::AlreadyDown {
                domain: self.named(&domain.name, domain.host),
                state: domain.state,
            },
            Plan::Ambiguous => Outcome::Ambiguous {
                domains: (gathered.candidates.iter())
                    .filter(|c| crate::decide::sleep::is_up(c.state))
                    .map(|c| self.named(&c.name, c.host))
                    .collect(),
            },
            Plan::NoMatch => match (gathered.failed, gathered.refused.first()) {
                (Some((uri, error)), _) => Outcome::LookupFailed { uri, error },
                (None, _) if !gathered.left_out.is_empty() => {
                    Outcome::Unreachable(self.wait_for(&answers))
                }
                (None, Some(&(_, reason))) => Outcome::Refused {
                    reason,
                    domains: gathered.refused.into_iter().map(|(name, _)| name).collect(),
                },
                (None, None) => Outcome::NoMatch,
            },
        }
    }

    /// The state of the domain `ask` names, as its credential and the
    /// operator's policy let the caller see it (for the power switch).
    pub(crate) fn seen(&self, ask: &Ask) -> Seen {
        caught(
            || {
                let answers = self.look_everywhere(ask);
                let gathered = self.gather(&answers);
                match plan(&gathered.candidates) {
                    Plan::Act(domain) | Plan::AlreadyDown(domain) => {
                        Seen::Domain(self.named(&domain.name, domain.host), domain.state)
                    }
                    Plan::Ambiguous => (gathered.candidates.iter())
                        .find(|c| crate::decide::sleep::is_up(c.state))
                        .map_or(Seen::Hidden, |c| {
                            Seen::Domain(self.named(&c.name, c.host), c.state)
                        }),
                    Plan::NoMatch => match gathered.failed {
                        Some((uri, error)) => Seen::Failed(uri, error),
                        None if !gathered.left_out.is_empty() => {
                            Seen::Unreachable(self.wait_for(&answers))
                        }
                        None => Seen::Hidden,
                    },
                }
            },
            |error| Seen::Failed(Arc::from(self.uris()), error),
        )
    }

    /// Every host's lookup of `ask`, each answered or found silent.
    fn look_everywhere(&self, ask: &Ask) -> Vec<Option<Answer>> {
        let mut lookups = self.look_up(ask);
        while lookups.answers.iter().any(Option::is_none) {
            lookups.hear(None);
        }
        lookups.answers
    }
}

/// What a power switch reads of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The domain and its state.
    Domain(Named, DomainState),
    /// None the caller may see (none, another token's, or refused by the
    /// operator's policy: alike, as for a wake).
    Hidden,
    /// No answering host has it, and some host does not answer.
    Unreachable(WaitFor),
    /// libvirt answered with an error.
    Failed(Arc<str>, HvError),
}

/// What the host's answer to a sleep means.
fn put_outcome(
    domain: Named,
    state: DomainState,
    put: Result<Put, HostError>,
    dry_run: bool,
) -> Outcome {
    match put {
        Ok(Put::Done(action, state)) if dry_run => Outcome::DryRun {
            domain,
            state,
            action,
        },
        Ok(Put::Done(action, state)) => Outcome::Done {
            domain,
            state,
            action,
        },
        Ok(Put::Failed(action, state, error)) => Outcome::Failed {
            domain,
            state,
            action,
            error,
        },
        Ok(Put::AlreadyDown(state)) => Outcome::AlreadyDown { domain, state },
        Ok(Put::Forbidden) => Outcome::Forbidden { domain },
        Err(HostError::Failed(error)) => Outcome::Failed {
            domain,
            state,
            action: crate::decide::sleep::action(None),
            error,
        },
        // Whether it happened is unknown; a repeat will see.
        Err(HostError::Unreachable(e)) => Outcome::Unreachable(WaitFor {
            hosts: vec![(domain.uri, Some(e))],
        }),
    }
}

/// An action's outcome passed from its thread to the caller, or, once the
/// caller stopped waiting, logged by the thread: never both, never neither.
#[derive(Default)]
struct Handoff {
    state: Mutex<(Option<Outcome>, bool)>,
    ready: Condvar,
}

impl Handoff {
    /// The thread's side: `Some` back when the caller is gone (log it).
    fn hand(&self, outcome: Outcome) -> Option<Outcome> {
        let mut state = lock(&self.state);
        if state.1 {
            return Some(outcome);
        }
        state.0 = Some(outcome);
        self.ready.notify_all();
        None
    }

    /// The caller's side: the outcome if it comes within `patience`.
    fn take(&self, patience: Option<Duration>) -> Option<Outcome> {
        let mut state = lock(&self.state);
        let deadline = patience.map(|p| Instant::now() + p);
        while state.0.is_none() {
            let wait = match deadline {
                Some(at) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
                None => Duration::from_secs(3600),
            };
            state = match self.ready.wait_timeout(state, wait) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let outcome = state.0.take();
        state.1 = outcome.is_none();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_either_handed_over_or_logged_by_its_thread_never_both() {
        // In time: the caller has it, the thread says nothing.
        let handoff = Handoff::default();
        assert_eq!(handoff.hand(Outcome::NoMatch), None);
        assert_eq!(
            handoff.take(Some(Duration::from_secs(1))),
            Some(Outcome::NoMatch)
        );
        // Late: the caller gave up, so the thread must say it.
        let handoff = Arc::new(Handoff::default());
        assert_eq!(handoff.take(Some(Duration::ZERO)), None);
        assert_eq!(handoff.hand(Outcome::NoMatch), Some(Outcome::NoMatch));
        // A caller that waits to the end gets it from another thread.
        let handoff = Arc::new(Handoff::default());
        let theirs = Arc::clone(&handoff);
        let thread = std::thread::spawn(move || theirs.hand(Outcome::NoMatch));
        assert_eq!(handoff.take(None), Some(Outcome::NoMatch));
        assert_eq!(thread.join().ok().flatten(), None);
    }
}
