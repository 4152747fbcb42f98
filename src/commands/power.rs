//! `wake TARGET` and `sleep TARGET`: the gateway's own decisions from the
//! command line, for scripts and `OnCalendar=` timers. A wake goes through
//! [`Fleet::wake`] as a magic packet does (the operator's policy, the
//! ambiguity rule, a second request for the domain in this process waiting
//! its turn and finding it up) and is told by the same [`Reporter`] line,
//! with `VIA=cli`. The caller's own libvirt connection is its credential: it
//! could start or stop the domain without us, so no token or SecureOn
//! password is asked.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::decide::ask::{Ask, Credential, Target};
use crate::decide::book::Request;
use crate::decide::control::POST_START_CHECK;
use crate::decide::outcome::{Decision, Outcome};
use crate::decide::plan::{Awaited, awaited};
use crate::decide::sleep;
use crate::libvirt::fleet::{Conclusion, Fleet, Waiter};
use crate::model::{DomainState, Source};
use crate::report::{self, Reporter};

/// How often the state is read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// How long `sleep` waits for libvirt's action to end.
const ACTION_PATIENCE: Duration = Duration::from_secs(600);

/// `wake TARGET [--wait D]`: 0 when the domain is up (with `wait`: runs,
/// and still runs at the gateway's look after a start), 1 otherwise.
pub(crate) fn wake(fleet: &Fleet, target: Target, wait: Option<Duration>) -> i32 {
    let started = Instant::now();
    let ask = Ask {
        target,
        credential: Credential::Operator,
    };
    let decision = loop {
        match fleet.wake(ask.clone()) {
            Conclusion::Decided(decision) => break decision,
            // A host does not answer: with time left, ask again.
            Conclusion::Wait(waiting) => {
                let left = wait.and_then(|w| w.checked_sub(started.elapsed()));
                if left.is_none_or(|left| left.is_zero()) {
                    error!(
                        "cannot wake {}: {}",
                        ask.target,
                        report::waiting_words(&waiting)
                    );
                    return 1;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    tell(fleet, &ask, &decision);
    let outcome = &decision.outcome;
    if !outcome.brings_up() {
        return 1;
    }
    let (Some(wait), Some((domain, _))) = (wait, outcome.domain()) else {
        return 0;
    };
    if matches!(outcome, Outcome::DryRun { .. }) {
        return 0;
    }
    // After an action, up means still up at the gateway's own look.
    let steady = matches!(outcome, Outcome::Done { .. }).then_some(started + POST_START_CHECK);
    let deadline = started + wait;
    let Some(host) = fleet.host(&domain.uri) else {
        return 1;
    };
    loop {
        let state = host.state_of(&domain.name).ok().flatten();
        let now = Instant::now();
        match awaited(state.map(|(state, _)| state), steady, now) {
            Awaited::Up => {
                info!("{} runs", domain.name);
                return 0;
            }
            Awaited::StoppedAgain => {
                let reason = state.and_then(|(_, reason)| reason);
                error!(
                    "{} stopped again: {}",
                    domain.name,
                    report::stop_reason_words(reason)
                );
                return 1;
            }
            Awaited::NotYet if now >= deadline => {
                error!(
                    "{} does not run within {} s (it is {})",
                    domain.name,
                    wait.as_secs(),
                    state.map_or("not found", |(state, _)| state.as_str())
                );
                return 1;
            }
            _ => std::thread::sleep(POLL.min(deadline - now)),
        }
    }
}

/// The wake's journal line, as the gateway writes it for a packet.
fn tell(fleet: &Fleet, ask: &Ask, decision: &Decision) {
    let now = Instant::now();
    let request = Request {
        ask: ask.clone(),
        source: Source::Cli,
        repeats: 0,
        parked: false,
        due: now,
    };
    let mut reporter = Reporter::new(fleet.hosts().len() > 1);
    reporter.decision(&request, decision, &fleet.uris(), now);
}

/// `sleep TARGET [--wait D]`: 0 when the domain sleeps, is on its way
/// (with `wait`: no longer runs) or already slept; 1 otherwise.
pub(crate) fn sleep(fleet: &Fleet, target: Target, wait: Option<Duration>) -> i32 {
    let started = Instant::now();
    let ask = Ask {
        target,
        credential: Credential::Operator,
    };
    // The command waits for the action, as long as a managed save of a
    // large guest may take; past that, it says so and fails.
    let waiter = Waiter {
        until: Some(started + ACTION_PATIENCE),
        hold: Box::new(()),
        acting: Box::new(|| {}),
    };
    let outcome = fleet.sleep(&ask, &Source::Cli, waiter);
    if !outcome.class().down || matches!(outcome, sleep::Outcome::Underway { .. }) {
        return 1;
    }
    let (Some(wait), sleep::Outcome::Done { domain, .. }) = (wait, &outcome) else {
        return 0;
    };
    let Some(host) = fleet.host(&domain.uri) else {
        return 1;
    };
    let deadline = started + wait;
    loop {
        let state = host.state_of(&domain.name).ok().flatten();
        let now = Instant::now();
        match state {
            Some((state, _)) if !sleep::is_up(state) && state != DomainState::InShutdown => {
                info!("{} is {state}", domain.name);
                return 0;
            }
            None => return 0,
            Some((state, _)) if now >= deadline => {
                warn!(
                    "{} is still {state} {} s after it was asked to sleep; not forced",
                    domain.name,
                    wait.as_secs()
                );
                return 1;
            }
            Some(_) => std::thread::sleep(POLL.min(deadline - now)),
        }
    }
}
