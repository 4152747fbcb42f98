//! Failures per key (a client that failed to authenticate, a MAC or a
//! sender guessing SecureOn passwords): after [`MAX_FAILURES`] within
//! [`WINDOW`], the key is blocked until its oldest failure ages out. Pure:
//! the clock is passed in.
//!
//! The table is bounded. When it is full, keys without a block are
//! forgotten first (the stalest); a blocked key is never forgotten, so
//! coming back from many addresses does not lift a block. If every key in
//! it is blocked, a new key is refused as well until a block ends: a flood
//! from many clients then costs everybody a minute, never memory or a
//! lifted limit.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Failures allowed per key within [`WINDOW`].
pub(crate) const MAX_FAILURES: usize = 5;
/// How long a failure counts.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most.
pub(crate) const MAX_KEYS: usize = 4096;

/// Recent failures by key.
#[derive(Debug)]
pub(crate) struct Failures<K> {
    by_key: HashMap<K, VecDeque<Instant>>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> Default for Failures<K> {
    fn default() -> Self {
        Failures::with_capacity(MAX_KEYS)
    }
}

impl<K: Hash + Eq + Copy> Failures<K> {
    /// A table of at most `capacity` keys.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Failures {
            by_key: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// How long `key` must wait before it is heard again: it failed too
    /// often, or it is new and the table is full of blocked keys.
    pub(crate) fn blocked(&mut self, key: K, now: Instant) -> Option<Duration> {
        if let Some(failures) = self.by_key.get_mut(&key) {
            forget_old(failures, now);
            return block_left(failures, now);
        }
        if self.by_key.len() < self.capacity {
            return None;
        }
        self.forget_aged(now);
        if self.by_key.len() < self.capacity {
            return None;
        }
        // Full: a new key is heard only if some entry may go.
        let mut soonest = None;
        for failures in self.by_key.values() {
            let left = block_left(failures, now)?;
            soonest = Some(soonest.map_or(left, |s: Duration| s.min(left)));
        }
        soonest
    }

    /// `key` failed at `now`.
    pub(crate) fn record(&mut self, key: K, now: Instant) {
        if !self.by_key.contains_key(&key) && self.by_key.len() >= self.capacity {
            self.forget_aged(now);
            if self.by_key.len() >= self.capacity && !self.forget_unblocked(now) {
                // Every key is blocked: this one is refused by `blocked`
                // until a block ends; nothing to remember.
                return;
            }
        }
        let failures = self.by_key.entry(key).or_default();
        forget_old(failures, now);
        // Only the last MAX_FAILURES matter.
        if failures.len() >= MAX_FAILURES {
            failures.pop_front();
        }
        failures.push_back(now);
    }

    /// Forgets keys whose failures all aged out.
    fn forget_aged(&mut self, now: Instant) {
        self.by_key.retain(|_, failures| {
            forget_old(failures, now);
            !failures.is_empty()
        });
    }

    /// Forgets the stalest eighth of the keys that are not blocked (at
    /// least one), so a flood pays this once per `capacity / 8` new keys;
    /// false if every key is blocked.
    fn forget_unblocked(&mut self, now: Instant) -> bool {
        let mut unblocked: Vec<(Option<Instant>, K)> = self
            .by_key
            .iter()
            .filter(|(_, failures)| block_left(failures, now).is_none())
            .map(|(key, failures)| (failures.back().copied(), *key))
            .collect();
        if unblocked.is_empty() {
            return false;
        }
        let cut = (self.capacity / 8).clamp(1, unblocked.len());
        if cut < unblocked.len() {
            unblocked.select_nth_unstable_by_key(cut, |(last, _)| *last);
        }
        for (_, key) in &unblocked[..cut] {
            self.by_key.remove(key);
        }
        true
    }

    /// Keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// How long a key with these (current) failures stays blocked, if it is.
fn block_left(failures: &VecDeque<Instant>, now: Instant) -> Option<Duration> {
    if failures.len() < MAX_FAILURES {
        return None;
    }
    let oldest = *failures.front()?;
    let left = (oldest + WINDOW).saturating_duration_since(now);
    (!left.is_zero()).then(|| left.max(Duration::from_secs(1)))
}

fn forget_old(failures: &mut VecDeque<Instant>, now: Instant) {
    while failures
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) >= WINDOW)
    {
        failures.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::client::Client;
    use std::net::IpAddr;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    fn client(s: &str) -> Client {
        Client::of(s.parse::<IpAddr>().expect("an address"))
    }

    #[test]
    fn five_failures_in_a_minute_block_until_the_first_ages_out() {
        let (mut failures, t0) = (Failures::default(), Instant::now());
        let (me, other) = (client("192.0.2.7"), client("192.0.2.8"));
        for s in 0..4 {
            failures.record(me, at(t0, s * 10));
            assert_eq!(failures.blocked(me, at(t0, s * 10)), None);
        }
        failures.record(me, at(t0, 40));
        // Blocked until the failure at 0 s is a minute old.
        assert_eq!(
            failures.blocked(me, at(t0, 45)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(failures.blocked(other, at(t0, 45)), None);
        assert_eq!(failures.blocked(me, at(t0, 60)), None);
    }

    #[test]
    fn rotating_addresses_within_one_ipv6_64_is_one_client() {
        let (mut failures, t0) = (Failures::default(), Instant::now());
        for host in 1..=5u16 {
            failures.record(client(&format!("2001:db8:1:2::{host:x}")), t0);
        }
        assert!(
            failures
                .blocked(client("2001:db8:1:2:abcd::1"), t0)
                .is_some()
        );
        assert_eq!(failures.blocked(client("2001:db8:1:3::1"), t0), None);
    }

    #[test]
    fn a_flood_of_new_keys_keeps_memory_flat_and_never_lifts_a_block() {
        let (mut failures, t0) = (Failures::with_capacity(64), Instant::now());
        let blocked = client("192.0.2.7");
        for _ in 0..MAX_FAILURES {
            failures.record(blocked, t0);
        }
        for i in 0..20_000u32 {
            let key = client(&IpAddr::from((0x0a00_0000 + i).to_be_bytes()).to_string());
            failures.record(key, t0 + Duration::from_millis(u64::from(i % 1000)));
            assert!(failures.len() <= 64, "{}", failures.len());
        }
        assert!(
            failures.blocked(blocked, at(t0, 1)).is_some(),
            "the block holds"
        );
    }

    #[test]
    fn a_table_full_of_blocked_keys_refuses_new_ones_until_a_block_ends() {
        let (mut failures, t0) = (Failures::with_capacity(8), Instant::now());
        for i in 0..8u8 {
            let key = client(&format!("192.0.2.{i}"));
            for _ in 0..MAX_FAILURES {
                failures.record(key, at(t0, u64::from(i)));
            }
        }
        let newcomer = client("198.51.100.1");
        failures.record(newcomer, at(t0, 10));
        assert_eq!(failures.len(), 8, "nothing forgotten to make room");
        assert_eq!(
            failures.blocked(newcomer, at(t0, 10)),
            Some(Duration::from_secs(50)),
            "until the first block ends"
        );
        assert_eq!(failures.blocked(newcomer, at(t0, 60)), None);
    }
}
