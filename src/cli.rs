//! Command-line interface.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};

/// Wake-on-LAN gateway for libvirt: a magic packet for a VM's MAC address
/// starts (or resumes, or wakes) that VM.
///
/// Normally started by systemd through wol-libvirt-gateway.socket, which owns
/// the UDP port and passes it in; the gateway handles every queued packet and
/// exits when idle. Run by hand, it binds --listen-address itself.
///
/// Every option can also come from the environment variable its help names
/// (WOL_...; several values separated by commas, several URIs by blanks),
/// e.g. from systemd's
/// EnvironmentFile=. Verbosity comes from RUST_LOG (default: info; e.g.
/// RUST_LOG=debug).
#[derive(Debug, Clone, Parser)]
#[command(name = "wol-libvirt-gateway", version, about, long_about)]
// These doc comments are the --help text (plain, not Markdown): `[::]:9`
// and `<wake/>` are meant literally.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
pub struct Args {
    /// Without a command, the gateway serves magic packets.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// UDP address to listen on when systemd passes no socket. Repeat the flag
    /// for several addresses, e.g. 0.0.0.0:9 and [::]:9. Default: 127.0.0.1:9,
    /// unless --raw-interface is given (then no UDP socket). -a and --address
    /// are the original project's names for it.
    #[arg(
        short = 'a',
        long = "listen-address",
        visible_alias = "address",
        value_name = "IP:PORT",
        value_parser = parse_socket_addr,
        env = "WOL_LISTEN_ADDRESS",
        value_delimiter = ','
    )]
    pub(crate) listen_address: Vec<SocketAddr>,

    /// Also take HTTP wake requests (with a token; see `token add`) on this
    /// TCP address when systemd passes no socket, e.g. 127.0.0.1:9109.
    /// Repeatable. Given alone, no UDP socket is bound.
    #[arg(
        long = "http-listen",
        value_name = "IP:PORT",
        value_parser = parse_socket_addr,
        env = "WOL_HTTP_LISTEN",
        value_delimiter = ','
    )]
    pub(crate) http_listen: Vec<SocketAddr>,

    /// Serve the HTTP wake over TLS with this PEM certificate chain (under
    /// systemd: LoadCredential=, then $CREDENTIALS_DIRECTORY/NAME).
    #[arg(long, value_name = "FILE", requires = "tls_key", env = "WOL_TLS_CERT")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert", env = "WOL_TLS_KEY")]
    pub(crate) tls_key: Option<std::path::PathBuf>,

    /// Serve the HTTP wake without TLS on an address that is not loopback
    /// (for a VPN interface that already encrypts); tokens then cross that
    /// network in clear.
    #[arg(long, env = "WOL_ALLOW_PLAIN_HTTP", value_parser = BoolishValueParser::new())]
    pub(crate) allow_plain_http: bool,

    /// libvirt connection URI whose domains may be woken. Repeat the flag
    /// for several hosts (e.g. qemu+ssh://host2/system): a MAC is looked up
    /// on all of them, and one that cannot be reached does not block the
    /// others. -l is the original project's name for it.
    #[arg(
        short = 'l',
        long,
        value_name = "URI",
        default_value = "qemu:///system",
        global = true,
        env = "WOL_LIBVIRT_URI",
        // Not a comma: libvirt's own URI parameters take commas
        // (sshauth=privkey,agent); a URI holds no unescaped blank.
        value_delimiter = ' '
    )]
    pub(crate) libvirt_uri: Vec<String>,

    /// Log what a magic packet (or `wake`, `sleep`, `idle check`) would do,
    /// and do nothing.
    #[arg(long, global = true, env = "WOL_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub(crate) dry_run: bool,

    /// Also listen for raw Ethernet Wake-on-LAN frames (ethertype 0x0842, as
    /// sent by etherwake and many routers) on this interface; needs
    /// CAP_NET_RAW and runs until stopped (see
    /// wol-libvirt-gateway-raw@.service). Repeatable.
    #[arg(
        long,
        value_name = "IFACE",
        env = "WOL_RAW_INTERFACE",
        value_delimiter = ','
    )]
    pub(crate) raw_interface: Vec<String>,

    /// Exit after this long without a datagram (e.g. 30s, 2m; 0 = never).
    /// Default: 30s when started by systemd with a socket, never when the
    /// gateway bound its own socket.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "WOL_IDLE_TIMEOUT")]
    pub(crate) idle_timeout: Option<Duration>,

    /// A MAC woken within this window is not acted on again; repeats (tools
    /// send 3-10 copies) are logged as duplicates.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration,
        env = "WOL_DEDUPE_WINDOW"
    )]
    pub(crate) dedupe_window: Duration,

    /// Only these domains may be woken: a domain name, a UUID, or a MAC
    /// (repeat the flag). Default: any domain with the MAC.
    #[arg(
        long,
        value_name = "NAME|UUID|MAC",
        global = true,
        env = "WOL_ALLOW",
        value_delimiter = ','
    )]
    pub(crate) allow: Vec<crate::decide::policy::AllowEntry>,

    /// Only domains that opted in through their own libvirt metadata may be
    /// woken: virsh metadata DOMAIN --uri https://wol-libvirt-gateway/xmlns/1
    /// --key wol --set '<wake/>' --config
    #[arg(
        long,
        global = true,
        env = "WOL_REQUIRE_OPT_IN",
        value_parser = BoolishValueParser::new()
    )]
    pub(crate) require_opt_in: bool,

    /// Directory for the persistent MAC index. systemd's CacheDirectory=
    /// ($CACHE_DIRECTORY) takes precedence; without either, the XDG cache
    /// directory (~/.cache/wol-libvirt-gateway) is used.
    #[arg(long, value_name = "DIR", global = true, env = "WOL_CACHE_DIR")]
    pub(crate) cache_dir: Option<std::path::PathBuf>,

    /// For a MAC the index does not know, list the domains (and read the XML
    /// of new ones) at most this often.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration,
        env = "WOL_RESCAN_INTERVAL"
    )]
    pub(crate) rescan_interval: Duration,

    /// Re-read every domain's XML (to find an interface added to a known
    /// domain) for an unknown MAC at most this often.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        value_parser = parse_duration,
        env = "WOL_FULL_RESCAN_INTERVAL"
    )]
    pub(crate) full_rescan_interval: Duration,

    /// A libvirt host that answers no call for this long counts as not
    /// answering: requests that need it wait, the others go on without it.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_positive_duration,
        env = "WOL_LIBVIRT_TIMEOUT"
    )]
    pub(crate) libvirt_timeout: Duration,
}

/// Commands besides serving.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// List every domain of the configured URI(s): its state, its MACs, and
    /// what a magic packet would do to it now.
    List {
        /// Print JSON (one object per domain) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage a domain's HTTP wake tokens (stored as SHA-256 hashes in the
    /// domain's own libvirt metadata).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Set or clear a domain's SecureOn password: magic packets for it must
    /// then carry the password (stored salted and hashed in its metadata).
    #[command(subcommand)]
    Secureon(SecureonCommand),
    /// Give a domain extra MACs that magic packets find it by, besides its
    /// interfaces' (a NIC passed through as a PCI device shows libvirt no
    /// MAC; a client may insist on its own); kept in the domain's own
    /// metadata.
    #[command(subcommand)]
    Mac(MacCommand),
    /// Put domains back to sleep when idle: a policy kept in each domain's
    /// own metadata (`idle set`), applied by `idle check`, which
    /// wol-libvirt-gateway-idle.timer runs every minute.
    #[command(subcommand)]
    Idle(IdleCommand),
    /// Wake TARGET (a domain name or a MAC) as a magic packet would, with
    /// the same rules (--allow, --require-opt-in, the ambiguity rule) and
    /// the same journal line (VIA=cli); for scripts and OnCalendar= timers.
    /// Exits 0 when it is up (or already was), 1 otherwise.
    Wake {
        /// The domain's name, or a MAC.
        target: crate::decide::ask::Target,
        /// Also wait until it runs (as the HTTP wake's ?wait= does) for at
        /// most this long, e.g. 60s; 1 if it is not up by then.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Put TARGET (a domain name or a MAC) to sleep with its idle policy's
    /// action (managedsave, shutdown or suspend), or an ACPI shutdown request
    /// without one; never forced. Exits 0 when it sleeps (or is on its way,
    /// or already was), 1 otherwise.
    Sleep {
        /// The domain's name, or a MAC.
        target: crate::decide::ask::Target,
        /// Also wait until it no longer runs (a guest OS takes a while to
        /// shut down) for at most this long; 1 if it still runs by then.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<Duration>,
    },
}

/// `idle` commands.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum IdleCommand {
    /// Give DOMAIN an idle policy: once its vCPU, network and disk use have
    /// stayed low for --after without a gap, `idle check` puts it to sleep
    /// with --action. A domain without a policy is never touched.
    Set {
        /// The domain's name.
        domain: String,
        /// How long it must stay idle, e.g. 30m or 2h (whole seconds).
        #[arg(long, value_name = "DURATION", value_parser = parse_idle_after)]
        after: Duration,
        /// managedsave (its RAM to disk; the next wake restores it),
        /// shutdown (an ACPI request to the guest OS, never forced) or
        /// suspend (paused; the next wake resumes it).
        #[arg(long, value_name = "ACTION", default_value = "managedsave")]
        action: crate::decide::idle::Sleep,
        /// Idle while its vCPU use stays below this share of its vCPUs
        /// [default: 5%].
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        cpu: Option<u32>,
        /// Idle while its network traffic (received and sent) stays below
        /// this many bytes a second, e.g. 8K or 1M [default: 8K].
        #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
        net: Option<u64>,
        /// Idle while its disk traffic (read and written) stays below this
        /// many bytes a second [default: 64K].
        #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
        disk: Option<u64>,
    },
    /// Take DOMAIN's idle policy away: it is never put to sleep.
    Clear {
        /// The domain's name.
        domain: String,
    },
    /// Look once at every running domain that has a policy and put those
    /// idle long enough to sleep (what the timer runs). With --dry-run, say
    /// what would be done and do nothing.
    Check,
}

/// `secureon` commands.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum SecureonCommand {
    /// Require PASSWORD (4 or 6 bytes: 01:02:03:04:05:06, or 1.2.3.4) in
    /// every magic packet for DOMAIN.
    Set {
        /// The domain's name.
        domain: String,
        /// The password, as etherwake -p takes it.
        #[arg(value_name = "PASSWORD")]
        password: crate::model::Password,
    },
    /// Take DOMAIN's password away: any magic packet wakes it again.
    Clear {
        /// The domain's name.
        domain: String,
    },
}

/// `mac` commands.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum MacCommand {
    /// Make magic packets for MAC wake DOMAIN, as if one of its interfaces
    /// had it (the same rules: --allow, --require-opt-in, the ambiguity
    /// rule).
    Add {
        /// The domain's name.
        domain: String,
        /// The MAC, e.g. 52:54:00:12:34:56 (the passed-through NIC's own).
        #[arg(value_name = "MAC", value_parser = parse_wakeable_mac)]
        mac: crate::model::Mac,
    },
    /// Take an extra MAC away from DOMAIN: packets for it no longer wake it.
    Remove {
        /// The domain's name.
        domain: String,
        /// The extra MAC, as `mac list` shows it.
        #[arg(value_name = "MAC", value_parser = parse_wakeable_mac)]
        mac: crate::model::Mac,
    },
    /// Show which domains have extra MACs.
    List,
}

/// A MAC a magic packet can name: refused before libvirt is asked.
fn parse_wakeable_mac(s: &str) -> Result<crate::model::Mac, String> {
    let mac: crate::model::Mac = s.parse().map_err(|e| format!("{e}"))?;
    if mac.is_wakeable() {
        Ok(mac)
    } else {
        Err(format!(
            "{mac} is a group or zero address, never a magic packet's target: give a NIC's own MAC"
        ))
    }
}

/// What a token's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Right {
    /// Wake the domain (every token may).
    Wake,
    /// Also put it to sleep.
    Sleep,
}

/// `token` commands.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum TokenCommand {
    /// Give DOMAIN a new token and print it (only this once); one per client.
    Add {
        /// The domain's name.
        domain: String,
        /// What its holder may do: wake (always), and with `--may sleep`
        /// also put the domain to sleep (POST /v1/sleep, the power switch)
        /// with its idle policy's action, or an ACPI shutdown without one.
        #[arg(long, value_name = "RIGHT")]
        may: Vec<Right>,
    },
    /// Show which domains have tokens (a hash prefix each, never a token).
    List,
    /// Remove DOMAIN's token whose hash starts with PREFIX, or all of them.
    Revoke {
        /// The domain's name.
        domain: String,
        /// The hash prefix `token list` shows.
        prefix: Option<String>,
    },
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected IP:PORT such as 127.0.0.1:9 or [::]:9 (IPv6 in brackets)".to_owned())
}

/// A duration that is not zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("must be longer than 0".to_owned()),
        d => Ok(d),
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad =
        || format!("'{s}' is not a duration: use a number with a unit, e.g. 30s, 2m or 500ms");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1,
        "" | "s" | "sec" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{s}' is too long"))
}

/// A share in per cent (`5%`, `0.5`), as thousandths: at least 0.1 %, at
/// most 100 %.
fn parse_percent(s: &str) -> Result<u32, String> {
    let bad = || format!("'{s}' is not a share: use a per cent from 0.1 to 100, e.g. 5% or 0.5%");
    let number = s.trim();
    let number = number.strip_suffix('%').unwrap_or(number).trim();
    let (whole, tenths) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |d: &str, most: usize| {
        (1..=most).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
    };
    // At most 100.0: three digits and one, so nothing overflows.
    if !digits(whole, 3) || !digits(tenths, 1) {
        return Err(bad());
    }
    let permille =
        whole.parse::<u32>().map_err(|_| bad())? * 10 + tenths.parse::<u32>().map_err(|_| bad())?;
    if (1..=1_000).contains(&permille) {
        Ok(permille)
    } else {
        Err(bad())
    }
}

/// Bytes a second, more than 0: a number, optionally with K, M or G
/// (powers of 1024, also written KB, KiB, ...) and `/s`.
fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a rate: use bytes a second above 0, e.g. 8K, 1M or 500");
    let text = s.trim();
    let text = text.strip_suffix("/s").unwrap_or(text);
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KB" | "kB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(bad()),
        Some(rate) => Ok(rate),
    }
}

/// A policy's idle time: whole seconds (the metadata keeps seconds), more
/// than 0.
fn parse_idle_after(s: &str) -> Result<Duration, String> {
    let after = parse_positive_duration(s)?;
    if after.subsec_nanos() != 0 || after.as_secs() == 0 {
        return Err(format!(
            "'{s}' is not whole seconds: use e.g. 30m, 2h or 90s"
        ));
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_rates() {
        assert_eq!(parse_percent("5%"), Ok(50));
        assert_eq!(parse_percent("0.5"), Ok(5));
        assert_eq!(parse_percent("100%"), Ok(1_000));
        for bad in [
            "0",
            "0%",
            "101%",
            "0.05%",
            "-1",
            "five",
            "",
            "1.%",
            "5%%",
            "429496730",
            "1000",
        ] {
            assert!(parse_percent(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_rate("8K"), Ok(8_192));
        assert_eq!(parse_rate("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_rate("500"), Ok(500));
        assert_eq!(parse_rate("64 KiB/s"), Ok(65_536));
        for bad in ["", "K", "1T", "-1", "99999999999G", "1iB", "0", "0K"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_idle_after("30m"), Ok(Duration::from_secs(1800)));
        for bad in ["0", "500ms", "1500ms"] {
            assert!(parse_idle_after(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_uri_with_commas_stays_one_uri_and_blanks_separate_uris() {
        // libvirt's own parameters take commas (sshauth=privkey,agent).
        let uri = "qemu+libssh2://wol@host2/system?sshauth=privkey,agent";
        let args = Args::try_parse_from(["gw", "-l", uri]).expect("parses");
        assert_eq!(args.libvirt_uri, [uri]);
        let args = Args::try_parse_from(["gw", "-l", "qemu:///system lxc:///"]).expect("parses");
        assert_eq!(args.libvirt_uri, ["qemu:///system", "lxc:///"]);
        let args = Args::try_parse_from(["gw", "--allow", "web01,db01"]).expect("parses");
        assert_eq!(args.allow.len(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "1x", "-1s", "1.5s", "99999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
