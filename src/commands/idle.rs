//! `idle set | clear | check`: a domain's idle policy, kept in its own
//! `<metadata>` element beside its tokens (see [`WakeMeta`]), so it travels
//! with the domain, and the check that applies it (a oneshot the
//! wol-libvirt-gateway-idle.timer runs). A domain without a policy is never
//! touched. The rules are [`crate::decide::idle`]'s; this is their edge:
//! the looks, the samples file, the actions and their lines.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::decide::idle::{
    Acted, Checked, IdlePolicy, Kept, Rates, Rules, Sleep, Verdict, after_action, judge,
};
use crate::decide::policy::WakeMeta;
use crate::libvirt::hypervisor::{IdleLook, Libvirt};
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
    let kept = samples.map(Samples::load).unwrap_or_default();
    let looks = hv.idle_looks(&wall_ms)?;
    let mut checked = Checked {
        looked: looks.found.len(),
        unreadable: looks.failed.len(),
        ..Checked::default()
    };
    for (domain, error) in &looks.failed {
        report::idle::cannot_look(host, domain, error);
    }
    // Only the domains running now are kept: one that stopped, or sleeps,
    // is at first sight when it runs again, which never acts.
    let mut next = HashMap::new();
    for look in looks.found {
        let (keep, verdict) = judge(
            kept.get(&look.uuid),
            look.sample,
            &look.policy,
            look.job,
            &rules,
        );
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
            Verdict::Ignored { ago, first: true } => {
                checked.ignoring += 1;
                let idle = Idle {
                    host,
                    domain: &look.name,
                    idle_for: Duration::ZERO,
                    rates: Rates::default(),
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
        next.insert(look.uuid, keep);
    }
    if let Some(samples) = samples {
        samples.store(&next);
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
    let at = wall_ms();
    let result = if dry_run {
        Ok(Acted::DryRun)
    } else {
        hv.sleep(look.uuid, action).map(|()| Acted::Done)
    };
    let acted = *result.as_ref().unwrap_or(&Acted::Refused);
    let keep = after_action(&keep, action, acted, at, rules);
    match &result {
        Ok(Acted::DryRun) => report::idle::slept(idle, action, Slept::DryRun),
        Ok(_) => report::idle::slept(idle, action, Slept::Done),
        Err(error) => {
            let retry_ms = keep.refused.map_or(at, |r| r.retry_ms);
            let retry = Duration::from_millis(retry_ms.saturating_sub(at));
            report::idle::slept(idle, action, Slept::Refused(error, retry));
        }
    }
    (acted, keep)
}

/// Now, in milliseconds since the Unix epoch (the samples outlive the
/// process, so they hold wall-clock time).
fn wall_ms() -> u64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    domains: BTreeMap<String, Kept>,
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
}

impl Samples {
    /// The samples file for `uri` in the chosen directory (checked as the
    /// index's is: this user's alone).
    pub fn open(source: &CacheDirSource, uri: &str) -> Result<Samples, DirError> {
        let dir = source.checked()?;
        Ok(Samples {
            path: dir.join(file_name("idle-samples", uri)),
            uri: uri.to_owned(),
        })
    }

    /// What the last check kept; a missing file is nothing kept, and a
    /// foreign or broken one too (said once): first sight never acts.
    fn load(&self) -> HashMap<Uuid, Kept> {
        match self.read() {
            Ok(kept) => kept,
            Err(Unusable::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(reason) => {
                report::idle::samples_ignored(&self.path, &reason);
                HashMap::new()
            }
        }
    }

    fn read(&self) -> Result<HashMap<Uuid, Kept>, Unusable> {
        let text = std::fs::read(&self.path)?;
        let file: OnDisk = serde_json::from_slice(&text)?;
        if file.format != FORMAT || file.uri != self.uri {
            return Err(Unusable::Foreign);
        }
        let parsed = file.domains.into_iter();
        Ok(parsed
            .filter_map(|(uuid, kept)| Some((uuid.parse().ok()?, kept)))
            .collect())
    }

    /// Keeps `kept` for the next check, replacing the file whole.
    fn store(&self, kept: &HashMap<Uuid, Kept>) {
        let file = OnDisk {
            format: FORMAT.to_owned(),
            uri: self.uri.clone(),
            domains: kept
                .iter()
                .map(|(uuid, k)| (uuid.to_string(), *k))
                .collect(),
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
