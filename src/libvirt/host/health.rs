//! Whether a host answers, as pure transitions: each takes the instant it
//! happens at and returns what is news (to report, to tell the loop), and
//! nothing here waits, logs or starts a thread. [`super::Host`] applies the
//! transitions under its lock and does the rest: the reports, the events,
//! and the liveness ping a [`Silence::ping`] asks for.

use std::time::{Duration, Instant};

/// Whether a host answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Its last call was answered (or none was made yet).
    Answering,
    /// Connecting failed, or the connection died, since `since`.
    Unreachable {
        /// When it was first found unreachable.
        since: Instant,
    },
    /// A call has gone unanswered for longer than the deadline (a stopped
    /// daemon, a network that drops packets); until it returns, no new call
    /// is sent there.
    Silent {
        /// When it was found silent.
        since: Instant,
    },
}

/// A host's health, and the liveness ping that may be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watch {
    health: Health,
    /// When the running liveness ping started (or, with no connection to
    /// ping on, when the grace for the unanswered connect started).
    ping: Option<Instant>,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            health: Health::Answering,
            ping: None,
        }
    }
}

/// What looking at an unanswered call came to (see [`Watch::silent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Silence {
    /// A liveness ping is due now (on the open connection, if there is
    /// one); it answers by [`Watch::answered`], and ends by
    /// [`Watch::ping_ended`] either way.
    pub(crate) ping: bool,
    /// When to look again; `None`: the host is silent.
    pub(crate) again: Option<Instant>,
    /// The host has just fallen silent: report it (once per outage).
    pub(crate) news: bool,
}

impl Watch {
    /// Whether the host answers.
    pub(crate) fn health(&self) -> &Health {
        &self.health
    }

    /// libvirt answered at `now`. Returns how long the host was out when
    /// this ends an outage (to report, and to tell the requests waiting
    /// for it).
    pub(crate) fn answered(&mut self, now: Instant) -> Option<Duration> {
        self.ping = None;
        match std::mem::replace(&mut self.health, Health::Answering) {
            Health::Answering => None,
            Health::Unreachable { since } | Health::Silent { since } => {
                Some(now.saturating_duration_since(since))
            }
        }
    }

    /// libvirt could not be reached at `now` (connecting failed, or the
    /// connection died). True when this begins an outage (to report).
    pub(crate) fn failed(&mut self, now: Instant) -> bool {
        match self.health {
            Health::Answering => {
                self.health = Health::Unreachable { since: now };
                true
            }
            // A silent host whose stuck call failed: still out, said once.
            Health::Silent { since } => {
                self.health = Health::Unreachable { since };
                false
            }
            Health::Unreachable { .. } => false,
        }
    }

    /// Looks at a call that has waited since `since`, at `now`; `last` is
    /// when this host last answered anything (any call). Until `deadline`
    /// has passed without an answer, look again when it will have. Then a
    /// ping tells a busy daemon (a start in a slow qemu hook holds up every
    /// listing for its duration, but a ping is answered) from a silent one:
    /// the host is silent when nothing answered, not even the ping, within
    /// `grace`.
    pub(crate) fn silent(
        &mut self,
        last: Option<Instant>,
        since: Instant,
        now: Instant,
        deadline: Duration,
        grace: Duration,
    ) -> Silence {
        let wait = |until| Silence {
            ping: false,
            again: Some(until),
            news: false,
        };
        let last = last.map_or(since, |at| at.max(since));
        if now < last + deadline {
            return wait(last + deadline);
        }
        if let Health::Silent { .. } = self.health {
            return Silence {
                ping: false,
                again: None,
                news: false,
            };
        }
        let ping = self.ping.is_none();
        let started = *self.ping.get_or_insert(now);
        if now < started + grace {
            return Silence {
                ping,
                ..wait(started + grace)
            };
        }
        let news = match self.health {
            Health::Answering => {
                self.health = Health::Silent { since: now };
                true
            }
            // Out already (its connect failed, now one hangs): said once.
            Health::Unreachable { since } => {
                self.health = Health::Silent { since };
                false
            }
            Health::Silent { .. } => false,
        };
        Silence {
            ping,
            again: None,
            news,
        }
    }

    /// The liveness ping returned (answered or not): the next look may
    /// start another.
    pub(crate) fn ping_ended(&mut self) {
        self.ping = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn waiting(until: Instant) -> Silence {
        Silence {
            ping: false,
            again: Some(until),
            news: false,
        }
    }

    #[test]
    fn an_outage_is_news_once_and_its_end_tells_how_long_it_lasted() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        assert_eq!(watch.answered(t0), None, "nothing ended");
        assert!(watch.failed(t0 + ms(10)));
        assert!(!watch.failed(t0 + ms(20)), "said once");
        assert_eq!(watch.health(), &Health::Unreachable { since: t0 + ms(10) });
        assert_eq!(watch.answered(t0 + ms(510)), Some(ms(500)));
        assert_eq!(watch.health(), &Health::Answering);
        assert_eq!(watch.answered(t0 + ms(600)), None);
    }

    #[test]
    fn a_call_is_looked_at_again_when_its_deadline_after_the_last_answer_comes() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        // Answered before the call: the call's start counts.
        let look = watch.silent(Some(t0), t0 + ms(100), t0 + ms(200), DEADLINE, GRACE);
        assert_eq!(look, waiting(t0 + ms(100) + DEADLINE));
        // An answer during the call (a long scan that answers): later.
        let look = watch.silent(Some(t0 + ms(3000)), t0, t0 + ms(9000), DEADLINE, GRACE);
        assert_eq!(look, waiting(t0 + ms(3000) + DEADLINE));
        assert_eq!(watch.health(), &Health::Answering);
    }

    #[test]
    fn past_the_deadline_one_ping_runs_and_the_host_is_silent_after_the_grace() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        let at_deadline = t0 + DEADLINE;
        let look = watch.silent(None, t0, at_deadline, DEADLINE, GRACE);
        assert_eq!(
            look,
            Silence {
                ping: true,
                again: Some(at_deadline + GRACE),
                news: false
            }
        );
        let look = watch.silent(None, t0, at_deadline + ms(500), DEADLINE, GRACE);
        assert_eq!(look, waiting(at_deadline + GRACE), "one ping at a time");
        let look = watch.silent(None, t0, at_deadline + GRACE, DEADLINE, GRACE);
        assert_eq!(
            look,
            Silence {
                ping: false,
                again: None,
                news: true
            }
        );
        assert_eq!(
            watch.health(),
            &Health::Silent {
                since: at_deadline + GRACE
            }
        );
        // Said once; another call finds it silent at once.
        let look = watch.silent(None, t0, at_deadline + ms(5000), DEADLINE, GRACE);
        assert_eq!((look.again, look.news, look.ping), (None, false, false));
        assert_eq!(watch.answered(at_deadline + ms(6000)), Some(ms(5000)));
    }

    #[test]
    fn a_ping_answered_keeps_the_host_answering() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        assert!(watch.silent(None, t0, t0 + DEADLINE, DEADLINE, GRACE).ping);
        // The ping's answer beats the heartbeat and ends it.
        assert_eq!(watch.answered(t0 + DEADLINE + ms(5)), None);
        watch.ping_ended();
        let beat = Some(t0 + DEADLINE + ms(5));
        let look = watch.silent(beat, t0, t0 + DEADLINE + GRACE, DEADLINE, GRACE);
        assert_eq!(look, waiting(t0 + DEADLINE + ms(5) + DEADLINE));
        assert_eq!(watch.health(), &Health::Answering);
    }

    #[test]
    fn an_unreachable_host_that_hangs_becomes_silent_without_news() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        assert!(watch.failed(t0));
        watch.silent(None, t0, t0 + DEADLINE, DEADLINE, GRACE);
        let look = watch.silent(None, t0, t0 + DEADLINE + GRACE, DEADLINE, GRACE);
        assert_eq!((look.again, look.news), (None, false), "said already");
        assert_eq!(watch.health(), &Health::Silent { since: t0 });
        // Its stuck call failing: still out, still not news.
        assert!(!watch.failed(t0 + DEADLINE + ms(2000)));
        assert_eq!(watch.health(), &Health::Unreachable { since: t0 });
    }

    /// The investigation of issue 17: a host never contacted (its first
    /// connect still under way when its link went down) has no answer to
    /// measure from and no connection to ping. It must still count as
    /// pending, not silent, until the deadline after the call started, so
    /// the fleet's one-second grace (which does not look at health) decides
    /// a wake that another host settles; and it must fall silent exactly one
    /// grace after that deadline, never later: the grace runs without a ping
    /// when there is no connection to send one on.
    #[test]
    fn a_host_never_contacted_falls_silent_one_grace_after_the_deadline() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        assert_eq!(
            watch.health(),
            &Health::Answering,
            "unknown counts as answering"
        );
        // 0.2 s into a wake: no answer ever, yet not silent.
        let look = watch.silent(None, t0, t0 + ms(200), DEADLINE, GRACE);
        assert_eq!(look, waiting(t0 + DEADLINE));
        // The connect hangs: the grace starts at the deadline (the edge
        // finds no connection to ping and sends none).
        let look = watch.silent(None, t0, t0 + DEADLINE, DEADLINE, GRACE);
        assert_eq!(look.again, Some(t0 + DEADLINE + GRACE));
        let look = watch.silent(None, t0, t0 + DEADLINE + GRACE, DEADLINE, GRACE);
        assert_eq!((look.again, look.news), (None, true));
        // A second request started 0.2 s after the first, while the connect
        // still hangs: measured from its own start, but the host is known
        // silent by then, so it is not waited for again.
        let look = watch.silent(None, t0 + ms(200), t0 + DEADLINE + GRACE, DEADLINE, GRACE);
        assert_eq!(look.again, None);
    }

    #[test]
    fn with_no_grace_the_host_is_silent_at_the_deadline() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        let look = watch.silent(None, t0, t0 + ms(300), ms(300), Duration::ZERO);
        assert_eq!(
            look,
            Silence {
                ping: true,
                again: None,
                news: true
            }
        );
    }
}
