//! One action per domain at a time: a second request for a domain being
//! acted on waits its turn, then looks at the domain again (it is likely up
//! by then).

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::lock::lock;
use crate::model::Uuid;

/// Domains being acted on.
#[derive(Default)]
pub(crate) struct Turns {
    busy: Mutex<HashSet<Uuid>>,
    freed: Condvar,
}

/// The right to act on one domain; given back on drop (a panic included,
/// so a failed action never blocks the domain for good).
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    uuid: Uuid,
}

impl Turns {
    /// Waits until nobody acts on `uuid`; true if it had to wait.
    pub(crate) fn take(&self, uuid: Uuid) -> (Turn<'_>, bool) {
        let mut busy = lock(&self.busy);
        let mut waited = false;
        while busy.contains(&uuid) {
            waited = true;
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        busy.insert(uuid);
        (Turn { turns: self, uuid }, waited)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        lock(&self.turns.busy).remove(&self.uuid);
        self.turns.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_free_domain_is_taken_at_once_and_others_do_not_wait_for_it() {
        let turns = Turns::default();
        let (_one, waited) = turns.take(Uuid(1));
        assert!(!waited);
        let (_two, waited) = turns.take(Uuid(2));
        assert!(!waited, "another domain is not held up");
    }

    #[test]
    fn a_second_request_for_a_busy_domain_waits_until_the_first_is_done() {
        let turns = Arc::new(Turns::default());
        let (first, _) = turns.take(Uuid(7));
        let (tx, rx) = mpsc::channel();
        let second = {
            let turns = Arc::clone(&turns);
            std::thread::spawn(move || {
                let (_turn, waited) = turns.take(Uuid(7));
                let _ = tx.send(waited);
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the second waits while the first holds the turn"
        );
        drop(first);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        second.join().expect("second");
        let (_again, waited) = turns.take(Uuid(7));
        assert!(!waited, "given back on drop");
    }

    #[test]
    fn a_turn_dropped_by_a_panic_is_given_back() {
        let turns = Arc::new(Turns::default());
        let panicked = {
            let turns = Arc::clone(&turns);
            std::thread::spawn(move || {
                let _turn = turns.take(Uuid(3));
                panic!("an action that panics");
            })
            .join()
        };
        assert!(panicked.is_err());
        let (_turn, waited) = turns.take(Uuid(3));
        assert!(!waited);
    }
}
