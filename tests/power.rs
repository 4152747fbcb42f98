//! The power switch: `POST /v1/sleep`, `/v1/power` as Home Assistant's
//! `rest` switch speaks it (its exact requests, byte for byte), and `wake`
//! and `sleep` on the command line, through the real binary against
//! `test:///` node files (real libvirt in-process: its managed save,
//! shutdown and suspend are real driver calls).

use std::net::TcpStream;

use serde_json::json;
use wol_libvirt_gateway::secret::token_hash;

use crate::http::{DB, DB_TOKEN, WEB, WEB_TOKEN, error_of, serve};
use crate::util::{DomainSpec, NodeFile, RunState, command_on, domain, http_round, ran};

/// A token of web01 that may also put it to sleep.
const SLEEP_TOKEN: &str = "web01-sleep-Hq4nX8vLr1Tz6KcW3mPy0sB";

/// The metadata element `token add` and `idle set` write: `wake_only`
/// tokens, `sleepers` that may also put the domain to sleep, and an idle
/// policy's action if any.
fn meta(wake_only: &[&str], sleepers: &[&str], action: Option<&str>) -> String {
    let mut children: String = wake_only
        .iter()
        .map(|t| format!("<token sha256='{}'/>", token_hash(t)))
        .collect();
    for token in sleepers {
        children.push_str(&format!(
            "<token sha256='{}' may='wake sleep'/>",
            token_hash(token)
        ));
    }
    if let Some(action) = action {
        children.push_str(&format!(
            "<idle after='1800' action='{action}' cpu-permille='50' net-bps='8192' \
             disk-bps='65536'/>"
        ));
    }
    format!(
        "<wol:wake xmlns:wol='https://wol-libvirt-gateway/xmlns/1' opt-in='no'>{children}</wol:wake>"
    )
}

fn web01(state: RunState, action: Option<&str>) -> DomainSpec {
    domain("web01", WEB, state).with_metadata(&meta(&[WEB_TOKEN], &[SLEEP_TOKEN], action))
}

fn db01(state: RunState) -> DomainSpec {
    domain("db01", DB, state).with_metadata(&meta(&[], &[DB_TOKEN], None))
}

#[test]
fn a_token_with_the_right_puts_its_domain_to_sleep_and_a_wake_only_one_gets_403() {
    let served = serve(
        NodeFile::new(&[
            web01(RunState::Running, Some("managedsave")),
            db01(RunState::Running),
        ]),
        &[],
    );
    // A token that may only wake: 403, nothing done.
    let refused = served.post("/v1/sleep/web01", WEB_TOKEN, "text/plain", "");
    assert_eq!(
        (refused.status, &refused.body["result"]),
        (403, &json!("forbidden")),
        "{refused:?}"
    );
    assert!(error_of(&refused).contains("--may sleep"), "{refused:?}");
    // Another domain's token, a made-up one: the wake's 404 and 401.
    let other = served.post("/v1/sleep/web01", DB_TOKEN, "text/plain", "");
    assert_eq!(other.status, 404, "{other:?}");
    let made_up = served.post(
        "/v1/sleep/web01",
        "made-up-token-aaaaaaaaaaaaaaaa",
        "text/plain",
        "",
    );
    assert_eq!(made_up.status, 401, "{made_up:?}");

    // The right token: the policy's action.
    let slept = served.post("/v1/sleep/web01", SLEEP_TOKEN, "text/plain", "");
    assert_eq!(slept.status, 200, "{slept:?}");
    assert_eq!(
        slept.body,
        json!({"domain": "web01", "host": served._node.uri(), "state_before": "running",
               "action": "managedsave", "result": "ok", "error": null})
    );
    // Again: asleep already, nothing done.
    let again = served.post("/v1/sleep/web01", SLEEP_TOKEN, "text/plain", "");
    assert_eq!(
        (again.status, &again.body["result"], &again.body["action"]),
        (200, &json!("already-down"), &json!("none")),
        "{again:?}"
    );
    // Without a policy: a shutdown request, by MAC in a JSON body.
    let db = served.post(
        "/v1/sleep",
        DB_TOKEN,
        "application/json",
        &json!({"mac": DB}).to_string(),
    );
    assert_eq!(
        (db.status, &db.body["action"], &db.body["result"]),
        (200, &json!("shutdown"), &json!("ok")),
        "{db:?}"
    );
    // The next wake restores web01's saved RAM.
    let woke = served.get("/v1/wake/web01", Some(WEB_TOKEN));
    assert_eq!(
        (woke.status, &woke.body["action"]),
        (200, &json!("restore")),
        "{woke:?}"
    );
    let gateway = &served.gateway;
    assert_eq!(
        gateway.lines_with("put web01 to sleep (managedsave").len(),
        1
    );
    assert_eq!(gateway.lines_with("asked db01 to shut down").len(), 1);
    let log = gateway.log();
    assert!(
        !log.contains(SLEEP_TOKEN) && !log.contains(DB_TOKEN),
        "{log}"
    );
}

#[test]
fn failed_sleeps_count_toward_429_like_failed_wakes() {
    let served = serve(
        NodeFile::new(&[web01(RunState::Running, None), db01(RunState::Running)]),
        &[],
    );
    for token in [DB_TOKEN, "wrong-token-aaaaaaaaaaaaaaaaa", DB_TOKEN] {
        let failed = served.post("/v1/sleep/web01", token, "text/plain", "");
        assert!([401, 404].contains(&failed.status), "{failed:?}");
    }
    // A wake-only token proves itself: a 403 is no failed guess.
    assert_eq!(
        served
            .post("/v1/sleep/web01", WEB_TOKEN, "text/plain", "")
            .status,
        403
    );
    for _ in 0..2 {
        let failed = served.get("/v1/power/db01", Some(WEB_TOKEN));
        assert_eq!(failed.status, 404, "{failed:?}");
    }
    let blocked = served.post("/v1/sleep/web01", SLEEP_TOKEN, "text/plain", "");
    assert_eq!(blocked.status, 429, "{blocked:?}");
    assert!(blocked.retry_after.is_some());
}

/// Home Assistant's `rest` switch, its requests as sent by the httpx client
/// of current releases and the aiohttp one of earlier ones: defaults
/// (`body_on` ON, `body_off` OFF, method POST, the state from a GET of the
/// same resource, compared with the whole body), and the `Authorization`
/// header of the documented YAML.
pub(crate) fn home_assistant(
    method: &str,
    path: &str,
    host: &str,
    body: &str,
    aiohttp: bool,
) -> String {
    home_assistant_with(SLEEP_TOKEN, method, path, host, body, aiohttp)
}

/// The same with `token`.
pub(crate) fn home_assistant_with(
    token: &str,
    method: &str,
    path: &str,
    host: &str,
    body: &str,
    aiohttp: bool,
) -> String {
    let auth = format!("Bearer {token}");
    let length = if method == "POST" {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    if aiohttp {
        let kind = if method == "POST" {
            "Content-Type: application/octet-stream\r\n"
        } else {
            ""
        };
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nAccept: */*\r\n\
             Accept-Encoding: gzip, deflate\r\nUser-Agent: HomeAssistant/2023.1.7 aiohttp/3.8.1 \
             Python/3.10\r\n{length}{kind}\r\n{body}"
        )
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nAccept-Encoding: gzip, \
             deflate, br, zstd\r\nConnection: keep-alive\r\nUser-Agent: HomeAssistant/2025.1.4 \
             httpx/0.28.1 Python/3.13\r\nAuthorization: {auth}\r\n{length}\r\n{body}"
        )
    }
}

#[test]
fn the_home_assistant_switch_reads_and_sets_the_state() {
    let served = serve(
        NodeFile::new(&[web01(RunState::Running, Some("managedsave"))]),
        &[],
    );
    let host = served.http.to_string();
    for aiohttp in [false, true] {
        // One connection, kept open as the integration's client pool does.
        let mut stream = TcpStream::connect(served.http).expect("connect");
        let mut send = |method: &str, body: &str| {
            let request = home_assistant(method, "/v1/power/web01", &host, body, aiohttp);
            let (status, head, body) =
                http_round(&mut stream, request.as_bytes()).expect("an answer");
            assert!(!head.contains("connection: close"), "{head}");
            (status, String::from_utf8(body).expect("text"))
        };
        // The state, exactly the text the switch compares with.
        assert_eq!(send("GET", ""), (200, "ON".to_owned()));
        let (status, answer) = send("POST", "OFF");
        assert_eq!(status, 200, "{answer}");
        assert_eq!(send("GET", ""), (200, "OFF".to_owned()));
        let (status, answer) = send("POST", "ON");
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains("\"action\":\"restore\""), "{answer}");
        assert_eq!(send("GET", ""), (200, "ON".to_owned()));
    }
    assert_eq!(
        served
            .gateway
            .lines_with("put web01 to sleep (managedsave")
            .len(),
        2
    );
    assert_eq!(served.gateway.lines_with("restored web01").len(), 2);
}

#[test]
fn the_switch_says_off_for_a_paused_domain_and_takes_no_other_body() {
    let served = serve(
        NodeFile::new(&[web01(RunState::Paused, Some("suspend"))]),
        &[],
    );
    let mut stream = TcpStream::connect(served.http).expect("connect");
    let host = served.http.to_string();
    let get = home_assistant("GET", "/v1/power/web01", &host, "", false);
    let (status, _, body) = http_round(&mut stream, get.as_bytes()).expect("an answer");
    assert_eq!((status, &body[..]), (200, &b"OFF"[..]));
    let toggle = home_assistant("POST", "/v1/power/web01", &host, "TOGGLE", false);
    let (status, _, body) = http_round(&mut stream, toggle.as_bytes()).expect("an answer");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

/// Runs the binary on `node` with `args`; its exit code and stderr.
fn run(node: &NodeFile, args: &[&str]) -> (i32, String) {
    let command = &mut command_on(&node.uri(), args);
    let (code, _, stderr) = ran(command
        .env("XDG_CACHE_HOME", node.dir())
        .env_remove("RUST_LOG"));
    (code, stderr)
}

#[test]
fn the_command_line_wakes_and_puts_to_sleep_with_the_gateways_rules() {
    let node = NodeFile::new(&[
        web01(RunState::ShutOff, None),
        db01(RunState::Running),
        domain("build01", "52:54:00:80:00:03", RunState::Running).with_metadata(&meta(
            &[],
            &[],
            Some("suspend"),
        )),
        // A MAC on two running domains: which to put to sleep is a guess.
        domain("twin-a", "52:54:00:80:00:09", RunState::Running),
        domain("twin-b", "52:54:00:80:00:09", RunState::Running),
    ]);
    // What is run, its exit status, and what it says (in order).
    let cases: [(&[&str], i32, &[&str]); 8] = [
        (
            &["wake", "web01", "--wait", "30s"],
            0,
            &["started web01", "web01 runs"],
        ),
        (&["wake", DB], 0, &["db01 is already up"]),
        // The policy's action; without one a shutdown, waited for.
        (&["sleep", "build01"], 0, &["put build01 to sleep (suspend"]),
        (
            &["sleep", "db01", "--wait", "30s"],
            0,
            &["asked db01 to shut down", "db01 is shut off"],
        ),
        // Never a guess, never past the operator's policy, nothing in a
        // dry run, and one line for a name no domain has.
        (
            &["sleep", "52:54:00:80:00:09"],
            1,
            &["several domains are up"],
        ),
        (
            &["--allow", "db01", "wake", "web01"],
            1,
            &["refused to wake web01"],
        ),
        (
            &["sleep", "build01", "--dry-run"],
            0,
            &["dry run: would put build01 to sleep"],
        ),
        (&["wake", "no-such-vm"], 1, &["no-such-vm"]),
    ];
    for (args, code, says) in cases {
        let (status, said) = run(&node, args);
        assert_eq!(status, code, "{args:?}: {said}");
        assert_eq!(said.lines().count(), says.len(), "{args:?}: {said}");
        for (line, expected) in said.lines().zip(says) {
            assert!(line.contains(expected), "{args:?}: {said}");
        }
    }
}
