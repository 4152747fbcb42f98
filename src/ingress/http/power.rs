//! The power switch: `POST /v1/sleep/TARGET` puts a domain to sleep for a
//! token that may (`token add --may sleep`), and `/v1/power/TARGET` reads
//! (`GET`: `ON` or `OFF`) and sets it (`POST` `ON` wakes, as `/v1/wake`
//! does, `OFF` sleeps), as Home Assistant's `rest` switch speaks it. The
//! domain is found as a wake finds it: the token first, then the operator's
//! policy, and a token never tells one domain it does not open from none.
//! libvirt is called on blocking threads, each call bounded by the hosts'
//! deadline; a managed save that takes longer is answered `underway`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::decide::ask::{Ask, Credential, Target};
use crate::decide::outcome::Http;
use crate::decide::sleep::{self, Outcome};
use crate::libvirt::fleet::{Fleet, Seen, Waiter};
use crate::model::{DomainState, Source};
use crate::secret::Hash;

use super::{Context, error, failed, hidden, json};

/// How long a sleep request waits, from its arrival, for its action before
/// it is answered `underway`: Home Assistant gives up on a switch after 10 s.
const PATIENCE: Duration = Duration::from_secs(8);

/// Said when libvirt failed to look the domain up: before the token opened
/// a domain, libvirt's message would tell a stranger about the host.
const LOOKUP_FAILED: &str = "libvirt failed to look the domain up; the gateway's log says why";

/// What a sleep request is answered, in JSON.
#[derive(Debug, Serialize)]
struct SleepAnswer {
    domain: Option<String>,
    host: Option<String>,
    state_before: Option<&'static str>,
    /// `managedsave`, `shutdown`, `suspend`, or `none`.
    action: &'static str,
    /// The journal's `RESULT` word.
    result: &'static str,
    error: Option<String>,
}

/// `POST /v1/sleep/TARGET` (and the switch's `OFF`); the answer, and
/// whether the token opened the domain.
pub(super) async fn sleep(
    context: &Context,
    peer: SocketAddr,
    target: Target,
    token: Hash,
) -> (Response<Full<Bytes>>, bool) {
    let waiter = Waiter {
        until: Some(Instant::now() + PATIENCE),
        // No idle exit while an action the gateway began goes on.
        hold: Box::new(context.submitter.busy()),
        // A wake after (or during) the action is no repeat of an earlier one.
        acting: {
            let submitter = context.submitter.clone();
            Box::new(move || submitter.slept())
        },
    };
    let outcome = on_fleet(context, target, token, move |fleet, ask| {
        fleet.sleep(ask, &Source::Http(peer), waiter)
    })
    .await;
    let Some(outcome) = outcome else {
        return (
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            false,
        );
    };
    let class = outcome.class();
    let status = match class.http {
        Http::Wake(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
        Http::Hidden => return (hidden(context, peer, token).await, false),
    };
    if let Outcome::Unreachable(_) = outcome {
        // As for a wake: a token no host has shown proves nothing.
        if !context.fleet.vouches(&token) {
            failed(context, peer.ip());
        }
        let mut response = error(status, "libvirt is not answering; try again");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5));
        return (response, false);
    }
    let (domain, state) = outcome.domain().unzip();
    let answer = SleepAnswer {
        domain: domain.map(|d| d.name.clone()),
        host: domain.map(|d| d.uri.to_string()),
        state_before: state.flatten().map(DomainState::as_str),
        action: outcome.action().map_or("none", |action| action.as_str()),
        result: class.result,
        error: match &outcome {
            // About the caller's own domain: libvirt's words.
            Outcome::Failed { error, .. } => Some(error.to_string()),
            // Before a token opened anything: no libvirt message.
            Outcome::LookupFailed { .. } => Some(LOOKUP_FAILED.into()),
            Outcome::Forbidden { .. } => Some(
                "this token may only wake the domain: token add DOMAIN --may sleep makes one \
                 that may also put it to sleep"
                    .into(),
            ),
            _ => None,
        },
    };
    (json(status, &answer), domain.is_some())
}

/// `GET /v1/power/TARGET`: `ON` while the domain is up, `OFF` otherwise,
/// as plain text and nothing else (the switch compares the whole body).
pub(super) async fn state(
    context: &Context,
    peer: SocketAddr,
    target: Target,
    token: Hash,
) -> (Response<Full<Bytes>>, bool) {
    match on_fleet(context, target, token, |fleet, ask| fleet.seen(ask)).await {
        Some(Seen::Domain(_, state)) => {
            let word = if sleep::is_up(state) { "ON" } else { "OFF" };
            let mut response = Response::new(Full::new(Bytes::from_static(word.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            (response, true)
        }
        Some(Seen::Hidden) => (hidden(context, peer, token).await, false),
        Some(Seen::Unreachable(_)) => {
            if !context.fleet.vouches(&token) {
                failed(context, peer.ip());
            }
            let busy = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "libvirt is not answering; try again",
            );
            (busy, false)
        }
        Some(Seen::Failed(..)) => (error(StatusCode::BAD_GATEWAY, LOOKUP_FAILED), false),
        None => (
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            false,
        ),
    }
}

/// `call` with the request's target and token, on a blocking thread (it
/// calls libvirt; each call is bounded by the hosts' deadline); `None` if it
/// panicked.
async fn on_fleet<T: Send + 'static>(
    context: &Context,
    target: Target,
    token: Hash,
    call: impl FnOnce(&Fleet, &Ask) -> T + Send + 'static,
) -> Option<T> {
    let ask = Ask {
        target,
        credential: Credential::Token(token),
    };
    let fleet = Arc::clone(&context.fleet);
    tokio::task::spawn_blocking(move || call(&fleet, &ask))
        .await
        .ok()
}
