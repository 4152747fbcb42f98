//! What a wake request asks for, whichever way it came in: a target (a MAC
//! from a magic packet or the HTTP wake, or a domain name from the HTTP
//! wake) and the credential it carries. Requests are de-duplicated on the
//! whole of it: a wrong password or another client's token sent first must
//! never make the right one a duplicate.

use std::fmt;
use std::sync::Arc;

use crate::model::{Mac, Password};
use crate::secret::Hash;

/// The domain a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The domain that owns this MAC (the ambiguity rule applies).
    Mac(Mac),
    /// The domain of this name.
    Domain(Arc<str>),
}

impl Target {
    /// The MAC, if the target is one.
    pub(crate) fn mac(&self) -> Option<Mac> {
        match self {
            Target::Mac(mac) => Some(*mac),
            Target::Domain(_) => None,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// A MAC if it parses as one, otherwise a domain name (as the command
    /// line and an HTTP path name a domain).
    fn from_str(s: &str) -> Result<Target, String> {
        if s.is_empty() || s.chars().any(char::is_control) {
            return Err("expected a domain name or a MAC".into());
        }
        Ok(match s.parse::<Mac>() {
            Ok(mac) => Target::Mac(mac),
            Err(_) => Target::Domain(Arc::from(s)),
        })
    }
}

impl fmt::Display for Target {
    /// A MAC, or a domain name as a client gave it, escaped: it is written
    /// into log lines and the journal, where a line separator, a bidi
    /// override or an escape sequence must not forge or disguise a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Mac(mac) => mac.fmt(f),
            Target::Domain(name) => write_escaped(f, name),
        }
    }
}

/// Writes `text` with every character that is not printable (controls,
/// line and paragraph separators, format characters such as bidi overrides
/// and zero-width ones, lone combining marks) as `\u{…}`, and `\` as
/// `\\` so that an escape cannot be faked. Letters of any script stay as
/// they are.
fn write_escaped(f: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            // escape_debug also escapes quotes, which are printable.
            '\'' | '"' => f.write_char(c)?,
            c if c.escape_debug().next() == Some('\\') => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

/// What a request proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Credential {
    /// Nothing: a magic packet without a password.
    None,
    /// A magic packet's SecureOn password.
    SecureOn(Password),
    /// The hash of an HTTP wake token (the token itself is never kept).
    Token(Hash),
    /// The command line (`wake`, `sleep`): the caller's own libvirt
    /// connection, which could act on the domain without us.
    Operator,
}

/// A wake request's target and credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ask {
    /// The domain asked for.
    pub(crate) target: Target,
    /// What the request proves.
    pub(crate) credential: Credential,
}

impl Ask {
    /// What a request is a duplicate of once its domain was brought up: for
    /// a magic packet the MAC alone (the domain is up whatever password a
    /// later packet carries, and a flood of packets with varying trailing
    /// bytes must stay one request), for the HTTP wake the target and the
    /// token (another token's request must not be told "duplicate": that
    /// would say the domain exists and was woken).
    pub(crate) fn dedup_key(&self) -> Ask {
        match self.credential {
            Credential::Token(_) => self.clone(),
            Credential::None | Credential::SecureOn(_) | Credential::Operator => Ask {
                target: self.target.clone(),
                credential: Credential::None,
            },
        }
    }

    /// The MAC asked for, if the target is one.
    pub(crate) fn mac(&self) -> Option<Mac> {
        self.target.mac()
    }
}

impl From<Mac> for Ask {
    /// A magic packet without a password.
    fn from(mac: Mac) -> Ask {
        Ask {
            target: Target::Mac(mac),
            credential: Credential::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(name: &str) -> String {
        Target::Domain(Arc::from(name)).to_string()
    }

    #[test]
    fn a_name_from_a_client_cannot_forge_or_disguise_a_log_line() {
        // Security review, finding 7: logged verbatim, this read as a
        // second line, "FAKE started web01", and a name ending ".exe".
        assert_eq!(
            shown("x\u{2028}FAKE started web01\u{202e}gpj.exe"),
            "x\\u{2028}FAKE started web01\\u{202e}gpj.exe"
        );
        assert_eq!(
            shown("a\u{1b}[2Jb\u{200b}c\u{85}"),
            "a\\u{1b}[2Jb\\u{200b}c\\u{85}"
        );
        assert_eq!(shown("back\\u{2028}slash"), "back\\\\u{2028}slash");
        // Ordinary names, in any script, with quotes, stay as they are.
        for name in ["web01", "köln-vm", "виртуалка", "bob's \"vm\""] {
            assert_eq!(shown(name), name);
        }
    }
}
