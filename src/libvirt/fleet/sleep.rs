//! A sleep request across every host: the domain its target names is found
//! as a wake finds it (the same lookup, so the same credential check and
//! operator's policy), then the one that is up is put to sleep on its host
//! ([`Host::sleep`]). The lookups run on watched threads: a host that does
//! not answer within the deadline is left out, never waited for. The action
//! runs on a thread of its own, on an action lane of the host, and is
//! waited for as long as the caller says ([`Waiter`]): a managed save of a
//! large guest takes minutes.

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
    /// not, and logs the one line of what came of it. An action not ended
    /// when `waiter` stops waiting is [`Outcome::Underway`], said in a line
    /// of its own; its thread logs the outcome when it ends.
    pub(crate) fn sleep(&self, ask: &Ask, source: &Source, waiter: Waiter) -> Outcome {
        let outcome = caught(
            || self.sleep_caught(ask, source, waiter),
            |error| Outcome::LookupFailed {
                uri: Arc::from(self.uris()),
                error,
            },
        );
        report::sleep::request(&ask.target, source, &outcome);
        outcome
    }

    fn sleep_caught(&self, ask: &Ask, source: &Source, waiter: Waiter) -> Outcome {
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
                let Waiter {
                    until,
                    hold,
                    acting,
                } = waiter;
                let spawned =
                    std::thread::Builder::new()
                        .name("wol-sleep".into())
                        .spawn(move || {
                            let put = caught(
                                || host.sleep(&candidate, token, dry_run, &*acting),
                                |e| Err(HostError::Failed(e)),
                            );
                            // Let go before the caller hears: whatever it tells
                            // its own caller next must find the action over.
                            drop(hold);
                            let outcome = put_outcome(named_, put, dry_run);
                            if let Some(late) = theirs.hand(outcome) {
                                report::sleep::request(&target, &source_, &late);
                            }
                        });
                match spawned {
                    Ok(_) => handoff.take(until).unwrap_or(Outcome::Underway {
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

/// Who waits for a sleep request, and how.
pub(crate) struct Waiter {
    /// Until when it waits for the action (`None`: to its end).
    pub(crate) until: Option<Instant>,
    /// Held until the action ends (the gateway's "busy": no idle exit
    /// while an action it began goes on).
    pub(crate) hold: Box<dyn Send>,
    /// Called just before the action and once it ended (the gateway's loop
    /// then forgets which wakes brought a domain up).
    pub(crate) acting: Box<dyn Fn() + Send>,
}

/// What the host's answer to a sleep means.
fn put_outcome(domain: Named, put: Result<Put, HostError>, dry_run: bool) -> Outcome {
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
        // Its definition or state could not be read: nothing was tried.
        Err(HostError::Failed(error)) => Outcome::LookupFailed {
            uri: domain.uri,
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

    /// The caller's side: the outcome if it comes by `deadline`.
    fn take(&self, deadline: Option<Instant>) -> Option<Outcome> {
        let mut state = lock(&self.state);
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
    use std::sync::mpsc;

    use super::*;
    use crate::decide::ask::Target;
    use crate::decide::idle::{IdlePolicy, Sleep};
    use crate::decide::outcome::{Decision, Outcome as Woke, Verb};
    use crate::decide::policy::WakeMeta;
    use crate::libvirt::fleet::Conclusion;
    use crate::libvirt::fleet::Timing;
    use crate::libvirt::host::Host;
    use crate::libvirt::hypervisor::{Connector, DomainRecord, Hypervisor, Listed};
    use crate::model::{Action, Mac, Uuid};

    const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 7]);

    /// The fake's domain: its state, whether it has a managed-save image,
    /// what was done to it, and how many lookups read its image.
    type Record = (DomainState, bool, Vec<&'static str>, usize);

    /// One running domain, `vm1`, whose managed save (its policy's action)
    /// waits until the test lets it end, and which records what was done.
    #[derive(Clone)]
    struct Saving {
        state: Arc<Mutex<Record>>,
        saving: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
        entered: mpsc::SyncSender<()>,
    }

    impl Hypervisor for Saving {
        fn list(&self) -> Result<Vec<Listed>, HvError> {
            Ok(vec![Listed {
                uuid: Uuid(1),
                name: "vm1".into(),
            }])
        }
        fn records(&self, domains: &[Listed], _: &(dyn Fn() + Sync)) -> Vec<DomainRecord> {
            domains
                .iter()
                .filter_map(|l| self.domain(l.uuid).ok())
                .collect()
        }
        fn domain(&self, uuid: Uuid) -> Result<DomainRecord, HvError> {
            let meta = WakeMeta {
                idle: Some(IdlePolicy::new(Duration::from_secs(60), Sleep::ManagedSave)),
                ..WakeMeta::default()
            };
            Ok(DomainRecord {
                name: "vm1".into(),
                uuid,
                macs: Ok(vec![MAC]),
                extra: Vec::new(),
                meta,
                agent: None,
            })
        }
        fn state(&self, _: Uuid) -> Result<DomainState, HvError> {
            Ok(lock(&self.state).0)
        }
        fn has_managed_save(&self, _: Uuid) -> Result<bool, HvError> {
            // A wake's lookup reads this: counted.
            let mut state = lock(&self.state);
            state.3 += 1;
            Ok(state.1)
        }
        fn perform(&self, _: Uuid, action: Action) -> Result<(), HvError> {
            let mut state = lock(&self.state);
            assert_eq!(action, Action::Start);
            let done = if state.1 { "restore" } else { "start" };
            state.2.push(done);
            (state.0, state.1) = (DomainState::Running, false);
            Ok(())
        }
        fn sleep(&self, _: Uuid, how: Sleep) -> Result<(), HvError> {
            assert_eq!(how, Sleep::ManagedSave);
            let _ = self.entered.send(());
            if let Some(done) = lock(&self.saving).take() {
                let _ = done.recv_timeout(Duration::from_secs(30));
            }
            let mut state = lock(&self.state);
            state.2.push("managedsave");
            (state.0, state.1) = (DomainState::ShutOff, true);
            Ok(())
        }
        fn ping(&self) -> Result<(), HvError> {
            Ok(())
        }
        fn is_alive(&self) -> bool {
            true
        }
    }

    impl Connector for Saving {
        fn uri(&self) -> &str {
            "fake:///saving"
        }
        fn connect(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
            Ok(Arc::new(self.clone()))
        }
    }

    #[test]
    fn a_wake_during_a_managed_save_waits_for_it_and_restores_the_image() {
        let (release, done) = mpsc::channel();
        let (entered, entering) = mpsc::sync_channel(1);
        let fake = Saving {
            state: Arc::new(Mutex::new((DomainState::Running, false, Vec::new(), 0))),
            saving: Arc::new(Mutex::new(Some(done))),
            entered,
        };
        let rescan = crate::libvirt::index::Rescan {
            interval: Duration::from_secs(5),
            full_interval: Duration::from_secs(60),
        };
        let host = Host::new(Box::new(fake.clone()), rescan);
        let fleet = Arc::new(Fleet::new(
            vec![host],
            false,
            Timing::with_deadline(Duration::from_secs(30)),
        ));
        let asleep = {
            let fleet = Arc::clone(&fleet);
            std::thread::spawn(move || {
                let ask = Ask {
                    target: Target::Domain(Arc::from("vm1")),
                    credential: Credential::Operator,
                };
                let waiter = Waiter {
                    until: None,
                    hold: Box::new(()),
                    acting: Box::new(|| {}),
                };
                fleet.sleep(&ask, &Source::Cli, waiter)
            })
        };
        entering
            .recv_timeout(Duration::from_secs(30))
            .expect("the managed save began");
        // A packet now: the domain still runs in libvirt's eyes, but it is
        // being saved; the wake must not answer "already up".
        let looked_before = lock(&fake.state).3;
        let woken = {
            let fleet = Arc::clone(&fleet);
            std::thread::spawn(move || fleet.wake(MAC))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&fake.state).3 == looked_before {
            assert!(Instant::now() < deadline, "the wake never looked");
            std::thread::yield_now();
        }
        drop(release);
        let slept = asleep.join().expect("sleep thread");
        assert!(matches!(slept, Outcome::Done { .. }), "{slept:?}");
        let woke = woken.join().expect("wake thread");
        let Conclusion::Decided(Decision {
            outcome: Woke::Done { verb, .. },
            ..
        }) = woke
        else {
            panic!("not woken: {woke:?}");
        };
        assert_eq!(verb, Verb::Restore);
        assert_eq!(lock(&fake.state).2, ["managedsave", "restore"]);
    }

    #[test]
    fn an_outcome_is_either_handed_over_or_logged_by_its_thread_never_both() {
        // In time: the caller has it, the thread says nothing.
        let handoff = Handoff::default();
        assert_eq!(handoff.hand(Outcome::NoMatch), None);
        assert_eq!(
            handoff.take(Some(Instant::now() + Duration::from_secs(1))),
            Some(Outcome::NoMatch)
        );
        // Late: the caller gave up, so the thread must say it.
        let handoff = Arc::new(Handoff::default());
        assert_eq!(handoff.take(Some(Instant::now())), None);
        assert_eq!(handoff.hand(Outcome::NoMatch), Some(Outcome::NoMatch));
        // A caller that waits to the end gets it from another thread.
        let handoff = Arc::new(Handoff::default());
        let theirs = Arc::clone(&handoff);
        let thread = std::thread::spawn(move || theirs.hand(Outcome::NoMatch));
        assert_eq!(handoff.take(None), Some(Outcome::NoMatch));
        assert_eq!(thread.join().ok().flatten(), None);
    }
}
