//! What one `idle check` costs: a cold process of the real binary looking
//! at every running domain with an idle policy, at 1, 10 and 100 of them
//! among 10,000 defined domains, beside a `virsh domstats` process over
//! the same running domains (libvirt's own bulk statistics call), taking
//! turns in the same run.
//!
//! ```sh
//! sudo tests/e2e/setup-host.sh && sudo cargo bench --bench idle
//! ```
//!
//! Needs libvirtd (`test+unix:///default`). `WOL_BENCH_RUNS` (default 15),
//! `WOL_BENCH_TOTAL` (defined domains, default 10000) and
//! `WOL_BENCH_POLICIES` (default 1,10,100). Each figure is the median
//! (min-max) of wall time from spawn to exit and of the process's CPU time
//! (user + system, from `getrusage` of the reaped child); every check
//! after the first compares with the samples the one before kept, as the
//! timer's checks do.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use virt::connect::Connect;

const URI: &str = "test+unix:///default";
const NAMESPACE: &str = "https://wol-libvirt-gateway/xmlns/1";
const POLICY: &str = "<wake opt-in=\"no\"><idle after=\"1800\" action=\"managedsave\" \
     cpu-permille=\"50\" net-bps=\"8192\" disk-bps=\"65536\"/></wake>";

fn main() {
    let runs = number("WOL_BENCH_RUNS", 15);
    let total = number("WOL_BENCH_TOTAL", 10_000);
    let policies: Vec<usize> = std::env::var("WOL_BENCH_POLICIES")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().parse().expect("a number"))
                .collect()
        })
        .unwrap_or_else(|_| vec![1, 10, 100]);
    virt::error::clear_error_callback();
    let bin = env!("CARGO_BIN_EXE_wol-libvirt-gateway");
    // libvirtd forgets the test driver's state when its last client
    // leaves: this connection holds it for the whole run.
    let keeper = Connect::open(Some(URI)).unwrap_or_else(|e| {
        eprintln!(
            "cannot connect to {URI}: {e}\nstart libvirtd first: sudo tests/e2e/setup-host.sh"
        );
        std::process::exit(1)
    });
    eprintln!("[bench] defining {total} domains");
    for i in 0..total {
        define(&keeper, i);
    }
    println!("runs per figure: {runs}; {total} domains defined; {URI}");
    println!(
        "| running domains with a policy | `idle check` process | its CPU | `virsh domstats` process | its CPU | `idle check` / `virsh domstats` |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut started = 0;
    for &n in &policies {
        while started < n.min(total) {
            start_with_policy(&keeper, started);
            started += 1;
        }
        let names: Vec<String> = (0..started).map(name).collect();
        let cache = tempfile::tempdir().expect("tempdir");
        let cache_dir = cache.path().to_string_lossy().into_owned();
        let check = [
            "--libvirt-uri",
            URI,
            "idle",
            "check",
            "--cache-dir",
            cache_dir.as_str(),
        ];
        // The first check only sees; the ones measured compare.
        run(bin, &check);
        let mut domstats = vec!["-c", URI, "domstats"];
        domstats.extend(names.iter().map(String::as_str));
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(run(bin, &check));
            theirs.push(run("virsh", &domstats));
        }
        let (ours_wall, ours_cpu) = split(&ours);
        let (theirs_wall, theirs_cpu) = split(&theirs);
        println!(
            "| {started} | {} | {} | {} | {} | {:.2}x wall, {:.2}x CPU |",
            ms(&ours_wall),
            ms(&ours_cpu),
            ms(&theirs_wall),
            ms(&theirs_cpu),
            ours_wall[ours_wall.len() / 2] / theirs_wall[theirs_wall.len() / 2],
            ours_cpu[ours_cpu.len() / 2] / theirs_cpu[theirs_cpu.len() / 2],
        );
    }
    eprintln!("[bench] removing the domains");
    for i in 0..total {
        if let Ok(domain) = keeper.lookup_domain_by_name(&name(i)) {
            let _ = domain.destroy();
            let _ = domain.undefine();
        }
    }
}

fn number(var: &str, default: usize) -> usize {
    std::env::var(var).map_or(default, |v| v.trim().parse().expect("a number"))
}

fn name(i: usize) -> String {
    format!("idlebench-{i:05}")
}

fn define(conn: &Connect, i: usize) {
    let xml = format!(
        "<domain type='test'><name>{}</name><memory>65536</memory><vcpu>2</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><devices>\
         <disk type='file' device='disk'><source file='/var/lib/idlebench-{i}.img'/>\
         <target dev='vda' bus='virtio'/></disk>\
         <interface type='network'><mac address='52:54:01:{:02x}:{:02x}:{:02x}'/>\
         <source network='default'/></interface></devices></domain>",
        name(i),
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
    // Left over by an interrupted run: defined again, the same.
    conn.define_domain_xml(&xml).expect("define domain");
}

/// Gives domain `i` the policy, in its persistent definition, and starts it.
fn start_with_policy(conn: &Connect, i: usize) {
    let domain = conn.lookup_domain_by_name(&name(i)).expect("lookup");
    domain
        .set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(POLICY),
            Some("wol"),
            Some(NAMESPACE),
            virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
        )
        .expect("set the policy");
    if !domain.is_active().expect("is_active") {
        domain.create().expect("start");
    }
}

/// Runs `program args` to its end: wall time and CPU time, in seconds.
fn run(program: &str, args: &[&str]) -> (f64, f64) {
    let before = children_cpu();
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "{program} {args:?} failed");
    (wall, (children_cpu() - before).as_secs_f64())
}

/// User + system CPU time of every child reaped so far.
fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let time = |t: nix::sys::time::TimeVal| {
        Duration::new(
            t.tv_sec().max(0) as u64,
            (t.tv_usec().max(0) as u32) * 1_000,
        )
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// Sorted wall times and sorted CPU times.
fn split(samples: &[(f64, f64)]) -> (Vec<f64>, Vec<f64>) {
    let mut wall: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.1).collect();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall, cpu)
}

fn ms(sorted: &[f64]) -> String {
    format!(
        "{:.2} ms ({:.2}-{:.2})",
        sorted[sorted.len() / 2] * 1e3,
        sorted[0] * 1e3,
        sorted[sorted.len() - 1] * 1e3
    )
}
