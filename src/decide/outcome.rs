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
    pub(crate) fn of(action: Action, managed_save: bool) -> Verb {
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
    pub(crate) uri: Arc<str>,
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

/// The kind of an [`Outcome`], without its data: the key of the one table
/// ([`Kind::class`]) that says how each kind is told everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// [`Outcome::Done`].
    Done,
    /// [`Outcome::Failed`].
    Failed,
    /// [`Outcome::AlreadyUp`].
    AlreadyUp,
    /// [`Outcome::Refused`].
    Refused,
    /// [`Outcome::Ambiguous`].
    Ambiguous,
    /// [`Outcome::NoMatch`].
    NoMatch,
    /// [`Outcome::DryRun`].
    DryRun,
    /// [`Outcome::LookupFailed`].
    LookupFailed,
}

impl Kind {
    /// Every kind, for tests that check the table is whole.
    #[cfg(test)]
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Done,
        Kind::Failed,
        Kind::AlreadyUp,
        Kind::Refused,
        Kind::Ambiguous,
        Kind::NoMatch,
        Kind::DryRun,
        Kind::LookupFailed,
    ];

    /// How this kind of outcome is told: the one table the journal,
    /// `STATUS=`, the HTTP answer and the de-duplication read, so they
    /// cannot disagree about what an outcome is.
    pub(crate) const fn class(self) -> Class {
        use Http::{Hidden, Wake};
        use Limit::{Problems, Shown, Unknown};
        use Severity::{Error, Info, Warn};
        let (result, severity, limit, http, brings_up, follows) = match self {
            Kind::Done => ("ok", Info, Shown, Wake(200), true, true),
            Kind::Failed => ("failed", Error, Problems, Wake(502), false, false),
            Kind::AlreadyUp => ("already-up", Info, Shown, Wake(200), true, true),
            Kind::Refused => ("refused", Warn, Problems, Hidden, false, false),
            Kind::Ambiguous => ("ambiguous", Error, Problems, Wake(409), false, false),
            Kind::NoMatch => ("no-match", Warn, Unknown, Hidden, false, false),
            // A dry run changed nothing: the state read is the answer.
            Kind::DryRun => ("dry-run", Info, Shown, Wake(200), true, false),
            Kind::LookupFailed => ("failed", Error, Problems, Wake(502), false, false),
        };
        Class {
            result,
            severity,
            limit,
            http,
            brings_up,
            follows,
        }
    }
}

/// How an outcome is told (see [`Kind::class`]). Plain data: the words of
/// sentences stay in [`crate::report`], the HTTP types in the HTTP module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Class {
    /// The `RESULT` journal field, also the HTTP wake's `result`.
    pub(crate) result: &'static str,
    /// The level of its journal line.
    pub(crate) severity: Severity,
    /// Which of the journal's rate limits holds its lines back in a flood.
    pub(crate) limit: Limit,
    /// What an HTTP wake request is answered.
    pub(crate) http: Http,
    /// The domain is up (or, in a dry run, would be) after this; see
    /// [`Outcome::brings_up`], which also looks at the state.
    pub(crate) brings_up: bool,
    /// The HTTP answer reads (and with `?wait=` waits for) the domain's
    /// state afterwards: only when something is, or already was, up.
    pub(crate) follows: bool,
}

/// The level of an outcome's journal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// Nothing wrong.
    Info,
    /// Nothing done, as the operator set things up (or a stranger's MAC).
    Warn,
    /// Something the operator has to fix.
    Error,
}

/// Which of the journal's rate limits an outcome's line goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// None: each is a wake that did something, or found it done, and a
    /// flood of those is bounded by the de-duplication window.
    Shown,
    /// Refused, ambiguous or failed: what a flood of packets repeats.
    Problems,
    /// MACs no domain has: what junk on the network repeats.
    Unknown,
}

/// What an HTTP wake request is answered, by kind of outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Http {
    /// A wake answer with this status.
    Wake(u16),
    /// The same 404 as for a domain the token may not wake, counted as a
    /// failed authentication: no domain, someone else's domain and a
    /// domain the policy refuses must look alike to a token holder.
    Hidden,
}

impl Outcome {
    /// Its kind, the key of [`Kind::class`].
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Outcome::Done { .. } => Kind::Done,
            Outcome::Failed { .. } => Kind::Failed,
            Outcome::AlreadyUp { .. } => Kind::AlreadyUp,
            Outcome::Refused { .. } => Kind::Refused,
            Outcome::Ambiguous { .. } => Kind::Ambiguous,
            Outcome::NoMatch => Kind::NoMatch,
            Outcome::DryRun { .. } => Kind::DryRun,
            Outcome::LookupFailed { .. } => Kind::LookupFailed,
        }
    }

    /// How it is told: [`Kind::class`] of its kind.
    pub(crate) fn class(&self) -> Class {
        self.kind().class()
    }

    /// What was done, tried, or would be done (the `ACTION` field);
    /// `None` when nothing was.
    pub(crate) fn verb(&self) -> Option<Verb> {
        match self {
            Outcome::Done { verb, .. }
            | Outcome::Failed { verb, .. }
            | Outcome::DryRun { verb, .. } => Some(*verb),
            _ => None,
        }
    }

    /// The one domain it is about, and its state before.
    pub(crate) fn domain(&self) -> Option<(&Named, DomainState)> {
        match self {
            Outcome::Done { domain, state, .. }
            | Outcome::Failed { domain, state, .. }
            | Outcome::AlreadyUp { domain, state, .. }
            | Outcome::DryRun { domain, state, .. } => Some((domain, *state)),
            _ => None,
        }
    }

    /// True when the MAC's domain is up (or, in a dry run, would be) after
    /// this: a repeat within the de-duplication window is then a duplicate.
    /// Every other outcome lets the next packet be acted on (at most once a
    /// second): a failure may be fixed and retried, a refusal must not
    /// block a later, legitimate packet.
    pub fn brings_up(&self) -> bool {
        match self {
            // Shutting down (or in no state) is up only for now: a resend a
            // few seconds later may find it off, and must start it.
            Outcome::AlreadyUp {
                state: DomainState::InShutdown | DomainState::Other,
                ..
            } => false,
            _ => self.class().brings_up,
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

#[cfg(test)]
impl Named {
    /// `web01` on `qemu:///system`, for the tests of what is said of it.
    pub(crate) fn web01() -> Named {
        Named {
            name: "web01".into(),
            uri: Arc::from("qemu:///system"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web01() -> Named {
        Named::web01()
    }

    /// One outcome of each kind, in the order of [`Kind::ALL`].
    fn one_of_each() -> Vec<Outcome> {
        let state = DomainState::ShutOff;
        let verb = Verb::Start;
        vec![
            Outcome::Done {
                domain: web01(),
                state,
                verb,
            },
            Outcome::Failed {
                domain: web01(),
                state,
                verb,
                error: HvError::other("no"),
            },
            Outcome::AlreadyUp {
                domain: web01(),
                state: DomainState::Running,
                others: Vec::new(),
            },
            Outcome::Refused {
                domains: vec![web01()],
                reason: Refusal::NotAllowed,
            },
            Outcome::Ambiguous {
                domains: vec![web01(), web01()],
            },
            Outcome::NoMatch,
            Outcome::DryRun {
                domain: web01(),
                state,
                verb,
            },
            Outcome::LookupFailed {
                uri: Arc::from("qemu:///system"),
                error: HvError::other("no"),
            },
        ]
    }

    #[test]
    fn every_outcome_has_its_kind() {
        let kinds: Vec<Kind> = one_of_each().iter().map(Outcome::kind).collect();
        assert_eq!(kinds, Kind::ALL);
    }

    /// The table as the journal, the HTTP API and their docs have always
    /// told it: a change here is a change users see. The match is
    /// exhaustive, so a new kind cannot go untested.
    #[test]
    fn the_table_keeps_the_words_statuses_and_levels() {
        use Http::{Hidden, Wake};
        use Limit::{Problems, Shown, Unknown};
        use Severity::{Error, Info, Warn};
        for kind in Kind::ALL {
            let c = kind.class();
            let row = (
                c.result,
                c.severity,
                c.limit,
                c.http,
                c.brings_up,
                c.follows,
            );
            let expected = match kind {
                Kind::Done => ("ok", Info, Shown, Wake(200), true, true),
                Kind::Failed => ("failed", Error, Problems, Wake(502), false, false),
                Kind::AlreadyUp => ("already-up", Info, Shown, Wake(200), true, true),
                Kind::Refused => ("refused", Warn, Problems, Hidden, false, false),
                Kind::Ambiguous => ("ambiguous", Error, Problems, Wake(409), false, false),
                Kind::NoMatch => ("no-match", Warn, Unknown, Hidden, false, false),
                Kind::DryRun => ("dry-run", Info, Shown, Wake(200), true, false),
                Kind::LookupFailed => ("failed", Error, Problems, Wake(502), false, false),
            };
            assert_eq!(row, expected, "{kind:?}");
        }
    }

    #[test]
    fn verb_and_domain_follow_the_variant() {
        let verbs: Vec<Option<Verb>> = one_of_each().iter().map(Outcome::verb).collect();
        let start = Some(Verb::Start);
        assert_eq!(verbs, [start, start, None, None, None, None, start, None]);
        let with_domain: Vec<bool> = one_of_each().iter().map(|o| o.domain().is_some()).collect();
        assert_eq!(
            with_domain,
            [true, true, true, false, false, false, true, false]
        );
    }

    #[test]
    fn a_domain_shutting_down_is_not_brought_up() {
        let up = |state| Outcome::AlreadyUp {
            domain: web01(),
            state,
            others: Vec::new(),
        };
        assert!(up(DomainState::Running).brings_up());
        assert!(up(DomainState::Paused).brings_up());
        assert!(!up(DomainState::InShutdown).brings_up());
        assert!(!up(DomainState::Other).brings_up());
        let brings: Vec<bool> = one_of_each().iter().map(Outcome::brings_up).collect();
        assert_eq!(
            brings,
            [true, false, true, false, false, false, true, false]
        );
    }
}
