//! Reading MAC addresses out of a libvirt domain's XML description.
//!
//! Every NIC of a domain, whatever its `type` (network, bridge, direct, user,
//! ethernet, hostdev, vhostuser, ...), carries its address in
//! `<domain><devices><interface><mac address='…'/>`. We read exactly that path,
//! and the extra MACs its owner keeps in our own `<metadata>` element (`mac
//! add`: a PCI device passed through with `<hostdev>` shows libvirt no MAC),
//! and nothing else, so `<mac>` elements elsewhere (say in another
//! `<metadata>` element, or a `<hostdev>`) are never mistaken for a NIC.

use std::time::Duration;

use crate::decide::idle::{IdlePolicy, Sleep};
use crate::decide::policy::WakeMeta;
use crate::model::Mac;
use crate::secret::{Hash, Sealed};

/// Why a domain's XML yielded no trustworthy list of MACs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainXmlError {
    /// The text is not well-formed XML.
    #[error("domain XML is not well-formed: {0}")]
    NotXml(String),
    /// The root element is not `<domain>`.
    #[error("root element is <{0}>, not <domain>")]
    NotADomain(String),
    /// An interface's `<mac>` has no `address` or one that is not a MAC.
    #[error("interface has a malformed MAC address '{0}'")]
    BadMac(String),
    /// Larger than [`MAX_XML_BYTES`]: not a plausible domain.
    #[error("domain XML is {0} bytes, more than the {MAX_XML_BYTES} a domain plausibly needs")]
    TooLarge(usize),
    /// Nested deeper than [`MAX_DEPTH`]: not a plausible domain, and the
    /// tree parser recurses per level.
    #[error("domain XML nests elements more than {MAX_DEPTH} deep")]
    TooDeep,
}

/// Domain XML larger than this is refused unread (real ones are a few KiB;
/// libvirt's own RPC limit is 32 MiB).
pub(crate) const MAX_XML_BYTES: usize = 2 << 20;
/// Element nesting allowed (real domain XML nests about 6 deep; libxml2,
/// which libvirt parses with, stops at 256).
pub(crate) const MAX_DEPTH: usize = 128;

/// Extra MACs one domain may have (`mac add` stops there); more in a
/// hand-edited element are ignored, so a long one costs a wake nothing.
pub(crate) const MAX_EXTRA_MACS: usize = 32;

/// XML namespace of the gateway's element in a domain's `<metadata>`.
pub const METADATA_NAMESPACE: &str = "https://wol-libvirt-gateway/xmlns/1";

/// The key (namespace prefix) libvirt writes our element with.
pub const METADATA_KEY: &str = "wol";

/// What the gateway reads from one domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainNics {
    /// Every MAC a magic packet finds the domain by: each interface's, in
    /// document order, then its extra ones ([`WakeMeta::macs`]) that no
    /// interface has. One list, so the index, the confirmation, the
    /// ambiguity rule and `--allow` treat an extra MAC as an interface's.
    pub(crate) macs: Vec<Mac>,
    /// Those of [`DomainNics::macs`] that only our metadata gives (for
    /// `list`, and for the idle check, which counts interfaces' bytes).
    pub(crate) extra: Vec<Mac>,
    /// What its owner set in our `<metadata>` element.
    pub meta: WakeMeta,
    /// Its QEMU guest agent channel, if it has one.
    pub(crate) agent: Option<Agent>,
}

/// A QEMU guest agent channel (`org.qemu.guest_agent.0`), as the running
/// domain's XML shows it: libvirt marks it connected once the agent in the
/// guest has opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Agent {
    /// The agent in the guest has the channel open.
    Connected,
    /// Not (yet) open, or the domain is not running.
    Disconnected,
}

/// The name of the guest agent's virtio channel.
const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// How the owner's settings ([`WakeMeta`]) are written into the domain's
/// `<metadata>`.
impl WakeMeta {
    /// The element that stores this, for `virDomainSetMetadata` with
    /// [`METADATA_NAMESPACE`] and [`METADATA_KEY`]; `None` (remove the
    /// element) when nothing is left and the domain had not opted in.
    pub fn render(&self) -> Option<String> {
        let children = !self.tokens.is_empty()
            || self.secureon.is_some()
            || self.idle.is_some()
            || !self.macs.is_empty();
        if !self.opt_in && !children {
            return None;
        }
        let mut xml = String::from("<wake");
        if !self.opt_in {
            xml.push_str(" opt-in=\"no\"");
        }
        if !children {
            xml.push_str("/>");
            return Some(xml);
        }
        xml.push('>');
        for token in &self.tokens {
            let may = if self.sleepers.contains(token) {
                " may=\"wake sleep\""
            } else {
                ""
            };
            xml.push_str(&format!("<token sha256=\"{token}\"{may}/>"));
        }
        if let Some(sealed) = &self.secureon {
            xml.push_str(&format!(
                "<secureon salt=\"{}\" sha256=\"{}\"/>",
                sealed.salt_hex(),
                sealed.hash
            ));
        }
        if let Some(idle) = &self.idle {
            xml.push_str(&format!(
                "<idle after=\"{}\" action=\"{}\" cpu-permille=\"{}\" net-bps=\"{}\" disk-bps=\"{}\"/>",
                idle.after.as_secs(),
                idle.action,
                idle.cpu_permille,
                idle.net_bps,
                idle.disk_bps
            ));
        }
        for mac in &self.macs {
            xml.push_str(&format!("<mac address=\"{mac}\"/>"));
        }
        xml.push_str("</wake>");
        Some(xml)
    }
}

/// Returns the MAC address of every interface in a domain's XML, in document
/// order. Interfaces without a `<mac>` are skipped (libvirt generates one when
/// the domain is defined, so only hand-written XML lacks it). The gateway
/// reads the opt-in too ([`read`]); the tests look at the MACs alone.
#[cfg(test)]
pub(crate) fn macs(xml: &str) -> Result<Vec<Mac>, DomainXmlError> {
    read(xml).map(|nics| nics.macs)
}

/// A domain's XML, parsed once, for the readers below.
pub(crate) struct Parsed<'a>(roxmltree::Document<'a>);

/// Parses a domain's XML after the checks that keep an implausible one
/// from the tree parser (size, nesting).
pub(crate) fn parse(xml: &str) -> Result<Parsed<'_>, DomainXmlError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(DomainXmlError::TooLarge(xml.len()));
    }
    if nesting_exceeds(xml.as_bytes(), MAX_DEPTH) {
        return Err(DomainXmlError::TooDeep);
    }
    let document =
        roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::NotXml(e.to_string()))?;
    Ok(Parsed(document))
}

/// Reads the MACs and the wake opt-in from a domain's XML.
pub fn read(xml: &str) -> Result<DomainNics, DomainXmlError> {
    read_parsed(&parse(xml)?)
}

/// [`read`], of XML parsed already.
pub(crate) fn read_parsed(parsed: &Parsed<'_>) -> Result<DomainNics, DomainXmlError> {
    let domain = parsed.0.root_element();
    if domain.tag_name().name() != "domain" {
        return Err(DomainXmlError::NotADomain(
            domain.tag_name().name().to_owned(),
        ));
    }
    let mut found = Vec::new();
    let interfaces = children(domain, "devices").flat_map(|devices| children(devices, "interface"));
    for mac in interfaces.flat_map(|interface| children(interface, "mac")) {
        let address = mac.attribute("address").unwrap_or("");
        let parsed = address
            .parse::<Mac>()
            .map_err(|_| DomainXmlError::BadMac(address.to_owned()))?;
        found.push(parsed);
    }
    let meta = children(domain, "metadata")
        .flat_map(|metadata| metadata.children())
        .find(|child| {
            child.is_element()
                && child.tag_name().name() == "wake"
                && child.tag_name().namespace() == Some(METADATA_NAMESPACE)
        })
        .map(wake_meta)
        .unwrap_or_default();
    let extra: Vec<Mac> = (meta.macs.iter())
        .filter(|mac| !found.contains(mac))
        .copied()
        .collect();
    found.extend_from_slice(&extra);
    let agent = children(domain, "devices")
        .flat_map(|devices| children(devices, "channel"))
        .flat_map(|channel| children(channel, "target"))
        .find(|target| target.attribute("name") == Some(AGENT_CHANNEL))
        .map(|target| match target.attribute("state") {
            Some("connected") => Agent::Connected,
            _ => Agent::Disconnected,
        });
    Ok(DomainNics {
        macs: found,
        extra,
        meta,
        agent,
    })
}

/// The target names of a domain's disks (`vda`, `hdc`), for their byte
/// counters; a disk without a target is left out (libvirt gives every
/// defined disk one).
pub(crate) fn disk_targets(parsed: &Parsed<'_>) -> Vec<String> {
    children(parsed.0.root_element(), "devices")
        .flat_map(|devices| children(devices, "disk"))
        .flat_map(|disk| children(disk, "target"))
        .filter_map(|target| target.attribute("dev"))
        .map(str::to_owned)
        .collect()
}

/// Reads our `<wake>` element. Its children carry no namespace of their
/// own (libvirt sets one on the element only); a hash that is not 64 hex
/// digits is no token (nothing could match it).
fn wake_meta(wake: roxmltree::Node<'_, '_>) -> WakeMeta {
    WakeMeta {
        opt_in: wake.attribute("opt-in") != Some("no"),
        tokens: children(wake, "token")
            .filter_map(|token| token.attribute("sha256").and_then(Hash::from_hex))
            .collect(),
        // Rights are words; one this version does not know grants nothing.
        sleepers: children(wake, "token")
            .filter(|token| {
                (token
                    .attribute("may")
                    .unwrap_or("wake")
                    .split_ascii_whitespace())
                .any(|right| right == "sleep")
            })
            .filter_map(|token| token.attribute("sha256").and_then(Hash::from_hex))
            .collect(),
        secureon: children(wake, "secureon").next().map(|element| {
            Sealed::from_hex(
                element.attribute("salt").unwrap_or_default(),
                element.attribute("sha256").unwrap_or_default(),
            )
            // A malformed one still refuses every packet: a password was
            // meant to be needed, and no packet can have the right one.
            .unwrap_or(Sealed::UNOPENABLE)
        }),
        idle: children(wake, "idle").next().and_then(idle_policy),
        macs: extra_macs(wake),
    }
}

/// Reads the `<mac address>` children of our `<wake>` element, each once,
/// the first [`MAX_EXTRA_MACS`] of them. One that is malformed, or that no
/// magic packet can name (the zero address, a group address: the packet
/// parser refuses them), is skipped, as a malformed token is: the element
/// is the owner's to edit, and a slip in it must not make the whole domain
/// unreadable.
fn extra_macs(wake: roxmltree::Node<'_, '_>) -> Vec<Mac> {
    let mut macs = Vec::new();
    let addresses = children(wake, "mac").filter_map(|mac| mac.attribute("address"));
    for mac in addresses.filter_map(|address| address.parse::<Mac>().ok()) {
        if macs.len() == MAX_EXTRA_MACS {
            break;
        }
        if mac.is_wakeable() && !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    macs
}

/// Reads an `<idle>` element; one that is not whole and well-formed is no
/// policy: a domain is put to sleep only when its owner clearly said so.
fn idle_policy(idle: roxmltree::Node<'_, '_>) -> Option<IdlePolicy> {
    let number = |name: &str| idle.attribute(name)?.parse::<u64>().ok();
    let after = Duration::from_secs(number("after").filter(|&s| s > 0)?);
    Some(IdlePolicy {
        after,
        action: idle.attribute("action")?.parse::<Sleep>().ok()?,
        // As `idle set` takes it: 0.1 % to 100 %.
        cpu_permille: u32::try_from(number("cpu-permille")?)
            .ok()
            .filter(|p| (1..=1_000).contains(p))?,
        net_bps: number("net-bps").filter(|&r| r > 0)?,
        disk_bps: number("disk-bps").filter(|&r| r > 0)?,
    })
}

/// True if elements nest deeper than `limit`. A linear pre-scan, so the
/// recursive tree parser never sees input that could exhaust the stack. It
/// skips comments, CDATA, processing instructions and declarations, and
/// quoted attribute values; where it could err, it errs towards "deeper".
fn nesting_exceeds(xml: &[u8], limit: usize) -> bool {
    let find = |from: usize, pattern: &[u8]| {
        xml[from..]
            .windows(pattern.len())
            .position(|w| w == pattern)
            .map_or(xml.len(), |p| from + p + pattern.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'<', &xml[i..]) {
        i += offset;
        let rest = &xml[i..];
        if rest.starts_with(b"<!--") {
            i = find(i, b"-->");
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            i = find(i, b"]]>");
            continue;
        }
        if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            i = find(i, b">");
            continue;
        }
        // The tag runs to the first '>' outside a quoted attribute value.
        let mut quote = None;
        let mut end = rest.len();
        for (j, &byte) in rest.iter().enumerate().skip(1) {
            match (quote, byte) {
                (None, b'"' | b'\'') => quote = Some(byte),
                (Some(q), _) if byte == q => quote = None,
                (None, b'>') => {
                    end = j;
                    break;
                }
                _ => {}
            }
        }
        if rest.get(1) == Some(&b'/') {
            depth = depth.saturating_sub(1);
        } else if end == 0 || rest.get(end - 1) != Some(&b'/') {
            depth += 1;
            if depth > limit {
                return true;
            }
        }
        i = (i + end + 1).min(xml.len());
    }
    false
}

fn children<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    node.children()
        .filter(move |child| child.is_element() && child.tag_name().name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn every_interface_type_is_read() {
        let types = [
            "network",
            "bridge",
            "direct",
            "user",
            "ethernet",
            "hostdev",
            "vhostuser",
            "mcast",
            "vdpa",
        ];
        let mut xml = String::from("<domain type='kvm'><name>vm</name><devices>");
        for (i, kind) in types.iter().enumerate() {
            xml.push_str(&format!(
                "<interface type='{kind}'><source/><mac address='52:54:00:00:00:{i:02x}'/><model type='virtio'/></interface>"
            ));
        }
        xml.push_str("<disk type='file'/></devices></domain>");
        let expected: Vec<Mac> = (0..types.len())
            .map(|i| Mac([0x52, 0x54, 0, 0, 0, i as u8]))
            .collect();
        assert_eq!(macs(&xml), Ok(expected));
    }

    #[test]
    fn uppercase_macs_compare_equal_to_lowercase() {
        let xml = "<domain><devices><interface type='network'><mac address='52:54:00:AA:BB:CC'/></interface></devices></domain>";
        assert_eq!(macs(xml), Ok(vec![mac("52:54:00:aa:bb:cc")]));
    }

    #[test]
    fn interface_without_mac_is_skipped() {
        let xml = "<domain><devices><interface type='user'/><interface type='user'><mac address='52:54:00:00:00:01'/></interface></devices></domain>";
        assert_eq!(macs(xml), Ok(vec![mac("52:54:00:00:00:01")]));
    }

    #[test]
    fn macs_outside_devices_interface_are_ignored() {
        let xml = "<domain><metadata><mac address='52:54:00:00:00:09'/></metadata><devices><hostdev><mac address='52:54:00:00:00:08'/></hostdev></devices></domain>";
        assert_eq!(macs(xml), Ok(vec![]));
    }

    #[test]
    fn malformed_address_names_it() {
        let xml = "<domain><devices><interface type='user'><mac address='52:54:00:zz'/></interface></devices></domain>";
        assert_eq!(macs(xml), Err(DomainXmlError::BadMac("52:54:00:zz".into())));
        let missing =
            "<domain><devices><interface type='user'><mac/></interface></devices></domain>";
        assert_eq!(macs(missing), Err(DomainXmlError::BadMac(String::new())));
    }

    #[test]
    fn wake_opt_in_needs_our_element_in_our_namespace() {
        let with = |metadata: &str| {
            read(&format!(
                "<domain><metadata>{metadata}</metadata><devices/></domain>"
            ))
            .unwrap()
            .meta
            .opt_in
        };
        // What `virsh metadata DOM --uri https://wol-libvirt-gateway/xmlns/1
        // --key wol --set '<wake/>'` writes:
        assert!(with(
            "<wol:wake xmlns:wol=\"https://wol-libvirt-gateway/xmlns/1\"/>"
        ));
        assert!(!with("<wake/>"));
        assert!(!with("<x:wake xmlns:x=\"https://example.org/other\"/>"));
        assert!(!with(
            "<wol:sleep xmlns:wol=\"https://wol-libvirt-gateway/xmlns/1\"/>"
        ));
        assert!(!read("<domain/>").unwrap().meta.opt_in);
        // What the token commands write on a domain that had not opted in.
        assert!(!with(
            "<wol:wake xmlns:wol=\"https://wol-libvirt-gateway/xmlns/1\" opt-in=\"no\"/>"
        ));
    }

    #[test]
    fn the_guest_agent_channel_and_its_state_are_read() {
        let with = |target: &str| {
            read(&format!(
                "<domain><devices><channel type='unix'>{target}</channel>\
                 <channel type='pty'><target type='virtio' name='org.example'/></channel>\
                 </devices></domain>"
            ))
            .unwrap()
            .agent
        };
        let agent = "<target type='virtio' name='org.qemu.guest_agent.0'";
        assert_eq!(
            with(&format!("{agent} state='connected'/>")),
            Some(Agent::Connected)
        );
        assert_eq!(
            with(&format!("{agent} state='disconnected'/>")),
            Some(Agent::Disconnected)
        );
        // An inactive definition has no state: not connected.
        assert_eq!(with(&format!("{agent}/>")), Some(Agent::Disconnected));
        assert_eq!(
            with("<target type='virtio' name='org.example.other'/>"),
            None
        );
        assert_eq!(read("<domain/>").unwrap().agent, None);
    }

    #[test]
    fn tokens_are_read_back_from_what_render_writes() {
        let a = Hash::of(b"a");
        let b = Hash::of(b"b");
        let meta = WakeMeta {
            opt_in: false,
            tokens: vec![a, b],
            sleepers: vec![b],
            secureon: Some(Sealed::seal(&"01:02:03:04".parse().unwrap()).unwrap()),
            idle: Some(IdlePolicy {
                cpu_permille: 20,
                ..IdlePolicy::new(Duration::from_secs(1800), Sleep::Shutdown)
            }),
            macs: vec![mac("52:54:00:12:34:56"), mac("02:00:00:00:00:01")],
        };
        // libvirt puts the namespace on the element, as --key wol does.
        let element = meta
            .render()
            .expect("tokens are kept")
            .replacen(
                "<wake",
                "<wol:wake xmlns:wol=\"https://wol-libvirt-gateway/xmlns/1\"",
                1,
            )
            .replace("</wake>", "</wol:wake>");
        let xml = format!("<domain><metadata>{element}</metadata></domain>");
        assert_eq!(read(&xml).unwrap().meta, meta);
        // A malformed hash is skipped, not an error.
        let odd = xml.replace(&a.to_string(), "not-a-hash");
        assert_eq!(read(&odd).unwrap().meta.tokens, vec![b]);
        // A right this version does not know grants nothing; wake is implied.
        let unknown = xml.replace("may=\"wake sleep\"", "may=\"wake reboot\"");
        assert_eq!(read(&unknown).unwrap().meta.sleepers, vec![]);
        assert!(xml.contains(&format!("<token sha256=\"{b}\" may=\"wake sleep\"/>")));
        // A malformed SecureOn element refuses every password.
        let broken = xml.replace("salt=\"", "salt=\"zz");
        let sealed = read(&broken)
            .unwrap()
            .meta
            .secureon
            .expect("still required");
        assert!(!sealed.opens(&"01:02:03:04".parse().unwrap()));
        // An idle policy that is not whole is none: never put to sleep.
        for broken in [
            xml.replace("action=\"shutdown\"", "action=\"destroy\""),
            xml.replace("after=\"1800\"", "after=\"0\""),
            xml.replace(" net-bps=", " net="),
        ] {
            assert_eq!(read(&broken).unwrap().meta.idle, None, "{broken}");
        }
    }

    /// A domain's XML with `devices` and our element holding `inside`, in
    /// our namespace as libvirt writes it.
    fn with_wake(devices: &str, inside: &str) -> String {
        format!(
            "<domain><metadata><wol:wake xmlns:wol=\"{METADATA_NAMESPACE}\" opt-in=\"no\">\
             {inside}</wol:wake></metadata><devices>{devices}</devices></domain>"
        )
    }

    #[test]
    fn extra_macs_follow_the_interfaces_once_each() {
        let passed_through = "<hostdev mode='subsystem' type='pci' managed='yes'><source>\
            <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>";
        let nic = "<interface type='user'><mac address='52:54:00:00:00:01'/></interface>";
        let xml = with_wake(
            &format!("{passed_through}{nic}"),
            "<mac address='52:54:00:12:34:56'/><mac address='52:54:00:00:00:01'/>\
             <mac address='52:54:00:12:34:56'/>",
        );
        let read = read(&xml).expect("readable");
        assert_eq!(
            read.macs,
            vec![mac("52:54:00:00:00:01"), mac("52:54:00:12:34:56")]
        );
        // Extra: only what no interface has; the stored list is kept as
        // written (once each), so `mac remove` finds what `mac add` wrote.
        assert_eq!(read.extra, vec![mac("52:54:00:12:34:56")]);
        assert_eq!(
            read.meta.macs,
            vec![mac("52:54:00:12:34:56"), mac("52:54:00:00:00:01")]
        );
        // A domain whose only NIC is passed through has its extra MAC alone.
        let alone = with_wake(passed_through, "<mac address='52:54:00:12:34:56'/>");
        assert_eq!(macs(&alone), Ok(vec![mac("52:54:00:12:34:56")]));
    }

    #[test]
    fn an_extra_mac_no_packet_can_name_is_skipped_not_an_error() {
        let xml = with_wake(
            "",
            "<mac address='52:54:00:zz'/><mac/><mac address='00:00:00:00:00:00'/>\
             <mac address='ff:ff:ff:ff:ff:ff'/><mac address='01:00:5e:00:00:01'/>\
             <mac address='52:54:00:AB:CD:EF'/>",
        );
        let slipped = read(&xml).expect("a slip in our element spoils nothing");
        assert_eq!(slipped.macs, vec![mac("52:54:00:ab:cd:ef")]);
        assert_eq!(slipped.meta.macs, vec![mac("52:54:00:ab:cd:ef")]);
        // Past the most `mac add` writes, the rest are ignored.
        let many: String = (0..=MAX_EXTRA_MACS)
            .map(|i| format!("<mac address='52:54:00:00:01:{i:02x}'/>"))
            .collect();
        let many = read(&with_wake("", &many)).expect("readable");
        assert_eq!(many.macs.len(), MAX_EXTRA_MACS);
        assert_eq!(many.macs[0], mac("52:54:00:00:01:00"));
        // Only our element counts: another's <mac> is not an extra MAC.
        let theirs = "<domain><metadata><x:wake xmlns:x=\"https://example.org/other\">\
            <mac address='52:54:00:00:00:07'/></x:wake></metadata></domain>";
        assert_eq!(macs(theirs), Ok(vec![]));
    }

    #[test]
    fn extra_macs_are_read_back_from_what_render_writes() {
        let meta = WakeMeta {
            macs: vec![mac("52:54:00:12:34:56")],
            ..WakeMeta::default()
        };
        let element = meta.render().expect("a MAC is kept");
        assert_eq!(
            element,
            "<wake opt-in=\"no\"><mac address=\"52:54:00:12:34:56\"/></wake>"
        );
        let inside = element
            .strip_prefix("<wake opt-in=\"no\">")
            .and_then(|rest| rest.strip_suffix("</wake>"))
            .expect("children");
        let read = read(&with_wake("", inside)).expect("readable");
        assert_eq!(read.meta, meta);
        assert_eq!(read.macs, meta.macs);
        // The last one removed, nothing is left: the element goes.
        assert_eq!(WakeMeta::default().render(), None);
    }

    #[test]
    fn disk_targets_are_read_from_the_devices_only() {
        let xml = "<domain><devices>\
            <disk type='file'><source file='/a.qcow2'/><target dev='vda' bus='virtio'/></disk>\
            <disk type='file' device='cdrom'><target dev='hdc'/></disk>\
            <disk type='file'/></devices>\
            <metadata><disk><target dev='not-me'/></disk></metadata></domain>";
        let parsed = parse(xml).expect("well-formed");
        assert_eq!(
            disk_targets(&parsed),
            vec!["vda".to_owned(), "hdc".to_owned()]
        );
        assert!(parse("<domain").is_err());
    }

    #[test]
    fn an_idle_policy_alone_keeps_the_element_without_opting_in() {
        let meta = WakeMeta {
            idle: Some(IdlePolicy::new(Duration::from_secs(60), Sleep::Suspend)),
            ..WakeMeta::default()
        };
        let element = meta.render().expect("the policy is kept");
        assert!(element.starts_with("<wake opt-in=\"no\"><idle after=\"60\" action=\"suspend\""));
    }

    #[test]
    fn rendering_keeps_the_opt_in_and_drops_an_empty_element() {
        let none = WakeMeta::default();
        assert_eq!(none.render(), None);
        let opted = WakeMeta {
            opt_in: true,
            ..WakeMeta::default()
        };
        assert_eq!(opted.render().as_deref(), Some("<wake/>"));
        let token = WakeMeta {
            tokens: vec![Hash::of(b"t")],
            ..WakeMeta::default()
        };
        assert!(
            token
                .render()
                .unwrap()
                .starts_with("<wake opt-in=\"no\"><token sha256=\"")
        );
    }

    #[test]
    fn nesting_is_measured_past_comments_cdata_and_quotes() {
        let nested = |n: usize| format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
        assert!(!nesting_exceeds(nested(128).as_bytes(), 128));
        assert!(nesting_exceeds(nested(129).as_bytes(), 128));
        let tricky = "<domain><!-- </a></a> --><![CDATA[</b></b>]]><?pi </c>?><x a='>' b=\"/>\"/><y/></domain>";
        assert!(!nesting_exceeds(tricky.as_bytes(), 1));
        assert!(nesting_exceeds(b"<a><b a='x'><c>", 2));
        for unterminated in ["<", "<<<", "<a", "<!--", "<![CDATA[", "<?", "<a b='", "</"] {
            assert!(
                !nesting_exceeds(unterminated.as_bytes(), 2),
                "{unterminated}"
            );
        }
        assert_eq!(read(&nested(100_000)), Err(DomainXmlError::TooDeep));
        assert_eq!(
            read(&" ".repeat(MAX_XML_BYTES + 1)),
            Err(DomainXmlError::TooLarge(MAX_XML_BYTES + 1))
        );
    }

    #[test]
    fn malformed_document_is_an_error_not_a_panic() {
        assert!(matches!(
            macs("<domain><devices>"),
            Err(DomainXmlError::NotXml(_))
        ));
        assert!(matches!(
            macs("not xml at all"),
            Err(DomainXmlError::NotXml(_))
        ));
        assert_eq!(
            macs("<network/>"),
            Err(DomainXmlError::NotADomain("network".into()))
        );
    }
}
