//! What a wake request is answered: a pure mapping from the loop's reply
//! to the HTTP status and JSON, in the journal's words.

use std::sync::Arc;
use std::time::Duration;

use hyper::http::StatusCode;
use serde::Serialize;

use crate::decide::ask::Target;
use crate::decide::control::Reply;
use crate::decide::outcome::{Http, Outcome};
use crate::model::DomainState;
use crate::report;

/// 404 for every "no domain this token may wake" with a token some domain
/// holds: the domain does not exist, or the token is another domain's. A
/// token must not reveal which domains exist. (A token no domain holds is
/// told apart later, by the caller: 401.)
pub(crate) const NOT_FOUND: &str = "no domain this token may wake matches";

/// The answer to a wake request.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct WakeAnswer {
    /// The domain acted on (or asked for).
    pub(crate) domain: Option<String>,
    /// Its host's libvirt URI.
    pub(crate) host: Option<String>,
    /// Its state before.
    pub(crate) state_before: Option<&'static str>,
    /// `start`, `restore`, `resume`, `pm-wakeup` or `none`.
    pub(crate) action: &'static str,
    /// The journal's `RESULT` word (`ok`, `already-up`, `failed`, …, or
    /// `duplicate`).
    pub(crate) result: &'static str,
    /// Its state when the answer was made.
    pub(crate) state: Option<&'static str>,
    /// What the answer waited for: `running`, `guest-agent` (a domain with
    /// a QEMU guest agent channel: until the agent in the guest opened it),
    /// or `null` without `?wait=`.
    pub(crate) waited_for: Option<&'static str>,
    /// Its QEMU guest agent: `connected`, `not connected`, or `null` when it
    /// has no agent channel (or nothing was looked at).
    pub(crate) guest_agent: Option<&'static str>,
    /// How long the request waited for its domain to come up.
    pub(crate) waited_ms: u64,
    /// libvirt's message, or why nothing was done.
    pub(crate) error: Option<String>,
}

/// What to answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// A wake answer; `follow` names the domain (host URI, name) whose state
    /// is read before answering (and waited for with `?wait=`).
    Wake {
        /// The HTTP status.
        status: StatusCode,
        /// The body.
        answer: WakeAnswer,
        /// The domain to read the state of.
        follow: Option<(Arc<str>, String)>,
    },
    /// `{"error": message}`.
    Error {
        /// The HTTP status.
        status: StatusCode,
        /// Why.
        message: String,
        /// It counts as a failed authentication (toward 429).
        failed_auth: bool,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
}

/// The answer to `reply`, for a request for `target`.
pub(crate) fn answer(reply: &Reply, target: &Target) -> Answered {
    let error = |message: &str, failed_auth, retry_after| Answered::Error {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: message.into(),
        failed_auth,
        retry_after,
    };
    match reply {
        Reply::Decided(decision) => decided(&decision.outcome),
        Reply::Duplicate { ago } => duplicate(*ago, target),
        Reply::Dropped => error(
            "too many wake requests wait already; try again",
            false,
            Some(1),
        ),
        // The token is not checked yet (that needs libvirt): no URI, no
        // libvirt message, to a caller who may hold no valid token. If no
        // host has ever shown the token, it opened nothing that answers: a
        // failure, so made-up tokens meet 429 here as anywhere else.
        Reply::Waiting { vouched, .. } => error(
            "libvirt does not answer; the request is kept and done when it does",
            !vouched,
            Some(5),
        ),
    }
}

/// The answer to a decided request: status, `result` and whether its
/// state is read come from the outcome's class, the rest from its data.
fn decided(outcome: &Outcome) -> Answered {
    let class = outcome.class();
    let status = match class.http {
        // The table's codes are valid (its test pins them); a 502 would
        // only stand in for a typo there.
        Http::Wake(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
        // A token some domain holds but not this one, no such domain, or a
        // domain the token opens but the operator's policy refuses (checked
        // only after the token): the same 404, counted as a failure, so
        // nothing tells the three apart and guessing names is throttled.
        Http::Hidden => {
            return Answered::Error {
                status: StatusCode::NOT_FOUND,
                message: NOT_FOUND.into(),
                failed_auth: true,
                retry_after: None,
            };
        }
    };
    let (domain, state) = outcome.domain().unzip();
    let follow = domain
        .filter(|_| class.follows)
        .map(|domain| (Arc::clone(&domain.uri), domain.name.clone()));
    Answered::Wake {
        status,
        answer: WakeAnswer {
            domain: domain.map(|d| d.name.clone()),
            host: domain.map(|d| d.uri.to_string()),
            state_before: state.map(DomainState::as_str),
            action: report::action_words(outcome.verb()),
            result: class.result,
            state: state.map(DomainState::as_str),
            waited_for: None,
            guest_agent: None,
            waited_ms: 0,
            error: why(outcome),
        },
        follow,
    }
}

/// Why a wake did nothing, for its `error`: libvirt's message where it is
/// about the caller's own domain, else words that name no other domain.
fn why(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Failed { error, .. } => Some(error.to_string()),
        Outcome::Ambiguous { .. } => {
            Some("the MAC is on several shut-off domains; none was started".to_owned())
        }
        Outcome::LookupFailed { .. } => {
            Some("libvirt failed to look the domain up (the gateway's log says why)".to_owned())
        }
        _ => None,
    }
}

/// The answer to a request the same one brought up `ago`.
fn duplicate(ago: Duration, target: &Target) -> Answered {
    Answered::Wake {
        status: StatusCode::OK,
        answer: WakeAnswer {
            domain: match target {
                Target::Domain(name) => Some(name.to_string()),
                Target::Mac(_) => None,
            },
            host: None,
            state_before: None,
            action: "none",
            result: "duplicate",
            state: None,
            waited_for: None,
            guest_agent: None,
            waited_ms: 0,
            error: Some(format!(
                "the same request brought it up {:.1} s ago",
                ago.as_secs_f64()
            )),
        },
        follow: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::outcome::{Decision, Named, Verb, WaitFor};
    use crate::decide::policy::Refusal;
    use crate::model::HvError;

    fn web01() -> Named {
        Named::web01()
    }

    fn decided(outcome: Outcome) -> Answered {
        let reply = Reply::Decided(Decision {
            outcome,
            left_out: Vec::new(),
        });
        answer(&reply, &Target::Domain(Arc::from("web01")))
    }

    fn code(answered: &Answered) -> (StatusCode, bool) {
        match answered {
            Answered::Wake { status, .. } => (*status, false),
            Answered::Error {
                status,
                failed_auth,
                ..
            } => (*status, *failed_auth),
        }
    }

    #[test]
    fn each_outcome_has_its_status() {
        let done = decided(Outcome::Done {
            domain: web01(),
            state: DomainState::ShutOff,
            verb: Verb::Restore,
        });
        let Answered::Wake {
            status,
            answer,
            follow,
        } = done
        else {
            panic!("{done:?}")
        };
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (answer.action, answer.result, answer.state_before),
            ("restore", "ok", Some("shut off"))
        );
        assert_eq!(follow, Some((Arc::from("qemu:///system"), "web01".into())));

        let up = decided(Outcome::AlreadyUp {
            domain: web01(),
            state: DomainState::Running,
            others: Vec::new(),
        });
        assert_eq!(code(&up), (StatusCode::OK, false));
        let failed = decided(Outcome::Failed {
            domain: web01(),
            state: DomainState::ShutOff,
            verb: Verb::Start,
            error: HvError::other("Cannot access storage file"),
        });
        assert_eq!(code(&failed), (StatusCode::BAD_GATEWAY, false));
        let Answered::Wake { answer, follow, .. } = failed else {
            panic!()
        };
        assert_eq!(answer.error.as_deref(), Some("Cannot access storage file"));
        assert_eq!(follow, None);
        assert_eq!(
            code(&decided(Outcome::Ambiguous {
                domains: vec![web01(), web01()]
            })),
            (StatusCode::CONFLICT, false)
        );
        // No such domain and someone else's domain look the same.
        let refused = decided(Outcome::Refused {
            domains: vec![web01()],
            reason: Refusal::NotThisToken,
        });
        assert_eq!(refused, decided(Outcome::NoMatch));
        assert_eq!(code(&refused), (StatusCode::NOT_FOUND, true));
        // The operator's policy refusing a domain the token opens: the same
        // 404, and counted (it came after the token check).
        let policy = decided(Outcome::Refused {
            domains: vec![web01()],
            reason: Refusal::NotAllowed,
        });
        assert_eq!(policy, refused);
        let dry = decided(Outcome::DryRun {
            domain: web01(),
            state: DomainState::ShutOff,
            verb: Verb::Start,
        });
        let Answered::Wake { answer, follow, .. } = dry else {
            panic!()
        };
        assert_eq!((answer.result, follow), ("dry-run", None));
    }

    #[test]
    fn a_waiting_or_dropped_request_is_503_with_retry_after() {
        let target = Target::Domain(Arc::from("web01"));
        let waiting = Reply::Waiting {
            waiting: WaitFor {
                hosts: vec![(Arc::from("qemu:///system"), None)],
            },
            vouched: true,
        };
        let Answered::Error {
            status,
            message,
            retry_after,
            ..
        } = answer(&waiting, &target)
        else {
            panic!()
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!message.contains("qemu:///system"), "{message}");
        assert_eq!(retry_after, Some(5));
        // Kept either way; a failure only for a token no host has shown.
        assert_eq!(code(&answer(&waiting, &target)), (status, false));
        let Reply::Waiting { waiting, .. } = waiting else {
            panic!()
        };
        let unvouched = Reply::Waiting {
            waiting,
            vouched: false,
        };
        assert_eq!(code(&answer(&unvouched, &target)), (status, true));
        let duplicate = answer(
            &Reply::Duplicate {
                ago: Duration::from_millis(1500),
            },
            &target,
        );
        assert_eq!(status_of(&duplicate), StatusCode::OK);
    }

    fn status_of(answered: &Answered) -> StatusCode {
        code(answered).0
    }
}
