//! `mac add | remove | list`: a domain's extra MACs, which magic packets
//! find it by besides its interfaces'. A NIC passed through as a PCI device
//! (`<hostdev>`, an SR-IOV VF without `<interface type='hostdev'>`) shows
//! libvirt no MAC, and a client may insist on its own MAC for a host. They
//! are kept in the domain's own `<metadata>` element beside its tokens (see
//! [`WakeMeta::macs`]), so they travel with the domain, and the XML reader
//! hands them out with the interfaces' ([`domain_xml::read`]): the index,
//! the confirmation, `--allow` and the ambiguity rule need no case of their
//! own.

use tracing::{error, warn};

use crate::cli::MacCommand;
use crate::decide::policy::WakeMeta;
use crate::libvirt::domain_xml;
use crate::libvirt::hypervisor::{Hypervisor, Libvirt};
use crate::model::{HvError, HvErrorKind, Mac};

/// More extra MACs than this on one domain is a mistake, not a fleet of
/// NICs; the reader ignores any beyond.
pub(crate) const MAX_MACS: usize = domain_xml::MAX_EXTRA_MACS;

/// Why a MAC command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum MacError {
    /// libvirt refused or failed (no such domain, no permission, ...).
    #[error("{0}")]
    Libvirt(#[from] HvError),
    /// `add` of an address no magic packet can name.
    #[error("{0} is a group or zero address, never a magic packet's target: give a NIC's own MAC")]
    NotWakeable(Mac),
    /// `add` on a domain that has [`MAX_MACS`].
    #[error(
        "{0} already has {MAX_MACS} extra MACs: remove unused ones first (mac list shows them)"
    )]
    Full(String),
    /// `remove` of a MAC the domain has no extra one of.
    #[error("{domain} has no extra MAC {mac}{}", if *on_interface {
        ": it is one of its interfaces', which only its libvirt definition can change"
    } else {
        " (mac list shows them)"
    })]
    NotExtra {
        /// The domain.
        domain: String,
        /// The MAC given.
        mac: Mac,
        /// One of the domain's interfaces has it.
        on_interface: bool,
    },
}

/// What `add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The MAC is now one of the domain's extra MACs.
    Added,
    /// It already was: nothing changed.
    AlreadyExtra,
    /// One of the domain's interfaces has it: packets find the domain by it
    /// already, nothing changed.
    OnInterface,
}

/// Makes magic packets for `mac` find `domain`.
pub fn add(hv: &Libvirt, domain: &str, mac: Mac) -> Result<Added, MacError> {
    if !mac.is_wakeable() {
        return Err(MacError::NotWakeable(mac));
    }
    let definition = hv.definition(domain)?;
    let mut meta = definition.meta;
    if meta.macs.contains(&mac) {
        return Ok(Added::AlreadyExtra);
    }
    if definition.macs.contains(&mac) {
        return Ok(Added::OnInterface);
    }
    if meta.macs.len() >= MAX_MACS {
        return Err(MacError::Full(domain.to_owned()));
    }
    meta.macs.push(mac);
    store(hv, domain, &meta)?;
    Ok(Added::Added)
}

/// Takes the extra MAC `mac` away from `domain`.
pub fn remove(hv: &Libvirt, domain: &str, mac: Mac) -> Result<(), MacError> {
    let definition = hv.definition(domain)?;
    let mut meta = definition.meta;
    if !meta.macs.contains(&mac) {
        return Err(MacError::NotExtra {
            domain: domain.to_owned(),
            mac,
            on_interface: definition.macs.contains(&mac),
        });
    }
    meta.macs.retain(|kept| *kept != mac);
    store(hv, domain, &meta)
}

/// Every domain that has extra MACs, with them, by name.
pub fn list(hv: &Libvirt) -> Result<Vec<(String, Vec<Mac>)>, MacError> {
    let mut found = Vec::new();
    for name in hv.domain_names()? {
        match hv.wake_meta(&name) {
            Ok(meta) if !meta.macs.is_empty() => found.push((name, meta.macs)),
            Ok(_) => {}
            // Undefined since the listing: it has no extra MACs any more.
            Err(e) if e.kind == HvErrorKind::NoDomain => {}
            Err(e) => return Err(e.into()),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn store(hv: &Libvirt, domain: &str, meta: &WakeMeta) -> Result<(), MacError> {
    Ok(hv.set_wake_meta(domain, meta.render().as_deref())?)
}

/// `mac list`'s table: one line per domain and its extra MACs, the URI
/// first when there are several hosts.
pub fn table(rows: &[(Option<&str>, String, Vec<Mac>)]) -> String {
    super::per_domain(rows, Mac::to_string)
}

/// Finds the one host of `hosts` with the domain named so, after saying
/// why there is none (or several).
pub(crate) type HostOf =
    for<'a> fn(&str, &'a [(String, Libvirt)]) -> Option<(&'a str, &'a Libvirt)>;

/// `mac …` on the command line, on every `--libvirt-uri` (opened, with the
/// URI as shown): the table on stdout, what changed on stderr; status 1
/// when libvirt refused, or the domain is not found (`host_of` says why);
/// 2 for an address no packet can name, or a MAC to remove that is not one
/// of the domain's extra MACs. (The edge of this command lives here rather
/// than beside the others in `lib.rs`, which only dispatches to it, with
/// its way of finding a domain's host.)
pub(crate) fn run(command: &MacCommand, hosts: &[(String, Libvirt)], host_of: HostOf) -> i32 {
    let (domain, mac) = match command {
        MacCommand::List => return run_list(hosts),
        MacCommand::Add { domain, mac } | MacCommand::Remove { domain, mac } => (domain, *mac),
    };
    let Some((uri, hv)) = host_of(domain, hosts) else {
        return 1;
    };
    let outcome = match command {
        MacCommand::Add { .. } => add(hv, domain, mac).map(|added| match added {
            Added::Added => {
                eprintln!("{domain}: magic packets for {mac} now wake it");
                warn_shared(hosts, uri, domain, mac);
            }
            Added::AlreadyExtra => {
                eprintln!("{domain} already has the extra MAC {mac}; nothing changed");
            }
            Added::OnInterface => eprintln!(
                "{mac} is already the MAC of one of {domain}'s interfaces; nothing changed"
            ),
        }),
        MacCommand::Remove { .. } => remove(hv, domain, mac).map(|()| {
            eprintln!("{domain}: extra MAC {mac} removed; magic packets for it no longer wake it");
        }),
        MacCommand::List => return run_list(hosts),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            error!("{uri}: {e}");
            match e {
                MacError::NotWakeable(_) | MacError::NotExtra { .. } => 2,
                MacError::Libvirt(_) | MacError::Full(_) => 1,
            }
        }
    }
}

/// `mac list`: the domains with extra MACs, on every host.
fn run_list(hosts: &[(String, Libvirt)]) -> i32 {
    let several = hosts.len() > 1;
    let mut rows = Vec::new();
    for (uri, hv) in hosts {
        match list(hv) {
            Ok(found) => rows.extend(
                found
                    .into_iter()
                    .map(|(name, macs)| (several.then_some(uri.as_str()), name, macs)),
            ),
            Err(e) => {
                error!("{uri}: {e}");
                return 1;
            }
        }
    }
    print!("{}", table(&rows));
    0
}

/// Says which other domains have `mac` too, on any host: while one of them
/// is shut off beside `domain`, a packet for it starts neither (the
/// ambiguity rule). Only a warning: the owner may mean to move the MAC. A
/// host that cannot be read now is left out; `list` shows the same.
fn warn_shared(hosts: &[(String, Libvirt)], uri: &str, domain: &str, mac: Mac) {
    for (other_uri, hv) in hosts {
        let Ok(listed) = hv.list() else {
            continue;
        };
        for record in hv.records(&listed, &|| {}) {
            let this = other_uri == uri && record.name == domain;
            if !this && record.macs.as_ref().is_ok_and(|macs| macs.contains(&mac)) {
                let on = if hosts.len() > 1 {
                    format!(" (on {other_uri})")
                } else {
                    String::new()
                };
                warn!(
                    "{} has {mac} too{on}: while both are shut off, a packet for it starts neither",
                    record.name
                );
            }
        }
    }
}
