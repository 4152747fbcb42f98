//! Putting a domain to sleep on request: `POST /v1/sleep`, the power
//! switch's `OFF`, and `sleep` on the command line. The idle check decides
//! for itself ([`crate::decide::idle`]); this is the request of someone with
//! the right to ask. The choice is a pure function of the domains a target
//! names, the outcome plain data with one table of how it is told.

use crate::decide::idle::Sleep;
use crate::decide::outcome::{Http, Named, Severity, WaitFor};
use crate::decide::plan::Candidate;
use crate::decide::policy::Refusal;
use crate::model::{DomainState, HvError};

/// What a sleep request does, given every domain its target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan<'a> {
    /// Put this one to sleep.
    Act(&'a Candidate),
    /// None of them is up: nothing to do.
    AlreadyDown(&'a Candidate),
    /// Several are up (a MAC on several running domains, a name on several
    /// hosts): putting one to sleep would be a guess.
    Ambiguous,
    /// No domain.
    NoMatch,
}

/// Whether a domain in `state` is up, so that a sleep has something to do.
/// Paused and PM-suspended domains already sleep; one shutting down is on
/// its way.
pub(crate) fn is_up(state: DomainState) -> bool {
    matches!(
        state,
        DomainState::Running | DomainState::Blocked | DomainState::Other
    )
}

/// The one domain to put to sleep: the one that is up among those named.
pub(crate) fn plan(candidates: &[Candidate]) -> Plan<'_> {
    let mut up = candidates.iter().filter(|c| is_up(c.state));
    match (up.next(), up.next(), candidates.first()) {
        (Some(one), None, _) => Plan::Act(one),
        (Some(_), Some(_), _) => Plan::Ambiguous,
        (None, _, Some(first)) => Plan::AlreadyDown(first),
        (None, _, None) => Plan::NoMatch,
    }
}

/// The action for a domain put to sleep on request: its idle policy's, or
/// an ACPI shutdown request when it has none (the one action every guest
/// OS understands, and the one that loses nothing).
pub(crate) fn action(policy: Option<Sleep>) -> Sleep {
    policy.unwrap_or(Sleep::Shutdown)
}

/// What became of a sleep request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done (a shutdown: asked).
    Done {
        /// The domain.
        domain: Named,
        /// Its state before.
        state: DomainState,
        /// What was done.
        action: Sleep,
    },
    /// `--dry-run`: it would have been done.
    DryRun {
        /// The domain.
        domain: Named,
        /// Its state.
        state: DomainState,
        /// What would be done.
        action: Sleep,
    },
    /// libvirt refused, with its message.
    Failed {
        /// The domain.
        domain: Named,
        /// Its state before.
        state: DomainState,
        /// What was tried.
        action: Sleep,
        /// libvirt's error.
        error: HvError,
    },
    /// Begun, and not finished when the caller stopped waiting (a managed
    /// save writes the whole of the guest's RAM); its own line follows.
    Underway {
        /// The domain.
        domain: Named,
        /// Its state before.
        state: DomainState,
    },
    /// It is not up; nothing was done.
    AlreadyDown {
        /// The domain.
        domain: Named,
        /// Its state.
        state: DomainState,
    },
    /// The token opens the domain but may only wake it.
    Forbidden {
        /// The domain.
        domain: Named,
    },
    /// The credential or the operator's policy refuses every domain named.
    Refused {
        /// The domains.
        domains: Vec<Named>,
        /// Why, for the first.
        reason: Refusal,
    },
    /// Several of the domains named are up.
    Ambiguous {
        /// Those up.
        domains: Vec<Named>,
    },
    /// No domain on any answering host.
    NoMatch,
    /// No answering host has the domain, and some host does not answer.
    Unreachable(WaitFor),
    /// libvirt answered with an error.
    LookupFailed {
        /// The host.
        uri: std::sync::Arc<str>,
        /// libvirt's error.
        error: HvError,
    },
}

/// How a sleep outcome is told: the journal's `RESULT`, its level, and the
/// HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Class {
    /// The `RESULT` journal field and the answer's `result`.
    pub(crate) result: &'static str,
    /// The level of its journal line.
    pub(crate) severity: Severity,
    /// The HTTP status ([`Http::Hidden`]: the 404 of a domain the token
    /// does not open).
    pub(crate) http: Http,
    /// The domain is asleep (or, in a dry run, would be) or on its way.
    pub(crate) down: bool,
    /// Its journal lines go through a rate limit: what anyone can send
    /// (no token opened a domain). A request that did something, or that a
    /// token holder made, is always said.
    pub(crate) limited: bool,
}

impl Outcome {
    /// The one table of how each outcome is told.
    pub(crate) fn class(&self) -> Class {
        use Http::{Hidden, Wake};
        use Severity::{Error, Info, Warn};
        let (result, severity, http, down, limited) = match self {
            Outcome::Done { .. } => ("ok", Info, Wake(200), true, false),
            Outcome::DryRun { .. } => ("dry-run", Info, Wake(200), true, false),
            Outcome::Failed { .. } => ("failed", Error, Wake(502), false, false),
            Outcome::AlreadyDown { .. } => ("already-down", Info, Wake(200), true, false),
            Outcome::Underway { .. } => ("underway", Info, Wake(200), true, false),
            Outcome::Forbidden { .. } => ("forbidden", Warn, Wake(403), false, false),
            Outcome::Ambiguous { .. } => ("ambiguous", Error, Wake(409), false, false),
            Outcome::Refused { .. } => ("refused", Warn, Hidden, false, true),
            Outcome::NoMatch => ("no-match", Warn, Hidden, false, true),
            Outcome::Unreachable(_) => ("unreachable", Error, Wake(503), false, true),
            Outcome::LookupFailed { .. } => ("failed", Error, Wake(502), false, true),
        };
        Class {
            result,
            severity,
            http,
            down,
            limited,
        }
    }

    /// The domain it is about and its state, where there is one.
    pub(crate) fn domain(&self) -> Option<(&Named, Option<DomainState>)> {
        match self {
            Outcome::Done { domain, state, .. }
            | Outcome::DryRun { domain, state, .. }
            | Outcome::Failed { domain, state, .. }
            | Outcome::AlreadyDown { domain, state }
            | Outcome::Underway { domain, state } => Some((domain, Some(*state))),
            Outcome::Forbidden { domain } => Some((domain, None)),
            _ => None,
        }
    }

    /// The action done, tried or meant, where there is one.
    pub(crate) fn action(&self) -> Option<Sleep> {
        match self {
            Outcome::Done { action, .. }
            | Outcome::DryRun { action, .. }
            | Outcome::Failed { action, .. } => Some(*action),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(n: u128, state: DomainState) -> Candidate {
        Candidate::made_up(n, state)
    }

    #[test]
    fn the_one_domain_up_is_put_to_sleep_and_a_guess_is_never_made() {
        use DomainState::{Paused, PmSuspended, Running, ShutOff};
        assert_eq!(plan(&[]), Plan::NoMatch);
        let one = [domain(1, Running)];
        assert_eq!(plan(&one), Plan::Act(&one[0]));
        // A MAC on a shut-off clone and a running domain: the running one.
        let shared = [domain(1, ShutOff), domain(2, Running)];
        assert_eq!(plan(&shared), Plan::Act(&shared[1]));
        let both = [domain(1, Running), domain(2, Running)];
        assert_eq!(plan(&both), Plan::Ambiguous);
        for state in [ShutOff, Paused, PmSuspended, DomainState::InShutdown] {
            let down = [domain(1, state)];
            assert_eq!(plan(&down), Plan::AlreadyDown(&down[0]), "{state:?}");
        }
    }

    #[test]
    fn a_domain_without_a_policy_is_asked_to_shut_down() {
        assert_eq!(action(None), Sleep::Shutdown);
        assert_eq!(action(Some(Sleep::Suspend)), Sleep::Suspend);
    }

    #[test]
    fn a_wake_only_token_is_told_403_and_strangers_the_404_of_no_domain() {
        let web01 = Named::web01();
        let forbidden = Outcome::Forbidden {
            domain: web01.clone(),
        };
        assert_eq!(forbidden.class().http, Http::Wake(403));
        assert_eq!(Outcome::NoMatch.class().http, Http::Hidden);
        let refused = Outcome::Refused {
            domains: vec![web01],
            reason: Refusal::NotThisToken,
        };
        assert_eq!(refused.class().http, Http::Hidden);
        assert!(!refused.class().down);
        // What anyone can send is rate-limited; what a token did, never.
        assert!(refused.class().limited && Outcome::NoMatch.class().limited);
        assert!(!forbidden.class().limited);
    }
}
