//! When a running domain counts as idle, and what an `idle check` does
//! about it: pure rules over the looks (samples) the checks take, with the
//! wall clock in the samples. Each check is a process of its own, a minute
//! or so apart, so what one check must know of the last (the last sample,
//! since when the domain has been idle, a shutdown asked, a refusal) is
//! kept in a file between them ([`Kept`]).
//!
//! Every rule errs toward leaving a VM running: a first sight, a new
//! domain ID (started, restored, woken), a counter that went backwards, a
//! gap between looks or a clock that went back start the window again; a
//! running libvirt job leaves the domain alone; a shutdown the guest
//! ignores is said once and not asked again until the guest has been busy;
//! an action libvirt refused is tried again only after a backoff.

use std::time::Duration;

use crate::decide::backoff::Backoff;

/// How an idle domain is put to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sleep {
    /// Its RAM to disk (`virDomainManagedSave`); the next wake restores it.
    ManagedSave,
    /// An ACPI power-button request to the guest OS (`virDomainShutdown`);
    /// never forced.
    Shutdown,
    /// Paused (`virDomainSuspend`); the next wake resumes it.
    Suspend,
}

impl Sleep {
    /// The `ACTION` journal field's word, and the metadata's.
    pub fn as_str(self) -> &'static str {
        match self {
            Sleep::ManagedSave => "managedsave",
            Sleep::Shutdown => "shutdown",
            Sleep::Suspend => "suspend",
        }
    }
}

impl std::fmt::Display for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Sleep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "managedsave" => Ok(Sleep::ManagedSave),
            "shutdown" => Ok(Sleep::Shutdown),
            "suspend" => Ok(Sleep::Suspend),
            other => Err(format!(
                "'{other}' is no sleep action: use managedsave, shutdown or suspend"
            )),
        }
    }
}

/// vCPU use below which a domain may be idle, in thousandths of its vCPUs
/// (50: 5 %; a guest with nothing to run uses well under 1 %).
pub const DEFAULT_CPU_PERMILLE: u32 = 50;
/// Network bytes a second (received and sent, all interfaces) below which
/// a domain may be idle: ARP, DHCP renewals and mDNS stay far below.
pub const DEFAULT_NET_BPS: u64 = 8 * 1024;
/// Disk bytes a second (read and written, all disks) below which a domain
/// may be idle: a guest's periodic log writes stay below.
pub const DEFAULT_DISK_BPS: u64 = 64 * 1024;

/// A domain's idle policy, kept in its own metadata element like its
/// tokens. A domain without one is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IdlePolicy {
    /// Idle this long without a gap before it is put to sleep.
    #[serde(serialize_with = "as_secs")]
    pub after: Duration,
    /// How.
    pub action: Sleep,
    /// Its vCPU use stayed below this, in thousandths of its vCPUs.
    pub cpu_permille: u32,
    /// Its network bytes a second stayed below this.
    pub net_bps: u64,
    /// Its disk bytes a second stayed below this.
    pub disk_bps: u64,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl IdlePolicy {
    /// The policy in a few characters, to tell a changed one.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}s {} {} {} {}",
            self.after.as_secs(),
            self.action,
            self.cpu_permille,
            self.net_bps,
            self.disk_bps
        )
    }

    /// `action` after `after` idle, with the default thresholds.
    pub fn new(after: Duration, action: Sleep) -> Self {
        IdlePolicy {
            after,
            action,
            cpu_permille: DEFAULT_CPU_PERMILLE,
            net_bps: DEFAULT_NET_BPS,
            disk_bps: DEFAULT_DISK_BPS,
        }
    }
}

/// One look at a running domain: cumulative counters, as libvirt gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sample {
    /// When the look was taken, in milliseconds on a clock that never
    /// steps and that every check process shares (since boot, counting
    /// suspend: see `crate::commands::idle`).
    pub at_ms: u64,
    /// The domain's ID: a new one means it was started or restored since.
    pub id: u32,
    /// Its vCPUs.
    pub vcpus: u32,
    /// CPU time used by its vCPUs, in nanoseconds.
    pub cpu_ns: u64,
    /// Bytes received and sent on its interfaces; `None`: no interface
    /// gives counters (user-mode networking has no tap device).
    pub net_bytes: Option<u64>,
    /// Bytes read and written on its disks; `None`: no disk gives counters.
    pub disk_bytes: Option<u64>,
}

/// Which signals a domain is judged on: its vCPU time always, its network
/// and disk traffic where it has counters (a domain with user-mode
/// networking has no tap device to count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signals {
    /// Its interfaces give byte counters.
    pub(crate) net: bool,
    /// Its disks give byte counters.
    pub(crate) disk: bool,
}

impl Sample {
    /// The signals this look had.
    pub(crate) fn signals(&self) -> Signals {
        Signals {
            net: self.net_bytes.is_some(),
            disk: self.disk_bytes.is_some(),
        }
    }
}

/// A refused action: when, and how often in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Refused {
    /// When the next try may be made (ms since the epoch).
    pub retry_ms: u64,
    /// Refusals in a row.
    pub tries: u32,
}

/// What one check leaves for the next about a domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Kept {
    /// The last look.
    pub last: Sample,
    /// Since when every rate has stayed below its threshold (ms since the
    /// epoch); `None`: it was not idle at the last look.
    pub idle_since_ms: Option<u64>,
    /// A shutdown was asked then, and the guest has not been busy since.
    pub asked_ms: Option<u64>,
    /// "Still running" was said for that request.
    pub said_ignored: bool,
    /// The last try was refused by libvirt.
    pub refused: Option<Refused>,
    /// It was suspended then: running again (the ID stays) means woken.
    pub slept_ms: Option<u64>,
    /// The policy the window was counted under ([`IdlePolicy::key`]): a
    /// changed policy starts it again.
    pub policy: String,
}

/// Rates between two looks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Rates {
    /// vCPU use, in thousandths of its vCPUs.
    pub cpu_permille: u64,
    /// Network bytes a second, if it has counters.
    pub net_bps: Option<u64>,
    /// Disk bytes a second, if it has counters.
    pub disk_bps: Option<u64>,
}

impl Rates {
    /// Every rate it has is below the policy's threshold.
    fn below(&self, policy: &IdlePolicy) -> bool {
        self.cpu_permille < u64::from(policy.cpu_permille)
            && self.net_bps.is_none_or(|r| r < policy.net_bps)
            && self.disk_bps.is_none_or(|r| r < policy.disk_bps)
    }
}

/// Why the idle window starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// No earlier look (or the file was missing or foreign).
    FirstSight,
    /// A new domain ID: started, restored or woken since.
    NewId,
    /// A counter went backwards (the domain was restarted between looks).
    CounterBack,
    /// The looks are this far apart: what happened between is unknown.
    Gap(Duration),
    /// The wall clock went back.
    ClockBack,
    /// It was put to sleep and runs again: woken.
    Woken,
    /// Its policy changed: the window counted under the old one is void.
    PolicyChanged,
}

impl Restart {
    /// A new run of the domain (or a new policy): what was asked of the
    /// old one, and its refusals, no longer count. A gap or a clock that
    /// went back loses only the window: a guest that ignored a shutdown
    /// before the host slept still ignores it.
    fn new_run(self) -> bool {
        !matches!(self, Restart::Gap(_) | Restart::ClockBack)
    }
}

/// What a check makes of a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The window starts (again) at this look.
    Watching(Restart),
    /// A rate is above its threshold.
    Busy(Rates),
    /// Idle for this long, less than the policy's `after`.
    Idle(Duration, Rates),
    /// Idle for `after` or longer: put it to sleep.
    Act {
        /// How.
        action: Sleep,
        /// Idle since this long.
        idle_for: Duration,
        /// The last rates.
        rates: Rates,
    },
    /// A libvirt job (a migration, a save) runs: left alone.
    Job,
    /// A shutdown was asked this long ago; the guest has that long again
    /// to finish before it counts as ignored.
    ShuttingDown(Duration),
    /// A shutdown was asked this long ago and it still runs; `first`: not
    /// said before (it is said once).
    Ignored {
        /// Since the request.
        ago: Duration,
        /// First time seen ignored.
        first: bool,
        /// Idle since this long.
        idle_for: Duration,
        /// The last rates.
        rates: Rates,
    },
    /// libvirt refused the last try; the next may be made this much later.
    Refused(Duration),
}

/// The rules' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Looks further apart than this start the window again.
    pub max_gap: Duration,
    /// The first wait after a refusal; it doubles up to `max_refused`.
    pub first_refused: Duration,
    /// The longest wait after refusals.
    pub max_refused: Duration,
    /// The longest a guest gets to shut down before its shutdown counts as
    /// ignored (a guest also gets no longer than its policy's `after`).
    pub max_shutdown: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            // Five missed one-minute timer runs: the host slept, or the
            // timer was stopped.
            max_gap: Duration::from_secs(5 * 60),
            first_refused: Duration::from_secs(10 * 60),
            max_refused: Duration::from_secs(6 * 60 * 60),
            max_shutdown: Duration::from_secs(5 * 60),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn since(from_ms: u64, to_ms: u64) -> Duration {
    Duration::from_millis(to_ms.saturating_sub(from_ms))
}

/// Judges a look at a running domain against what the last check kept;
/// returns what to keep now and the verdict. `job`: a libvirt job runs on
/// the domain.
pub(crate) fn judge(
    kept: Option<&Kept>,
    sample: Sample,
    policy: &IdlePolicy,
    job: bool,
    rules: &Rules,
) -> (Kept, Verdict) {
    let policy_key = policy.key();
    let fresh = |restart: Restart, kept: Option<&Kept>| {
        let mut next = Kept {
            last: sample,
            idle_since_ms: None,
            asked_ms: None,
            said_ignored: false,
            refused: None,
            slept_ms: None,
            policy: policy_key.clone(),
        };
        if let Some(kept) = kept.filter(|_| !restart.new_run()) {
            next.asked_ms = kept.asked_ms;
            next.said_ignored = kept.said_ignored;
            next.refused = kept.refused;
        }
        (next, Verdict::Watching(restart))
    };
    let Some(kept) = kept else {
        return fresh(Restart::FirstSight, None);
    };
    let last = kept.last;
    if let Some(restart) = restart(kept, &sample, &policy_key, rules) {
        return fresh(restart, Some(kept));
    }
    let mut next = Kept {
        last: sample,
        ..kept.clone()
    };
    if job {
        // A migration or a save in progress is the daemon's business.
        next.idle_since_ms = None;
        return (next, Verdict::Job);
    }
    let rates = rates(&last, &sample);
    if !rates.below(policy) {
        // Busy: the window closes, and a shutdown the guest ignored may be
        // asked again next time it is idle.
        next.idle_since_ms = None;
        next.asked_ms = None;
        next.said_ignored = false;
        return (next, Verdict::Busy(rates));
    }
    // Idle since the last look at least: the interval between was idle.
    let idle_since = *next.idle_since_ms.get_or_insert(last.at_ms);
    let idle_for = since(idle_since, sample.at_ms);
    if let Some(asked) = kept.asked_ms {
        let ago = since(asked, sample.at_ms);
        let grace = policy.after.min(rules.max_shutdown);
        if ago < grace {
            return (next, Verdict::ShuttingDown(grace - ago));
        }
        let first = !kept.said_ignored;
        next.said_ignored = true;
        let ignored = Verdict::Ignored {
            ago,
            first,
            idle_for,
            rates,
        };
        return (next, ignored);
    }
    if idle_for < policy.after {
        return (next, Verdict::Idle(idle_for, rates));
    }
    if let Some(refused) = kept.refused.filter(|r| sample.at_ms < r.retry_ms) {
        return (
            next,
            Verdict::Refused(since(sample.at_ms, refused.retry_ms)),
        );
    }
    let act = Verdict::Act {
        action: policy.action,
        idle_for,
        rates,
    };
    (next, act)
}

/// Why what was kept no longer describes this run of the domain.
fn restart(kept: &Kept, sample: &Sample, policy: &str, rules: &Rules) -> Option<Restart> {
    let last = &kept.last;
    if sample.id != last.id {
        return Some(Restart::NewId);
    }
    if kept.policy != policy {
        return Some(Restart::PolicyChanged);
    }
    if kept.slept_ms.is_some() {
        return Some(Restart::Woken);
    }
    if sample.at_ms < last.at_ms {
        return Some(Restart::ClockBack);
    }
    let gap = since(last.at_ms, sample.at_ms);
    if gap > rules.max_gap {
        return Some(Restart::Gap(gap));
    }
    let back =
        |now: Option<u64>, then: Option<u64>| matches!((now, then), (Some(n), Some(t)) if n < t);
    if sample.cpu_ns < last.cpu_ns
        || back(sample.net_bytes, last.net_bytes)
        || back(sample.disk_bytes, last.disk_bytes)
    {
        return Some(Restart::CounterBack);
    }
    None
}

/// The rates between two looks of the same run (the later not earlier).
fn rates(last: &Sample, now: &Sample) -> Rates {
    // Looks in the same millisecond: as if one apart (no division by 0).
    let elapsed_ms = now.at_ms.saturating_sub(last.at_ms).max(1);
    let per_second = |now: Option<u64>, then: Option<u64>| {
        let (now, then) = (now?, then?);
        Some(now.saturating_sub(then).saturating_mul(1_000) / elapsed_ms)
    };
    let vcpu_ns = u128::from(elapsed_ms) * 1_000_000 * u128::from(now.vcpus.max(1));
    let used = u128::from(now.cpu_ns.saturating_sub(last.cpu_ns));
    Rates {
        cpu_permille: u64::try_from(used * 1_000 / vcpu_ns).unwrap_or(u64::MAX),
        net_bps: per_second(now.net_bytes, last.net_bytes),
        disk_bps: per_second(now.disk_bytes, last.disk_bytes),
    }
}

/// What came of an action, for what the next check keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acted {
    /// Done (a managed save or a suspend), or a shutdown asked.
    Done,
    /// libvirt refused it.
    Refused,
    /// `--dry-run`: only said.
    DryRun,
}

/// What to keep after acting on a domain at `at_ms`.
pub(crate) fn after_action(
    kept: &Kept,
    action: Sleep,
    acted: Acted,
    at_ms: u64,
    rules: &Rules,
) -> Kept {
    let mut next = kept.clone();
    match (acted, action) {
        // Said once a window, as an action would be done once.
        (Acted::DryRun, _) => next.idle_since_ms = Some(at_ms),
        (Acted::Done, Sleep::Shutdown) => {
            next.asked_ms = Some(at_ms);
            next.said_ignored = false;
            next.refused = None;
        }
        (Acted::Done, Sleep::ManagedSave | Sleep::Suspend) => {
            next.slept_ms = Some(at_ms);
            next.refused = None;
        }
        (Acted::Refused, _) => {
            let tries = kept.refused.map_or(0, |r| r.tries);
            let wait = Backoff::after(rules.first_refused, rules.max_refused, tries).next_delay();
            next.refused = Some(Refused {
                retry_ms: at_ms.saturating_add(ms(wait)),
                tries: tries.saturating_add(1),
            });
        }
    }
    next
}

/// What one `idle check` did on a host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Running domains with a policy that were looked at.
    pub looked: usize,
    /// Of them, busy (a rate above its threshold).
    pub busy: usize,
    /// Of them, idle for less than their policy's time.
    pub idle: usize,
    /// Actions taken (or, in a dry run, said).
    pub acted: usize,
    /// Guests found ignoring a shutdown request for the first time.
    pub ignoring: usize,
    /// Actions libvirt refused.
    pub refused: usize,
    /// Domains that could not be looked at, and were not the last time
    /// (a lasting failure is said once).
    pub unreadable: usize,
}

impl Checked {
    /// Something worth a line at the default level: an action, a refusal,
    /// an ignored shutdown, a domain that could not be looked at. A check
    /// that only watched says so at debug level: the timer runs it 1,440
    /// times a day.
    pub fn news(&self) -> bool {
        self.acted + self.refused + self.ignoring + self.unreadable > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const MINUTE: Duration = Duration::from_secs(60);

    /// A made-up guest with 2 vCPUs whose counters grow at the rates a
    /// test gives, one look a minute.
    #[derive(Clone, Copy)]
    struct Guest(Sample);

    impl Guest {
        fn new() -> Guest {
            Guest(Sample {
                at_ms: T0,
                id: 7,
                vcpus: 2,
                cpu_ns: 10_000_000_000,
                net_bytes: Some(1_000_000),
                disk_bytes: Some(5_000_000),
            })
        }

        /// `elapsed` later, having used `cpu` thousandths of its vCPUs and
        /// moved `net` and `disk` bytes a second.
        fn after(&mut self, elapsed: Duration, cpu: u64, net: u64, disk: u64) -> Sample {
            let ms = elapsed.as_millis() as u64;
            let s = &mut self.0;
            s.at_ms += ms;
            s.cpu_ns += ms * 1_000_000 * u64::from(s.vcpus) * cpu / 1_000;
            s.net_bytes = s.net_bytes.map(|b| b + net * ms / 1_000);
            s.disk_bytes = s.disk_bytes.map(|b| b + disk * ms / 1_000);
            *s
        }

        fn quiet(&mut self) -> Sample {
            self.after(MINUTE, 5, 100, 1_000)
        }
    }

    fn policy() -> IdlePolicy {
        IdlePolicy::new(5 * MINUTE, Sleep::ManagedSave)
    }

    /// What one check after another makes of `looks`.
    struct Checks {
        kept: Option<Kept>,
        rules: Rules,
        policy: IdlePolicy,
    }

    impl Checks {
        fn new() -> Checks {
            Checks::with(policy())
        }

        fn with(policy: IdlePolicy) -> Checks {
            Checks {
                kept: None,
                rules: Rules::default(),
                policy,
            }
        }

        fn look(&mut self, sample: Sample) -> Verdict {
            self.look_with(sample, false)
        }

        /// The first look at `guest`, then `minutes` quiet ones a minute
        /// apart; the last verdict.
        fn quiet_for(&mut self, guest: &mut Guest, minutes: usize) -> Verdict {
            let mut verdict = self.look(guest.0);
            for _ in 0..minutes {
                verdict = self.look(guest.quiet());
            }
            verdict
        }

        /// A window starting again: four quiet looks, each idle a minute
        /// longer, then the action.
        fn whole_window(&mut self, guest: &mut Guest) {
            for minute in 1..5 {
                assert_eq!(
                    self.look(guest.quiet()),
                    Verdict::Idle(minute * MINUTE, QUIET)
                );
            }
            assert!(matches!(self.look(guest.quiet()), Verdict::Act { .. }));
        }

        fn look_with(&mut self, sample: Sample, job: bool) -> Verdict {
            let (kept, verdict) = judge(self.kept.as_ref(), sample, &self.policy, job, &self.rules);
            self.kept = Some(kept);
            verdict
        }

        fn acted(&mut self, acted: Acted, action: Sleep) {
            let kept = self.kept.as_ref().expect("a look first");
            let at = kept.last.at_ms;
            self.kept = Some(after_action(kept, action, acted, at, &self.rules));
        }
    }

    const QUIET: Rates = Rates {
        cpu_permille: 5,
        net_bps: Some(100),
        disk_bps: Some(1_000),
    };

    #[test]
    fn idle_for_the_whole_window_is_put_to_sleep_and_not_before() {
        let (mut guest, mut checks) = (Guest::new(), Checks::new());
        assert_eq!(checks.look(guest.0), Verdict::Watching(Restart::FirstSight));
        for minute in 1..5 {
            assert_eq!(
                checks.look(guest.quiet()),
                Verdict::Idle(minute * MINUTE, QUIET)
            );
        }
        let act = Verdict::Act {
            action: Sleep::ManagedSave,
            idle_for: 5 * MINUTE,
            rates: QUIET,
        };
        assert_eq!(checks.look(guest.quiet()), act);
    }

    #[test]
    fn any_rate_above_its_threshold_is_busy_and_the_window_starts_again() {
        // vCPU at 6 % of two, 9 KiB/s on the network, 70 KB/s on disk.
        for (cpu, net, disk) in [(60, 100, 1_000), (5, 9_000, 1_000), (5, 100, 70_000)] {
            let (mut guest, mut checks) = (Guest::new(), Checks::new());
            checks.quiet_for(&mut guest, 4);
            let busy = checks.look(guest.after(MINUTE, cpu, net, disk));
            assert!(matches!(busy, Verdict::Busy(_)), "{busy:?}");
            checks.whole_window(&mut guest);
        }
    }

    #[test]
    fn a_signal_the_domain_lacks_is_left_out_of_the_judgement() {
        let (mut guest, mut checks) = (Guest::new(), Checks::new());
        guest.0.net_bytes = None;
        checks.look(guest.0);
        let rates = Rates {
            net_bps: None,
            ..QUIET
        };
        // Heavy traffic cannot be seen: judged on the vCPU and the disk.
        assert_eq!(
            checks.look(guest.after(MINUTE, 5, 1 << 20, 1_000)),
            Verdict::Idle(MINUTE, rates)
        );
    }

    #[test]
    fn a_restart_a_reset_counter_a_gap_or_a_clock_going_back_starts_the_window_again() {
        type Case = (&'static str, fn(&mut Guest) -> Sample, Restart);
        let cases: [Case; 4] = [
            (
                "new ID",
                |g| {
                    g.0.id = 8;
                    g.quiet()
                },
                Restart::NewId,
            ),
            (
                "counter back",
                |g| {
                    let mut s = g.quiet();
                    s.cpu_ns = 1;
                    g.0 = s;
                    s
                },
                Restart::CounterBack,
            ),
            (
                "gap",
                |g| g.after(6 * MINUTE, 5, 100, 1_000),
                Restart::Gap(6 * MINUTE),
            ),
            (
                "clock back",
                |g| {
                    let mut s = g.quiet();
                    s.at_ms -= 2 * 60_000;
                    g.0 = s;
                    s
                },
                Restart::ClockBack,
            ),
        ];
        for (case, next, restart) in cases {
            let (mut guest, mut checks) = (Guest::new(), Checks::new());
            checks.quiet_for(&mut guest, 4);
            assert_eq!(
                checks.look(next(&mut guest)),
                Verdict::Watching(restart),
                "{case}"
            );
            // The whole window again from here.
            for _ in 1..5 {
                assert!(
                    matches!(checks.look(guest.quiet()), Verdict::Idle(..)),
                    "{case}"
                );
            }
            assert!(
                matches!(checks.look(guest.quiet()), Verdict::Act { .. }),
                "{case}"
            );
        }
    }

    #[test]
    fn a_running_job_leaves_the_domain_alone() {
        let (mut guest, mut checks) = (Guest::new(), Checks::new());
        checks.quiet_for(&mut guest, 4);
        assert_eq!(checks.look_with(guest.quiet(), true), Verdict::Job);
        assert_eq!(checks.look(guest.quiet()), Verdict::Idle(MINUTE, QUIET));
    }

    #[test]
    fn a_suspended_domain_running_again_was_woken_and_starts_over() {
        let (mut guest, mut checks) = (Guest::new(), Checks::new());
        checks.quiet_for(&mut guest, 5);
        checks.acted(Acted::Done, Sleep::Suspend);
        // Resumed by a magic packet: the same ID, and its counters went on.
        assert_eq!(
            checks.look(guest.quiet()),
            Verdict::Watching(Restart::Woken)
        );
        assert_eq!(checks.look(guest.quiet()), Verdict::Idle(MINUTE, QUIET));
    }

    #[test]
    fn an_ignored_shutdown_is_said_once_and_asked_again_only_after_the_guest_was_busy() {
        let (mut guest, mut checks) = (
            Guest::new(),
            Checks::with(IdlePolicy::new(5 * MINUTE, Sleep::Shutdown)),
        );
        checks.quiet_for(&mut guest, 5);
        checks.acted(Acted::Done, Sleep::Shutdown);
        // As long to shut down as it had to be idle (at most 5 min).
        for left in (1..5).rev() {
            assert_eq!(
                checks.look(guest.quiet()),
                Verdict::ShuttingDown(left * MINUTE)
            );
        }
        let said = checks.look(guest.quiet());
        let ignored = |ago, first, idle_for| Verdict::Ignored {
            ago,
            first,
            idle_for,
            rates: QUIET,
        };
        assert_eq!(said, ignored(5 * MINUTE, true, 10 * MINUTE));
        let again = checks.look(guest.quiet());
        assert_eq!(again, ignored(6 * MINUTE, false, 11 * MINUTE));
        // Busy in between: a later idle window may ask again.
        assert!(matches!(
            checks.look(guest.after(MINUTE, 500, 0, 0)),
            Verdict::Busy(_)
        ));
        for _ in 1..5 {
            checks.look(guest.quiet());
        }
        assert!(matches!(checks.look(guest.quiet()), Verdict::Act { .. }));
    }

    #[test]
    fn a_gap_keeps_what_was_asked_and_refused_but_a_new_policy_does_not() {
        let (mut guest, mut checks) = (
            Guest::new(),
            Checks::with(IdlePolicy::new(5 * MINUTE, Sleep::Shutdown)),
        );
        checks.quiet_for(&mut guest, 5);
        checks.acted(Acted::Done, Sleep::Shutdown);
        // The host slept 10 minutes: the window starts again, but the
        // guest still ignores the request it had: never asked again.
        let gap = guest.after(10 * MINUTE, 5, 100, 1_000);
        assert_eq!(
            checks.look(gap),
            Verdict::Watching(Restart::Gap(10 * MINUTE))
        );
        assert!(matches!(
            checks.look(guest.quiet()),
            Verdict::Ignored { first: true, .. }
        ));
        // A new policy is a new start.
        checks.policy = IdlePolicy::new(5 * MINUTE, Sleep::ManagedSave);
        assert_eq!(
            checks.look(guest.quiet()),
            Verdict::Watching(Restart::PolicyChanged)
        );
        checks.whole_window(&mut guest);
    }

    #[test]
    fn a_dry_run_says_it_once_a_window() {
        let (mut guest, mut checks) = (Guest::new(), Checks::new());
        checks.quiet_for(&mut guest, 5);
        checks.acted(Acted::DryRun, Sleep::ManagedSave);
        checks.whole_window(&mut guest);
    }

    #[test]
    fn a_refused_action_is_tried_again_after_a_backoff_that_doubles() {
        let (mut guest, mut checks) = (Guest::new(), Checks::new());
        checks.quiet_for(&mut guest, 5);
        checks.acted(Acted::Refused, Sleep::ManagedSave);
        // Ten minutes: nine more looks wait, the tenth tries.
        for left in (1..10).rev() {
            assert_eq!(checks.look(guest.quiet()), Verdict::Refused(left * MINUTE));
        }
        assert!(matches!(checks.look(guest.quiet()), Verdict::Act { .. }));
        checks.acted(Acted::Refused, Sleep::ManagedSave);
        assert_eq!(checks.look(guest.quiet()), Verdict::Refused(19 * MINUTE));
    }

    #[test]
    fn rates_are_shares_of_all_vcpus_and_bytes_a_second() {
        let mut guest = Guest::new();
        let before = guest.0;
        let after = guest.after(Duration::from_secs(10), 250, 3_000, 40_000);
        let r = rates(&before, &after);
        assert_eq!(
            (r.cpu_permille, r.net_bps, r.disk_bps),
            (250, Some(3_000), Some(40_000))
        );
        // Two looks in the same millisecond divide by one, not zero.
        assert_eq!(rates(&after, &after).cpu_permille, 0);
    }
}
