//! Wrong SecureOn passwords, counted per MAC and per sender: after
//! [`MAX_FAILURES`] wrong ones within [`WINDOW`] for one MAC, or from one
//! sender, packets with a password for that MAC (or from that sender) are
//! throttled: not looked up, counted and reported, until the oldest wrong
//! one ages out. That is 5 guesses a minute, where the gateway decides
//! thousands a second: a 4-byte password (2^32) holds for some 800 years on
//! average, a 6-byte one (2^48) for far longer. Pure: the clock is passed
//! in.
//!
//! Throttling a MAC also holds back its owner's right password while
//! someone guesses (the sender of a packet cannot be told apart from its
//! claimed source): it errs toward not waking, and says so in the journal.

use std::time::{Duration, Instant};

use crate::decide::client::Client;
use crate::decide::failures::Failures;
use crate::model::{Mac, Source};

pub(crate) use crate::decide::failures::{MAX_FAILURES, WINDOW};

/// Who sent a packet, as far as it says: a UDP sender's address (an IPv6
/// /64), or a raw frame's Ethernet source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sender {
    Ip(Client),
    Frame(Mac),
    Operator,
}

impl Sender {
    fn of(source: &Source) -> Sender {
        match source {
            Source::Udp(addr) | Source::Http(addr) => Sender::Ip(Client::of(addr.ip())),
            Source::Raw(raw) => Sender::Frame(raw.mac),
            Source::Cli => Sender::Operator,
        }
    }
}

/// Wrong passwords by MAC and by sender.
#[derive(Debug, Default)]
pub(crate) struct Guesses {
    by_mac: Failures<Mac>,
    by_sender: Failures<Sender>,
}

impl Guesses {
    /// How long packets with a password for `mac` from `source` are
    /// throttled, if they are.
    pub(crate) fn throttled(
        &mut self,
        mac: Mac,
        source: &Source,
        now: Instant,
    ) -> Option<Duration> {
        let by_mac = self.by_mac.blocked(mac, now);
        let by_sender = self.by_sender.blocked(Sender::of(source), now);
        by_mac.max(by_sender)
    }

    /// A packet for `mac` from `source` carried a wrong password.
    pub(crate) fn wrong(&mut self, mac: Mac, source: &Source, now: Instant) {
        self.by_mac.record(mac, now);
        self.by_sender.record(Sender::of(source), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn udp(last: u8) -> Source {
        Source::Udp(SocketAddr::from(([192, 0, 2, last], 40_000)))
    }

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    #[test]
    fn five_wrong_passwords_for_a_mac_throttle_it_for_everyone() {
        let (mut guesses, t0) = (Guesses::default(), Instant::now());
        for i in 0..MAX_FAILURES as u8 {
            assert_eq!(guesses.throttled(mac(1), &udp(i), t0), None);
            guesses.wrong(mac(1), &udp(i), t0);
        }
        // Another sender, the same MAC: throttled; another MAC from a sender
        // with a single wrong one: not.
        assert_eq!(guesses.throttled(mac(1), &udp(99), t0), Some(WINDOW));
        assert_eq!(guesses.throttled(mac(2), &udp(0), t0), None);
        assert_eq!(guesses.throttled(mac(1), &udp(99), t0 + WINDOW), None);
    }

    #[test]
    fn five_wrong_passwords_from_a_sender_throttle_it_for_every_mac() {
        let (mut guesses, t0) = (Guesses::default(), Instant::now());
        for i in 0..MAX_FAILURES as u8 {
            guesses.wrong(mac(i), &udp(7), t0);
        }
        assert!(guesses.throttled(mac(200), &udp(7), t0).is_some());
        assert_eq!(guesses.throttled(mac(200), &udp(8), t0), None);
    }
}
