//! wol-libvirt-gateway: Wake-on-LAN magic packets in, libvirt domains up.
//!
//! A newcomer's map:
//! - packets enter in [`gateway`] (`Gateway::drain`), from the [`sockets`]
//!   (UDP, passed by systemd or bound; raw Ethernet from [`raw`]), and are
//!   parsed by [`packet::parse`];
//! - the VM is chosen in [`wake`] ([`wake::plan`] over the candidates of every
//!   host, filtered by [`policy`]; found through the MAC index of [`index`]
//!   and [`cache`], read by [`domain_xml::macs`]);
//! - it is started through [`hypervisor`] (the only module that talks to libvirt);
//! - systemd notifications go through [`notify`], logging is set up in
//!   [`logging`]; [`list`] is the `list` command, [`cli`] the flags.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod cli;
pub mod domain_xml;
pub mod gateway;
pub mod hypervisor;
pub mod index;
pub mod list;
pub mod logging;
pub mod notify;
pub mod packet;
pub mod policy;
pub mod ratelimit;
pub mod raw;
pub mod sockets;
pub mod wake;

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use tracing::{error, info, warn};

use crate::cache::{CacheDirSource, IndexFile};
use crate::cli::{Args, Command};
use crate::gateway::{Config, Gateway, Shutdown};
use crate::hypervisor::LibvirtConnector;
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::sockets::Origin;
use crate::wake::{Fleet, Waker};

/// Idle timeout when systemd passed the socket and none was given.
pub const DEFAULT_ACTIVATED_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the gateway with the process's arguments; returns the exit status
/// (0 done, 1 runtime error, 2 bad usage).
pub fn run() -> i32 {
    run_with(std::env::args_os())
}

/// Runs the gateway with explicit arguments (`args[0]` is the program name).
pub fn run_with(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match Args::try_parse_from(args) {
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
            eprintln!("{first} (see --help)");
            return 2;
        }
    };
    if let Some(Command::List) = args.command {
        logging::init();
        return list(&args);
    }
    // Claim the passed sockets before anything else opens a file descriptor:
    // with a wrong LISTEN_FDS count, fd 3+n could otherwise be one of ours
    // (the journal socket, the signal pipe) and be taken for a passed one.
    let listeners = sockets::acquire(&args.listen_address, &args.raw_interface);
    logging::init();
    match listeners.and_then(|listeners| serve(&args, listeners)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            1
        }
    }
}

fn serve(args: &Args, listeners: sockets::Listeners) -> anyhow::Result<i32> {
    use anyhow::Context;

    let shutdown = Shutdown::install().context("cannot install signal handlers")?;
    // Only a socket systemd holds for us survives our exit; raw listeners
    // and our own sockets would close, so those run until stopped.
    let always_on = listeners.origin == Origin::Bound || !args.raw_interface.is_empty();
    let idle_timeout = match args.idle_timeout {
        Some(Duration::ZERO) => None,
        Some(timeout) => Some(timeout),
        None if always_on => None,
        None => Some(DEFAULT_ACTIVATED_IDLE_TIMEOUT),
    };
    let policy = policy(args);
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
    let fleet = Fleet::new(hosts(args, &policy), args.dry_run);
    let config = Config {
        idle_timeout,
        dedupe_window: args.dedupe_window,
    };
    let gateway = Gateway::new(
        listeners.listeners,
        fleet,
        config,
        shutdown,
        Notifier::from_env(),
    );
    let (exit, _stats) = gateway.run();
    Ok(exit.code())
}

fn policy(args: &Args) -> Policy {
    Policy {
        allow: args.allow.clone(),
        require_opt_in: args.require_opt_in,
    }
}

/// One waker per `--libvirt-uri`, each with its own index file.
fn hosts(args: &Args, policy: &Policy) -> Vec<Waker<LibvirtConnector>> {
    let cache_dir = CacheDirSource::from_env(args.cache_dir.as_deref());
    if cache_dir.is_none() {
        warn!("MAC index cache disabled: no cache directory (set --cache-dir)");
    }
    args.libvirt_uri
        .iter()
        .map(|uri| {
            let waker = Waker::new(LibvirtConnector::new(uri.clone()), args.rescan_interval)
                .with_policy(policy.clone());
            match cache_dir.as_ref().map(|dir| IndexFile::open(dir, uri)) {
                Some(Ok(file)) => waker.with_cache(file),
                Some(Err(e)) => {
                    warn!("MAC index cache disabled for {uri}: {e}; every activation will read all domains' XML");
                    waker
                }
                None => waker,
            }
        })
        .collect()
}

/// `list`: the table on stdout, unreachable hosts on stderr (status 1).
fn list(args: &Args) -> i32 {
    let policy = policy(args);
    let mut hosts = hosts(args, &policy);
    let (table, problems) = list::list(&mut hosts, &policy);
    print!("{table}");
    for problem in &problems {
        error!("{problem}");
    }
    i32::from(!problems.is_empty())
}
