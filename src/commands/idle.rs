//! `idle set | clear | check`: a domain's idle policy, kept in its own
//! `<metadata>` element beside its tokens (see [`WakeMeta`]), so it travels
//! with the domain, and the check that applies it (a oneshot the
//! wol-libvirt-gateway-idle.timer runs). A domain without a policy is never
//! touched. The rules are [`crate::decide::idle`]'s; this is their edge:
//! the looks, the samples file, the actions and their lines.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::decide::idle::{
    Acted, Checked, IdlePolicy, Kept, Rules, Signals, Sleep, Verdict, after_action, judge,
};
use crate::decide::policy::WakeMeta;
use crate::libvirt::hypervisor::{Hypervisor, IdleLook, Libvirt};
use crate::model::{HvError, Uuid};
use crate::report;
use crate::report::idle::{Idle, Slept};
use crate::store::{CacheDirSource, DirError, file_name, write_atomically};

/// Sets (or replaces) `domain`'s idle policy.
pub fn set(hv: &Libvirt, domain: &str, policy: IdlePolicy) -> Result<(), HvError> {
    let mut meta = hv.wake_meta(domain)?;
    meta.idle = Some(policy);
    store(hv, domain, &meta)
}

/// Removes `domain`'s idle policy; true if it had one.
pub fn clear(hv: &Libvirt, domain: &str) -> Result<bool, HvError> {
    let mut meta = hv.wake_meta(domain)?;
    if meta.idle.take().is_none() {
        return Ok(false);
    }
    store(hv, domain, &meta)?;
    Ok(true)
}

fn store(hv: &Libvirt, domain: &str, meta: &WakeMeta) -> Result<(), HvError> {
    hv.set_wake_meta(domain, meta.render().as_deref())
}

/// Looks once at every running domain of `hv` that has an idle policy and
/// puts those idle long enough to sleep (`dry_run`: only says so). What
/// the next check must know is kept in `samples`; without it (no usable
/// cache directory) every domain is at first sight each time, which never
/// acts.
pub fn check(
    hv: &Libvirt,
    host: &str,
    samples: Option<&Samples>,
    dry_run: bool,
) -> Result<Checked, HvError> {
    let rules = Rules::default();
    let before = samples.map(Samples::load).unwrap_or_default();
    let looks = hv.idle_looks(&clock_ms)?;
    let mut checked = Checked {
        looked: looks.found.len(),
        ..Checked::default()
    };
    let mut after = Memory::default();
    for (domain, uuid, error) in &looks.failed {
        // Said once until a look works again; what was kept stays.
        let said = uuid.is_some_and(|u| before.unreadable.contains(&u));
        if !said {
            checked.unreadable += 1;
            report::idle::cannot_look(host, domain, error);
        }
        if let Some(uuid) = uuid {
            after.unreadable.insert(*uuid);
            if let Some(kept) = before.domains.get(uuid) {
                after.domains.insert(*uuid, kept.clone());
            }
        }
    }
    // Only the domains running now are kept besides: one that stopped, or
    // sleeps, is at first sight when it runs again, which never acts.
    for look in looks.found {
        let kept = before.domains.get(&look.uuid);
        let (keep, verdict) = judge(kept, look.sample, &look.policy, look.job, &rules);
        let keep = match verdict {
            Verdict::Act {
                action,
                idle_for,
                rates,
            } => {
                let idle = Idle {
                    host,
                    domain: &look.name,
                    idle_for,
                    rates,
                };
                let (acted, keep) = act(hv, &look, &idle, action, keep, dry_run, &rules);
                checked.acted += usize::from(acted != Acted::Refused);
                checked.refused += usize::from(acted == Acted::Refused);
                keep
            }
            Verdict::Ignored {
                ago,
                first: true,
                idle_for,
                rates,
            } => {
                checked.ignoring += 1;
                let idle = Idle {
                    host,
                    domain: &look.name,
                    idle_for,
                    rates,
                };
                report::idle::ignored(&idle, ago);
                keep
            }
            verdict => {
                checked.busy += usize::from(matches!(verdict, Verdict::Busy(_)));
                checked.idle += usize::from(matches!(verdict, Verdict::Idle(..)));
                report::idle::seen(host, &look.name, &verdict);
                keep
            }
        };
        after.domains.insert(look.uuid, keep);
    }
    if let Some(samples) = samples {
        samples.store(&after);
    }
    Ok(checked)
}

/// Puts one idle domain to sleep and says so; returns how it went and
/// what to keep.
fn act(
    hv: &Libvirt,
    look: &IdleLook,
    idle: &Idle<'_>,
    action: Sleep,
    keep: Kept,
    dry_run: bool,
    rules: &Rules,
) -> (Acted, Kept) {
    let at = clock_ms();
    let result = if dry_run {
        Ok(Acted::DryRun)
    } else {
        hv.sleep(look.uuid, action).map(|()| Acted::Done)
    };
    let acted = *result.as_ref().unwrap_or(&Acted::Refused);
    let next = after_action(&keep, action, acted, at, rules);
    match &result {
        Ok(Acted::DryRun) => report::idle::slept(idle, action, Slept::DryRun),
        Ok(_) => report::idle::slept(idle, action, Slept::Done),
        Err(error) => {
            let retry_ms = next.refused.map_or(at, |r| r.retry_ms);
            let retry = Duration::from_millis(retry_ms.saturating_sub(at));
            // Said in full the first time; the retries' refusals quietly.
            let first = keep.refused.is_none();
            report::idle::slept(idle, action, Slept::Refused(error, retry, first));
        }
    }
    (acted, next)
}

/// Now on the clock the samples are kept in: milliseconds since boot,
/// counting suspend (`CLOCK_BOOTTIME`). It never steps, unlike the wall
/// clock, and a suspended host shows as a gap; the samples name the boot
/// they were taken in.
fn clock_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ms = u64::try_from(now.tv_sec).unwrap_or(0).saturating_mul(1_000);
    ms.saturating_add(u64::try_from(now.tv_nsec / 1_000_000).unwrap_or(0))
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`): samples of another
/// boot are on another clock.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// What one check keeps for the next.
#[derive(Debug, Default)]
struct Memory {
    /// Per domain.
    domains: HashMap<Uuid, Kept>,
    /// Domains whose look failed, said already.
    unreadable: HashSet<Uuid>,
}

/// The lock an idle check holds for its whole run, in the cache directory:
/// two checks at once (the timer's and one by hand) would act twice and
/// keep each other's samples only half.
#[derive(Debug)]
pub struct CheckLock {
    dir: PathBuf,
    _held: std::fs::File,
}

impl CheckLock {
    /// Checks the cache directory (this user's alone) and takes the lock;
    /// `Ok(None)`: another check holds it.
    pub fn take(source: &CacheDirSource) -> Result<Option<CheckLock>, DirError> {
        use std::os::unix::fs::OpenOptionsExt;

        let dir = source.checked()?;
        let unusable = |source| DirError::Unusable {
            dir: dir.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .mode(0o600)
            .open(dir.join("idle-check.lock"))
            .map_err(unusable)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(CheckLock { dir, _held: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(unusable(e.into())),
        }
    }

    /// The cache directory, checked.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// First field of every samples file; another means another format.
const FORMAT: &str = "wol-libvirt-gateway idle-samples 1";

/// The samples file of one libvirt URI, in the cache directory.
#[derive(Debug, Clone)]
pub struct Samples {
    path: PathBuf,
    uri: String,
}

/// The file as it is written.
#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    format: String,
    uri: String,
    /// The boot the samples' clock belongs to.
    boot: String,
    domains: BTreeMap<String, Kept>,
    /// Domains whose look failed, said already.
    unreadable: Vec<String>,
}

/// Why a samples file was not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a samples file: {0}")]
    Format(#[from] serde_json::Error),
    #[error("another format, or another URI's")]
    Foreign,
    #[error("taken before the last boot")]
    OtherBoot,
}

impl Samples {
    /// The samples file for `uri` in `dir`, a cache directory checked to
    /// be this user's alone ([`CheckLock::take`] does).
    pub fn open(dir: &Path, uri: &str) -> Samples {
        Samples {
            path: dir.join(file_name("idle-samples", uri)),
            uri: uri.to_owned(),
        }
    }

    /// What the last check kept; a missing file is nothing kept, and a
    /// foreign or broken one too (said once): first sight never acts. The
    /// last boot's samples are on another clock: nothing kept either.
    fn load(&self) -> Memory {
        match self.read() {
            Ok(kept) => kept,
            Err(Unusable::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Memory::default(),
            Err(Unusable::OtherBoot) => Memory::default(),
            Err(reason) => {
                report::idle::samples_ignored(&self.path, &reason);
                Memory::default()
            }
        }
    }

    fn read(&self) -> Result<Memory, Unusable> {
        let text = std::fs::read(&self.path)?;
        let file: OnDisk = serde_json::from_slice(&text)?;
        if file.format != FORMAT || file.uri != self.uri {
            return Err(Unusable::Foreign);
        }
        if file.boot != boot_id() {
            return Err(Unusable::OtherBoot);
        }
        let uuid = |text: &str| text.parse::<Uuid>().ok();
        let domains = file.domains.into_iter();
        Ok(Memory {
            domains: domains
                .filter_map(|(u, kept)| Some((uuid(&u)?, kept)))
                .collect(),
            unreadable: file.unreadable.iter().filter_map(|u| uuid(u)).collect(),
        })
    }

    /// The signals each domain was judged on at the last check (for `list`),
    /// whatever the boot; nothing from a missing, foreign or broken file.
    pub(crate) fn signals(&self) -> HashMap<Uuid, Signals> {
        let Ok(file) = std::fs::read(&self.path) else {
            return HashMap::new();
        };
        match serde_json::from_slice::<OnDisk>(&file) {
            Ok(file) if file.format == FORMAT && file.uri == self.uri => (file.domains.iter())
                .filter_map(|(uuid, kept)| Some((uuid.parse().ok()?, kept.last.signals())))
                .collect(),
            _ => HashMap::new(),
        }
    }

    /// Keeps `kept` for the next check, replacing the file whole.
    fn store(&self, kept: &Memory) {
        let file = OnDisk {
            format: FORMAT.to_owned(),
            uri: self.uri.clone(),
            boot: boot_id(),
            domains: (kept.domains.iter())
                .map(|(uuid, k)| (uuid.to_string(), k.clone()))
                .collect(),
            unreadable: kept.unreadable.iter().map(Uuid::to_string).collect(),
        };
        let written = write_atomically(&self.path, |out| {
            serde_json::to_writer(&mut *out, &file).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        });
        if let Err(e) = written {
            report::idle::samples_unwritable(&self.path, &e);
        }
    }
}
