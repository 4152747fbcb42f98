//! Which HTTP connections are served: at most a total and at most a few
//! per client (an IPv4 address or an IPv6 /64), and room for requests with
//! a valid token however many clients hold connections without one. Pure:
//! the clock is passed in.
//!
//! A connection is *proven* once a request on it carried a token that
//! opened a domain. When every slot is taken, a new connection takes the
//! place of an unproven one (the oldest) of the client that holds the most,
//! if that client holds more than the newcomer would: clients that hold
//! many connections without a credential make room for one that holds
//! few, never the other way round, and a proven connection is never
//! closed for another. So eight addresses with eight idle or health-check
//! connections each (every slot) cannot keep a ninth client's valid token
//! out; only as many clients as there are slots, each holding one, could,
//! and then the newcomer is refused at once rather than left waiting.

use std::collections::HashMap;
use std::time::Instant;

use crate::decide::client::Client;

/// A served connection's number.
pub(crate) type Id = u64;

/// Why a connection is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its client holds as many connections as one may.
    ClientFull,
    /// Every slot is taken, and no client holds more than this one would.
    Full,
}

#[derive(Debug)]
struct Held<T> {
    client: Client,
    since: Instant,
    proven: bool,
    /// What the caller keeps with the connection (the way to close it).
    with: T,
}

/// The served connections.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    capacity: usize,
    per_client: usize,
    held: HashMap<Id, Held<T>>,
    next: Id,
}

impl<T> Slots<T> {
    /// At most `capacity` connections, `per_client` from one client.
    pub(crate) fn new(capacity: usize, per_client: usize) -> Self {
        Slots {
            capacity,
            per_client,
            held: HashMap::new(),
            next: 0,
        }
    }

    fn count(&self, client: Client) -> usize {
        self.held.values().filter(|h| h.client == client).count()
    }

    /// A new connection from `client` at `now`, kept `with` a value (the
    /// way to close it): its number, and what was kept with the connection
    /// it displaced, if it displaced one (close it).
    pub(crate) fn admit(
        &mut self,
        client: Client,
        now: Instant,
        with: T,
    ) -> Result<(Id, Option<T>), Refused> {
        let mine = self.count(client);
        if mine >= self.per_client {
            return Err(Refused::ClientFull);
        }
        let mut displaced = None;
        if self.held.len() >= self.capacity {
            let victim = self.victim(mine + 1).ok_or(Refused::Full)?;
            displaced = self.held.remove(&victim).map(|held| held.with);
        }
        self.next += 1;
        let id = self.next;
        let held = Held {
            client,
            since: now,
            proven: false,
            with,
        };
        self.held.insert(id, held);
        Ok((id, displaced))
    }

    /// The unproven connection to close for a newcomer whose client would
    /// hold `theirs`: the oldest of the client holding the most, if it
    /// holds more than `theirs`.
    fn victim(&self, theirs: usize) -> Option<Id> {
        let mut counts: HashMap<Client, usize> = HashMap::new();
        for held in self.held.values() {
            *counts.entry(held.client).or_default() += 1;
        }
        self.held
            .iter()
            .filter(|(_, held)| !held.proven && counts[&held.client] > theirs)
            .max_by_key(|(id, held)| (counts[&held.client], std::cmp::Reverse((held.since, **id))))
            .map(|(id, _)| *id)
    }

    /// A request on connection `id` carried a token that opened a domain.
    pub(crate) fn prove(&mut self, id: Id) {
        if let Some(held) = self.held.get_mut(&id) {
            held.proven = true;
        }
    }

    /// Connection `id` closed.
    pub(crate) fn release(&mut self, id: Id) {
        self.held.remove(&id);
    }

    /// Connections served.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn client(s: &str) -> Client {
        Client::of(s.parse().expect("an address"))
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_client_gets_at_most_its_share() {
        let (mut slots, t0) = (Slots::new(4, 2), Instant::now());
        assert!(slots.admit(client("192.0.2.1"), t0, ()).is_ok());
        assert!(slots.admit(client("192.0.2.1"), t0, ()).is_ok());
        assert_eq!(
            slots.admit(client("192.0.2.1"), t0, ()),
            Err(Refused::ClientFull)
        );
        // One IPv6 /64 is one client.
        assert!(slots.admit(client("2001:db8::1"), t0, ()).is_ok());
        assert!(slots.admit(client("2001:db8::2"), t0, ()).is_ok());
        assert_eq!(
            slots.admit(client("2001:db8::ffff"), t0, ()),
            Err(Refused::ClientFull)
        );
    }

    #[test]
    fn clients_holding_many_unproven_connections_make_room_for_a_newcomer() {
        // Eight clients with eight connections each take every slot.
        let (mut slots, t0) = (Slots::new(64, 8), Instant::now());
        let mut first = None;
        for host in 2..=9u64 {
            for i in 0..8u64 {
                let (id, displaced) = slots
                    .admit(
                        client(&format!("127.0.0.{host}")),
                        at(t0, host * 10 + i),
                        host,
                    )
                    .expect("room");
                assert_eq!(displaced, None);
                first.get_or_insert(id);
            }
        }
        assert_eq!(slots.len(), 64);
        // A ninth client gets in: the oldest connection of a client holding
        // eight goes.
        let (newcomer, displaced) = slots
            .admit(client("127.0.0.20"), at(t0, 1000), 20)
            .expect("room made");
        assert_eq!(displaced, Some(2), "127.0.0.2's oldest");
        assert_eq!(slots.len(), 64);
        // The clients that hold many cannot push the newcomer out: they take
        // each other's places, or are refused.
        for round in 0..200u64 {
            let host = 2 + round % 8;
            if let Ok((_, displaced)) = slots.admit(
                client(&format!("127.0.0.{host}")),
                at(t0, 2000 + round),
                host,
            ) {
                assert_ne!(displaced, Some(20));
            }
        }
        assert!(slots.held.contains_key(&newcomer));
    }

    #[test]
    fn a_proven_connection_is_never_displaced() {
        let (mut slots, t0) = (Slots::new(2, 2), Instant::now());
        let (a, _) = slots.admit(client("192.0.2.1"), t0, "a").expect("room");
        let (b, _) = slots
            .admit(client("192.0.2.1"), at(t0, 1), "b")
            .expect("room");
        slots.prove(a);
        // A newcomer displaces the unproven one only.
        let (_, displaced) = slots
            .admit(client("192.0.2.9"), at(t0, 2), "c")
            .expect("room");
        assert_eq!(displaced, Some("b"));
        assert!(!slots.held.contains_key(&b));
        // Now each client holds one: nobody holds more than a newcomer.
        assert_eq!(
            slots.admit(client("192.0.2.10"), at(t0, 3), "d"),
            Err(Refused::Full)
        );
        slots.release(a);
        assert!(slots.admit(client("192.0.2.10"), at(t0, 4), "d").is_ok());
    }
}
