//! Every configured host, asked together: one wake request from lookup to
//! action.
//!
//! [`Fleet::wake`] runs on a worker thread of its own. It asks every host in
//! parallel (a thread each), collects their answers, and decides as soon as
//! [`verdict`] allows: a host that does not answer within the deadline is
//! silent, and is left out of a decision another host's answer already
//! settles; when no answering host has the MAC, the request waits for the
//! missing ones like any request for an unreachable daemon. Then one
//! [`plan`] over the candidates of all hosts (so the ambiguity rule spans
//! hosts) and, if it says so, one action.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::decide::ask::{Ask, Target};
use crate::decide::control::Route;
use crate::decide::outcome::{Decision, Named, Outcome, Verb, WaitFor};
use crate::decide::plan::{Candidate, Plan, plan};
use crate::libvirt::host::{Acted, Health, Host, HostError, Lookup};
use crate::model::{Action, HvError};
use crate::secret::Hash;

/// How long to wait for hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A host whose libvirt answers nothing for this long is silent
    /// (`--libvirt-timeout`).
    pub deadline: Duration,
    /// How long a decision that another host's answer already settles waits
    /// for the remaining hosts.
    pub grace: Duration,
}

impl Timing {
    /// The gateway's timing for a given deadline: the grace is a second, or
    /// the deadline if shorter.
    pub fn with_deadline(deadline: Duration) -> Self {
        Timing {
            deadline,
            grace: deadline.min(Duration::from_secs(1)),
        }
    }
}

/// One host's answer about a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// What the host knows.
    Found(Lookup),
    /// libvirt answered with an error.
    Failed(HvError),
    /// Not reachable.
    Unreachable(HvError),
    /// No answer within the deadline.
    Silent,
}

/// What to do with the answers so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decide on the answers there are.
    Decide,
    /// Wait for more answers, at most until `until` after the start if set.
    Wait {
        /// When the grace for the missing answers ends.
        until: Option<Duration>,
    },
    /// No answering host has the MAC, and some host is out: the request
    /// waits for it.
    Park,
}

/// Decides whether the answers so far (`None`: not yet) settle a request,
/// `elapsed` after it started.
pub fn verdict(answers: &[Option<Answer>], elapsed: Duration, grace: Duration) -> Verdict {
    let found = answers
        .iter()
        .any(|a| matches!(a, Some(Answer::Found(lookup)) if lookup.has_candidate()));
    let pending = answers.iter().any(Option::is_none);
    let out = answers
        .iter()
        .any(|a| matches!(a, Some(Answer::Unreachable(_) | Answer::Silent)));
    match (found, pending, out) {
        (_, false, false) => Verdict::Decide,
        (true, false, true) => Verdict::Decide,
        (true, true, _) if elapsed >= grace => Verdict::Decide,
        (true, true, _) => Verdict::Wait { until: Some(grace) },
        (false, true, _) => Verdict::Wait { until: None },
        (false, false, true) => Verdict::Park,
    }
}

/// How a wake request ended on its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// Decided (and, if so decided, acted on).
    Decided(Decision),
    /// Not decided: it waits for these hosts.
    Wait(WaitFor),
}

/// Every `--libvirt-uri`, in order.
#[derive(Debug)]
pub struct Fleet {
    hosts: Vec<Arc<Host>>,
    dry_run: bool,
    timing: Timing,
}

impl Fleet {
    /// The hosts, in `--libvirt-uri` order; with `dry_run` nothing is changed.
    pub fn new(hosts: Vec<Host>, dry_run: bool, timing: Timing) -> Self {
        let count = hosts.len();
        Fleet {
            hosts: hosts
                .into_iter()
                .enumerate()
                .map(|(position, host)| Arc::new(host.at(position, count)))
                .collect(),
            dry_run,
            timing,
        }
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// The host with this URI.
    pub fn host(&self, uri: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|host| &**host.uri() == uri)
    }

    /// The URIs, for messages.
    pub fn uris(&self) -> String {
        let uris: Vec<&str> = self.hosts.iter().map(|h| &**h.uri()).collect();
        uris.join(", ")
    }

    /// True if some host has shown `token` on a domain (see
    /// [`Host::vouches`]); never waits on libvirt.
    pub fn vouches(&self, token: &Hash) -> bool {
        self.hosts.iter().any(|host| host.vouches(token))
    }

    /// Domain listings and full scans made so far, on all hosts.
    pub fn refreshes(&self) -> (u64, u64) {
        self.hosts
            .iter()
            .fold((0, 0), |(l, f), h| (l + h.listings(), f + h.full_scans()))
    }

    /// Where a request for `target` should go, known without asking
    /// libvirt (see [`Host::route`]): a worker if any host needs one to ask
    /// libvirt; else one to refresh an index, if any host's may be
    /// refreshed; else after a refresh under way, if any; else no host has
    /// it ([`Route::Lacks`]: decided "no domain" at once, in the caller). A
    /// domain by name is always asked for.
    pub fn route(&self, target: &Target, now: Instant, wall: SystemTime) -> Route {
        let Target::Mac(mac) = *target else {
            return Route::Worker;
        };
        let mut route = Route::Lacks;
        for host in &self.hosts {
            route = match (route, host.route(mac, now, wall)) {
                (_, Route::Worker) => return Route::Worker,
                (Route::Refresh, _) | (_, Route::Refresh) => Route::Refresh,
                (Route::AfterRefresh, _) | (_, Route::AfterRefresh) => Route::AfterRefresh,
                (_, Route::Lacks) => route,
            };
        }
        route
    }

    /// Finds the domain owning the packet's MAC on the hosts and brings it
    /// up. Blocks (on a worker thread) until decided, or until it must wait.
    pub fn wake(&self, ask: impl Into<Ask>) -> Conclusion {
        let ask = ask.into();
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let mut answers: Vec<Option<Answer>> = vec![None; self.hosts.len()];
        for (i, host) in self.hosts.iter().enumerate() {
            // A silent host gets no new call until its stuck one returns.
            if let Health::Silent { .. } = host.health() {
                answers[i] = Some(Answer::Silent);
                continue;
            }
            let (host, tx, ask) = (Arc::clone(host), tx.clone(), ask.clone());
            let spawned = std::thread::Builder::new()
                .name("wol-lookup".into())
                .spawn(move || {
                    let answer = catch_unwind(AssertUnwindSafe(|| host.lookup(&ask)))
                        .unwrap_or_else(|_| {
                            Err(HostError::Failed(HvError::other(
                                "internal error (a panic)",
                            )))
                        });
                    let _ = tx.send((i, answer));
                });
            if let Err(e) = spawned {
                let error = HvError::other(format!("cannot start a thread: {e}"));
                answers[i] = Some(Answer::Unreachable(error));
            }
        }
        drop(tx);
        loop {
            let now = Instant::now();
            let mut next_silence = None;
            for (i, host) in self.hosts.iter().enumerate() {
                if answers[i].is_some() {
                    continue;
                }
                // Silence is measured from the last answer of any call on
                // the host: a long scan that keeps answering is not silent.
                let next =
                    host.check_silence(started, now, self.timing.deadline, self.timing.grace);
                match next {
                    Some(at) => {
                        next_silence = Some(next_silence.map_or(at, |t: Instant| t.min(at)));
                    }
                    None => answers[i] = Some(Answer::Silent),
                }
            }
            let until = match verdict(&answers, now - started, self.timing.grace) {
                Verdict::Decide => return self.decide(&answers),
                Verdict::Park => return Conclusion::Wait(self.wait_for(&answers)),
                Verdict::Wait { until } => until.map(|d| started + d),
            };
            let wake_at = [until, next_silence].into_iter().flatten().min();
            let timeout = wake_at.map_or(self.timing.deadline, |at| at - now);
            match rx.recv_timeout(timeout) {
                Ok((i, answer)) => {
                    answers[i] = Some(match answer {
                        Ok(lookup) => Answer::Found(lookup),
                        Err(HostError::Failed(e)) => Answer::Failed(e),
                        Err(HostError::Unreachable(e)) => Answer::Unreachable(e),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every lookup thread has answered.
                Err(RecvTimeoutError::Disconnected) => {
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(Answer::Silent);
                    }
                }
            }
        }
    }

    fn wait_for(&self, answers: &[Option<Answer>]) -> WaitFor {
        let hosts = self
            .hosts
            .iter()
            .zip(answers)
            .filter_map(|(host, answer)| match answer {
                Some(Answer::Unreachable(e)) => Some((Arc::clone(host.uri()), Some(e.clone()))),
                Some(Answer::Silent) | None => Some((Arc::clone(host.uri()), None)),
                Some(Answer::Found(_) | Answer::Failed(_)) => None,
            })
            .collect();
        WaitFor { hosts }
    }

    fn named(&self, name: &str, host: usize) -> Named {
        Named {
            name: name.to_owned(),
            uri: Arc::clone(self.hosts[host].uri()),
        }
    }

    /// Runs the action on a thread of its own and waits for it like for a
    /// lookup: as long as libvirt answers something (a start held up by a
    /// slow qemu hook still answers pings), and no longer. `None`: the host
    /// fell silent; the action may still complete there.
    fn act_watched(&self, domain: &Candidate, action: Action) -> Option<Result<Acted, HostError>> {
        let host = Arc::clone(&self.hosts[domain.host]);
        let (tx, rx) = mpsc::channel();
        let (candidate, dry_run) = (domain.clone(), self.dry_run);
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("wol-act".into())
            .spawn(move || {
                let result =
                    catch_unwind(AssertUnwindSafe(|| host.act(&candidate, action, dry_run)))
                        .unwrap_or_else(|_| {
                            Err(HostError::Failed(HvError::other(
                                "internal error (a panic)",
                            )))
                        });
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            let error = HvError::other(format!("cannot start a thread: {e}"));
            return Some(Err(HostError::Unreachable(error)));
        }
        let host = &self.hosts[domain.host];
        loop {
            let now = Instant::now();
            let next = host.check_silence(started, now, self.timing.deadline, self.timing.grace)?;
            match rx.recv_timeout(next.saturating_duration_since(now)) {
                Ok(result) => return Some(result),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let error = HvError::other("internal error (the action ended unseen)");
                    return Some(Err(HostError::Failed(error)));
                }
            }
        }
    }

    /// One plan over every answering host's candidates, then the action.
    fn decide(&self, answers: &[Option<Answer>]) -> Conclusion {
        let mut candidates = Vec::new();
        let mut refused = Vec::new();
        let mut failed = None;
        let mut left_out = Vec::new();
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Some(Answer::Found(lookup)) => {
                    candidates.extend(lookup.candidates.iter().cloned());
                    refused.extend(
                        lookup
                            .refused
                            .iter()
                            .map(|(name, why)| (self.named(name, i), *why)),
                    );
                }
                Some(Answer::Failed(e)) => {
                    failed.get_or_insert_with(|| (Arc::clone(self.hosts[i].uri()), e.clone()));
                }
                Some(Answer::Unreachable(_) | Answer::Silent) | None => {
                    left_out.push(Arc::clone(self.hosts[i].uri()));
                }
            }
        }
        let outcome = match plan(&candidates) {
            Plan::NoMatch => match (failed, refused.first()) {
                (Some((uri, error)), _) => Outcome::LookupFailed { uri, error },
                (None, Some(&(_, reason))) => Outcome::Refused {
                    reason,
                    domains: refused.into_iter().map(|(name, _)| name).collect(),
                },
                (None, None) => Outcome::NoMatch,
            },
            Plan::Ambiguous => Outcome::Ambiguous {
                domains: candidates
                    .iter()
                    .map(|c| self.named(&c.name, c.host))
                    .collect(),
            },
            Plan::AlreadyUp { domain } => Outcome::AlreadyUp {
                domain: self.named(&domain.name, domain.host),
                state: domain.state,
                others: candidates
                    .iter()
                    .filter(|c| (c.host, c.uuid) != (domain.host, domain.uuid))
                    .map(|c| self.named(&c.name, c.host))
                    .collect(),
            },
            Plan::Act { domain, action } => {
                let named = self.named(&domain.name, domain.host);
                let (state, dry_run) = (domain.state, self.dry_run);
                match self.act_watched(domain, action) {
                    Some(Ok(Acted::Done(verb))) if dry_run => Outcome::DryRun {
                        domain: named,
                        state,
                        verb,
                    },
                    Some(Ok(Acted::Done(verb))) => Outcome::Done {
                        domain: named,
                        state,
                        verb,
                    },
                    Some(Ok(Acted::Failed(verb, error))) => Outcome::Failed {
                        domain: named,
                        state,
                        verb,
                        error,
                    },
                    Some(Ok(Acted::AlreadyUp(now))) => Outcome::AlreadyUp {
                        domain: named,
                        state: now,
                        others: Vec::new(),
                    },
                    Some(Err(HostError::Failed(error))) => Outcome::Failed {
                        domain: named,
                        state,
                        verb: Verb::of(action, false),
                        error,
                    },
                    // The connection died, or libvirt fell silent, during the
                    // action: whether it happened is unknown; the request
                    // waits like any other for that host, and its retry will
                    // see the state.
                    Some(Err(HostError::Unreachable(e))) => {
                        return Conclusion::Wait(WaitFor {
                            hosts: vec![(Arc::clone(&named.uri), Some(e))],
                        });
                    }
                    None => {
                        return Conclusion::Wait(WaitFor {
                            hosts: vec![(Arc::clone(&named.uri), None)],
                        });
                    }
                }
            }
        };
        Conclusion::Decided(Decision { outcome, left_out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::plan::Candidate;
    use crate::model::{DomainState, Uuid};

    const GRACE: Duration = Duration::from_secs(1);

    fn found(domain: bool) -> Option<Answer> {
        let candidates = if domain {
            vec![Candidate {
                name: "web01".into(),
                uuid: Uuid(1),
                state: DomainState::ShutOff,
                managed_save: false,
                host: 0,
                epoch: 0,
            }]
        } else {
            Vec::new()
        };
        Some(Answer::Found(Lookup {
            candidates,
            refused: Vec::new(),
        }))
    }

    fn unreachable() -> Option<Answer> {
        Some(Answer::Unreachable(HvError::other("Connection refused")))
    }

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn all_answers_in_decides() {
        assert_eq!(verdict(&[found(true)], at(0), GRACE), Verdict::Decide);
        assert_eq!(
            verdict(&[found(false), found(false)], at(0), GRACE),
            Verdict::Decide
        );
        let failed = Some(Answer::Failed(HvError::other("listing failed")));
        assert_eq!(
            verdict(&[failed, found(false)], at(0), GRACE),
            Verdict::Decide
        );
    }

    #[test]
    fn a_silent_host_is_left_out_after_the_grace_when_another_has_the_domain() {
        let answers = [found(true), None];
        assert_eq!(
            verdict(&answers, at(200), GRACE),
            Verdict::Wait { until: Some(GRACE) }
        );
        assert_eq!(verdict(&answers, at(1000), GRACE), Verdict::Decide);
        // Found silent by its deadline: no reason to wait for the grace.
        assert_eq!(
            verdict(&[found(true), Some(Answer::Silent)], at(10), GRACE),
            Verdict::Decide
        );
        assert_eq!(
            verdict(&[found(true), unreachable()], at(10), GRACE),
            Verdict::Decide
        );
    }

    #[test]
    fn a_refusal_does_not_settle_what_a_silent_host_may_permit() {
        let refused = Some(Answer::Found(Lookup {
            candidates: Vec::new(),
            refused: vec![("web01".into(), crate::decide::policy::Refusal::NotAllowed)],
        }));
        assert_eq!(
            verdict(&[refused.clone(), Some(Answer::Silent)], at(5000), GRACE),
            Verdict::Park
        );
        assert_eq!(
            verdict(&[refused, None], at(5000), GRACE),
            Verdict::Wait { until: None }
        );
    }

    #[test]
    fn without_the_domain_elsewhere_the_request_waits_for_missing_hosts() {
        assert_eq!(
            verdict(&[found(false), None], at(5000), GRACE),
            Verdict::Wait { until: None },
            "until it answers or falls silent"
        );
        assert_eq!(
            verdict(&[found(false), Some(Answer::Silent)], at(5000), GRACE),
            Verdict::Park
        );
        assert_eq!(
            verdict(&[found(false), unreachable()], at(0), GRACE),
            Verdict::Park
        );
        assert_eq!(verdict(&[unreachable()], at(0), GRACE), Verdict::Park);
        assert_eq!(
            verdict(&[None], at(0), GRACE),
            Verdict::Wait { until: None }
        );
    }
}
