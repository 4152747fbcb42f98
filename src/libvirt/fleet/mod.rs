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

mod sleep;

pub(crate) use self::sleep::{Seen, Waiter};

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::decide::ask::{Ask, Target};
use crate::decide::control::Route;
use crate::decide::outcome::{Decision, Named, Outcome, Verb, WaitFor};
use crate::decide::plan::{Candidate, Plan, plan};
use crate::decide::policy::Refusal;
use crate::libvirt::host::health::Health;
use crate::libvirt::host::{Acted, Host, HostError, Lookup};
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
pub(crate) enum Answer {
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
pub(crate) enum Verdict {
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
pub(crate) fn verdict(answers: &[Option<Answer>], elapsed: Duration, grace: Duration) -> Verdict {
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
    pub(crate) fn host(&self, uri: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|host| &**host.uri() == uri)
    }

    /// The URIs, for messages.
    pub(crate) fn uris(&self) -> String {
        let uris: Vec<&str> = self.hosts.iter().map(|h| &**h.uri()).collect();
        uris.join(", ")
    }

    /// True if some host has shown `token` on a domain (see
    /// [`Host::vouches`]); never waits on libvirt.
    pub(crate) fn vouches(&self, token: &Hash) -> bool {
        self.hosts.iter().any(|host| host.vouches(token))
    }

    /// Domain listings and full scans made so far, on all hosts.
    pub(crate) fn refreshes(&self) -> (u64, u64) {
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
    pub(crate) fn route(&self, target: &Target, now: Instant, wall: SystemTime) -> Route {
        let Target::Mac(mac) = *target else {
            return Route::Worker;
        };
        let mut route = Route::Lacks;
        for host in &self.hosts {
            route = match (route, host.route(mac, now, wall)) {
                (_, Route::Worker) => return Route::Worker,
                (Route::Refresh, _) | (_, Route::Refresh) => Route::Refresh,
                (Route::Busy, _) | (_, Route::Busy) => Route::Busy,
                (Route::AfterRefresh, _) | (_, Route::AfterRefresh) => Route::AfterRefresh,
                (_, Route::Lacks) => route,
            };
        }
        route
    }

    /// Finds the domain owning the packet's MAC on the hosts and brings it
    /// up. Blocks (on a worker thread) until decided, or until it must wait.
    /// Never unwinds: a panic anywhere in it concludes the request as a
    /// failed lookup ("internal error (a panic)"), so its caller needs no
    /// guard of its own and the request never counts as in flight forever.
    pub fn wake(&self, ask: impl Into<Ask>) -> Conclusion {
        let ask = ask.into();
        caught(
            || self.wake_caught(ask),
            |error| {
                Conclusion::Decided(Decision {
                    outcome: Outcome::LookupFailed {
                        uri: Arc::from(self.uris()),
                        error,
                    },
                    left_out: Vec::new(),
                })
            },
        )
    }

    fn wake_caught(&self, ask: Ask) -> Conclusion {
        let mut lookups = self.look_up(&ask);
        loop {
            let (answers, started) = (&lookups.answers, lookups.watched.started);
            let until = match verdict(answers, started.elapsed(), self.timing.grace) {
                Verdict::Decide => return self.decide(answers),
                Verdict::Park => return Conclusion::Wait(self.wait_for(answers)),
                Verdict::Wait { until } => until.map(|d| started + d),
            };
            lookups.hear(until);
        }
    }

    /// Starts every host's lookup of `ask`, each on a watched thread. A
    /// silent host gets no new call until its stuck one returns: it is
    /// silent at once.
    fn look_up(&self, ask: &Ask) -> Lookups {
        let mut answers: Vec<Option<Answer>> = vec![None; self.hosts.len()];
        let mut calls = Vec::new();
        for (i, host) in self.hosts.iter().enumerate() {
            if let Health::Silent { .. } = host.health() {
                answers[i] = Some(Answer::Silent);
                continue;
            }
            let ask = ask.clone();
            calls.push(Call::new(i, host, move |host: &Host| host.lookup(&ask)));
        }
        Lookups {
            answers,
            watched: watched("wol-lookup", calls, self.timing),
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
        let (candidate, dry_run) = (domain.clone(), self.dry_run);
        let call = Call::new(0, &self.hosts[domain.host], move |host: &Host| {
            host.act(&candidate, action, dry_run)
        });
        let mut acting = watched("wol-act", vec![call], self.timing);
        loop {
            match acting.next(None) {
                Heard::Answer(_, result) => return Some(result),
                Heard::Silent(_) => return None,
                Heard::Nothing => {}
                Heard::Ended => {
                    let error = HvError::other("internal error (the action ended unseen)");
                    return Some(Err(HostError::Failed(error)));
                }
            }
        }
    }

    /// One plan over every answering host's candidates, then the action.
    fn decide(&self, answers: &[Option<Answer>]) -> Conclusion {
        let Gathered {
            candidates,
            refused,
            failed,
            left_out,
        } = self.gather(answers);
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
            Plan::Act { domain, action } => match self.act(domain, action) {
                Ok(outcome) => outcome,
                Err(waiting) => return Conclusion::Wait(waiting),
            },
        };
        Conclusion::Decided(Decision { outcome, left_out })
    }

    /// What the answers so far hold, host by host.
    fn gather(&self, answers: &[Option<Answer>]) -> Gathered {
        let mut gathered = Gathered::default();
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Some(Answer::Found(lookup)) => {
                    gathered
                        .candidates
                        .extend(lookup.candidates.iter().cloned());
                    gathered.refused.extend(
                        lookup
                            .refused
                            .iter()
                            .map(|(name, why)| (self.named(name, i), *why)),
                    );
                }
                Some(Answer::Failed(e)) => {
                    (gathered.failed)
                        .get_or_insert_with(|| (Arc::clone(self.hosts[i].uri()), e.clone()));
                }
                Some(Answer::Unreachable(_) | Answer::Silent) | None => {
                    gathered.left_out.push(Arc::clone(self.hosts[i].uri()));
                }
            }
        }
        gathered
    }

    /// Performs the planned action and says how it went; `Err`: whether it
    /// happened is unknown (the host fell out during it), and the request
    /// waits for the host.
    fn act(&self, domain: &Candidate, action: Action) -> Result<Outcome, WaitFor> {
        let named = self.named(&domain.name, domain.host);
        let (state, dry_run) = (domain.state, self.dry_run);
        Ok(match self.act_watched(domain, action) {
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
            // action: whether it happened is unknown; the request waits
            // like any other for that host, and its retry will see the
            // state.
            Some(Err(HostError::Unreachable(e))) => {
                return Err(WaitFor {
                    hosts: vec![(Arc::clone(&named.uri), Some(e))],
                });
            }
            None => {
                return Err(WaitFor {
                    hosts: vec![(Arc::clone(&named.uri), None)],
                });
            }
        })
    }
}

/// Every host's lookup of one request under way, and their answers so far
/// (`None`: not yet).
struct Lookups {
    answers: Vec<Option<Answer>>,
    watched: Watched<Lookup>,
}

impl Lookups {
    /// Waits at most until `until` and takes what it heard into the answers.
    fn hear(&mut self, until: Option<Instant>) {
        match self.watched.next(until) {
            Heard::Answer(i, answer) => {
                self.answers[i] = Some(match answer {
                    Ok(lookup) => Answer::Found(lookup),
                    Err(HostError::Failed(e)) => Answer::Failed(e),
                    Err(HostError::Unreachable(e)) => Answer::Unreachable(e),
                });
            }
            Heard::Silent(silent) => {
                for i in silent {
                    self.answers[i] = Some(Answer::Silent);
                }
            }
            Heard::Nothing => {}
            // Every lookup thread has answered.
            Heard::Ended => {
                for answer in self.answers.iter_mut().filter(|a| a.is_none()) {
                    *answer = Some(Answer::Silent);
                }
            }
        }
    }
}

/// The answers of a wake, sorted for its decision.
#[derive(Default)]
struct Gathered {
    /// Every answering host's candidates.
    candidates: Vec<Candidate>,
    /// Domains a policy refused, and why.
    refused: Vec<(Named, Refusal)>,
    /// The first host whose libvirt answered with an error.
    failed: Option<(Arc<str>, HvError)>,
    /// Hosts decided without (unreachable, silent, or not answered yet).
    left_out: Vec<Arc<str>>,
}

/// `call`, or what `instead` makes of the error when it panics: a panic in
/// a request's thread must still conclude the request. The one place the
/// fleet catches a panic (the default hook has printed it already).
fn caught<T>(call: impl FnOnce() -> T, instead: impl FnOnce(HvError) -> T) -> T {
    catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|_| instead(HvError::other("internal error (a panic)")))
}

/// What a [`Call`] runs on its host.
type Run<T> = Box<dyn FnOnce(&Host) -> Result<T, HostError> + Send>;

/// One call on one host, to run on a thread of its own (see [`watched`]).
struct Call<T> {
    /// The caller's name for it (the host's place among the answers).
    key: usize,
    host: Arc<Host>,
    run: Run<T>,
}

impl<T> Call<T> {
    fn new(
        key: usize,
        host: &Arc<Host>,
        run: impl FnOnce(&Host) -> Result<T, HostError> + Send + 'static,
    ) -> Self {
        Call {
            key,
            host: Arc::clone(host),
            run: Box::new(run),
        }
    }
}

/// Calls under way, each on a thread of its own, watched for silence (see
/// [`watched`]).
struct Watched<T> {
    started: Instant,
    timing: Timing,
    answers: Receiver<(usize, Result<T, HostError>)>,
    /// The hosts whose call has not answered nor been found silent.
    pending: Vec<(usize, Arc<Host>)>,
}

/// What [`Watched::next`] heard.
enum Heard<T> {
    /// The call with this key returned (or its thread could not start: the
    /// host counts as unreachable).
    Answer(usize, Result<T, HostError>),
    /// These calls' hosts have fallen silent (see [`Host::check_silence`]).
    Silent(Vec<usize>),
    /// Nothing until the instant asked for.
    Nothing,
    /// Every thread has ended, some without an answer.
    Ended,
}

/// Starts each call on a thread of its own named `name`, a panic in it
/// caught as an error ("internal error (a panic)"). The thread-and-silence
/// glue of both a wake's lookups and its action: the caller then takes
/// answers and silences from [`Watched::next`] until it has what it needs.
fn watched<T: Send + 'static>(name: &str, calls: Vec<Call<T>>, timing: Timing) -> Watched<T> {
    let started = Instant::now();
    let (tx, answers) = mpsc::channel();
    let mut pending = Vec::with_capacity(calls.len());
    for Call { key, host, run } in calls {
        pending.push((key, Arc::clone(&host)));
        let sender = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let answer = caught(|| run(&host), |e| Err(HostError::Failed(e)));
                let _ = sender.send((key, answer));
            });
        if let Err(e) = spawned {
            let error = HvError::other(format!("cannot start a thread: {e}"));
            let _ = tx.send((key, Err(HostError::Unreachable(error))));
        }
    }
    Watched {
        started,
        timing,
        answers,
        pending,
    }
}

impl<T> Watched<T> {
    /// Waits for the next answer, at most until `until` (and until the
    /// next look at a pending host's silence). Silence is measured from the
    /// last answer of any call on the host: a long scan that keeps
    /// answering is not silent.
    fn next(&mut self, until: Option<Instant>) -> Heard<T> {
        let now = Instant::now();
        let Timing { deadline, grace } = self.timing;
        let mut silent = Vec::new();
        let mut next_silence: Option<Instant> = None;
        self.pending.retain(|(key, host)| {
            match host.check_silence(self.started, now, deadline, grace) {
                Some(at) => {
                    next_silence = Some(next_silence.map_or(at, |t| t.min(at)));
                    true
                }
                None => {
                    silent.push(*key);
                    false
                }
            }
        });
        if !silent.is_empty() {
            return Heard::Silent(silent);
        }
        let wake_at = [until, next_silence].into_iter().flatten().min();
        let timeout = wake_at.map_or(deadline, |at| at.saturating_duration_since(now));
        match self.answers.recv_timeout(timeout) {
            Ok((key, answer)) => {
                self.pending.retain(|(k, _)| *k != key);
                Heard::Answer(key, answer)
            }
            Err(RecvTimeoutError::Timeout) => Heard::Nothing,
            Err(RecvTimeoutError::Disconnected) => Heard::Ended,
        }
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

    /// A hypervisor with one shut-off domain, `vm1`, MAC `52:54:00:00:00:01`;
    /// it panics on every call with `panics`.
    struct One {
        panics: bool,
    }

    const MAC: crate::model::Mac = crate::model::Mac([0x52, 0x54, 0, 0, 0, 1]);

    impl crate::libvirt::hypervisor::Hypervisor for One {
        fn list(&self) -> Result<Vec<crate::libvirt::hypervisor::Listed>, HvError> {
            assert!(!self.panics, "a bug in a lookup");
            Ok(vec![crate::libvirt::hypervisor::Listed {
                uuid: Uuid(1),
                name: "vm1".into(),
            }])
        }
        fn records(
            &self,
            domains: &[crate::libvirt::hypervisor::Listed],
            _: &(dyn Fn() + Sync),
        ) -> Vec<crate::libvirt::hypervisor::DomainRecord> {
            domains
                .iter()
                .filter_map(|l| self.domain(l.uuid).ok())
                .collect()
        }
        fn domain(&self, uuid: Uuid) -> Result<crate::libvirt::hypervisor::DomainRecord, HvError> {
            Ok(crate::libvirt::hypervisor::DomainRecord {
                name: "vm1".into(),
                uuid,
                macs: Ok(vec![MAC]),
                extra: Vec::new(),
                meta: crate::decide::policy::WakeMeta::default(),
                agent: None,
            })
        }
        fn state(&self, _: Uuid) -> Result<DomainState, HvError> {
            Ok(DomainState::ShutOff)
        }
        fn has_managed_save(&self, _: Uuid) -> Result<bool, HvError> {
            Ok(false)
        }
        fn perform(&self, _: Uuid, _: Action) -> Result<(), HvError> {
            Ok(())
        }
        fn ping(&self) -> Result<(), HvError> {
            Ok(())
        }
        fn is_alive(&self) -> bool {
            true
        }
    }

    /// Connects to a [`One`] at once, or (`held`) only when the test lets
    /// go: a host whose first connect is still under way.
    struct Connecting {
        uri: &'static str,
        held: Option<std::sync::Mutex<mpsc::Receiver<()>>>,
        panics: bool,
    }

    impl crate::libvirt::hypervisor::Connector for Connecting {
        fn uri(&self) -> &str {
            self.uri
        }
        fn connect(&self) -> Result<Arc<dyn crate::libvirt::hypervisor::Hypervisor>, HvError> {
            if let Some(held) = &self.held {
                // Until the sender is dropped (the end of the test).
                let _ = crate::lock::lock(held).recv_timeout(Duration::from_secs(60));
                return Err(HvError::other("Connection timed out"));
            }
            Ok(Arc::new(One {
                panics: self.panics,
            }))
        }
    }

    fn host(uri: &'static str, held: Option<mpsc::Receiver<()>>, panics: bool) -> Host {
        let connector = Connecting {
            uri,
            held: held.map(std::sync::Mutex::new),
            panics,
        };
        let rescan = crate::libvirt::index::Rescan {
            interval: Duration::from_secs(5),
            full_interval: Duration::from_secs(60),
        };
        Host::new(Box::new(connector), rescan)
    }

    /// The investigation of issue 17 at the fleet: host B has never
    /// answered, and its first connect hangs (a link cut while it was being
    /// made). Its health is not known (it counts as answering) and it has
    /// no connection to ping; host A has the domain. The wake is decided
    /// one grace after it started, B left out, not at B's deadline.
    #[test]
    fn a_host_whose_first_connect_hangs_is_left_out_after_the_grace() {
        let (release, held) = mpsc::channel();
        let timing = Timing {
            deadline: Duration::from_secs(30),
            grace: Duration::from_millis(300),
        };
        let fleet = Fleet::new(
            vec![
                host("fake://a/", None, false),
                host("fake://b/", Some(held), false),
            ],
            false,
            timing,
        );
        let started = Instant::now();
        let conclusion = fleet.wake(MAC);
        let took = started.elapsed();
        let Conclusion::Decided(Decision {
            outcome: Outcome::Done { domain, .. },
            left_out,
        }) = conclusion
        else {
            panic!("not started on A: {conclusion:?}");
        };
        assert_eq!((domain.name.as_str(), &*domain.uri), ("vm1", "fake://a/"));
        assert_eq!(left_out, [Arc::from("fake://b/")]);
        assert!(took >= timing.grace, "the grace was waited: {took:?}");
        assert!(took < Duration::from_secs(10), "not B's deadline: {took:?}");
        assert_eq!(fleet.hosts()[1].health(), Health::Answering);
        drop(release);
    }

    #[test]
    fn a_panic_in_a_lookup_concludes_the_wake_as_a_failed_lookup() {
        let fleet = Fleet::new(
            vec![host("fake://a/", None, true)],
            false,
            Timing::with_deadline(Duration::from_secs(10)),
        );
        let conclusion = fleet.wake(MAC);
        let Conclusion::Decided(Decision {
            outcome: Outcome::LookupFailed { uri, error },
            ..
        }) = conclusion
        else {
            panic!("{conclusion:?}");
        };
        assert_eq!(&*uri, "fake://a/");
        assert_eq!(error, HvError::other("internal error (a panic)"));
    }

    #[test]
    fn caught_turns_a_panic_into_the_internal_error() {
        assert_eq!(caught(|| 1, |_| 2), 1);
        let made = caught(|| -> Result<(), HvError> { panic!("a bug") }, Err);
        assert_eq!(made, Err(HvError::other("internal error (a panic)")));
    }
}
