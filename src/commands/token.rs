//! `token add | list | revoke`: the HTTP wake's tokens, owned by the domain
//! they wake. A token is printed once; only its SHA-256 is stored, in the
//! domain's own `<metadata>` (see [`WakeMeta`]), so it travels with the
//! domain (`virsh dumpxml`, migration) and needs no state of ours.

use crate::decide::policy::WakeMeta;
use crate::libvirt::hypervisor::Libvirt;
use crate::model::HvError;
use crate::secret::{Hash, Token};

/// More tokens than this on one domain is a leak, not a fleet of clients.
pub(crate) const MAX_TOKENS: usize = 32;

/// Why a token command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// libvirt refused or failed (no such domain, no permission, ...).
    #[error("{0}")]
    Libvirt(#[from] HvError),
    /// The OS gave no random bytes.
    #[error("cannot get random bytes for a token: {0}")]
    Random(getrandom::Error),
    /// `add` on a domain that has [`MAX_TOKENS`].
    #[error(
        "{0} already has {MAX_TOKENS} tokens: revoke unused ones first (token list shows them)"
    )]
    Full(String),
    /// `revoke` with a prefix that is not hex.
    #[error("'{0}' is not a token prefix: give the hex digits `token list` shows")]
    BadPrefix(String),
    /// `revoke` with a prefix no token of the domain has.
    #[error("{domain} has no token starting with {prefix} (token list shows them)")]
    NoMatch {
        /// The domain.
        domain: String,
        /// The prefix given.
        prefix: String,
    },
    /// `revoke` with a prefix several tokens share.
    #[error("{prefix} starts {count} tokens of {domain}: give more digits")]
    Ambiguous {
        /// The domain.
        domain: String,
        /// The prefix given.
        prefix: String,
        /// How many tokens it starts.
        count: usize,
    },
}

/// Gives `domain` a new token, which may also put it to sleep if `sleep`;
/// returns it (to print once).
pub fn add(hv: &Libvirt, domain: &str, sleep: bool) -> Result<Token, TokenError> {
    let mut meta = hv.wake_meta(domain)?;
    if meta.tokens.len() >= MAX_TOKENS {
        return Err(TokenError::Full(domain.to_owned()));
    }
    let token = Token::generate().map_err(TokenError::Random)?;
    meta.tokens.push(token.hash());
    if sleep {
        meta.sleepers.push(token.hash());
    }
    store(hv, domain, &meta)?;
    Ok(token)
}

/// A token's hash, and whether it may also put its domain to sleep.
pub type Held = (Hash, bool);

/// Every domain that has tokens, with their hashes and whether each may
/// put it to sleep, by name.
pub fn list(hv: &Libvirt) -> Result<Vec<(String, Vec<Held>)>, TokenError> {
    let mut found = Vec::new();
    for name in hv.domain_names()? {
        match hv.wake_meta(&name) {
            Ok(meta) if !meta.tokens.is_empty() => {
                let rights = (meta.tokens.iter())
                    .map(|hash| (*hash, meta.sleepers.contains(hash)))
                    .collect();
                found.push((name, rights));
            }
            Ok(_) => {}
            // Undefined since the listing: it has no tokens any more.
            Err(e) if e.kind == crate::model::HvErrorKind::NoDomain => {}
            Err(e) => return Err(e.into()),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Removes `domain`'s tokens whose hash starts with `prefix` (exactly one
/// must), or all of them. Returns the hashes removed.
pub fn revoke(hv: &Libvirt, domain: &str, prefix: Option<&str>) -> Result<Vec<Hash>, TokenError> {
    let mut meta = hv.wake_meta(domain)?;
    let removed: Vec<Hash> = match prefix {
        None => std::mem::take(&mut meta.tokens),
        Some(prefix) => {
            let wanted = prefix.to_ascii_lowercase();
            if wanted.is_empty() || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TokenError::BadPrefix(prefix.to_owned()));
            }
            let matching: Vec<Hash> = meta
                .tokens
                .iter()
                .filter(|hash| hash.to_string().starts_with(&wanted))
                .copied()
                .collect();
            match matching.len() {
                0 => {
                    return Err(TokenError::NoMatch {
                        domain: domain.to_owned(),
                        prefix: wanted,
                    });
                }
                1 => {}
                count => {
                    return Err(TokenError::Ambiguous {
                        domain: domain.to_owned(),
                        prefix: wanted,
                        count,
                    });
                }
            }
            meta.tokens.retain(|hash| !matching.contains(hash));
            matching
        }
    };
    meta.sleepers.retain(|hash| meta.tokens.contains(hash));
    if !removed.is_empty() {
        store(hv, domain, &meta)?;
    }
    Ok(removed)
}

fn store(hv: &Libvirt, domain: &str, meta: &WakeMeta) -> Result<(), TokenError> {
    Ok(hv.set_wake_meta(domain, meta.render().as_deref())?)
}

/// `token list`'s table: one line per domain, its tokens' prefixes (`+sleep`
/// after one that may also put it to sleep).
pub fn table(rows: &[(Option<&str>, String, Vec<Held>)]) -> String {
    super::per_domain(rows, |(hash, sleep)| {
        format!("{}{}", hash.prefix(), if *sleep { "+sleep" } else { "" })
    })
}
