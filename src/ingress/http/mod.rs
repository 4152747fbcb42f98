//! The HTTP wake: an authenticated way in beside the magic packet, for
//! clients that cannot send a broadcast (a phone on a VPN, Moonlight's
//! "HTTP wake", Home Assistant, curl).
//!
//! It runs on a thread of its own with a small tokio runtime (hyper needs
//! one); the gateway's loop never waits for it. A wake request is checked
//! here (path, token present, size, rate of failures) and then enters the
//! loop's book like a magic packet ([`Submitter`]), with the token's hash as
//! its credential: the same de-duplication, policy, ambiguity rule, worker
//! slots and journal line (`VIA=http`). Whether the token may wake the
//! domain is decided there, against the domain's current XML.
//!
//! Hostile clients cost little: connections are capped in total and per
//! client, with room kept for requests with a valid token (`slots.rs`);
//! headers must arrive within [`HEADER_TIMEOUT`], bodies are capped and must
//! arrive within [`BODY_TIMEOUT`], a connection lives at most
//! [`MAX_CONNECTION`] and is closed after any answer that did not prove a
//! token (health checks, 401, 404, 429, malformed requests), and a client
//! that failed to authenticate 5 times in a minute is answered 429 at once.
//! Clients are counted as IPv4 addresses and IPv6 /64s ([`Client`]). No
//! token, token hash or `?token=` value is ever logged.

mod answer;
mod power;
pub(crate) mod route;
mod slots;
pub(crate) mod tls;

pub(crate) use self::answer::WakeAnswer;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::commands::list::{self, DomainView};
use crate::decide::ask::{Ask, Credential, Target};
use crate::decide::client::Client;
use crate::decide::control::POST_START_CHECK;
use crate::decide::failures::Failures;
use crate::decide::plan::{Awaited, awaited};
use crate::decide::policy::Policy;
use crate::gateway::{Submission, Submitter};
use crate::libvirt::domain_xml::Agent;
use crate::libvirt::fleet::Fleet;
use crate::libvirt::host::{Host, HostError};
use crate::lock::lock;
use crate::model::{DomainState, Source, StopReason};
use crate::report;
use crate::secret::{Hash, token_hash};

use self::answer::Answered;
use self::route::{Endpoint, Presented, Refusal};
use self::slots::{Id, Slots};

/// Connections served at once; past it a new connection takes the place of
/// an unproven one of a client that holds more, or is closed at once (see
/// `slots.rs`).
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's body must arrive within this.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Request headers larger than this are refused (431).
pub(crate) const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Request bodies larger than this are refused (413).
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024;
/// A connection is served this long; then its request under way is
/// answered and it is closed.
pub(crate) const MAX_CONNECTION: Duration = Duration::from_secs(150);
/// Connections from one client (an IPv4 address, an IPv6 /64) served at
/// once: one client cannot hold every slot.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// How long a wake request waits for its decision before it is answered
/// 503 (it stays in the book and is done when libvirt answers).
const DECISION_DEADLINE: Duration = Duration::from_secs(15);
/// How often the state is read while a caller waits for its domain.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// What the HTTP side needs of the gateway.
pub(crate) struct Context {
    /// The way into the loop.
    pub(crate) submitter: Submitter,
    /// The hosts (domain lists, states while waiting).
    pub(crate) fleet: Arc<Fleet>,
    /// The operator's policy (for what a wake would do).
    pub(crate) policy: Policy,
    /// Failed authentications per client (an IPv4 address, an IPv6 /64).
    failures: Mutex<Failures<Client>>,
    tokens: KnownTokens,
    /// The connections served, each with the way to close it.
    slots: Mutex<Slots<tokio::sync::oneshot::Sender<()>>>,
}

impl Context {
    /// The HTTP side of a gateway.
    pub(crate) fn new(submitter: Submitter, fleet: Arc<Fleet>, policy: Policy) -> Context {
        Context {
            submitter,
            fleet,
            policy,
            failures: Mutex::new(Failures::default()),
            tokens: KnownTokens::default(),
            slots: Mutex::new(Slots::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS)),
        }
    }
}

/// Serves `listeners` (over TLS with `tls`) on a thread of its own until
/// the process exits.
pub(crate) fn spawn(
    listeners: Vec<TcpListener>,
    tls: Option<TlsAcceptor>,
    context: Context,
) -> std::io::Result<()> {
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("wol-http".into())
        .spawn(move || runtime.block_on(serve(listeners, tls, Arc::new(context))))?;
    Ok(())
}

async fn serve(listeners: Vec<TcpListener>, tls: Option<TlsAcceptor>, context: Arc<Context>) {
    let mut tasks = Vec::new();
    for listener in listeners {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            continue;
        };
        let (context, tls) = (Arc::clone(&context), tls.clone());
        tasks.push(tokio::spawn(accept(listener, tls, context)));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    context: Arc<Context>,
) {
    loop {
        // Every connection is accepted and then served or closed at once:
        // none waits in the kernel's backlog behind connections that hold
        // the slots without a credential.
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let (close, closed) = tokio::sync::oneshot::channel();
        let admitted = lock(&context.slots).admit(Client::of(peer.ip()), Instant::now(), close);
        let id = match admitted {
            Ok((id, displaced)) => {
                if let Some(displaced) = displaced {
                    let _ = displaced.send(());
                }
                id
            }
            Err(refused) => {
                debug!("HTTP: closing {peer} at once ({refused:?})");
                continue;
            }
        };
        let (context, tls) = (Arc::clone(&context), tls.clone());
        tokio::spawn(async move {
            // Given back however the task ends (a panic included).
            let _held = Held {
                context: Arc::clone(&context),
                id,
            };
            let served = async {
                let deadline = tokio::time::Instant::now() + MAX_CONNECTION;
                match tls {
                    // The handshake has the headers' deadline: a client that
                    // stalls in it holds a slot no longer.
                    Some(tls) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                connection(stream, peer, id, Arc::clone(&context), deadline).await;
                            }
                            Ok(Err(e)) => debug!("TLS handshake with {peer} failed: {e}"),
                            Err(_) => debug!("TLS handshake with {peer} timed out"),
                        }
                    }
                    None => connection(stream, peer, id, Arc::clone(&context), deadline).await,
                }
            };
            tokio::select! {
                () = served => {}
                // Displaced by a newcomer (see slots): dropped, so closed.
                _ = closed => debug!("HTTP: closed {peer}'s connection to make room"),
            }
        });
    }
}

/// A served connection's slot; given back on drop.
struct Held {
    context: Arc<Context>,
    id: Id,
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.context.slots).release(self.id);
    }
}

/// Serves one connection (plain or TLS) until it closes or `deadline`.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    id: Id,
    context: Arc<Context>,
    deadline: tokio::time::Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let context = Arc::clone(&context);
        async move { Ok::<_, Infallible>(handle(&context, peer, id, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // Twice the cap we answer 431 to ourselves, in JSON.
        .max_buf_size((2 * MAX_HEADER_BYTES).max(8192))
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    if tokio::time::timeout_at(deadline, connection.as_mut())
        .await
        .is_err()
    {
        // Past its time: the request under way (a caller waiting up to
        // MAX_WAIT) is answered, then the connection is closed.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(route::MAX_WAIT + DECISION_DEADLINE, connection).await;
    }
}

/// `{"error": "…"}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Plain data: serialising cannot fail.
    let mut text = serde_json::to_vec(body).unwrap_or_default();
    text.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn refusal(refusal: &Refusal) -> Response<Full<Bytes>> {
    let mut response = json(
        refusal.status,
        &ErrorBody {
            error: &refusal.message,
        },
    );
    if let Some(allow) = refusal.allow {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    refusal(&Refusal::new(status, message))
}

/// Answers a request on connection `id`. A connection whose request proved
/// a token is kept open for the next one; after any other answer it is
/// closed, so that holding a connection takes a valid token.
async fn handle(
    context: &Context,
    peer: SocketAddr,
    id: Id,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mut response, proven) = answer_request(context, peer, request).await;
    if proven {
        lock(&context.slots).prove(id);
    } else {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The answer to a request, and whether its token opened a domain.
async fn answer_request(
    context: &Context,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> (Response<Full<Bytes>>, bool) {
    let unproven = |response| (response, false);
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if header_bytes > MAX_HEADER_BYTES {
        return unproven(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("request headers are larger than {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let (method, path, query) = (
        request.method().clone(),
        request.uri().path().to_owned(),
        request.uri().query().map(str::to_owned),
    );
    let endpoint = match route::endpoint(&method, &path, query.as_deref()) {
        Ok(endpoint) => endpoint,
        Err(refused) => return unproven(refusal(&refused)),
    };
    if endpoint == Endpoint::Health {
        return unproven(health());
    }
    let address = peer.ip();
    if let Some(after) = lock(&context.failures).blocked(Client::of(address), Instant::now()) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications from this address; try again later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
        return unproven(response);
    }
    let token = match route::token(request.headers(), query.as_deref()) {
        Presented::Token(token) => token_hash(&token),
        Presented::Missing | Presented::Malformed => {
            failed(context, address);
            return unproven(unauthorized(
                "a token is needed: Authorization: Bearer TOKEN (or ?token=TOKEN); \
                 wol-libvirt-gateway token add DOMAIN makes one",
            ));
        }
    };
    // The gateway does not idle out while a request with a plausible token
    // is answered, and only one whose token opened a domain is activity.
    let mut busy = context.submitter.busy();
    let (response, proven) = match endpoint {
        Endpoint::Health => (health(), false),
        Endpoint::Domains => domains(context, address, token).await,
        Endpoint::Wake { target, wait } => {
            // A target in the path wins (a POST without a body, as Home
            // Assistant's rest_command sends, names it there).
            let target = match target {
                Some(target) => Ok(target),
                None => read_target(request).await,
            };
            match target {
                Ok(target) => wake(context, peer, target, token, wait).await,
                Err(refused) => (refusal(&refused), false),
            }
        }
        Endpoint::Sleep { target } => {
            let target = match target {
                Some(target) => Ok(target),
                None => read_target(request).await,
            };
            match target {
                Ok(target) => power::sleep(context, peer, target, token).await,
                Err(refused) => (refusal(&refused), false),
            }
        }
        Endpoint::Power { target, set: false } => power::state(context, peer, target, token).await,
        Endpoint::Power { target, set: true } => match read_body(request).await {
            Ok((kind, body)) => match route::power_body(kind.as_deref(), &body) {
                Ok(true) => wake(context, peer, target, token, Duration::ZERO).await,
                Ok(false) => power::sleep(context, peer, target, token).await,
                Err(refused) => (refusal(&refused), false),
            },
            Err(refused) => (refusal(&refused), false),
        },
    };
    if proven {
        busy.authenticated();
    }
    (response, proven)
}

/// `GET /v1/health`.
fn health() -> Response<Full<Bytes>> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// 401 with `WWW-Authenticate: Bearer`.
fn unauthorized(message: &str) -> Response<Full<Bytes>> {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Every token hash some domain holds, read at most once per
/// [`KNOWN_TOKENS_TTL`] whatever the number of callers: it only tells a bad
/// token (401) from another domain's (404), after the wake itself failed, so
/// a stream of bad tokens costs one scan of every domain's XML a minute.
#[derive(Default)]
struct KnownTokens {
    read: tokio::sync::Mutex<Option<(Instant, HashSet<Hash>, bool)>>,
}

/// How long the set of known tokens is trusted.
const KNOWN_TOKENS_TTL: Duration = Duration::from_secs(60);

impl KnownTokens {
    /// True if some domain holds `token` (as of the last read), or if it
    /// cannot be told (a host not answering): then 404 rather than 401.
    async fn known(&self, fleet: &Arc<Fleet>, token: Hash) -> bool {
        let mut read = self.read.lock().await;
        let fresh = read
            .as_ref()
            .is_some_and(|(at, _, _)| at.elapsed() < KNOWN_TOKENS_TTL);
        if !fresh {
            let fleet = Arc::clone(fleet);
            let scanned = tokio::task::spawn_blocking(move || {
                let (entries, problems) = list::entries(fleet.hosts());
                let tokens: HashSet<Hash> = entries
                    .iter()
                    .flat_map(|entry| entry.info.tokens.iter().copied())
                    .collect();
                (tokens, problems.is_empty())
            })
            .await;
            // A host that did not answer may hold the token: while the
            // set is incomplete, an unknown token counts as known (404,
            // not 401). Either way, at most one scan a minute.
            let (tokens, complete) = scanned.unwrap_or_default();
            *read = Some((Instant::now(), tokens, complete));
        }
        read.as_ref().is_some_and(|(_, tokens, complete)| {
            !complete || tokens.iter().any(|t| t.matches(&token))
        })
    }
}

/// The answer for a target the token does not open, counted as a failed
/// authentication: a token that opens no domain at all is a bad token
/// (401); one that opens some other domain gets the 404 that a missing
/// domain gets, so it reveals no other domain.
async fn hidden(context: &Context, peer: SocketAddr, token: Hash) -> Response<Full<Bytes>> {
    failed(context, peer.ip());
    if context.tokens.known(&context.fleet, token).await {
        error(StatusCode::NOT_FOUND, answer::NOT_FOUND)
    } else {
        unauthorized("the token opens no domain")
    }
}

fn failed(context: &Context, address: IpAddr) {
    lock(&context.failures).record(Client::of(address), Instant::now());
}

/// The target of a POST, from a body of bounded size read within a
/// deadline.
async fn read_target(request: Request<Incoming>) -> Result<Target, Refusal> {
    let (content_type, body) = read_body(request).await?;
    route::body_target(content_type.as_deref(), &body)
}

/// A request's `Content-Type` and body, of bounded size, read within a
/// deadline.
async fn read_body(request: Request<Incoming>) -> Result<(Option<String>, Bytes), Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let collected = tokio::time::timeout(BODY_TIMEOUT, body.collect())
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Refusal::new(StatusCode::BAD_REQUEST, "the body could not be read")
            }
        })?;
    Ok((content_type, collected.to_bytes()))
}

/// A wake request; the answer, and whether the token opened the domain.
async fn wake(
    context: &Context,
    peer: SocketAddr,
    target: Target,
    token: Hash,
    wait: Duration,
) -> (Response<Full<Bytes>>, bool) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    context.submitter.submit(Submission {
        ask: Ask {
            target: target.clone(),
            credential: Credential::Token(token),
        },
        source: Source::Http(peer),
        reply: tx,
    });
    let reply = match tokio::time::timeout(DECISION_DEADLINE, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => {
            let stopping = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway is stopping; try again",
            );
            return (stopping, false);
        }
        Err(_) => {
            let late = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no decision in time; the request is kept and done when libvirt answers",
            );
            return (late, false);
        }
    };
    let (status, mut answer, follow) = match answer::answer(&reply, &target) {
        Answered::Wake {
            status,
            answer,
            follow,
        } => (status, answer, follow),
        Answered::Error {
            status,
            message,
            failed_auth,
            retry_after,
        } => {
            if failed_auth && status == StatusCode::NOT_FOUND {
                return (hidden(context, peer, token).await, false);
            }
            if failed_auth {
                failed(context, peer.ip());
            }
            let mut response = error(status, &message);
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return (response, false);
        }
    };
    let mut status = status;
    if let Some((uri, name)) = follow {
        follow_up(context, &uri, &name, wait, &mut status, &mut answer).await;
    }
    (json(status, &answer), true)
}

/// After a decision that names a domain: its state (and, once running, its
/// guest agent) now, or, with `wait`, once it is up or stopped again; a
/// domain that stopped again turns the answer into a 502.
async fn follow_up(
    context: &Context,
    uri: &Arc<str>,
    name: &str,
    wait: Duration,
    status: &mut StatusCode,
    answer: &mut WakeAnswer,
) {
    let started = Instant::now();
    let seen = if wait.is_zero() {
        state_now(context, uri, name).await
    } else {
        answer.waited_for = Some("running");
        // After an action, up means still up at the gateway's own look.
        let steady = (answer.action != "none").then_some(started + POST_START_CHECK);
        watch(context, uri, name, steady, started + wait).await
    };
    if let Some((state, reason)) = seen {
        answer.state = Some(state.as_str());
        if !wait.is_zero() && matches!(state, DomainState::ShutOff | DomainState::Crashed) {
            *status = StatusCode::BAD_GATEWAY;
            answer.result = "stopped-again";
            answer.error = Some(format!(
                "it stopped again: {}",
                report::stop_reason_words(reason)
            ));
        }
    }
    if answer.state == Some(DomainState::Running.as_str()) {
        // Running; with an agent channel, up means the agent answers.
        let agent = if wait.is_zero() {
            agent_now(context, uri, name).await
        } else {
            let agent = agent_watch(context, uri, name, started + wait).await;
            if agent.is_some() {
                answer.waited_for = Some("guest-agent");
            }
            agent
        };
        answer.guest_agent = agent.map(|agent| match agent {
            Agent::Connected => "connected",
            Agent::Disconnected => "not connected",
        });
    }
    answer.waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
}

/// The domain's state now and why it stopped, if it did; read off the loop.
async fn state_now(
    context: &Context,
    uri: &Arc<str>,
    name: &str,
) -> Option<(DomainState, Option<StopReason>)> {
    on_host(context, uri, name, Host::state_of).await
}

/// The domain's guest agent channel now, read off the loop.
async fn agent_now(context: &Context, uri: &Arc<str>, name: &str) -> Option<Agent> {
    on_host(context, uri, name, Host::agent_of).await
}

/// `read` of the domain `name` on the host `uri`, on a blocking thread (a
/// libvirt call); `None` if it failed or there is no such domain.
async fn on_host<T: Send + 'static>(
    context: &Context,
    uri: &str,
    name: &str,
    read: fn(&Host, &str) -> Result<Option<T>, HostError>,
) -> Option<T> {
    let fleet = Arc::clone(&context.fleet);
    let (uri, name) = (uri.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || read(fleet.host(&uri)?, &name).ok().flatten())
        .await
        .ok()
        .flatten()
}

/// Reads the guest agent channel until the agent connects or `deadline`
/// passes (`None` at once for a domain without one).
async fn agent_watch(
    context: &Context,
    uri: &Arc<str>,
    name: &str,
    deadline: Instant,
) -> Option<Agent> {
    loop {
        let agent = agent_now(context, uri, name).await;
        let now = Instant::now();
        if agent != Some(Agent::Disconnected) || now >= deadline {
            return agent;
        }
        tokio::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(now))).await;
    }
}

/// Reads the state until the domain runs (and, with `steady`, still runs
/// then: the gateway's own look after a start), or it stopped again, or
/// `deadline` passes. Returns the last state read.
async fn watch(
    context: &Context,
    uri: &Arc<str>,
    name: &str,
    steady: Option<Instant>,
    deadline: Instant,
) -> Option<(DomainState, Option<StopReason>)> {
    loop {
        let seen = state_now(context, uri, name).await;
        let now = Instant::now();
        let settled = awaited(seen.map(|(state, _)| state), steady, now) != Awaited::NotYet;
        if settled || now >= deadline {
            return seen;
        }
        let left = deadline.saturating_duration_since(now);
        tokio::time::sleep(WAIT_POLL.min(left)).await;
    }
}

/// `GET /v1/domains`: the domains the token may wake, as `list --json`
/// shows them (and true: the token opened them). 401 when the token opens
/// none.
async fn domains(context: &Context, address: IpAddr, token: Hash) -> (Response<Full<Bytes>>, bool) {
    // A token no domain holds costs no scan of its own (the set of tokens
    // is read at most once a minute).
    if !context.tokens.known(&context.fleet, token).await {
        failed(context, address);
        return (unauthorized("the token opens no domain"), false);
    }
    let fleet = Arc::clone(&context.fleet);
    let policy = context.policy.clone();
    let views = tokio::task::spawn_blocking(move || {
        let hosts = fleet.hosts();
        let (entries, problems) = list::entries(hosts);
        let opens = |entry: &list::Entry| entry.info.tokens.iter().any(|t| t.matches(&token));
        let visible: HashSet<String> = entries
            .iter()
            .filter(|entry| opens(entry))
            .map(|entry| entry.info.domain.name.clone())
            .collect();
        let views: Vec<DomainView> = entries
            .iter()
            .filter(|entry| opens(entry))
            .map(|entry| {
                list::view_showing(hosts, entry, &entries, &policy, &|name| {
                    visible.contains(name)
                })
            })
            .collect();
        (views, problems)
    })
    .await;
    let Ok((views, problems)) = views else {
        return (
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            false,
        );
    };
    for problem in &problems {
        warn!("{problem}");
    }
    if views.is_empty() {
        failed(context, address);
        if !problems.is_empty() {
            let away = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "libvirt is not answering; try again",
            );
            return (away, false);
        }
        return (unauthorized("the token opens no domain"), false);
    }
    (json(StatusCode::OK, &views), true)
}
