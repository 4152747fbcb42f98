//! A sleep request's words (`POST /v1/sleep`, the power switch, `sleep` on
//! the command line): one journal line with the gateway's fields (`DOMAIN`,
//! `HOST`, `STATE`, `ACTION`, `RESULT`, `VIA`, `SOURCE`). What anyone can
//! send (no token opened a domain) goes through the worker lines' limits,
//! so a flood of requests cannot flood the journal; what a token holder
//! did is always said.

use crate::decide::ask::Target;
use crate::decide::sleep::Outcome;
use crate::model::Source;

use super::workers::Topic;
use super::{Record, level, plain_names, waiting_words};

/// Logs what came of a sleep request for `target` from `source`.
pub(crate) fn request(target: &Target, source: &Source, outcome: &Outcome) {
    let record = record(target, source, outcome);
    if outcome.class().limited {
        super::worker_line(Topic::Sleep, record);
    } else {
        super::emit(&record);
    }
}

/// The record of a sleep request: its fields and its sentence.
pub(crate) fn record(target: &Target, source: &Source, outcome: &Outcome) -> Record {
    let class = outcome.class();
    let mut record = Record::about(level(class.severity), target, source, String::new());
    record.result = Some(class.result);
    record.action = outcome.action().map(|action| action.as_str());
    if let Some((domain, state)) = outcome.domain() {
        record.domain = Some(domain.name.clone());
        record.host = Some(domain.uri.to_string());
        record.state = state.map(|state| state.as_str());
    }
    let from = format!("{target} from {source}");
    record.message = match outcome {
        Outcome::Done {
            domain,
            state,
            action,
        } => match action {
            crate::decide::idle::Sleep::Shutdown => format!(
                "asked {} to shut down (was {state}) for {from}",
                domain.name
            ),
            _ => format!(
                "put {} to sleep ({action}; was {state}) for {from}",
                domain.name
            ),
        },
        Outcome::DryRun {
            domain,
            state,
            action,
        } => format!(
            "dry run: would put {} to sleep ({action}; is {state}) for {from}",
            domain.name
        ),
        Outcome::Failed {
            domain,
            state,
            action,
            error,
        } => format!(
            "cannot put {} to sleep ({action}; was {state}) for {from}: {error}",
            domain.name
        ),
        Outcome::Underway { domain, state } => format!(
            "putting {} to sleep (was {state}) for {from}: still under way",
            domain.name
        ),
        Outcome::AlreadyDown { domain, state } => format!(
            "{} is not up ({state}); nothing to do for {from}",
            domain.name
        ),
        Outcome::Forbidden { domain } => format!(
            "refused to put {} to sleep for {from}: the token may only wake it (token add \
             --may sleep makes one that may)",
            domain.name
        ),
        Outcome::Refused { domains, reason } => {
            record.domain = Some(plain_names(domains));
            format!(
                "refused to put {} to sleep for {from}: {reason}",
                plain_names(domains)
            )
        }
        Outcome::Ambiguous { domains } => {
            record.domain = Some(plain_names(domains));
            format!(
                "{from}: several domains are up ({}); putting none to sleep",
                plain_names(domains)
            )
        }
        Outcome::NoMatch => format!("no domain for {from}; nothing to do"),
        Outcome::Unreachable(waiting) => format!(
            "cannot put {target} to sleep for {source}: {}",
            waiting_words(waiting)
        ),
        Outcome::LookupFailed { uri, error } => {
            record.host = Some(uri.to_string());
            format!("cannot look up {from} on {uri}: {error}")
        }
    };
    record
}
