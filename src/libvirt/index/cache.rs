//! One host's MAC index as it lives beside a connection: in memory, loaded
//! from its file before the first refresh, refreshed by the rules of
//! [`refresh_for`], corrected by what each domain's current XML shows, and
//! written back when it changed. Also what the XML read so far showed of
//! the domains' wake tokens (see [`Cache::vouches`]).
//!
//! The caller passes the connection in: the cache never connects, and
//! whatever it asks libvirt it asks on the caller's thread.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tracing::debug;

use super::file::IndexFile;
use super::{Freshness, MacIndex, Refresh, Rescan, refresh_for};
use crate::libvirt::hypervisor::{DomainRecord, Heartbeat, Hypervisor, Inspection, Listed};
use crate::lock::lock;
use crate::model::Uuid;
use crate::model::{HvError, HvErrorKind, Mac};
use crate::report;
use crate::secret::Hash;

/// The index of one host and when it was refreshed.
struct IndexState {
    /// `None` until loaded from the file or built by a scan: until then the
    /// file answers lookups one MAC at a time.
    index: Option<MacIndex>,
    fresh: Freshness,
    /// When the last listing that succeeded was asked for: a domain defined
    /// before then is in the index (see [`Cache::check_unknown`]).
    listed_from: Option<Instant>,
    file: Option<IndexFile>,
    /// Domains whose XML could not be read, reported once each.
    reported_unreadable: HashSet<Uuid>,
}

/// What the cache can tell of a MAC without asking libvirt and without
/// waiting (see [`Cache::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// Ask libvirt: the MAC is known, or the index is not loaded.
    Ask,
    /// The index is in use by a worker for a moment: look again soon.
    Busy,
    /// The index lacks the MAC and may be refreshed now.
    Refresh,
    /// The index lacks the MAC and no refresh is allowed yet.
    Lacks,
    /// The index lacks the MAC and a refresh is under way.
    AfterRefresh,
}

/// What [`Cache::check_unknown`] did.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Nothing: a listing recent enough covers the call.
    Recent,
    /// It listed the domains (the index may have changed), with this
    /// result.
    Listed(Result<(), HvError>),
}

/// One host's MAC index and token memory.
pub(crate) struct Cache {
    /// The host's URI as shown, for messages.
    uri: Arc<str>,
    rescan: Rescan,
    /// Beaten at each answer a refresh gets, so a long scan is not silence.
    beat: Heartbeat,
    state: Mutex<IndexState>,
    /// Held while the index is refreshed: concurrent lookups of unknown
    /// MACs wait for one refresh instead of each starting their own.
    refreshing: Mutex<()>,
    /// The token hashes each domain held when its XML was last read here:
    /// the tokens this host has shown (see [`Cache::vouches`]).
    tokens: Mutex<HashMap<Uuid, Vec<Hash>>>,
    listings: AtomicU64,
    full_scans: AtomicU64,
}

impl Cache {
    /// An empty cache, not loaded, without a file.
    pub(crate) fn new(uri: Arc<str>, rescan: Rescan, beat: Heartbeat) -> Self {
        Cache {
            uri,
            rescan,
            beat,
            state: Mutex::new(IndexState {
                index: None,
                fresh: Freshness::default(),
                listed_from: None,
                file: None,
                reported_unreadable: HashSet::new(),
            }),
            refreshing: Mutex::new(()),
            tokens: Mutex::new(HashMap::new()),
            listings: AtomicU64::new(0),
            full_scans: AtomicU64::new(0),
        }
    }

    /// Keeps the index in `file` across processes.
    pub(crate) fn set_file(&self, file: IndexFile) {
        lock(&self.state).file = Some(file);
    }

    /// Domain listings made so far.
    pub(crate) fn listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    /// Full scans made so far.
    pub(crate) fn full_scans(&self) -> u64 {
        self.full_scans.load(Ordering::Relaxed)
    }

    /// True if some domain held `token` when its XML was last read here.
    /// It decides only whether a request may wait for a host that does not
    /// answer, never whether a token opens a domain: that is checked
    /// against the domain's current XML.
    pub(crate) fn vouches(&self, token: &Hash) -> bool {
        // Every stored hash is compared, in constant time each.
        lock(&self.tokens)
            .values()
            .flatten()
            .fold(false, |found, held| found | held.matches(token))
    }

    /// Remembers the tokens a domain's XML held (read just now).
    pub(crate) fn saw(&self, uuid: Uuid, tokens: &[Hash]) {
        let mut seen = lock(&self.tokens);
        if tokens.is_empty() {
            seen.remove(&uuid);
        } else {
            seen.insert(uuid, tokens.to_vec());
        }
    }

    /// What the index says of `mac` now, without waiting: a busy index
    /// counts as "ask".
    pub(crate) fn peek(&self, mac: Mac, now: Instant, wall: SystemTime) -> Peek {
        // Never wait on the loop: the state is held only for moments (a
        // refresh taking in what it read, the file), so ask again soon.
        let Ok(state) = self.state.try_lock() else {
            return Peek::Busy;
        };
        let Some(index) = state.index.as_ref() else {
            return Peek::Ask;
        };
        if !index.owners(mac).is_empty() {
            return Peek::Ask;
        }
        if refresh_for(&state.fresh, false, &self.rescan, now, wall) == Refresh::Nothing {
            return Peek::Lacks;
        }
        match self.refreshing.try_lock() {
            Ok(_) => Peek::Refresh,
            Err(_) => Peek::AfterRefresh,
        }
    }

    /// What the index (or, before it is loaded, the index file) says owns
    /// `mac`.
    pub(crate) fn hint(&self, mac: Mac) -> Vec<Uuid> {
        let mut state = lock(&self.state);
        if let Some(index) = &state.index {
            return index.owners(mac);
        }
        let Some(file) = &state.file else {
            return Vec::new();
        };
        match file.lookup(mac) {
            Ok(owners) => owners.unwrap_or_default(),
            Err(reason) => {
                report::index_file_ignored(file.path(), &reason);
                // Not asked again; the next refresh rewrites it.
                state.index = Some(MacIndex::default());
                Vec::new()
            }
        }
    }

    /// Reads each hinted domain's current XML (with its state and image:
    /// see [`Hypervisor::inspect`]). Returns those that have `mac`, and
    /// whether all of them did (else the hint was stale). What the XML says
    /// goes into the index.
    pub(crate) fn confirm(
        &self,
        hv: &dyn Hypervisor,
        mac: Mac,
        hint: &[Uuid],
    ) -> Result<(Vec<Inspection>, bool), HvError> {
        let mut confirmed = Vec::with_capacity(hint.len());
        let mut all = true;
        for uuid in hint {
            match hv.inspect(*uuid) {
                Ok(inspection) => {
                    self.beat.beat();
                    self.saw(*uuid, &inspection.record.meta.tokens);
                    let macs = &inspection.record.macs;
                    let has = macs.as_ref().is_ok_and(|m| m.contains(&mac));
                    if let Ok(macs) = macs {
                        self.correct(|index| index.update(*uuid, macs));
                    }
                    if has {
                        confirmed.push(inspection);
                    } else {
                        debug!(mac = %mac, "index entry for {mac} is stale (domain {uuid} changed)");
                        all = false;
                    }
                }
                Err(e) if e.kind == HvErrorKind::NoDomain => {
                    self.beat.beat();
                    self.correct(|index| index.forget(&HashSet::from([*uuid])));
                    all = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((confirmed, all))
    }

    /// Applies what a domain's current XML showed to the loaded index, and
    /// writes the index file if that changed it (the next process must not
    /// trip over the same stale entry).
    fn correct(&self, change: impl FnOnce(&mut MacIndex) -> bool) {
        let mut state = lock(&self.state);
        if state.index.as_mut().is_some_and(change) {
            store_file(&mut state);
        }
    }

    /// Refreshes the index if the rules allow it now (one refresh at a
    /// time: others wait for it); true if it tried, so the index may have
    /// changed.
    pub(crate) fn refresh(&self, hv: &dyn Hypervisor, stale: bool) -> Result<bool, HvError> {
        let _one_refresh_at_a_time = lock(&self.refreshing);
        let decision = {
            let mut state = lock(&self.state);
            load_file(&mut state);
            refresh_for(
                &state.fresh,
                stale,
                &self.rescan,
                Instant::now(),
                SystemTime::now(),
            )
        };
        match decision {
            Refresh::Nothing => Ok(false),
            Refresh::Listing | Refresh::Full => {
                self.reread(hv, decision == Refresh::Full).map(|()| true)
            }
        }
    }

    /// Makes sure the index knows every domain defined before `since`: one
    /// listing, reading only the XML of domains it has not read. The index
    /// counts as complete, as it does for a MAC it lacks, for
    /// `--rescan-interval` after a listing was asked for, and for whoever
    /// came before a listing under way (requests acting at once share one):
    /// besides saving calls, that keeps a wake from waiting behind another
    /// domain's slow start, which holds up every listing. A failed listing
    /// is the caller's error: nothing is brought up on a guess.
    pub(crate) fn check_unknown(&self, hv: &dyn Hypervisor, since: Instant) -> Checked {
        let _one_refresh_at_a_time = lock(&self.refreshing);
        let recent = lock(&self.state).listed_from.is_some_and(|from| {
            from >= since || since.saturating_duration_since(from) < self.rescan.interval
        });
        if recent {
            return Checked::Recent;
        }
        Checked::Listed(self.reread(hv, false))
    }

    /// Lists the domains and reads the XML of those the index has not read
    /// (of every one with `full`), forgetting those that are gone. The
    /// caller holds `refreshing`.
    fn reread(&self, hv: &dyn Hypervisor, full: bool) -> Result<(), HvError> {
        let started = Instant::now();
        let listed = match self.list_loading(hv) {
            Ok(listed) => listed,
            Err(e) => {
                // A failed listing counts as one: unknown MACs must not
                // turn a failing daemon into a stream of calls.
                lock(&self.state).fresh.listed_at = Some(Instant::now());
                return Err(e);
            }
        };
        self.beat.beat();
        let listed_count = listed.len();
        let (to_read, present) = self.to_read(listed, full);
        let beat = self.beat.clone();
        let records = hv.records(&to_read, &move || beat.beat());
        if !to_read.is_empty() && !hv.is_alive() {
            return Err(HvError::other(
                "the connection was lost while reading domains",
            ));
        }
        let read = to_read.len();
        let count = self.take_in(
            records,
            full.then_some(listed_count),
            &present,
            read,
            started,
        );
        debug!(
            "{} {} on {}: read {count} domain(s) in {:.1} ms",
            if full { "scanned" } else { "listed" },
            listed_count,
            self.uri,
            started.elapsed().as_secs_f64() * 1e3,
        );
        Ok(())
    }

    /// Lists the domains; the index file, if not loaded yet, is read while
    /// libvirtd answers (each ~6 ms and ~20 ms at 10,000 domains).
    fn list_loading(&self, hv: &dyn Hypervisor) -> Result<Vec<Listed>, HvError> {
        let unloaded = lock(&self.state).index.is_none();
        std::thread::scope(|scope| {
            let load = || load_file(&mut lock(&self.state));
            let loading = unloaded.then(|| {
                std::thread::Builder::new()
                    .name("wol-load".into())
                    .spawn_scoped(scope, load)
            });
            if let Some(Err(_)) = loading {
                load();
            }
            hv.list()
        })
    }

    /// What a refresh reads: a full scan the whole listing; a listing only
    /// the domains the index has not read, with every UUID listed (the rest
    /// are forgotten).
    fn to_read(&self, listed: Vec<Listed>, full: bool) -> (Vec<Listed>, HashSet<Uuid>) {
        if full {
            return (listed, HashSet::new());
        }
        let present = listed.iter().map(|l| l.uuid).collect();
        let state = lock(&self.state);
        let index = state.index.as_ref();
        let new = listed
            .into_iter()
            .filter(|l| !index.is_some_and(|i| i.knows(l.uuid)))
            .collect();
        (new, present)
    }

    /// Takes the records a refresh read into the index: all of them
    /// (`scanned`: a full scan of that many domains), or those a listing
    /// found new, forgetting the domains not `present`. Writes the file if
    /// that changed the index; returns how many domains were read.
    fn take_in(
        &self,
        records: Vec<DomainRecord>,
        scanned: Option<usize>,
        present: &HashSet<Uuid>,
        read: usize,
        started: Instant,
    ) -> usize {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut readable = Vec::with_capacity(records.len());
        for record in records {
            let uuid = record.uuid;
            self.saw(uuid, &record.meta.tokens);
            match record.macs {
                Ok(macs) => {
                    state.reported_unreadable.remove(&uuid);
                    readable.push((uuid, macs));
                }
                // Left out of the index, so the next listing tries again;
                // said once, not at every listing.
                Err(reason) => {
                    if state.reported_unreadable.insert(uuid) {
                        report::domain_skipped(&record.name, &reason);
                    }
                }
            }
        }
        // A full scan is always written: the file remembers when it ran.
        let (changed, count) = if let Some(listed) = scanned {
            state.index = Some(MacIndex::from_domains(readable));
            state.fresh.scanned_at = Some(now);
            state.fresh.scanned_wall = Some(SystemTime::now());
            self.full_scans.fetch_add(1, Ordering::Relaxed);
            (true, listed)
        } else {
            let index = state.index.get_or_insert_with(MacIndex::default);
            let gone: HashSet<Uuid> = index.domains().filter(|u| !present.contains(u)).collect();
            let forgot = index.forget(&gone);
            let added = !readable.is_empty();
            index.add(readable);
            self.listings.fetch_add(1, Ordering::Relaxed);
            (forgot || added, read)
        };
        state.fresh.listed_at = Some(now);
        state.listed_from = Some(started);
        if changed {
            store_file(&mut state);
        }
        count
    }
}

/// Loads the index file into memory, once, before the first refresh.
fn load_file(state: &mut IndexState) {
    if state.index.is_some() {
        return;
    }
    let Some(file) = &state.file else {
        state.index = Some(MacIndex::default());
        return;
    };
    match file.load() {
        Ok(Some((index, scanned))) => {
            state.index = Some(index);
            state.fresh.scanned_wall = scanned;
        }
        Ok(None) => state.index = Some(MacIndex::default()),
        Err(reason) => {
            report::index_file_ignored(file.path(), &reason);
            state.index = Some(MacIndex::default());
        }
    }
}

/// Writes the index to its file; a file that cannot be written is
/// reported once and no longer used.
fn store_file(state: &mut IndexState) {
    let (Some(file), Some(index)) = (&state.file, &state.index) else {
        return;
    };
    if let Err(e) = file.store(index, state.fresh.scanned_wall) {
        report::index_file_unwritable(file.path(), &e);
        state.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::policy::WakeMeta;
    use crate::model::{Action, DomainState};
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Domains with their MACs, counting the calls a cache makes.
    #[derive(Default)]
    struct Domains {
        all: Mutex<Vec<DomainRecord>>,
        lists: AtomicUsize,
        reads: AtomicUsize,
    }

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn record(n: u128, macs: &[Mac], tokens: Vec<Hash>) -> DomainRecord {
        DomainRecord {
            name: format!("vm{n}"),
            uuid: Uuid(n),
            macs: Ok(macs.to_vec()),
            extra: Vec::new(),
            meta: WakeMeta {
                tokens,
                ..WakeMeta::default()
            },
            agent: None,
        }
    }

    impl Domains {
        fn with(records: Vec<DomainRecord>) -> Self {
            Domains {
                all: Mutex::new(records),
                ..Domains::default()
            }
        }
    }

    impl Hypervisor for Domains {
        fn list(&self) -> Result<Vec<Listed>, HvError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok(lock(&self.all)
                .iter()
                .map(|r| Listed {
                    uuid: r.uuid,
                    name: r.name.clone(),
                })
                .collect())
        }
        fn records(&self, domains: &[Listed], progress: &(dyn Fn() + Sync)) -> Vec<DomainRecord> {
            domains
                .iter()
                .filter_map(|l| {
                    progress();
                    self.domain(l.uuid).ok()
                })
                .collect()
        }
        fn domain(&self, uuid: Uuid) -> Result<DomainRecord, HvError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            lock(&self.all)
                .iter()
                .find(|r| r.uuid == uuid)
                .cloned()
                .ok_or(HvError {
                    kind: HvErrorKind::NoDomain,
                    ..HvError::other("no domain")
                })
        }
        fn state(&self, _: Uuid) -> Result<DomainState, HvError> {
            Ok(DomainState::ShutOff)
        }
        fn has_managed_save(&self, _: Uuid) -> Result<bool, HvError> {
            Ok(false)
        }
        fn perform(&self, _: Uuid, _: Action) -> Result<(), HvError> {
            Ok(())
        }
        fn ping(&self) -> Result<(), HvError> {
            Ok(())
        }
        fn is_alive(&self) -> bool {
            true
        }
    }

    fn cache() -> Cache {
        with_interval(Duration::from_secs(3600))
    }

    fn with_interval(interval: Duration) -> Cache {
        let rescan = Rescan {
            interval,
            full_interval: Duration::from_secs(7200),
        };
        Cache::new(Arc::from("fake:///"), rescan, Heartbeat::default())
    }

    #[test]
    fn the_first_refresh_scans_in_full_and_the_rules_hold_off_the_next() {
        let hv = Domains::with(vec![record(1, &[mac(1)], Vec::new())]);
        let cache = cache();
        let (now, wall) = (Instant::now(), SystemTime::now());
        assert_eq!(cache.peek(mac(1), now, wall), Peek::Ask, "not loaded");
        assert!(cache.hint(mac(1)).is_empty());
        assert_eq!(cache.refresh(&hv, false), Ok(true));
        assert_eq!((cache.full_scans(), cache.listings()), (1, 0));
        assert_eq!(cache.hint(mac(1)), [Uuid(1)]);
        assert_eq!(cache.peek(mac(1), now, wall), Peek::Ask, "known");
        assert_eq!(cache.peek(mac(2), now, wall), Peek::Lacks, "too soon");
        assert_eq!(cache.refresh(&hv, false), Ok(false));
        assert_eq!(hv.lists.load(Ordering::SeqCst), 1);
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(cache.peek(mac(2), later, wall), Peek::Refresh);
    }

    #[test]
    fn confirming_corrects_a_stale_hint_and_forgets_an_undefined_domain() {
        let hv = Domains::with(vec![
            record(1, &[mac(1)], Vec::new()),
            record(2, &[mac(2)], Vec::new()),
        ]);
        let cache = cache();
        cache.refresh(&hv, false).expect("scanned");
        // vm1 was given another NIC; vm2 was undefined.
        *lock(&hv.all) = vec![record(1, &[mac(9)], Vec::new())];
        let (found, all) = cache.confirm(&hv, mac(1), &[Uuid(1)]).expect("read");
        assert!(found.is_empty() && !all, "stale");
        assert_eq!(cache.hint(mac(9)), [Uuid(1)], "corrected");
        let (found, all) = cache.confirm(&hv, mac(2), &[Uuid(2)]).expect("read");
        assert!(found.is_empty() && !all);
        assert!(cache.hint(mac(2)).is_empty(), "forgotten");
        let (found, all) = cache.confirm(&hv, mac(9), &[Uuid(1)]).expect("read");
        assert_eq!((found.len(), all), (1, true));
    }

    #[test]
    fn a_listing_reads_only_new_domains_and_covers_the_calls_begun_before_it() {
        let hv = Domains::with(vec![record(1, &[mac(1)], Vec::new())]);
        // No rescan interval: only "begun before the listing" counts.
        let cache = with_interval(Duration::ZERO);
        cache.refresh(&hv, false).expect("scanned");
        let reads = hv.reads.load(Ordering::SeqCst);
        lock(&hv.all).push(record(2, &[mac(2)], Vec::new()));
        let since = Instant::now();
        assert!(matches!(
            cache.check_unknown(&hv, since),
            Checked::Listed(Ok(()))
        ));
        assert_eq!(hv.reads.load(Ordering::SeqCst), reads + 1, "only vm2 read");
        assert_eq!(cache.hint(mac(2)), [Uuid(2)]);
        assert_eq!(cache.listings(), 1);
        // A call that started before that listing is covered by it.
        assert!(matches!(cache.check_unknown(&hv, since), Checked::Recent));
        assert_eq!(hv.lists.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_tokens_shown_are_remembered_per_domain() {
        let token = Hash::of(b"a token");
        let hv = Domains::with(vec![record(1, &[mac(1)], vec![token])]);
        let cache = cache();
        assert!(!cache.vouches(&token));
        cache.refresh(&hv, false).expect("scanned");
        assert!(cache.vouches(&token));
        assert!(!cache.vouches(&Hash::of(b"another")));
        cache.saw(Uuid(1), &[]);
        assert!(!cache.vouches(&token), "removed from the domain since");
    }

    #[test]
    fn the_index_survives_in_its_file_for_the_next_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = crate::store::CacheDirSource::Flag(dir.path().to_path_buf());
        let open = || IndexFile::open(&source, "fake:///").expect("index file");
        let hv = Domains::with(vec![record(1, &[mac(1)], Vec::new())]);
        let first = cache();
        first.set_file(open());
        first.refresh(&hv, false).expect("scanned");

        let next = cache();
        next.set_file(open());
        assert_eq!(next.hint(mac(1)), [Uuid(1)], "from the file, unloaded");
        assert_eq!(hv.lists.load(Ordering::SeqCst), 1);
        // The file says a full scan ran just now: a listing, not a scan.
        assert_eq!(next.refresh(&hv, false), Ok(true));
        assert_eq!((next.full_scans(), next.listings()), (0, 1));
    }
}
