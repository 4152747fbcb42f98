//! The MAC index: which domains own which MAC address.

use std::time::Instant;

use crate::hypervisor::DomainRecord;
use crate::packet::Mac;

/// A domain that owns a MAC, as far as the last scan knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRef {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
    /// Its `<metadata>` opted in to being woken, when it was read.
    pub wake_opt_in: bool,
}

/// A domain the scan had to leave out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The domain's name.
    pub name: String,
    /// Why its MACs are unknown.
    pub reason: String,
}

/// MAC address to owning domains, built from one scan of every domain's XML.
///
/// Each domain is stored once; the MACs are a sorted list of (MAC, domain
/// number) pairs, looked up by binary search. At 10,000 domains with two
/// NICs that is ~0.3 MB of pairs instead of 20,000 copies of names and UUIDs.
#[derive(Debug, Clone)]
pub struct MacIndex {
    domains: Vec<DomainRef>,
    macs: Vec<(Mac, u32)>,
    built_at: Instant,
}

impl MacIndex {
    /// Builds the index from a listing. A domain whose MACs are unknown (XML
    /// not fetched, or not readable) is left out and reported in the second
    /// value; it never spoils the others.
    pub fn build(records: Vec<DomainRecord>) -> (MacIndex, Vec<Skipped>) {
        let mut domains = Vec::with_capacity(records.len());
        let mut macs = Vec::with_capacity(records.len() * 2);
        let mut skipped = Vec::new();
        for record in records {
            match record.macs {
                Ok(nics) => {
                    let number = domains.len() as u32;
                    macs.extend(nics.into_iter().map(|mac| (mac, number)));
                    domains.push(DomainRef {
                        name: record.name,
                        uuid: record.uuid,
                        wake_opt_in: record.wake_opt_in,
                    });
                }
                Err(reason) => skipped.push(Skipped {
                    name: record.name,
                    reason,
                }),
            }
        }
        // Sorted for binary search; a domain with two NICs sharing a MAC is
        // still one owner.
        macs.sort_unstable();
        macs.dedup();
        let index = MacIndex {
            domains,
            macs,
            built_at: Instant::now(),
        };
        (index, skipped)
    }

    /// The domains that had `mac` when the index was built.
    pub fn owners(&self, mac: Mac) -> impl Iterator<Item = &DomainRef> {
        let first = self.macs.partition_point(|(m, _)| *m < mac);
        self.macs[first..]
            .iter()
            .take_while(move |(m, _)| *m == mac)
            .map(|(_, number)| &self.domains[*number as usize])
    }

    /// Every (MAC, owner) pair, sorted by MAC, for writing the index file.
    pub fn entries(&self) -> impl Iterator<Item = (Mac, &DomainRef)> {
        self.macs
            .iter()
            .map(|(mac, number)| (*mac, &self.domains[*number as usize]))
    }

    /// When the scan behind this index finished.
    pub fn built_at(&self) -> Instant {
        self.built_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::HvError;

    fn record(name: &str, xml: Result<&str, &str>) -> DomainRecord {
        DomainRecord::from_xml(
            name.into(),
            format!("uuid-{name}"),
            xml.map(str::to_owned).map_err(|e| HvError(e.into())),
        )
    }

    fn nic(mac: &str) -> String {
        format!(
            "<domain><devices><interface type='user'><mac address='{mac}'/></interface></devices></domain>"
        )
    }

    #[test]
    fn bad_domains_are_skipped_and_named_while_others_are_indexed() {
        let good = nic("52:54:00:00:00:01");
        let bad_mac = nic("nonsense");
        let (index, skipped) = MacIndex::build(vec![
            record("broken", Err("domain vanished")),
            record("badmac", Ok(&bad_mac)),
            record("good", Ok(&good)),
            record("notxml", Ok("<<<")),
        ]);
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let owners: Vec<_> = index.owners(mac).map(|d| d.name.as_str()).collect();
        assert_eq!(owners, ["good"]);
        let names: Vec<_> = skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["broken", "badmac", "notxml"]);
        assert!(skipped[0].reason.contains("domain vanished"));
        assert!(skipped[1].reason.contains("nonsense"));
    }

    #[test]
    fn a_mac_on_two_domains_has_two_owners() {
        let xml = nic("52:54:00:00:00:02");
        let (index, _) = MacIndex::build(vec![record("a", Ok(&xml)), record("b", Ok(&xml))]);
        let mac: Mac = "52:54:00:00:00:02".parse().unwrap();
        let owners: Vec<_> = index.owners(mac).map(|d| d.name.as_str()).collect();
        assert_eq!(owners, ["a", "b"]);
        assert_eq!(
            index.owners("52:54:00:00:00:03".parse().unwrap()).count(),
            0
        );
        assert_eq!(
            index.owners("52:54:00:00:00:01".parse().unwrap()).count(),
            0
        );
    }
}
