//! wol-libvirt-gateway: Wake-on-LAN magic packets in, libvirt domains up.
//!
//! A newcomer's map, in the order a request goes:
//! - [`ingress`]: where requests enter. The [`ingress::sockets`] (UDP, passed
//!   by systemd or bound; raw Ethernet frames from [`ingress::raw`]) are
//!   drained by the loop in [`gateway`] (`Gateway::drain`), each datagram
//!   parsed by [`ingress::packet::parse`]; HTTP wake requests come in through
//!   [`ingress::http`].
//! - [`decide`]: the pure decisions, the clock passed in. What the loop does
//!   on each event comes from [`decide::control`]; a request
//!   ([`decide::ask`]) waits in the [`decide::book`] (de-duplication,
//!   retries, backoff, room per client); the [`decide::policy`] says who may
//!   wake what; the VM is chosen by [`decide::plan`]; what came of it is an
//!   [`decide::outcome`].
//! - [`libvirt`]: everything that talks to libvirt. Each due request runs on
//!   a worker thread in [`libvirt::fleet`] (`Fleet::wake`), which asks every
//!   [`libvirt::host`] in parallel; a host finds the MAC's domains through
//!   its [`libvirt::index`], confirmed by their XML
//!   ([`libvirt::domain_xml`]), and a VM is started in `Host::act`, through
//!   [`libvirt::hypervisor`] (the only module that links libvirt).
//! - [`report`]: the only place that puts outcomes into words, journal
//!   fields and `STATUS=`; also logging and sd_notify.
//! - [`commands`]: `list`, `token`, `secureon`; [`cli`]: the flags.
//! - [`model`]: the plain data all of them share; [`secret`]: tokens and
//!   passwords, hashed.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod commands;
pub mod decide;
pub mod gateway;
pub mod ingress;
pub mod libvirt;
pub(crate) mod lock;
pub mod model;
pub mod report;
pub mod secret;
pub mod store;

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use tracing::{debug, error, info, warn};

use crate::cli::{Args, Command, IdleCommand, SecureonCommand, TokenCommand};
use crate::commands::{idle, list, power, secureon, token};
use crate::decide::book::Rules;
use crate::decide::control::Config;
use crate::decide::idle::IdlePolicy;
use crate::decide::policy::Policy;
use crate::gateway::{Gateway, Shutdown};
use crate::ingress::sockets::Origin;
use crate::ingress::{http, sockets};
use crate::libvirt::fleet::{Fleet, Timing};
use crate::libvirt::host::Host;
use crate::libvirt::hypervisor::{Libvirt, LibvirtConnector};
use crate::libvirt::index::Rescan;
use crate::libvirt::index::file::IndexFile;
use crate::libvirt::uri;
use crate::report::Reporter;
use crate::report::logging;
use crate::report::notify::Notifier;
use crate::store::CacheDirSource;

/// Idle timeout when systemd passed the socket and none was given.
pub(crate) const DEFAULT_ACTIVATED_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Wake requests handled at once; more wait their turn. Each holds a worker
/// thread, plus a thread per host while it looks the MAC up and one while
/// it acts; libvirtd serves 5 calls of one client at a time.
pub const MAX_IN_FLIGHT: usize = 8;

/// Runs the gateway with the process's arguments; returns the exit status
/// (0 done, 1 runtime error, 2 bad usage).
pub fn run() -> i32 {
    run_with(std::env::args_os())
}

/// Runs the gateway with explicit arguments (`args[0]` is the program name).
pub(crate) fn run_with(args: impl IntoIterator<Item = OsString>) -> i32 {
    let argv: Vec<OsString> = args.into_iter().collect();
    let args = match Args::try_parse_from(&argv) {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // Help and version go to stdout; a broken pipe is not our problem.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // clap's own report spans several lines; one is enough here.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            match from_environment(&e, &argv) {
                // systemd's EnvironmentFile= is where an admin looks next.
                Some(var) => eprintln!(
                    "{} (see --help)",
                    first.replacen("error: ", &format!("error: {var} in the environment: "), 1)
                ),
                None => eprintln!("{first} (see --help)"),
            }
            return 2;
        }
    };
    // Two hosts with one URI would make every domain of it ambiguous (the
    // same MAC on "two" hosts), and share a name in every log line: URIs
    // that differ only in how to get there (keyfile=, no_tty=, ...) count
    // as one (see uri::shown).
    let shown: Vec<String> = args.libvirt_uri.iter().map(|u| uri::shown(u)).collect();
    if let Some(twice) = shown
        .iter()
        .enumerate()
        .find_map(|(i, uri)| shown[..i].contains(uri).then_some(uri))
    {
        eprintln!(
            "error: --libvirt-uri {twice} is given twice (its transport parameters aside): name each host once (see --help)"
        );
        return 2;
    }
    match &args.command {
        Some(Command::List { json }) => {
            logging::init();
            return list(&args, *json);
        }
        Some(Command::Token(command)) => {
            logging::init();
            return token(&args, command);
        }
        Some(Command::Secureon(command)) => {
            logging::init();
            return secureon(&args, command);
        }
        Some(Command::Mac(command)) => {
            logging::init();
            let Some(hosts) = open_all(&args) else {
                return 1;
            };
            return commands::mac::run(command, &hosts, host_of);
        }
        Some(Command::Idle(command)) => {
            logging::init();
            return idle(&args, command);
        }
        Some(Command::Wake { target, wait }) => {
            logging::init();
            return power::wake(&fleet(&args), target.clone(), *wait);
        }
        Some(Command::Sleep { target, wait }) => {
            logging::init();
            return power::sleep(&fleet(&args), target.clone(), *wait);
        }
        None => {}
    }
    // Claim the passed sockets before anything else opens a file descriptor:
    // with a wrong LISTEN_FDS count, fd 3+n could otherwise be one of ours
    // (the journal socket, the signal pipe) and be taken for a passed one.
    let listeners = sockets::acquire(&args.listen_address, &args.raw_interface, &args.http_listen);
    logging::init();
    if let Ok(listeners) = &listeners {
        if listeners.origin == Origin::Activated && !args.listen_address.is_empty() {
            let named: Vec<String> = args.listen_address.iter().map(|a| a.to_string()).collect();
            warn!(
                "--listen-address {} is not used: systemd passed the socket unit's sockets, \
                 which decide the addresses (ListenDatagram=); running until stopped, as a unit \
                 that names an address expects (docs/original.md)",
                named.join(",")
            );
        }
    }
    match listeners.and_then(|listeners| serve(&args, listeners)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            1
        }
    }
}

/// The environment variable a rejected value came from, if it did: the
/// option is not on the command line (`argv`), and its variable is set and
/// holds that value (or, for a list, has it among its values).
fn from_environment(e: &clap::Error, argv: &[OsString]) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};

    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    // "--idle-timeout <DURATION>", "-l <URI>" or "--dry-run".
    let flag = arg.split_whitespace().next()?;
    let command = Args::command();
    let option = command.get_arguments().find(|option| {
        option
            .get_long()
            .is_some_and(|long| flag == format!("--{long}"))
            || option
                .get_short()
                .is_some_and(|short| flag == format!("-{short}"))
    })?;
    let longs: Vec<String> = (option.get_long().into_iter())
        .chain(option.get_all_aliases().into_iter().flatten())
        .map(|long| format!("--{long}"))
        .collect();
    let short = option.get_short().map(|short| format!("-{short}"));
    let given = argv.iter().skip(1).filter_map(|a| a.to_str()).any(|a| {
        longs
            .iter()
            .any(|long| a == long || a.starts_with(&format!("{long}=")))
            || short.as_deref().is_some_and(|short| a.starts_with(short))
    });
    let var = option.get_env()?;
    let set = std::env::var(var).ok()?;
    let parts = set.split([',', ' ']);
    (!given && (set == *value || parts.into_iter().any(|part| part == value)))
        .then(|| var.to_string_lossy().into_owned())
}

fn serve(args: &Args, mut listeners: sockets::Listeners) -> anyhow::Result<i32> {
    use anyhow::Context;

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls::acceptor(cert, key)?),
        _ => None,
    };
    refuse_plain_http(args, &listeners.http, tls.is_some())?;
    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let idle_timeout = idle_timeout(args, &listeners);
    let policy = policy(args);
    say_restrictions(args, &policy);
    let hosts = hosts(args, &policy);
    let reporter = Reporter::new(hosts.len() > 1);
    let fleet = Fleet::new(
        hosts,
        args.dry_run,
        Timing::with_deadline(args.libvirt_timeout),
    );
    let config = Config {
        idle_timeout,
        rules: Rules::with_dedupe_window(args.dedupe_window),
        max_in_flight: MAX_IN_FLIGHT,
    };
    let mut gateway = Gateway::new(
        std::mem::take(&mut listeners.listeners),
        fleet,
        config,
        shutdown,
        Notifier::from_env(),
        reporter,
    )
    .context("cannot set up the event loop")?;
    if !listeners.http.is_empty() {
        let addresses: Vec<String> = listeners
            .http
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let context = http::Context::new(gateway.submitter(), gateway.fleet(), policy.clone());
        let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
        http::spawn(listeners.http, tls, context).context("cannot start the HTTP wake")?;
        gateway.announce_http(&addresses, scheme);
    }
    let (exit, _stats) = gateway.run();
    Ok(exit.code())
}

/// Tokens must not cross a network in clear unless the operator says that
/// network is private.
fn refuse_plain_http(args: &Args, http: &[std::net::TcpListener], tls: bool) -> anyhow::Result<()> {
    use anyhow::Context;

    if tls || args.allow_plain_http {
        return Ok(());
    }
    for listener in http {
        let addr = listener
            .local_addr()
            .context("cannot read an HTTP socket's address")?;
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing plain HTTP on {addr}: tokens would cross the network in clear; \
                 listen on loopback, give --tls-cert and --tls-key, or give \
                 --allow-plain-http for a VPN interface that already encrypts"
            );
        }
    }
    Ok(())
}

/// The idle timeout: `--idle-timeout` (0: none), else none for a gateway
/// that must run until stopped, else the default. Only a socket systemd
/// holds for us survives our exit; raw listeners and our own sockets would
/// close, so those run until stopped.
fn idle_timeout(args: &Args, listeners: &sockets::Listeners) -> Option<Duration> {
    // A unit that names an address (the original project's, Type=simple
    // with Restart=always) expects a process that stays: exiting when idle
    // would only be restarted at once, again and again.
    let always_on = listeners.origin == Origin::Bound
        || !args.raw_interface.is_empty()
        || !args.listen_address.is_empty();
    match args.idle_timeout {
        Some(Duration::ZERO) => None,
        Some(timeout) => Some(timeout),
        None if always_on => None,
        None => Some(DEFAULT_ACTIVATED_IDLE_TIMEOUT),
    }
}

/// Says at start which domains may be woken, and a dry run.
fn say_restrictions(args: &Args, policy: &Policy) {
    if !policy.is_open() {
        info!(
            "restricted: {}{}",
            match policy.allow.len() {
                0 => "any domain".to_owned(),
                n => format!("only the {n} domain(s) named by --allow"),
            },
            if policy.require_opt_in {
                " with a wake opt-in in its <metadata>"
            } else {
                ""
            }
        );
    }
    if args.dry_run {
        info!("dry run: wake requests are decided and logged, nothing is started");
    }
}

fn policy(args: &Args) -> Policy {
    Policy {
        allow: args.allow.clone(),
        require_opt_in: args.require_opt_in,
    }
}

/// One host per `--libvirt-uri`, each with its own index file.
fn hosts(args: &Args, policy: &Policy) -> Vec<Host> {
    let cache_dir = CacheDirSource::from_env(args.cache_dir.as_deref());
    if cache_dir.is_none() {
        warn!("MAC index cache disabled: no cache directory (set --cache-dir)");
    }
    let rescan = Rescan {
        interval: args.rescan_interval,
        full_interval: args.full_rescan_interval,
    };
    args.libvirt_uri
        .iter()
        .map(|uri| {
            let connector = Box::new(LibvirtConnector::new(uri.clone()));
            let host = Host::new(connector, rescan).with_policy(policy.clone());
            match cache_dir.as_ref().map(|dir| IndexFile::open(dir, uri)) {
                Some(Ok(file)) => host.with_index_file(file),
                Some(Err(e)) => {
                    let uri = uri::shown(uri);
                    warn!("MAC index cache disabled for {uri}: {e}; every activation will read all domains' XML");
                    host
                }
                None => host,
            }
        })
        .collect()
}

/// The hosts as the gateway sees them, for `wake` and `sleep`.
fn fleet(args: &Args) -> Fleet {
    let policy = policy(args);
    Fleet::new(
        hosts(args, &policy),
        args.dry_run,
        Timing::with_deadline(args.libvirt_timeout),
    )
}

/// `list`: the table (or JSON) on stdout, unreachable hosts on stderr
/// (status 1).
fn list(args: &Args, json: bool) -> i32 {
    let policy = policy(args);
    let hosts = hosts(args, &policy);
    let (mut entries, problems) = list::entries(&hosts);
    // Which signals the idle checks judged each domain on, where they keep
    // their samples (read only: a list changes nothing).
    let cache_dir = CacheDirSource::from_env(args.cache_dir.as_deref());
    if let Some(dir) = cache_dir.as_ref().map(CacheDirSource::path) {
        for (i, given) in args.libvirt_uri.iter().enumerate() {
            let signals = idle::Samples::open(dir, given).signals();
            list::add_signals(&mut entries, i, &signals);
        }
    }
    if json {
        println!("{}", list::json(&hosts, &entries, &policy));
    } else {
        print!("{}", list::table(&hosts, &entries, &policy));
    }
    for problem in &problems {
        error!("{problem}");
    }
    i32::from(!problems.is_empty())
}

/// `token …`: a new token on stdout, what changed on stderr; status 1 when
/// libvirt cannot be reached or refused, or the domain is not found; 2 for
/// a prefix that matches no or several tokens.
fn token(args: &Args, command: &TokenCommand) -> i32 {
    let Some(hosts) = open_all(args) else {
        return 1;
    };
    let domain = match command {
        TokenCommand::List => return token_list(&hosts),
        TokenCommand::Add { domain, .. } | TokenCommand::Revoke { domain, .. } => domain,
    };
    let Some((uri, hv)) = host_of(domain, &hosts) else {
        return 1;
    };
    let outcome = match command {
        TokenCommand::Revoke { prefix, .. } => {
            token::revoke(hv, domain, prefix.as_deref()).map(|removed| {
                let prefixes: Vec<String> = removed.iter().map(|h| h.prefix()).collect();
                match removed.len() {
                    0 => eprintln!("{domain}: had no tokens"),
                    n => eprintln!("{domain}: revoked {n} token(s): {}", prefixes.join(" ")),
                }
            })
        }
        TokenCommand::Add { may, .. } => {
            let sleep = may.contains(&cli::Right::Sleep);
            token::add(hv, domain, sleep).map(|token| {
                println!("{}", token.reveal());
                eprintln!(
                    "{domain}: token {} added{}; it is shown only this once: give it to one client",
                    token.hash().prefix(),
                    if sleep {
                        " (it may wake and put the domain to sleep)"
                    } else {
                        " (it may wake the domain)"
                    }
                );
            })
        }
        TokenCommand::List => return token_list(&hosts),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            error!("{uri}: {e}");
            match e {
                token::TokenError::NoMatch { .. } | token::TokenError::Ambiguous { .. } => 2,
                _ => 1,
            }
        }
    }
}

/// `secureon set | clear`: what changed on stderr; status 1 when libvirt
/// cannot be reached or refused, or the domain is not found.
fn secureon(args: &Args, command: &SecureonCommand) -> i32 {
    let Some(hosts) = open_all(args) else {
        return 1;
    };
    let (SecureonCommand::Set { domain, .. } | SecureonCommand::Clear { domain }) = command;
    let Some((uri, hv)) = host_of(domain, &hosts) else {
        return 1;
    };
    let outcome = match command {
        SecureonCommand::Set { password, .. } => secureon::set(hv, domain, password).map(|()| {
            eprintln!("{domain}: magic packets must now carry its SecureOn password");
        }),
        SecureonCommand::Clear { .. } => secureon::clear(hv, domain).map(|had| {
            if had {
                eprintln!("{domain}: SecureOn password cleared; any magic packet wakes it");
            } else {
                eprintln!("{domain}: had no SecureOn password");
            }
        }),
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            error!("{uri}: {e}");
            1
        }
    }
}

fn idle(args: &Args, command: &IdleCommand) -> i32 {
    let (domain, change) = match command {
        IdleCommand::Check => return idle_check(args, args.dry_run),
        IdleCommand::Set {
            domain,
            after,
            action,
            cpu,
            net,
            disk,
        } => {
            let defaults = IdlePolicy::new(*after, *action);
            let policy = IdlePolicy {
                cpu_permille: cpu.unwrap_or(defaults.cpu_permille),
                net_bps: net.unwrap_or(defaults.net_bps),
                disk_bps: disk.unwrap_or(defaults.disk_bps),
                ..defaults
            };
            (domain, Some(policy))
        }
        IdleCommand::Clear { domain } => (domain, None),
    };
    let Some(hosts) = open_all(args) else {
        return 1;
    };
    let Some((uri, hv)) = host_of(domain, &hosts) else {
        return 1;
    };
    let done = match change {
        Some(policy) => idle::set(hv, domain, policy).map(|()| {
            eprintln!("{domain}: {}", report::idle::policy_words(&policy));
        }),
        None => idle::clear(hv, domain).map(|had| {
            if had {
                eprintln!("{domain}: no idle policy any more; it is never put to sleep");
            } else {
                eprintln!("{domain} had no idle policy");
            }
        }),
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            error!("{uri}: {e}");
            1
        }
    }
}

/// One idle check on every host, each reached on its own (one that cannot
/// be reached stops none of the others); 1 if a host could not be looked
/// at. Under a lock in the cache directory: a check started while another
/// runs does nothing, so no domain is acted on twice.
fn idle_check(args: &Args, dry_run: bool) -> i32 {
    let cache_dir = CacheDirSource::from_env(args.cache_dir.as_deref());
    let lock = match cache_dir.as_ref().map(idle::CheckLock::take) {
        Some(Ok(Some(lock))) => Some(lock),
        Some(Ok(None)) => {
            info!("another idle check is running; this one does nothing");
            return 0;
        }
        Some(Err(e)) => {
            warn!("{e}; without kept samples no domain is ever idle long enough");
            None
        }
        None => {
            warn!(
                "no cache directory (no $CACHE_DIRECTORY, --cache-dir or home): without kept \
                 samples no domain is ever idle long enough"
            );
            None
        }
    };
    let mut status = 0;
    for given in &args.libvirt_uri {
        let uri = uri::shown(given);
        let hv = match Libvirt::open(given) {
            Ok(hv) => hv,
            Err(e) => {
                error!("idle check: cannot reach libvirt at {uri}: {e}");
                status = 1;
                continue;
            }
        };
        let samples = (lock.as_ref()).map(|lock| idle::Samples::open(lock.dir(), given));
        match idle::check(&hv, &uri, samples.as_ref(), dry_run) {
            Ok(checked) if checked.news() => info!("{}", report::idle::summary(&uri, &checked)),
            Ok(checked) => debug!("{}", report::idle::summary(&uri, &checked)),
            Err(e) => {
                error!("idle check on {uri}: {e}");
                status = 1;
            }
        }
    }
    status
}

/// A connection to every `--libvirt-uri` (with the URI as shown), or
/// `None` after saying which one cannot be reached.
fn open_all(args: &Args) -> Option<Vec<(String, Libvirt)>> {
    let mut hosts = Vec::new();
    for given in &args.libvirt_uri {
        let uri = uri::shown(given);
        match Libvirt::open(given) {
            Ok(hv) => hosts.push((uri, hv)),
            Err(e) => {
                error!("cannot reach libvirt at {uri}: {e}");
                return None;
            }
        }
    }
    Some(hosts)
}

/// `token list`: the domains with tokens, on every host.
fn token_list(hosts: &[(String, Libvirt)]) -> i32 {
    let several = hosts.len() > 1;
    let mut rows = Vec::new();
    for (uri, hv) in hosts {
        match token::list(hv) {
            Ok(found) => rows.extend(
                found
                    .into_iter()
                    .map(|(name, hashes)| (several.then_some(uri.as_str()), name, hashes)),
            ),
            Err(e) => {
                error!("{uri}: {e}");
                return 1;
            }
        }
    }
    print!("{}", token::table(&rows));
    0
}

/// The one host that has a domain named `domain`.
/// Says why when there is none (or several).
fn host_of<'a>(domain: &str, hosts: &'a [(String, Libvirt)]) -> Option<(&'a str, &'a Libvirt)> {
    let found = find_host(domain, hosts);
    if let Err(message) = &found {
        error!("{message}");
    }
    found.ok()
}

fn find_host<'a>(
    domain: &str,
    hosts: &'a [(String, Libvirt)],
) -> Result<(&'a str, &'a Libvirt), String> {
    let mut having = Vec::new();
    for (uri, hv) in hosts {
        match hv.wake_meta(domain) {
            Ok(_) => having.push((uri.as_str(), hv)),
            Err(e) if e.kind == model::HvErrorKind::NoDomain => {}
            Err(e) => return Err(format!("{uri}: {e}")),
        }
    }
    let uris: Vec<&str> = hosts.iter().map(|(uri, _)| uri.as_str()).collect();
    match having.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no domain named '{domain}' on {} (see `wol-libvirt-gateway list`)",
            uris.join(", ")
        )),
        _ => Err(format!(
            "a domain named '{domain}' is on several hosts ({}): give the one --libvirt-uri to change",
            having
                .iter()
                .map(|(uri, _)| *uri)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
