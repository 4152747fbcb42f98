//! Failed authentications per client address: after [`MAX_FAILURES`]
//! within [`WINDOW`], a client is answered 429 until its oldest failure
//! ages out. Pure: the clock is passed in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures allowed per address within [`WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// How long a failure counts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; a flood from many addresses forgets the
/// stalest first, so memory stays flat.
const MAX_ADDRESSES: usize = 4096;

/// Recent failures by address.
#[derive(Debug, Default)]
pub struct Failures {
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Failures {
    /// How long `address` must wait before it is heard again, if it has
    /// failed too often.
    pub fn blocked(&mut self, address: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.by_address.get_mut(&address)?;
        forget_old(failures, now);
        if failures.len() < MAX_FAILURES {
            return None;
        }
        let oldest = *failures.front()?;
        Some(
            (oldest + WINDOW)
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)),
        )
    }

    /// `address` failed to authenticate at `now`.
    pub fn record(&mut self, address: IpAddr, now: Instant) {
        if self.by_address.len() >= MAX_ADDRESSES && !self.by_address.contains_key(&address) {
            self.by_address.retain(|_, failures| {
                forget_old(failures, now);
                !failures.is_empty()
            });
            if self.by_address.len() >= MAX_ADDRESSES {
                // Forget the stalest eighth at once, so a flood pays this
                // once per MAX_ADDRESSES / 8 new addresses.
                let mut last: Vec<(Option<Instant>, IpAddr)> = self
                    .by_address
                    .iter()
                    .map(|(address, failures)| (failures.back().copied(), *address))
                    .collect();
                let cut = MAX_ADDRESSES / 8;
                last.select_nth_unstable(cut);
                for (_, address) in &last[..cut] {
                    self.by_address.remove(address);
                }
            }
        }
        let failures = self.by_address.entry(address).or_default();
        forget_old(failures, now);
        // Only the last MAX_FAILURES matter.
        if failures.len() >= MAX_FAILURES {
            failures.pop_front();
        }
        failures.push_back(now);
    }

    /// Addresses remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_address.len()
    }
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

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn five_failures_in_a_minute_block_until_the_first_ages_out() {
        let (mut failures, t0) = (Failures::default(), Instant::now());
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for s in 0..4 {
            failures.record(client, at(t0, s * 10));
            assert_eq!(failures.blocked(client, at(t0, s * 10)), None);
        }
        failures.record(client, at(t0, 40));
        // Blocked until the failure at 0 s is a minute old.
        assert_eq!(
            failures.blocked(client, at(t0, 45)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(failures.blocked(other, at(t0, 45)), None);
        assert_eq!(failures.blocked(client, at(t0, 60)), None);
    }

    #[test]
    fn a_flood_from_many_addresses_keeps_memory_flat() {
        let (mut failures, t0) = (Failures::default(), Instant::now());
        for i in 0..20_000u32 {
            let address = IpAddr::from(i.to_be_bytes());
            failures.record(address, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(failures.len() <= MAX_ADDRESSES, "{}", failures.len());
    }
}
