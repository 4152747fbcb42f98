//! Which endpoint a request is for, what it asks, and what is wrong with
//! it: a pure function of the method, path, query, headers and body, so
//! every rule is a unit test. HTTP itself is parsed by hyper.

use std::sync::Arc;
use std::time::Duration;

use hyper::http::{HeaderMap, Method, StatusCode, header};

use crate::decide::ask::Target;
use crate::model::Mac;

/// The longest `?wait=` honoured; longer is capped to it.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(120);

/// An endpoint, with what the request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `GET /v1/health`, no token.
    Health,
    /// `GET /v1/domains`: the domains the token may wake.
    Domains,
    /// `POST /v1/wake` (the target in the body, read later) or
    /// `GET /v1/wake/{domain|mac}`.
    Wake {
        /// The target, when the path names it; `None` for POST.
        target: Option<Target>,
        /// `?wait=SECONDS`, capped at [`MAX_WAIT`].
        wait: Duration,
    },
    /// `POST /v1/sleep` (the target in the body) or `POST
    /// /v1/sleep/{domain|mac}`: needs a token that may put it to sleep.
    Sleep {
        /// The target, when the path names it.
        target: Option<Target>,
    },
    /// `/v1/power/{domain|mac}`, a switch: `GET` answers `ON` or `OFF`,
    /// `POST` with `ON` wakes, with `OFF` puts to sleep (Home Assistant's
    /// `rest` switch, as it comes).
    Power {
        /// The domain.
        target: Target,
        /// `POST`: set it; `GET`: read it.
        set: bool,
    },
}

/// A request refused before it reaches the gateway: the status and a
/// one-line reason (sent as `{"error": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// What was wrong, and what to do.
    pub(crate) message: String,
    /// For 405: the methods the path takes.
    pub(crate) allow: Option<&'static str>,
}

impl Refusal {
    /// A refusal with `status` and `message`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            allow: None,
        }
    }
}

/// Where the request's token was. Debug shows no token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Presented {
    /// None given.
    Missing,
    /// Given, but not a plausible token (never logged either way).
    Malformed,
    /// A plausible token.
    Token(String),
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Missing => f.write_str("Missing"),
            Presented::Malformed => f.write_str("Malformed"),
            Presented::Token(_) => f.write_str("Token(…)"),
        }
    }
}

/// Finds the endpoint for `method` and `path` (with its `query`).
pub(crate) fn endpoint(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<Endpoint, Refusal> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (allowed, endpoint): (&'static str, Result<Endpoint, Refusal>) = match segments[..] {
        ["v1", "health"] => ("GET", Ok(Endpoint::Health)),
        ["v1", "domains"] => ("GET", Ok(Endpoint::Domains)),
        ["v1", "wake"] => (
            "POST",
            wait(query).map(|wait| Endpoint::Wake { target: None, wait }),
        ),
        ["v1", "wake", name] => (
            "GET, POST",
            target(name).and_then(|target| {
                wait(query).map(|wait| Endpoint::Wake {
                    target: Some(target),
                    wait,
                })
            }),
        ),
        ["v1", "sleep"] => ("POST", Ok(Endpoint::Sleep { target: None })),
        ["v1", "sleep", name] => (
            "POST",
            target(name).map(|target| Endpoint::Sleep {
                target: Some(target),
            }),
        ),
        ["v1", "power", name] => (
            "GET, POST",
            target(name).map(|target| Endpoint::Power {
                target,
                set: method == Method::POST,
            }),
        ),
        _ => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no endpoint {path}: use POST /v1/wake, GET /v1/wake/DOMAIN, \
                     POST /v1/sleep/DOMAIN, GET or POST /v1/power/DOMAIN, \
                     GET /v1/domains or GET /v1/health"
                ),
            ));
        }
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed on {path}: use {allowed}"),
            allow: Some(allowed),
        });
    }
    endpoint
}

/// A path segment naming a domain or a MAC.
fn target(segment: &str) -> Result<Target, Refusal> {
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the domain name is not UTF-8"))?;
    named(&name)
}

/// A domain name or a MAC as a request gives it.
fn named(name: &str) -> Result<Target, Refusal> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "a domain name must be 1 to 256 characters without control characters",
        ));
    }
    Ok(match name.parse::<Mac>() {
        Ok(mac) => Target::Mac(mac),
        Err(_) => Target::Domain(Arc::from(name)),
    })
}

/// `?wait=SECONDS` (0 if absent), capped at [`MAX_WAIT`].
fn wait(query: Option<&str>) -> Result<Duration, Refusal> {
    let Some(text) = query_value(query, "wait") else {
        return Ok(Duration::ZERO);
    };
    let seconds: u64 = text.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "wait={text} is not a number of seconds (0 to {})",
                MAX_WAIT.as_secs()
            ),
        )
    })?;
    Ok(Duration::from_secs(seconds).min(MAX_WAIT))
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A power switch's `POST` body: `ON` or `OFF` (any letter case, around
/// it blanks), as Home Assistant's `rest` switch sends by default, with no
/// `Content-Type` (httpx) or `application/octet-stream` (aiohttp).
pub(crate) fn power_body(content_type: Option<&str>, body: &[u8]) -> Result<bool, Refusal> {
    let kind = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    match kind.as_deref() {
        None | Some("text/plain" | "application/octet-stream") => {}
        Some(other) => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {other} is not taken: send ON or OFF as plain text"),
            ));
        }
    }
    let text = std::str::from_utf8(body).unwrap_or_default().trim();
    if text.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the body must be ON (wake the domain) or OFF (put it to sleep)",
        ))
    }
}

/// The token of a request: `Authorization: Bearer TOKEN`, or `?token=`
/// for clients that can only send a URL.
pub(crate) fn token(headers: &HeaderMap, query: Option<&str>) -> Presented {
    let given = match headers.get(header::AUTHORIZATION) {
        // The scheme's name is case-insensitive (RFC 9110).
        Some(value) => match value.to_str().ok().and_then(|v| v.split_once(' ')) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("Bearer") => {
                token.trim().to_owned()
            }
            _ => return Presented::Malformed,
        },
        None => match query_value(query, "token") {
            Some(token) => token,
            None => return Presented::Missing,
        },
    };
    // Ours are 43 URL-safe characters; accept what a longer generator might
    // make, nothing that could not be one.
    let plausible = (16..=512).contains(&given.len())
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b));
    if plausible {
        Presented::Token(given)
    } else {
        Presented::Malformed
    }
}

/// The target of a `POST /v1/wake` body: JSON `{"domain": …}` or
/// `{"mac": …}`, or the same form-encoded.
pub(crate) fn body_target(content_type: Option<&str>, body: &[u8]) -> Result<Target, Refusal> {
    let bad = |why: String| Refusal::new(StatusCode::BAD_REQUEST, why);
    let kind = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let json = match kind.as_deref() {
        Some("application/json") => true,
        None => body.first() == Some(&b'{'),
        _ => false,
    };
    let (domain, mac) = match kind.as_deref() {
        _ if json => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                domain: Option<String>,
                mac: Option<String>,
            }
            let parsed: Body = serde_json::from_slice(body)
                .map_err(|e| bad(format!("the body is not the JSON expected ({e})")))?;
            (parsed.domain, parsed.mac)
        }
        Some("application/x-www-form-urlencoded") | None => {
            let mut domain = None;
            let mut mac = None;
            for (key, value) in form_urlencoded::parse(body) {
                match &*key {
                    "domain" => domain = Some(value.into_owned()),
                    "mac" => mac = Some(value.into_owned()),
                    other => return Err(bad(format!("unknown field '{other}' in the form"))),
                }
            }
            (domain, mac)
        }
        Some(other) => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {other} is not taken: send application/json or a form"),
            ));
        }
    };
    match (domain, mac) {
        (Some(domain), None) => match named(&domain)? {
            // A name that looks like a MAC is still a name here.
            Target::Mac(_) => Ok(Target::Domain(Arc::from(domain.as_str()))),
            target => Ok(target),
        },
        (None, Some(mac)) => mac
            .parse::<Mac>()
            .map(Target::Mac)
            .map_err(|e| bad(e.to_string())),
        _ => Err(bad(
            "give exactly one of \"domain\" and \"mac\", e.g. {\"domain\": \"web01\"}".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, query: Option<&str>) -> Result<Endpoint, Refusal> {
        endpoint(&Method::GET, path, query)
    }

    #[test]
    fn endpoints_and_their_methods() {
        assert_eq!(get("/v1/health", None), Ok(Endpoint::Health));
        assert_eq!(get("/v1/domains/", None), Ok(Endpoint::Domains));
        assert_eq!(
            get("/v1/wake/web01", None),
            Ok(Endpoint::Wake {
                target: Some(Target::Domain(Arc::from("web01"))),
                wait: Duration::ZERO
            })
        );
        assert_eq!(
            get("/v1/wake/52:54:00:AA:BB:CC", Some("wait=30")),
            Ok(Endpoint::Wake {
                target: Some(Target::Mac("52:54:00:aa:bb:cc".parse().unwrap())),
                wait: Duration::from_secs(30)
            })
        );
        assert_eq!(
            endpoint(&Method::POST, "/v1/wake", Some("wait=9999")),
            Ok(Endpoint::Wake {
                target: None,
                wait: MAX_WAIT
            })
        );
        let not_allowed = get("/v1/wake", None).unwrap_err();
        assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(not_allowed.allow, Some("POST"));
        let delete = endpoint(&Method::DELETE, "/v1/health", None).unwrap_err();
        assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get("/", None).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(
            get("/v2/wake", None).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/v1/wake/web01", Some("wait=soon")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get("/v1/wake/web%2001", None),
            Ok(Endpoint::Wake {
                target: Some(Target::Domain(Arc::from("web 01"))),
                wait: Duration::ZERO
            })
        );
        assert_eq!(
            get("/v1/wake/%ff", None).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn sleep_and_the_power_switch() {
        let web01 = Target::Domain(Arc::from("web01"));
        assert_eq!(
            endpoint(&Method::POST, "/v1/sleep/web01", None),
            Ok(Endpoint::Sleep {
                target: Some(web01.clone())
            })
        );
        assert_eq!(
            endpoint(&Method::POST, "/v1/sleep", None),
            Ok(Endpoint::Sleep { target: None })
        );
        assert_eq!(
            get("/v1/sleep/web01", None).unwrap_err().allow,
            Some("POST")
        );
        assert_eq!(
            get("/v1/power/web01", None),
            Ok(Endpoint::Power {
                target: web01.clone(),
                set: false
            })
        );
        assert_eq!(
            endpoint(&Method::POST, "/v1/power/web01", None),
            Ok(Endpoint::Power {
                target: web01,
                set: true
            })
        );
        assert_eq!(
            endpoint(&Method::PUT, "/v1/power/web01", None)
                .unwrap_err()
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(power_body(None, b"ON"), Ok(true));
        assert_eq!(
            power_body(Some("application/octet-stream"), b"OFF"),
            Ok(false)
        );
        assert_eq!(
            power_body(Some("text/plain; charset=utf-8"), b" on\n"),
            Ok(true)
        );
        for bad in [&b""[..], b"1", b"toggle", b"\xff"] {
            assert_eq!(
                power_body(None, bad).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
        assert_eq!(
            power_body(Some("application/json"), b"ON")
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let token = "A".repeat(43);
        let mut headers = HeaderMap::new();
        assert_eq!(super::token(&headers, None), Presented::Missing);
        let query = format!("wait=5&token={token}");
        assert_eq!(
            super::token(&headers, Some(&query)),
            Presented::Token(token.clone())
        );
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert_eq!(super::token(&headers, None), Presented::Token(token));
        headers.insert(
            header::AUTHORIZATION,
            format!("bearer {}", "A".repeat(43)).parse().unwrap(),
        );
        assert_eq!(
            super::token(&headers, None),
            Presented::Token("A".repeat(43))
        );
        assert_eq!(format!("{:?}", super::token(&headers, None)), "Token(…)");
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(super::token(&headers, None), Presented::Malformed);
        headers.insert(header::AUTHORIZATION, "Bearer short".parse().unwrap());
        assert_eq!(super::token(&headers, None), Presented::Malformed);
    }

    #[test]
    fn post_bodies_in_json_and_form() {
        let web01 = Ok(Target::Domain(Arc::from("web01")));
        let mac: Mac = "52:54:00:aa:bb:cc".parse().unwrap();
        assert_eq!(
            body_target(Some("application/json"), br#"{"domain":"web01"}"#),
            web01
        );
        assert_eq!(
            body_target(None, br#"{"mac":"52:54:00:aa:bb:cc"}"#),
            Ok(Target::Mac(mac))
        );
        assert_eq!(
            body_target(Some("application/x-www-form-urlencoded"), b"domain=web01"),
            web01
        );
        assert_eq!(
            body_target(None, b"mac=52%3A54%3A00%3Aaa%3Abb%3Acc"),
            Ok(Target::Mac(mac))
        );
        for (kind, body) in [
            (
                Some("application/json"),
                &br#"{"domain":"a","mac":"52:54:00:aa:bb:cc"}"#[..],
            ),
            (Some("application/json"), br#"{"domian":"web01"}"#),
            (Some("application/json"), br#"{"domain": 5}"#),
            (None, b"{not json"),
            (None, b""),
            (None, b"mac=52:54"),
            (None, b"host=web01"),
        ] {
            let refusal = body_target(kind, body).unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{body:?}");
            assert!(!refusal.message.contains('\n'), "{}", refusal.message);
        }
        assert_eq!(
            body_target(Some("text/plain"), b"web01")
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
