//! `secureon set | clear`: a domain's SecureOn password, WOL's own (weak)
//! password. Stored only salted and hashed in the domain's `<metadata>`
//! (see [`WakeMeta`]); magic packets for a domain that set one are refused
//! without it ([`crate::decide::policy::check_secureon`]).

use crate::decide::policy::WakeMeta;
use crate::libvirt::hypervisor::Libvirt;
use crate::model::{HvError, Password};
use crate::secret::Sealed;

/// Why a SecureOn command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum SecureOnError {
    /// libvirt refused or failed (no such domain, no permission, ...).
    #[error("{0}")]
    Libvirt(#[from] HvError),
    /// The OS gave no random bytes for the salt.
    #[error("cannot get random bytes for a salt: {0}")]
    Random(getrandom::Error),
}

/// Sets (or replaces) `domain`'s password.
pub fn set(hv: &Libvirt, domain: &str, password: &Password) -> Result<(), SecureOnError> {
    let mut meta = hv.wake_meta(domain)?;
    meta.secureon = Some(Sealed::seal(password).map_err(SecureOnError::Random)?);
    store(hv, domain, &meta)
}

/// Removes `domain`'s password; true if it had one.
pub fn clear(hv: &Libvirt, domain: &str) -> Result<bool, SecureOnError> {
    let mut meta = hv.wake_meta(domain)?;
    if meta.secureon.take().is_none() {
        return Ok(false);
    }
    store(hv, domain, &meta)?;
    Ok(true)
}

fn store(hv: &Libvirt, domain: &str, meta: &WakeMeta) -> Result<(), SecureOnError> {
    Ok(hv.set_wake_meta(domain, meta.render().as_deref())?)
}
