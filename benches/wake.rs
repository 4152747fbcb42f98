//! Wake cost against libvirtd's test driver, at 1 to 10,000 defined domains.
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh && sudo cargo bench --bench wake
//! ```
//!
//! Needs libvirtd (for `test+unix:///default`) and root (to give the junk
//! socket a receive buffer big enough to queue the whole flood). Sizes and
//! repetitions: `WOL_BENCH_SIZES=1,100,1000,10000 WOL_BENCH_RUNS=7`;
//! `WOL_BENCH_BIN=PATH` measures another build of the gateway;
//! `WOL_BENCH_BEFORE=PATH` also measures an earlier build, taking turns with
//! this one, and prints its cold wakes and peak RSS beside this one's (a
//! before/after in one run, as a ratio);
//! `WOL_BENCH_TRICKLE_ONLY=1` runs only the unknown-MAC trickle;
//! `WOL_BENCH_REMOTE=1` runs only the remote-host comparison (below).
//!
//! For each size it prints median (min-max) of:
//! - `virsh start`: a `virsh -c test+unix:///default start NAME` process, from
//!   spawn to exit (what a script would run instead of the gateway);
//! - floor: connect + lookup + XML + create() of one shut-off domain, in process;
//! - listing: one `virConnectListAllDomains` on an open connection, in
//!   process: what a cold wake of a domain the index names adds at least
//!   (the check that no domain the index never read has the MAC);
//! - cold process, warm index: the real binary started with the socket passed
//!   as systemd passes it, from sending the packet until its log says libvirt
//!   started the domain (create() returned), index file present;
//! - cold process, no index: the same with the index file removed first;
//! - full-scan baseline: one sequential fetch of every domain's XML;
//! - junk drain: datagrams per second the gateway reads and discards from a
//!   pre-filled queue (its own accounting of time spent reading), beside a
//!   bare `recv` loop on the same socket in the same run;
//! - at the largest size, the unknown-MAC trickle: CPU seconds the gateway
//!   and libvirtd spend over 30 s of 10 magic packets per second for MACs no
//!   domain has (a mis-set client, a scanner), right after a full scan, and
//!   the CPU of one full scan (at most one per --full-rescan-interval);
//! - the HTTP wake's cold start (a GET with a token on a passed TCP socket,
//!   until the answer) against the magic packet's, alternating, and both
//!   processes' peak RSS;
//! - peak RSS: the gateway's VmHWM (the kernel's peak resident set, what
//!   getrusage's ru_maxrss reports, without the parent's pre-exec pages that
//!   ru_maxrss of a forked child also counts) after the wake, no-index runs,
//!   and RssAnon, the private part (the rest is shared library pages).
//!
//! `WOL_BENCH_REMOTE=1` (also needs systemd-nspawn): the cold wake of a
//! domain on a second libvirtd, host B (`tests/e2e/host-b.sh`: a network
//! namespace of its own on this machine), over `test+tcp://` and
//! `test+ssh://`, against the same wake through this machine's libvirtd, and
//! what adding host B costs a wake of a local domain; each beside a `virsh
//! start` process over the same URI. Runs take turns across all cases.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use command_fds::{CommandFdExt, FdMapping};
use virt::connect::Connect;
use virt::domain::Domain;
use wol_libvirt_gateway::ingress::packet::magic_packet;
use wol_libvirt_gateway::libvirt::uri::shown;
use wol_libvirt_gateway::model::Mac;

// Host B, shared with the remote end-to-end tests.
#[path = "../tests/host_b.rs"]
mod host_b;

const URI: &str = "test+unix:///default";
const JUNK_DATAGRAMS: usize = 100_000;

fn main() {
    let sizes = env_list("WOL_BENCH_SIZES", &[1, 100, 1000, 10_000]);
    let runs = env_list("WOL_BENCH_RUNS", &[7])[0].max(1);
    virt::error::clear_error_callback();
    let bin_override = std::env::var("WOL_BENCH_BIN").ok();
    let bin = bin_override
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_wol-libvirt-gateway"));
    if std::env::var_os("WOL_BENCH_REMOTE").is_some() {
        remote(bin, runs);
        return;
    }
    // libvirtd forgets the test driver's state when its last client leaves:
    // this connection holds it for the whole run.
    let keeper = match Connect::open(Some(URI)) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!(
                "cannot connect to {URI}: {e}\nstart libvirtd first: sudo tests/e2e/setup-host.sh"
            );
            std::process::exit(1);
        }
    };
    // WOL_BENCH_BIN (above) measures another build (e.g. an earlier
    // commit's) with the same harness, for a before/after in one run.
    let cache = tempfile::tempdir().expect("tempdir");
    let before = std::env::var("WOL_BENCH_BEFORE").ok();
    // Each build keeps its own index file.
    let before_cache = tempfile::tempdir().expect("tempdir");
    print_machine();
    println!("runs per figure: {runs}; junk datagrams per drain run: {JUNK_DATAGRAMS}");
    // What every cold process pays before main(): exec and the dynamic
    // loading of libvirt's client library and its dependencies.
    let start_only = measure(runs * 3, || spawn_to_exit(bin, &["--version"]));
    let bare_exec = measure(runs * 3, || spawn_to_exit("true", &[]));
    println!(
        "process start alone (`wol-libvirt-gateway --version`: exec + loading {} shared libraries): {}; `true`: {}\n",
        shared_libraries(bin),
        ms(&start_only),
        ms(&bare_exec)
    );

    // WOL_BENCH_TRICKLE_ONLY=1: only the unknown-MAC trickle (for profiling).
    let trickle_only = std::env::var_os("WOL_BENCH_TRICKLE_ONLY").is_some();
    let mut rows = Vec::new();
    let mut comparison = Vec::new();
    let mut defined = 0;
    for &size in &sizes {
        while defined < size {
            define(&keeper, defined);
            defined += 1;
        }
        if trickle_only {
            continue;
        }
        eprintln!("[bench] {size} domains defined, measuring");
        let target = size - 1;
        let name = domain_name(target);
        let dom = keeper.lookup_domain_by_name(&name).expect("target domain");
        let mac = mac_of(target, 0);

        let floor = measure(runs, || {
            let started = Instant::now();
            let conn = Connect::open(Some(URI)).expect("connect");
            let d = conn.lookup_domain_by_name(&name).expect("lookup");
            d.xml_desc(0).expect("xml");
            d.create().expect("create");
            let took = started.elapsed();
            drop(conn);
            dom.destroy().expect("destroy");
            took.as_secs_f64()
        });
        let listing = {
            let conn = Connect::open(Some(URI)).expect("connect");
            measure(runs, || {
                let started = Instant::now();
                let domains = conn.list_all_domains(0).expect("list");
                let took = started.elapsed();
                drop(domains);
                took.as_secs_f64()
            })
        };
        let baseline = measure(runs.min(5), || {
            let started = Instant::now();
            let conn = Connect::open(Some(URI)).expect("connect");
            for d in conn.list_all_domains(0).expect("list") {
                d.xml_desc(0).expect("xml");
            }
            started.elapsed().as_secs_f64()
        });

        let (socket, addr) = held_socket();
        // Prime the index file once, then every run finds it.
        activation(bin, cache.path(), &[URI], &socket, addr, &mac, &name, &dom);
        let wake = |bin: &str, cache: &Path| {
            activation(bin, cache, &[URI], &socket, addr, &mac, &name, &dom)
        };
        if let Some(before) = &before {
            wake(before, before_cache.path());
        }
        // The gateway's cold wake and a `virsh start` process (and the
        // earlier build, if given) take turns, so that a noisy neighbour
        // slows all alike.
        let (mut virsh, mut warm, mut earlier) = (Vec::new(), Vec::new(), Samples::default());
        for _ in 0..runs {
            virsh.push(spawn_to_exit("virsh", &["-c", URI, "start", &name]));
            assert!(dom.is_active().expect("is_active"), "virsh started {name}");
            dom.destroy().expect("destroy");
            warm.push(wake(bin, cache.path()).0);
            if let Some(before) = &before {
                earlier.warm.push(wake(before, before_cache.path()).0);
            }
        }
        let (virsh, warm) = (summarize(virsh), summarize(warm));
        let (mut rss, mut anon, mut cold) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs.min(5) {
            let builds = std::iter::once((bin, cache.path(), false))
                .chain(before.as_deref().map(|b| (b, before_cache.path(), true)));
            for (bin, cache, is_before) in builds {
                for entry in std::fs::read_dir(cache).expect("ls cache").flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
                let (took, (hwm, private)) = wake(bin, cache);
                if is_before {
                    earlier.cold.push(took);
                    earlier.rss.push(hwm);
                } else {
                    cold.push(took);
                    rss.push(hwm);
                    anon.push(private);
                }
            }
        }
        let (rss, anon, cold) = (summarize(rss), summarize(anon), summarize(cold));
        if before.is_some() {
            comparison.push((size, earlier, warm_cold_rss(&warm, &cold, &rss)));
        }
        http_versus_udp(bin, cache.path(), &socket, addr, &mac, &name, &dom, runs);

        let (drain, bare) = junk_rates(bin, cache.path(), runs.min(3));
        rows.push(Row {
            size,
            virsh,
            floor,
            listing,
            warm,
            cold,
            baseline,
            drain,
            bare,
            rss,
            anon,
        });
    }
    print_table(&rows);
    print_comparison(&comparison);
    if let Some(&largest) = sizes.iter().max() {
        trickle(bin, cache.path(), &keeper, largest);
    }
    for i in 0..defined {
        if let Ok(d) = keeper.lookup_domain_by_name(&domain_name(i)) {
            let _ = d.undefine();
        }
    }
}

struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

struct Row {
    size: usize,
    virsh: Stat,
    floor: Stat,
    listing: Stat,
    warm: Stat,
    cold: Stat,
    baseline: Stat,
    drain: Stat,
    bare: Stat,
    rss: Stat,
    anon: Stat,
}

/// An earlier build's figures (`WOL_BENCH_BEFORE`).
#[derive(Default)]
struct Samples {
    warm: Vec<f64>,
    cold: Vec<f64>,
    rss: Vec<f64>,
}

/// This build's medians of the figures compared.
fn warm_cold_rss(warm: &Stat, cold: &Stat, rss: &Stat) -> [f64; 3] {
    [warm.median, cold.median, rss.median]
}

/// The earlier build against this one, taking turns in the same run.
fn print_comparison(rows: &[(usize, Samples, [f64; 3])]) {
    if rows.is_empty() {
        return;
    }
    println!("\nbefore (WOL_BENCH_BEFORE) / after (this build), taking turns:");
    println!("| domains | cold wake, warm index | cold wake, no index | peak RSS |");
    println!("|---:|---:|---:|---:|");
    for (size, before, after) in rows {
        let cell = |samples: &[f64], after: f64, unit: f64, name: &str| {
            let before = summarize(samples.to_vec()).median;
            format!(
                "{:.2} / {:.2} {name} = {:.3}x",
                before * unit,
                after * unit,
                after / before
            )
        };
        println!(
            "| {size} | {} | {} | {} |",
            cell(&before.warm, after[0], 1e3, "ms"),
            cell(&before.cold, after[1], 1e3, "ms"),
            cell(&before.rss, after[2], 1.0 / 1024.0, "MiB"),
        );
    }
}

fn measure(runs: usize, mut once: impl FnMut() -> f64) -> Stat {
    summarize((0..runs).map(|_| once()).collect())
}

fn summarize(mut samples: Vec<f64>) -> Stat {
    // A figure that could not be read (NaN) is left out, not sorted last.
    samples.retain(|x| !x.is_nan());
    if samples.is_empty() {
        samples.push(f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    Stat {
        median: samples[samples.len() / 2],
        min: samples[0],
        max: samples[samples.len() - 1],
    }
}

fn spawn_to_exit(program: &str, args: &[&str]) -> f64 {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert!(status.success());
    started.elapsed().as_secs_f64()
}

fn shared_libraries(bin: &str) -> usize {
    Command::new("ldd")
        .arg(bin)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(".so"))
                .count()
        })
        .unwrap_or(0)
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse().expect("a number"))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn domain_name(i: usize) -> String {
    format!("bench-{i:05}")
}

fn mac_of(i: usize, nic: u8) -> String {
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        nic + 1,
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn define(conn: &Connect, i: usize) {
    let xml = format!(
        "<domain type='test'><name>{}</name><memory>65536</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices>\
         <interface type='network'><mac address='{}'/><source network='default'/></interface>\
         <interface type='bridge'><mac address='{}'/><source bridge='br0'/></interface>\
         </devices></domain>",
        domain_name(i),
        mac_of(i, 0),
        mac_of(i, 1)
    );
    conn.define_domain_xml(&xml).expect("define domain");
}

fn held_socket() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

fn spawn_gateway(bin: &str, cache: &Path, uris: &[&str], socket: &UdpSocket, idle: &str) -> Child {
    let fd: OwnedFd = socket.try_clone().expect("dup").into();
    let mut command = Command::new(bin);
    for uri in uris {
        command.args(["--libvirt-uri", uri]);
    }
    command
        .args(["--idle-timeout", idle, "--cache-dir"])
        .arg(cache)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CACHE_DIRECTORY")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
        .fd_mappings(vec![FdMapping {
            parent_fd: fd,
            child_fd: 3,
        }])
        .expect("fd mapping");
    command.spawn().expect("spawn gateway")
}

/// One socket activation: send the packet, start the process as systemd
/// would, wait for its log line saying libvirt started the domain. Returns
/// seconds and the process's peak RSS in KiB.
#[allow(clippy::too_many_arguments)]
fn activation(
    bin: &str,
    cache: &Path,
    uris: &[&str],
    socket: &UdpSocket,
    addr: SocketAddr,
    mac: &str,
    name: &str,
    dom: &Domain,
) -> (f64, (f64, f64)) {
    let packet = magic_packet(mac.parse::<Mac>().expect("bench MAC"));
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let started = Instant::now();
    sender.send_to(&packet, addr).expect("send");
    // Idle for 2 s after the packet: long enough that the process is still
    // there to have its memory read after a 10,000-domain scan (~0.9 s).
    let mut child = spawn_gateway(bin, cache, uris, socket, "2s");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let needle = format!("started {name}");
    let mut log = String::new();
    let took = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(&needle) => break started.elapsed(),
            Some(Ok(line)) => {
                log.push_str(&line);
                log.push('\n');
            }
            _ => panic!("gateway ended without starting {name}:\n{log}"),
        }
    };
    let memory = memory_kib(child.id());
    for _ in lines.by_ref() {}
    let status = child.wait().expect("wait");
    assert!(status.success(), "gateway failed:\n{log}");
    assert!(
        dom.is_active().expect("is_active"),
        "libvirt reports {name} active"
    );
    dom.destroy().expect("destroy");
    (took.as_secs_f64(), memory)
}

/// The HTTP wake's cold start against the magic packet's, alternating runs
/// on the same domain (warm index): a GET with a token on a passed TCP
/// socket, timed until the answer arrives, against a packet on a passed UDP
/// socket, timed until the log says started. Prints medians and peak RSS.
#[allow(clippy::too_many_arguments)]
fn http_versus_udp(
    bin: &str,
    cache: &Path,
    socket: &UdpSocket,
    addr: SocketAddr,
    mac: &str,
    name: &str,
    dom: &Domain,
    runs: usize,
) {
    const TOKEN: &str = "bench-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let element = format!(
        "<wake opt-in=\"no\"><token sha256=\"{}\"/></wake>",
        wol_libvirt_gateway::secret::token_hash(TOKEN)
    );
    dom.set_metadata(
        virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(&element),
        Some("wol"),
        Some("https://wol-libvirt-gateway/xmlns/1"),
        virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
    )
    .expect("token on the bench domain");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let url = format!(
        "http://{}/v1/wake/{name}",
        listener.local_addr().expect("addr")
    );
    let (mut udp, mut http, mut udp_rss, mut http_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (took, (hwm, _)) = activation(bin, cache, &[URI], socket, addr, mac, name, dom);
        udp.push(took);
        udp_rss.push(hwm);
        let (took, hwm) = http_activation(bin, cache, socket, &listener, &url, TOKEN, name, dom);
        http.push(took);
        http_rss.push(hwm);
    }
    let (udp, http) = (summarize(udp), summarize(http));
    let (udp_rss, http_rss) = (summarize(udp_rss), summarize(http_rss));
    println!(
        "cold wake over HTTP (GET with a token, until the answer): {} = {:.2}x the magic \
         packet's cold wake in the same runs ({}); peak RSS {:.1} MiB vs {:.1} MiB",
        ms(&http),
        http.median / udp.median,
        ms(&udp),
        http_rss.median / 1024.0,
        udp_rss.median / 1024.0
    );
}

/// One activation by an HTTP request: the client connects to the held TCP
/// socket (the kernel queues it, as for a socket unit) and sends its GET,
/// then the process starts with both sockets passed; timed until the
/// answer. Returns seconds and the process's peak RSS in KiB.
#[allow(clippy::too_many_arguments)]
fn http_activation(
    bin: &str,
    cache: &Path,
    socket: &UdpSocket,
    listener: &std::net::TcpListener,
    url: &str,
    token: &str,
    name: &str,
    dom: &Domain,
) -> (f64, f64) {
    let (url, bearer) = (url.to_owned(), format!("Bearer {token}"));
    let started = Instant::now();
    let client = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .header("Authorization", &bearer)
            .call()
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (started.elapsed(), status, body)
    });
    let udp: OwnedFd = socket.try_clone().expect("dup").into();
    let tcp: OwnedFd = listener.try_clone().expect("dup").into();
    let mut child = Command::new(bin)
        .args(["--libvirt-uri", URI, "--idle-timeout", "2s", "--cache-dir"])
        .arg(cache)
        .env("LISTEN_FDS", "2")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CACHE_DIRECTORY")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .fd_mappings(vec![
            FdMapping {
                parent_fd: udp,
                child_fd: 3,
            },
            FdMapping {
                parent_fd: tcp,
                child_fd: 4,
            },
        ])
        .expect("fd mapping")
        .spawn()
        .expect("spawn gateway");
    let (took, status, body) = client.join().expect("client");
    assert_eq!(status, 200, "{body}");
    let (hwm, _) = memory_kib(child.id());
    let exited = child.wait().expect("wait");
    assert!(exited.success(), "gateway failed");
    assert!(
        dom.is_active().expect("is_active"),
        "{name} started over HTTP"
    );
    dom.destroy().expect("destroy");
    (took.as_secs_f64(), hwm)
}

/// VmHWM (peak resident set) and RssAnon (the private part: the rest is
/// shared library pages) of a live process, in KiB.
fn memory_kib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    (field("VmHWM:"), field("RssAnon:"))
}

/// Fills a socket's queue with junk (128-byte pseudo-random datagrams: no
/// sync stream, so the parser reads every byte).
fn fill_with_junk(addr: SocketAddr) {
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let mut state: u32 = 0x1234_5678;
    let mut payload = [0u8; 128];
    for _ in 0..JUNK_DATAGRAMS {
        for byte in payload.iter_mut() {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *byte = (state >> 24) as u8 & 0x7f;
        }
        sender.send_to(&payload, addr).expect("send junk");
    }
}

fn junk_socket() -> (UdpSocket, SocketAddr) {
    let (socket, addr) = held_socket();
    // Room for the whole flood (root may exceed net.core.rmem_max).
    let size = 512 << 20;
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, size).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, size);
        eprintln!("[bench] not root: the junk queue is limited by net.core.rmem_max");
    }
    (socket, addr)
}

/// Datagrams per second: the gateway's drain and a bare recv loop.
fn junk_rates(bin: &str, cache: &Path, runs: usize) -> (Stat, Stat) {
    let (socket, addr) = junk_socket();
    let gateway = measure(runs, || {
        fill_with_junk(addr);
        let child = spawn_gateway(bin, cache, &[URI], &socket, "300ms");
        let out = child.wait_with_output().expect("wait");
        let log = String::from_utf8_lossy(&out.stderr);
        let summary = log
            .lines()
            .find(|l| l.contains("exiting (idle timeout)"))
            .unwrap_or_else(|| panic!("no summary:\n{log}"));
        let count: f64 = number_before(summary, " datagrams");
        let millis: f64 = number_before(summary, " ms spent reading");
        count / (millis / 1e3)
    });
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0u8; 65_536];
    let bare = measure(runs, || {
        fill_with_junk(addr);
        let started = Instant::now();
        let mut count = 0u64;
        while socket.recv_from(&mut buf).is_ok() {
            count += 1;
        }
        count as f64 / started.elapsed().as_secs_f64()
    });
    (gateway, bare)
}

fn number_before(text: &str, suffix: &str) -> f64 {
    let end = text.find(suffix).expect("suffix present");
    let start = text[..end]
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    text[start..end].parse().expect("a number")
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let libvirt = Command::new("libvirtd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "machine: {cpu}, {cores} cores, Linux {}; {libvirt}; {URI}",
        kernel.trim()
    );
}

fn ms(s: &Stat) -> String {
    format!(
        "{:.2} ms ({:.2}-{:.2})",
        s.median * 1e3,
        s.min * 1e3,
        s.max * 1e3
    )
}

fn print_table(rows: &[Row]) {
    println!(
        "| domains | `virsh start` process | cold wake, warm index | floor | listing | cold wake, no index | full-scan baseline | junk drain (gateway) | bare recv | peak RSS | of it private |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} = {:.2}x virsh start | {} | {} | {} = {:.2}x baseline | {} | {:.0} k/s ({:.0}-{:.0}) = {:.2}x bare | {:.0} k/s ({:.0}-{:.0}) | {:.1} MiB ({:.1}-{:.1}) | {:.1} MiB |",
            r.size,
            ms(&r.virsh),
            ms(&r.warm),
            r.warm.median / r.virsh.median,
            ms(&r.floor),
            ms(&r.listing),
            ms(&r.cold),
            r.cold.median / r.baseline.median,
            ms(&r.baseline),
            r.drain.median / 1e3,
            r.drain.min / 1e3,
            r.drain.max / 1e3,
            r.drain.median / r.bare.median,
            r.bare.median / 1e3,
            r.bare.min / 1e3,
            r.bare.max / 1e3,
            r.rss.median / 1024.0,
            r.rss.min / 1024.0,
            r.rss.max / 1024.0,
            r.anon.median / 1024.0,
        );
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

/// This machine's libvirtd (not host B's, in a container of its own).
fn libvirtd_pid() -> u32 {
    let own = std::process::id().to_string();
    let out = Command::new("pgrep")
        .args(["--ns", &own, "-x", "libvirtd"])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("libvirtd running")
}

/// 30 s of 10 magic packets a second for unknown MACs, against a gateway
/// whose index a full scan just built: CPU of the gateway and of libvirtd.
fn trickle(bin: &str, cache: &Path, keeper: &Connect, size: usize) {
    const SECONDS: u64 = 30;
    const PER_SECOND: u64 = 10;
    for entry in std::fs::read_dir(cache).expect("ls cache").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let daemon = libvirtd_pid();
    let (socket, addr) = held_socket();
    let mut child = spawn_gateway(bin, cache, &[URI], &socket, "0");
    let stderr = child.stderr.take().expect("stderr");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let unknown = |i: u64| Mac([0x02, 0xbe, 0xef, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    // The first unknown MAC makes the fresh process scan in full: measured
    // on its own, then the trickle starts with a fresh index.
    let (gateway0, daemon0) = (cpu_seconds(child.id()), cpu_seconds(daemon));
    let started = Instant::now();
    sender
        .send_to(&magic_packet(unknown(0)), addr)
        .expect("send");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("has MAC") => break,
            Some(Ok(_)) => {}
            _ => panic!("gateway ended during the first scan"),
        }
    }
    let scan_time = started.elapsed();
    let (gateway1, daemon1) = (cpu_seconds(child.id()), cpu_seconds(daemon));
    // Drain its log in the background so it never blocks on a full pipe.
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let start = Instant::now();
    for i in 1..=SECONDS * PER_SECOND {
        let due = start + std::time::Duration::from_millis(i * 1000 / PER_SECOND);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sender
            .send_to(&magic_packet(unknown(i)), addr)
            .expect("send");
    }
    let (gateway2, daemon2) = (cpu_seconds(child.id()), cpu_seconds(daemon));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let lines = reader.join().unwrap_or(0);
    let _ = keeper;
    println!(
        "\nunknown-MAC trickle at {size} domains: {PER_SECOND}/s for {SECONDS} s after a full scan: \
         gateway {:.2} s CPU + libvirtd {:.2} s CPU = {:.2} s ({lines} log lines); \
         the full scan before it: {:.2} s wall, gateway {:.2} s + libvirtd {:.2} s CPU",
        gateway2 - gateway1,
        daemon2 - daemon1,
        (gateway2 - gateway1) + (daemon2 - daemon1),
        scan_time.as_secs_f64(),
        gateway1 - gateway0,
        daemon1 - daemon0,
    );
}

/// `WOL_BENCH_REMOTE=1`: host B (booted by `tests/e2e/host-b.sh`, powered
/// off when this process ends) with its libvirtd's test driver; one domain
/// here (`test+unix:///default`), one on B. Every case is a cold wake with
/// a warm index, the cases taking turns run by run; each is printed with
/// its ratio to the local wake, and to a `virsh start` process over the
/// same URI.
fn remote(bin: &str, runs: usize) {
    let host = host_b::HostB::up().unwrap_or_else(|e| panic!("{e}"));
    let (b_addr, key) = (&host.addr, &host.key);
    let tcp = format!("test+tcp://{b_addr}/default");
    let ssh = format!("test+ssh://wol@{b_addr}/default?keyfile={key}&no_tty=1");
    print_machine();
    println!("host B: {b_addr} (a network namespace on this machine, over a veth pair)");
    // Each daemon forgets its test driver's state when its last client
    // leaves: these hold it.
    let here = Connect::open(Some(URI)).expect("connect to this machine's libvirtd");
    let there = Connect::open(Some(&tcp)).expect("connect to host B");
    let (local_name, remote_name) = ("bench-local", "bench-on-b");
    let (local_mac, remote_mac) = ("52:54:0f:00:00:01", "52:54:0f:00:00:02");
    for (conn, name, mac) in [
        (&here, local_name, local_mac),
        (&there, remote_name, remote_mac),
    ] {
        let xml = format!(
            "<domain type='test'><name>{name}</name><memory>65536</memory>\
             <os><type arch='x86_64'>hvm</type></os><devices>\
             <interface type='bridge'><mac address='{mac}'/><source bridge='br0'/></interface>\
             </devices></domain>"
        );
        conn.define_domain_xml(&xml).expect("define bench domain");
    }
    let local_dom = here
        .lookup_domain_by_name(local_name)
        .expect("local domain");
    let remote_dom = there
        .lookup_domain_by_name(remote_name)
        .expect("remote domain");

    struct Case<'a> {
        what: String,
        uris: Vec<&'a str>,
        target: (&'a str, &'a str, &'a Domain),
        cache: tempfile::TempDir,
        samples: Vec<f64>,
    }
    let local = (local_mac, local_name, &local_dom);
    let on_b = (remote_mac, remote_name, &remote_dom);
    let mut cases: Vec<Case> = [
        (
            "local domain, this machine's libvirtd only",
            vec![URI],
            local,
        ),
        (
            "local domain, host B over TCP as well",
            vec![URI, tcp.as_str()],
            local,
        ),
        (
            "local domain, host B over SSH as well",
            vec![URI, ssh.as_str()],
            local,
        ),
        ("host B's domain, over TCP", vec![URI, tcp.as_str()], on_b),
        ("host B's domain, over SSH", vec![URI, ssh.as_str()], on_b),
    ]
    .into_iter()
    .map(|(what, uris, target)| Case {
        what: what.to_owned(),
        uris,
        target,
        cache: tempfile::tempdir().expect("tempdir"),
        samples: Vec::new(),
    })
    .collect();
    let mut virsh: Vec<(&str, &str, &Domain, Vec<f64>)> = vec![
        (URI, local_name, &local_dom, Vec::new()),
        (tcp.as_str(), remote_name, &remote_dom, Vec::new()),
        (ssh.as_str(), remote_name, &remote_dom, Vec::new()),
    ];
    let (socket, addr) = held_socket();
    // One wake each first writes the index files; then the cases take turns.
    for round in 0..=runs {
        for case in &mut cases {
            let (mac, name, dom) = case.target;
            let (took, _) = activation(
                bin,
                case.cache.path(),
                &case.uris,
                &socket,
                addr,
                mac,
                name,
                dom,
            );
            if round > 0 {
                case.samples.push(took);
            }
        }
        for (uri, name, dom, samples) in &mut virsh {
            let took = spawn_to_exit("virsh", &["-c", uri, "start", name]);
            dom.destroy().expect("destroy");
            if round > 0 {
                samples.push(took);
            }
        }
    }
    let virsh: Vec<(String, Stat)> = virsh
        .into_iter()
        .map(|(uri, _, _, samples)| (shown(uri), summarize(samples)))
        .collect();
    for (uri, stat) in &virsh {
        println!("`virsh -c {uri} start`: {}", ms(stat));
    }
    let stats: Vec<(String, Vec<String>, Stat)> = cases
        .into_iter()
        .map(|c| {
            (
                c.what,
                c.uris.iter().map(|u| shown(u)).collect(),
                summarize(c.samples),
            )
        })
        .collect();
    let local_median = stats[0].2.median;
    println!(
        "\n| cold wake ({runs} runs, median (min-max)) | --libvirt-uri | time | vs local only | vs `virsh start` over the domain's URI |"
    );
    println!("|---|---|---:|---:|---:|");
    for (what, uris, stat) in &stats {
        let over = if what.contains("host B's domain") {
            uris[1].as_str()
        } else {
            URI
        };
        let virsh_median = virsh
            .iter()
            .find(|(uri, _)| uri == over)
            .map_or(f64::NAN, |(_, s)| s.median);
        println!(
            "| {what} | {} | {} | {:.2}x | {:.2}x |",
            uris.join(" "),
            ms(stat),
            stat.median / local_median,
            stat.median / virsh_median
        );
    }
    let _ = local_dom.undefine();
    let _ = remote_dom.undefine();
}
