//! The secrets a domain's owner gives the gateway: HTTP wake tokens and
//! SecureOn passwords ([`Password`]). Only their SHA-256 hashes are stored (in the
//! domain's `<metadata>`, see [`crate::decide::policy::WakeMeta`]); a clear token exists
//! once, when `token add` prints it. Nothing here is ever logged.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::Password;

/// Random bytes in a token: 256 bits, far beyond guessing.
const TOKEN_BYTES: usize = 32;
/// Hex digits of a hash shown by `token list` and taken by `token revoke`.
pub(crate) const PREFIX_LEN: usize = 8;

/// A SHA-256 hash of a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// Equality in constant time: how long it takes tells nothing about
    /// how many leading bytes matched.
    pub(crate) fn matches(&self, other: &Hash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The first [`PREFIX_LEN`] hex digits: enough to tell a domain's
    /// tokens apart, useless for finding the token.
    pub fn prefix(&self) -> String {
        let mut hex = self.to_string();
        hex.truncate(PREFIX_LEN);
        hex
    }

    /// Parses 64 hex digits.
    pub(crate) fn from_hex(text: &str) -> Option<Hash> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Hash(bytes))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Hash {
    // A hash of a 48-bit SecureOn password can be brute-forced: keep it out
    // of debug output too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}…)", self.prefix())
    }
}

/// A new token, shown to the user once; its [`Hash`] is what is stored.
pub struct Token(String);

impl Token {
    /// A new random token: 32 bytes from the OS, URL-safe base64 (43
    /// characters, usable in `?token=` without escaping).
    pub(crate) fn generate() -> Result<Token, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Token(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// The token's text, to print once.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// What is stored.
    pub fn hash(&self) -> Hash {
        token_hash(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// The stored hash of a presented token.
pub fn token_hash(presented: &str) -> Hash {
    Hash::of(presented.as_bytes())
}

/// A stored SecureOn password: a random salt and SHA-256(salt ‖ password).
/// The salt keeps equal passwords on two domains from looking equal; a
/// 48-bit password stays brute-forceable from its hash (docs/access.md).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Random per password.
    pub(crate) salt: [u8; 16],
    /// SHA-256 of the salt followed by the password.
    pub(crate) hash: Hash,
}

impl Sealed {
    /// Stands for a stored password that cannot be read: no password opens
    /// it (finding a SHA-256 preimage of zero is not a risk we can see).
    pub(crate) const UNOPENABLE: Sealed = Sealed {
        salt: [0; 16],
        hash: Hash([0; 32]),
    };

    /// A salted hash of `password`, with a new random salt.
    pub fn seal(password: &Password) -> Result<Sealed, getrandom::Error> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)?;
        Ok(Sealed {
            salt,
            hash: salted(&salt, password.as_bytes()),
        })
    }

    /// True if `password` is the sealed one (compared in constant time).
    pub fn opens(&self, password: &Password) -> bool {
        self.hash.matches(&salted(&self.salt, password.as_bytes()))
    }

    /// The salt as 32 hex digits.
    pub(crate) fn salt_hex(&self) -> String {
        self.salt.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses what [`Sealed::salt_hex`] and the hash's hex wrote.
    pub(crate) fn from_hex(salt: &str, hash: &str) -> Option<Sealed> {
        let salt = salt.trim();
        if salt.len() != 32 || !salt.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&salt[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Sealed {
            salt: bytes,
            hash: Hash::from_hex(hash)?,
        })
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(…)")
    }
}

fn salted(salt: &[u8], password: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password);
    Hash(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_long_url_safe_and_new_each_time() {
        let a = Token::generate().expect("random");
        let b = Token::generate().expect("random");
        assert_eq!(a.reveal().len(), 43);
        assert!(
            a.reveal()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{}",
            a.reveal()
        );
        assert_ne!(a.reveal(), b.reveal());
        assert!(a.hash().matches(&token_hash(a.reveal())));
        assert!(!a.hash().matches(&token_hash(b.reveal())));
        assert_eq!(format!("{a:?}"), "Token(…)");
    }

    #[test]
    fn hashes_are_sha256_and_round_trip_as_hex() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc = Hash::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(abc.to_string(), hex);
        assert_eq!(abc.prefix(), "ba7816bf");
        assert_eq!(Hash::from_hex(hex), Some(abc));
        assert_eq!(Hash::from_hex(&hex[1..]), None);
        assert_eq!(Hash::from_hex(&hex.replace('b', "g")), None);
        assert!(!format!("{abc:?}").contains(hex));
    }

    #[test]
    fn a_sealed_password_opens_only_for_itself_and_salts_differ() {
        let password: Password = "01:02:03:04:05:06".parse().expect("password");
        let sealed = Sealed::seal(&password).expect("random");
        assert!(sealed.opens(&password));
        assert!(!sealed.opens(&"01:02:03:04:05:07".parse().expect("other")));
        assert!(!sealed.opens(&"01:02:03:04".parse().expect("short")));
        let again = Sealed::seal(&password).expect("random");
        assert_ne!(sealed.hash, again.hash, "the same password, another salt");
        let stored = Sealed::from_hex(&sealed.salt_hex(), &sealed.hash.to_string());
        assert_eq!(stored, Some(sealed));
    }
}
