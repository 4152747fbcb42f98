//! What became of a wake request: plain data, put into words only by
//! [`crate::report`].

use std::sync::Arc;

use crate::decide::policy::Refusal;
use crate::model::{Action, DomainState, HvError};

/// What was (or, in a dry run, would be) done to a domain: the `ACTION`
/// journal field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Booted from shut off (or crashed).
    Start,
    /// Started from its managed-save image.
    Restore,
    /// Continued from paused.
    Resume,
    /// Woken from a guest's PM suspend.
    PmWakeup,
}

impl Verb {
    /// The verb for `action`; a start that finds a managed-save image
    /// restores it.
    pub fn of(action: Action, managed_save: bool) -> Verb {
        match action {
            Action::Start if managed_save => Verb::Restore,
            Action::Start => Verb::Start,
            Action::Resume => Verb::Resume,
            Action::PmWakeup => Verb::PmWakeup,
        }
    }
}

/// A domain by name, and the URI of the host it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The domain's name.
    pub name: String,
    /// Its host's libvirt URI.
    pub uri: Arc<str>,
}

/// The decision for one wake request, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `verb` succeeded on `domain`.
    Done {
        /// The domain acted on.
        domain: Named,
        /// Its state before.
        state: DomainState,
        /// What was done.
        verb: Verb,
    },
    /// `verb` on `domain` failed with libvirt's message.
    Failed {
        /// The domain acted on.
        domain: Named,
        /// Its state before.
        state: DomainState,
        /// What was tried.
        verb: Verb,
        /// libvirt's error.
        error: HvError,
    },
    /// The MAC's domain is already up; nothing was done.
    AlreadyUp {
        /// The active domain.
        domain: Named,
        /// Its state.
        state: DomainState,
        /// Other domains that share the MAC.
        others: Vec<Named>,
    },
    /// The operator's policy refuses every domain with the MAC.
    Refused {
        /// The refused domains.
        domains: Vec<Named>,
        /// Why (for the first of them).
        reason: Refusal,
    },
    /// Several shut-off domains share the MAC; none was started.
    Ambiguous {
        /// All of them.
        domains: Vec<Named>,
    },
    /// No domain on any answering host has the MAC.
    NoMatch,
    /// A dry run: `verb` would have been done to `domain`.
    DryRun {
        /// The domain that would be acted on.
        domain: Named,
        /// Its state.
        state: DomainState,
        /// What would be done.
        verb: Verb,
    },
    /// Listing domains failed although libvirt answered.
    LookupFailed {
        /// The host and libvirt's error.
        uri: Arc<str>,
        /// libvirt's error.
        error: HvError,
    },
}

impl Outcome {
    /// True when the MAC's domain is up (or, in a dry run, would be) after
    /// this: a repeat within the de-duplication window is then a duplicate.
    /// Every other outcome lets the next packet be acted on (at most once a
    /// second): a failure may be fixed and retried, a refusal must not
    /// block a later, legitimate packet.
    pub fn brings_up(&self) -> bool {
        match self {
            Outcome::Done { .. } | Outcome::DryRun { .. } => true,
            // Shutting down (or in no state) is up only for now: a resend a
            // few seconds later may find it off, and must start it.
            Outcome::AlreadyUp { state, .. } => {
                !matches!(state, DomainState::InShutdown | DomainState::Other)
            }
            _ => false,
        }
    }
}

/// An outcome and the hosts left out of its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happened.
    pub outcome: Outcome,
    /// Hosts that had not answered (or could not be reached) when another
    /// host's answer settled the decision; their answer could only have
    /// added an ambiguity.
    pub left_out: Vec<Arc<str>>,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Idle timeout passed with nothing pending.
    Idle,
    /// SIGTERM or SIGINT.
    Signal,
    /// Idle timeout passed while no libvirt host answered; requests were lost.
    GaveUp,
    /// A raw listener's interface disappeared.
    ListenerLost,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Exit::Idle | Exit::Signal => 0,
            Exit::GaveUp | Exit::ListenerLost => 1,
        }
    }
}

/// Why a request could not be decided: the hosts it waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitFor {
    /// The hosts it waits for, with their last error (`None`: silent).
    pub hosts: Vec<(Arc<str>, Option<HvError>)>,
}
