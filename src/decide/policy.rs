//! Who may wake what. WOL has no authentication, so by default any defined
//! domain with the MAC may be woken (as in the original project); operators
//! can narrow that to a list of domains and/or to domains that opted in
//! through their own libvirt `<metadata>`.

use std::str::FromStr;

use crate::decide::ask::Credential;
use crate::decide::idle::IdlePolicy;
use crate::model::{Mac, Password, Uuid};
use crate::secret::{Hash, Sealed};

/// The domain owner's settings for the gateway, in the domain's own
/// `<metadata>`:
///
/// ```xml
/// <wol:wake xmlns:wol="https://wol-libvirt-gateway/xmlns/1" opt-in="no">
///   <token sha256="…"/>          <!-- one per HTTP client (`token add`) -->
///   <token sha256="…" may="wake sleep"/>   <!-- `token add --may sleep` -->
///   <secureon salt="…" sha256="…"/>   <!-- `secureon set` -->
///   <mac address="52:54:00:12:34:56"/>   <!-- `mac add` -->
/// </wol:wake>
/// ```
///
/// The element's presence is the opt-in (`<wake/>`, as `--require-opt-in`
/// documents) unless it says `opt-in="no"`: the token commands add the
/// element without opting a domain in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WakeMeta {
    /// The owner opted in to being woken (see `--require-opt-in`).
    pub opt_in: bool,
    /// SHA-256 hashes of the domain's HTTP wake tokens.
    pub tokens: Vec<Hash>,
    /// Those of [`WakeMeta::tokens`] that may also put the domain to sleep
    /// (`POST /v1/sleep`); the others may only wake it.
    pub sleepers: Vec<Hash>,
    /// Its SecureOn password, sealed: magic packets without it are refused.
    pub secureon: Option<Sealed>,
    /// When it is put back to sleep (`idle set`); `None`: never.
    pub idle: Option<IdlePolicy>,
    /// MACs a magic packet finds it by besides its interfaces' (`mac
    /// add`): for a NIC libvirt shows no MAC of (a passed-through PCI
    /// device), or a MAC a client insists on. Found, confirmed, allowed
    /// and judged ambiguous exactly as an interface's.
    pub macs: Vec<Mac>,
}

/// What the policy looks at in a domain: read from its current XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRef {
    /// The domain's name.
    pub(crate) name: String,
    /// The domain's UUID.
    pub(crate) uuid: Uuid,
    /// Its `<metadata>` opts in to being woken.
    pub(crate) wake_opt_in: bool,
}

/// One `--allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// A domain by MAC: packets for this MAC may wake its domain.
    Mac(Mac),
    /// A domain by UUID (given in any letter case).
    Uuid(Uuid),
    /// A domain by name (exact).
    Name(String),
}

impl FromStr for AllowEntry {
    type Err = String;

    /// A MAC if it parses as one, a UUID if it has the canonical 8-4-4-4-12
    /// hex form, otherwise a domain name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("expected a domain name, UUID or MAC".into());
        }
        if let Ok(mac) = s.parse::<Mac>() {
            return Ok(AllowEntry::Mac(mac));
        }
        Ok(match s.parse::<Uuid>() {
            Ok(uuid) => AllowEntry::Uuid(uuid),
            Err(_) => AllowEntry::Name(s.to_owned()),
        })
    }
}

/// Why a wake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `--allow` was given and does not name the domain or the MAC.
    #[error("not named by any --allow")]
    NotAllowed,
    /// `--require-opt-in` was given and the domain has no opt-in.
    #[error("no wake opt-in in its <metadata> (--require-opt-in; see docs/access.md)")]
    NoOptIn,
    /// The domain set a SecureOn password and the packet carried none.
    #[error("SecureOn password missing (the domain set one: send it with the packet)")]
    SecureOnMissing,
    /// The packet's SecureOn password is not the domain's.
    #[error("SecureOn password wrong")]
    SecureOnWrong,
    /// The HTTP request's token is not one of the domain's.
    #[error("the token is not one of this domain's")]
    NotThisToken,
}

/// Whether a request's credential opens `meta`'s domain: a token must be
/// one of the domain's (and then needs no SecureOn password: it is the
/// stronger secret); a magic packet needs the domain's SecureOn password if
/// it set one.
pub(crate) fn check_credential(meta: &WakeMeta, credential: &Credential) -> Result<(), Refusal> {
    match credential {
        Credential::Token(hash) => {
            // Every stored hash is compared, in constant time each: how
            // long it takes says nothing about which one matched.
            let found = meta
                .tokens
                .iter()
                .fold(false, |found, stored| found | stored.matches(hash));
            if found {
                Ok(())
            } else {
                Err(Refusal::NotThisToken)
            }
        }
        Credential::SecureOn(password) => check_secureon(meta.secureon.as_ref(), Some(password)),
        Credential::None => check_secureon(meta.secureon.as_ref(), None),
        // The command line runs on the caller's own libvirt connection,
        // which could start or stop the domain itself.
        Credential::Operator => Ok(()),
    }
}

/// Whether the token hashed `token` may put `meta`'s domain to sleep (it
/// must also open it: [`check_credential`]). Compared as tokens are.
pub(crate) fn may_sleep(meta: &WakeMeta, token: &Hash) -> bool {
    meta.sleepers
        .iter()
        .fold(false, |found, stored| found | stored.matches(token))
}

/// Whether a magic packet's SecureOn password (if any) opens a domain that
/// set one (`sealed`). Domains without one take any packet, as before.
pub(crate) fn check_secureon(
    sealed: Option<&Sealed>,
    given: Option<&Password>,
) -> Result<(), Refusal> {
    match (sealed, given) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(Refusal::SecureOnMissing),
        (Some(sealed), Some(password)) if sealed.opens(password) => Ok(()),
        (Some(_), Some(_)) => Err(Refusal::SecureOnWrong),
    }
}

/// The operator's restrictions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// If non-empty, only these domains may be woken.
    pub allow: Vec<AllowEntry>,
    /// Only domains whose `<metadata>` opts in may be woken.
    pub require_opt_in: bool,
}

impl Policy {
    /// Whether a request for `macs` (a packet's MAC; for a domain asked
    /// for by name, its MACs) may wake `domain`.
    pub(crate) fn check(&self, domain: &DomainRef, macs: &[Mac]) -> Result<(), Refusal> {
        let listed = self.allow.is_empty()
            || self.allow.iter().any(|entry| match entry {
                AllowEntry::Mac(allowed) => macs.contains(allowed),
                AllowEntry::Uuid(uuid) => domain.uuid == *uuid,
                AllowEntry::Name(name) => domain.name == *name,
            });
        if !listed {
            Err(Refusal::NotAllowed)
        } else if self.require_opt_in && !domain.wake_opt_in {
            Err(Refusal::NoOptIn)
        } else {
            Ok(())
        }
    }

    /// True when no restriction is configured (the default).
    pub(crate) fn is_open(&self) -> bool {
        self.allow.is_empty() && !self.require_opt_in
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";

    fn web01(opt_in: bool) -> DomainRef {
        DomainRef {
            name: "web01".into(),
            uuid: UUID.parse().expect("uuid"),
            wake_opt_in: opt_in,
        }
    }

    fn entry(s: &str) -> AllowEntry {
        s.parse().unwrap()
    }

    #[test]
    fn entries_are_told_apart() {
        assert!(matches!(entry("52:54:00:AA:BB:CC"), AllowEntry::Mac(_)));
        assert_eq!(
            entry(&UUID.to_uppercase()),
            AllowEntry::Uuid(UUID.parse().expect("uuid"))
        );
        assert_eq!(entry("web01"), AllowEntry::Name("web01".into()));
        assert_eq!(
            entry("6695eb01-f6a4"),
            AllowEntry::Name("6695eb01-f6a4".into())
        );
        assert!("".parse::<AllowEntry>().is_err());
    }

    #[test]
    fn default_policy_allows_everything() {
        let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
        assert!(Policy::default().is_open());
        assert_eq!(Policy::default().check(&web01(false), &[mac]), Ok(()));
    }

    #[test]
    fn allow_list_matches_name_uuid_or_mac() {
        let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
        let other: Mac = "52:54:00:aa:bb:dd".parse().unwrap();
        for allowed in ["web01", UUID, "52:54:00:aa:bb:cc"] {
            let policy = Policy {
                allow: vec![entry("db01"), entry(allowed)],
                require_opt_in: false,
            };
            assert_eq!(policy.check(&web01(false), &[mac]), Ok(()), "{allowed}");
        }
        let policy = Policy {
            allow: vec![entry("52:54:00:aa:bb:cc")],
            require_opt_in: false,
        };
        assert_eq!(
            policy.check(&web01(false), &[other]),
            Err(Refusal::NotAllowed)
        );
        let policy = Policy {
            allow: vec![entry("db01")],
            require_opt_in: false,
        };
        assert_eq!(policy.check(&web01(true), &[mac]), Err(Refusal::NotAllowed));
    }

    #[test]
    fn a_secureon_password_is_needed_only_where_one_is_set() {
        let password: Password = "01:02:03:04:05:06".parse().unwrap();
        let other: Password = "01:02:03:04:05:07".parse().unwrap();
        let sealed = Sealed::seal(&password).unwrap();
        assert_eq!(check_secureon(None, None), Ok(()));
        assert_eq!(check_secureon(None, Some(&other)), Ok(()));
        assert_eq!(check_secureon(Some(&sealed), Some(&password)), Ok(()));
        assert_eq!(
            check_secureon(Some(&sealed), None),
            Err(Refusal::SecureOnMissing)
        );
        assert_eq!(
            check_secureon(Some(&sealed), Some(&other)),
            Err(Refusal::SecureOnWrong)
        );
    }

    #[test]
    fn a_token_opens_only_its_own_domain_and_needs_no_secureon() {
        use crate::secret::{Hash, token_hash};
        let mine = token_hash("my-token-aaaaaaaaaaaaaaaa");
        let meta = WakeMeta {
            tokens: vec![Hash::of(b"another"), mine],
            secureon: Some(Sealed::seal(&"01:02:03:04".parse().unwrap()).unwrap()),
            ..WakeMeta::default()
        };
        assert_eq!(check_credential(&meta, &Credential::Token(mine)), Ok(()));
        let theirs = token_hash("their-token-aaaaaaaaaaaaa");
        assert_eq!(
            check_credential(&meta, &Credential::Token(theirs)),
            Err(Refusal::NotThisToken)
        );
        assert_eq!(
            check_credential(&WakeMeta::default(), &Credential::Token(mine)),
            Err(Refusal::NotThisToken)
        );
        // A magic packet still needs the password.
        assert_eq!(
            check_credential(&meta, &Credential::None),
            Err(Refusal::SecureOnMissing)
        );
    }

    #[test]
    fn opt_in_is_required_on_top_of_the_list() {
        let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
        let policy = Policy {
            allow: vec![],
            require_opt_in: true,
        };
        assert_eq!(policy.check(&web01(false), &[mac]), Err(Refusal::NoOptIn));
        assert_eq!(policy.check(&web01(true), &[mac]), Ok(()));
    }
}
