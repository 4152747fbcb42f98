//! How a libvirt URI is shown to people: log lines, the journal's `HOST=`,
//! `STATUS=`, `list`, and the HTTP answers' `host`.
//!
//! A remote URI carries transport options in its query
//! (`qemu+ssh://wol@host2/system?keyfile=/run/credentials/…/ssh-key&no_tty=1`):
//! they say how to get there, not which host it is, and would fill every
//! line. So the shown form is the URI without them and without its
//! fragment, and with a password in its user part hidden (libvirt takes
//! none there, but one typed by mistake must not reach the journal). Two
//! parameters name another daemon, not another way to the same one, and
//! stay: `socket=` (the daemon's socket) and `name=` (the URI the remote
//! side opens). The full URI is still what connects, and what names the
//! host's index file.

/// Query parameters that say which daemon, not how to reach it.
const IDENTIFYING: [&str; 2] = ["socket", "name"];

/// `uri` as shown: without `#…` and without query parameters other than
/// `socket=` and `name=`, with `user:password@` shown as `user:***@`.
pub fn shown(uri: &str) -> String {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let query = uri[end..]
        .strip_prefix('?')
        .map(|q| q.split('#').next().unwrap_or_default())
        .unwrap_or_default();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| IDENTIFYING.contains(&pair.split('=').next().unwrap_or_default()))
        .collect();
    let base = hide_password(&uri[..end]);
    if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// `uri` (without query) with the password of `user:password@` as `***`.
fn hide_password(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = uri[authority_start..]
        .find('/')
        .map_or(uri.len(), |i| authority_start + i);
    let authority = &uri[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return uri.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return uri.to_owned();
    };
    format!(
        "{}{}:***{}",
        &uri[..authority_start],
        &authority[..colon],
        &uri[authority_start + at..]
    )
}

/// How a URI reaches its libvirt, for hints in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A local socket (`qemu:///system`, `test+unix://…`) or an in-process
    /// driver (`test:///…`).
    Local,
    /// Through ssh (`+ssh`, `+libssh`, `+libssh2`).
    Ssh,
    /// libvirtd's own TCP or TLS listener (`+tcp`, `+tls`).
    Network,
}

/// The transport `uri` names (after `+` in its scheme; a scheme without
/// one and a host is local, with a host it is TLS, libvirt's default).
pub(crate) fn transport(uri: &str) -> Transport {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Transport::Local;
    };
    match scheme.split_once('+').map(|(_, t)| t) {
        Some("ssh" | "libssh" | "libssh2") => Transport::Ssh,
        Some("tcp" | "tls") => Transport::Network,
        Some(_) => Transport::Local,
        None if rest.starts_with('/') => Transport::Local,
        None => Transport::Network,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_uri_drops_transport_parameters_and_hides_a_password() {
        for (given, shown_as) in [
            ("qemu:///system", "qemu:///system"),
            ("test:///var/lib/node.xml", "test:///var/lib/node.xml"),
            (
                "qemu+ssh://wol@host2/system?keyfile=/run/credentials/x/ssh-key&no_tty=1",
                "qemu+ssh://wol@host2/system",
            ),
            (
                "qemu+tcp://198.51.100.2:16509/system",
                "qemu+tcp://198.51.100.2:16509/system",
            ),
            (
                "qemu+ssh://wol:s3cret@host2/system",
                "qemu+ssh://wol:***@host2/system",
            ),
            (
                "qemu+ssh://wol:pa@ss@[2001:db8::2]:22/system?x=1#y",
                "qemu+ssh://wol:***@[2001:db8::2]:22/system",
            ),
            (
                "qemu+ssh://[2001:db8::2]/system",
                "qemu+ssh://[2001:db8::2]/system",
            ),
            (
                "qemu:///system?socket=/run/x:y@z",
                "qemu:///system?socket=/run/x:y@z",
            ),
            (
                "qemu+ssh://wol@host2/?keyfile=/k&name=qemu:///session&no_tty=1#x",
                "qemu+ssh://wol@host2/?name=qemu:///session",
            ),
            ("qemu:///system?", "qemu:///system"),
            ("qemu+ssh://host2", "qemu+ssh://host2"),
            ("weird", "weird"),
            ("", ""),
        ] {
            assert_eq!(shown(given), shown_as, "{given}");
        }
    }

    #[test]
    fn the_transport_comes_from_the_scheme() {
        for (uri, transport_of) in [
            ("qemu:///system", Transport::Local),
            ("qemu+unix:///system", Transport::Local),
            ("test:///default", Transport::Local),
            ("test+unix:///default", Transport::Local),
            ("qemu+ssh://wol@host2/system", Transport::Ssh),
            ("qemu+libssh://wol@host2/system", Transport::Ssh),
            ("qemu+tcp://host2/system", Transport::Network),
            ("qemu+tls://host2/system", Transport::Network),
            ("qemu://host2/system", Transport::Network),
            ("nonsense", Transport::Local),
        ] {
            assert_eq!(transport(uri), transport_of, "{uri}");
        }
    }
}
