//! The decision for one MAC, a pure function of the domains that own it.

use std::time::Instant;

use crate::model::{Action, DomainState, Uuid};

/// A domain that owns the requested MAC (and that the policy lets through),
/// with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The domain's name.
    pub(crate) name: String,
    /// The domain's UUID.
    pub(crate) uuid: Uuid,
    /// Its state right now.
    pub(crate) state: DomainState,
    /// It has a managed-save image (a start restores it).
    pub(crate) managed_save: bool,
    /// Which host (position in the list of URIs) it is on.
    pub(crate) host: usize,
    /// The host's count of finished actions when the state was read: if
    /// another action finished since, the state is read again before acting.
    pub(crate) epoch: u64,
}

/// The decision for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan<'a> {
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

/// What brings a domain in `state` up, if it is not up: shut off or crashed
/// is started (restoring a managed-save image if there is one), paused is
/// resumed, PM-suspended is woken; anything else is up already.
pub(crate) fn action_for(state: DomainState) -> Option<Action> {
    match state {
        DomainState::ShutOff | DomainState::Crashed => Some(Action::Start),
        DomainState::Paused => Some(Action::Resume),
        DomainState::PmSuspended => Some(Action::PmWakeup),
        DomainState::Running
        | DomainState::Blocked
        | DomainState::InShutdown
        | DomainState::Other => None,
    }
}

/// Decides what a magic packet for a MAC does, given every domain with it.
///
/// One domain: [`action_for`] its state. Several domains: if any is active
/// the MAC's machine is up and nothing happens; if none is, starting one
/// would be a guess, so none is started.
pub(crate) fn plan(candidates: &[Candidate]) -> Plan<'_> {
    match candidates {
        [] => Plan::NoMatch,
        [domain] => match action_for(domain.state) {
            Some(action) => Plan::Act { domain, action },
            None => Plan::AlreadyUp { domain },
        },
        many => match many.iter().find(|c| c.state.is_active()) {
            Some(domain) => Plan::AlreadyUp { domain },
            None => Plan::Ambiguous,
        },
    }
}

/// What a domain's state tells a caller waiting for it to come up after a
/// wake (`?wait=`, `wake --wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaited {
    /// It runs, and after an action still runs at the gateway's own look.
    Up,
    /// It stopped again (shut off or crashed).
    StoppedAgain,
    /// Neither yet.
    NotYet,
}

/// What `state` (`None`: unknown) tells at `now`; `steady`: when an action's
/// domain counts as up to stay (the look after a start).
pub(crate) fn awaited(
    state: Option<DomainState>,
    steady: Option<Instant>,
    now: Instant,
) -> Awaited {
    match state {
        Some(DomainState::Running) if steady.is_none_or(|at| now >= at) => Awaited::Up,
        Some(DomainState::ShutOff | DomainState::Crashed) => Awaited::StoppedAgain,
        _ => Awaited::NotYet,
    }
}

#[cfg(test)]
impl Candidate {
    /// A domain `vmN` on the first host, for the decisions' tests.
    pub(crate) fn made_up(n: u128, state: DomainState) -> Candidate {
        Candidate {
            name: format!("vm{n}"),
            uuid: Uuid(n),
            state,
            managed_save: false,
            host: 0,
            epoch: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(n: u128, state: DomainState) -> Candidate {
        Candidate::made_up(n, state)
    }

    #[test]
    fn a_waiting_caller_hears_up_only_once_a_start_has_held() {
        let t0 = Instant::now();
        let steady = Some(t0 + std::time::Duration::from_secs(3));
        let running = Some(DomainState::Running);
        assert_eq!(awaited(running, None, t0), Awaited::Up);
        assert_eq!(awaited(running, steady, t0), Awaited::NotYet);
        assert_eq!(
            awaited(running, steady, t0 + std::time::Duration::from_secs(3)),
            Awaited::Up
        );
        for stopped in [DomainState::ShutOff, DomainState::Crashed] {
            assert_eq!(awaited(Some(stopped), steady, t0), Awaited::StoppedAgain);
        }
        for other in [
            None,
            Some(DomainState::Paused),
            Some(DomainState::InShutdown),
        ] {
            assert_eq!(awaited(other, None, t0), Awaited::NotYet);
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
            let domains = [candidate(1, state)];
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
            candidate(1, DomainState::ShutOff),
            candidate(2, DomainState::Paused),
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
            candidate(1, DomainState::ShutOff),
            candidate(2, DomainState::Crashed),
        ];
        assert_eq!(plan(&domains), Plan::Ambiguous);
        assert_eq!(plan(&[]), Plan::NoMatch);
    }
}
