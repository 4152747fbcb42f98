//! The connections of one host: the main one that lookups use, made on
//! first use and again after it died, and the action connections (see
//! [`Lane`]), opened in the background and kept idle for the next action.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::libvirt::hypervisor::{Connector, Heartbeat, Hypervisor};
use crate::lock::lock;
use crate::model::HvError;

/// Idle action connections kept for the next actions (see [`Lane`]); more
/// are closed after use.
pub(crate) const MAX_SPARE_LANES: usize = 3;

/// While a host cannot be reached, connecting is tried at most this often;
/// requests in between get the last error at once (a flood of new MACs
/// must not become a flood of connection attempts).
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// The connections to one host.
pub(crate) struct Pool {
    connector: Arc<dyn Connector>,
    /// Beaten when a connection is made: the connect answered.
    beat: Heartbeat,
    connection: Mutex<Connection>,
    /// Idle connections for actions (see [`Lane`]).
    spares: Arc<Spares>,
}

/// The open connection, or the last failure to open one.
#[derive(Default)]
struct Connection {
    open: Option<Arc<dyn Hypervisor>>,
    failed: Option<(Instant, HvError)>,
}

impl Pool {
    /// Connections through `connector`, none opened yet.
    pub(crate) fn new(connector: Arc<dyn Connector>, beat: Heartbeat) -> Self {
        Pool {
            connector,
            beat,
            connection: Mutex::new(Connection::default()),
            spares: Arc::default(),
        }
    }

    /// The open connection, or a new one. Connecting blocks while a daemon
    /// is stopped: the caller's deadline sees that as silence.
    pub(crate) fn connection(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
        let mut slot = lock(&self.connection);
        if let Some(hv) = &slot.open {
            return Ok(Arc::clone(hv));
        }
        if let Some((at, error)) = &slot.failed {
            if at.elapsed() < RECONNECT_INTERVAL {
                return Err(error.clone());
            }
        }
        // The action connection is opened beside this one, not after it:
        // through ssh each takes a whole login (~0.3 s here), and a cold
        // wake needs both. Not while the host is out: each retry would be
        // two failing logins (twice as fast into fail2ban or sshd's
        // penalties), or two connects hanging on a silent network.
        let healthy = slot.failed.is_none();
        if healthy {
            self.prepare_lane();
        }
        match self.connector.connect() {
            Ok(hv) => {
                self.beat.beat();
                if !healthy {
                    self.prepare_lane();
                }
                *slot = Connection {
                    open: Some(Arc::clone(&hv)),
                    failed: None,
                };
                Ok(hv)
            }
            Err(error) => {
                slot.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The open connection, without waiting: `None` when there is none or
    /// one is being made (its lock is held while connecting).
    pub(crate) fn open_now(&self) -> Option<Arc<dyn Hypervisor>> {
        match self.connection.try_lock() {
            Ok(slot) => slot.open.clone(),
            Err(_) => None,
        }
    }

    /// The connection an action runs on (see [`Lane`]), `main` if it can
    /// have none of its own.
    pub(crate) fn lane(&self, main: Arc<dyn Hypervisor>) -> Lane<'_> {
        let own = if self.connector.independent_connections() {
            self.spare_or_new()
        } else {
            None
        };
        Lane {
            pool: self,
            hv: own.unwrap_or_else(|| Arc::clone(&main)),
            main,
        }
    }

    /// Opens an action connection (see [`Lane`]) in the background while
    /// the main connection is made and the first lookup runs on it: a cold
    /// wake then finds it ready instead of connecting between lookup and
    /// start. At most one at a time, and none while one is idle.
    fn prepare_lane(&self) {
        if !self.connector.independent_connections() || !self.spares.start_opening() {
            return;
        }
        let (connector, opening) = (
            Arc::clone(&self.connector),
            Opening(Some(Arc::clone(&self.spares))),
        );
        // Without the thread (the closure and its Opening dropped), the
        // first action connects itself.
        let _ = std::thread::Builder::new()
            .name("wol-lane".into())
            .spawn(move || opening.done(connector.connect().ok()));
    }

    /// A connection of its own for an action: a spare one still alive (or
    /// the one being opened), or a new one; `None` (use the main one) if
    /// none can be had.
    fn spare_or_new(&self) -> Option<Arc<dyn Hypervisor>> {
        self.spares.take().or_else(|| self.connector.connect().ok())
    }

    /// Forgets a dead connection (if it is still the current one), and the
    /// spare action connections, which went to the same daemon.
    pub(crate) fn drop_connection(&self, dead: &Arc<dyn Hypervisor>) {
        let mut slot = lock(&self.connection);
        if slot.open.as_ref().is_some_and(|hv| Arc::ptr_eq(hv, dead)) {
            slot.open = None;
            self.spares.clear();
        }
    }
}

/// The connection an action runs on: one of its own where connections are
/// independent, never the one lookups use. With libvirt 9.0's client (no
/// event loop registered), a call on a connection that also carries a long
/// action can go unanswered until some other call on it wakes the reader:
/// a start held 8 s by a qemu hook left another domain's state read waiting
/// about 5 s in two runs of three, and two actions on one connection waited
/// for each other in about one run of eight. On separate connections, never.
/// Given back on drop (a panic included) and kept as a spare for the next.
pub(crate) struct Lane<'a> {
    pool: &'a Pool,
    /// The connection to act on.
    pub(crate) hv: Arc<dyn Hypervisor>,
    main: Arc<dyn Hypervisor>,
}

impl Lane<'_> {
    fn is_main(&self) -> bool {
        Arc::ptr_eq(&self.hv, &self.main)
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        if !self.is_main() && self.hv.is_alive() {
            self.pool.spares.keep(Arc::clone(&self.hv));
        }
    }
}

/// Idle action connections (see [`Lane`]), and whether one is being opened
/// in the background. An action takes an idle one, or waits for the one
/// being opened rather than opening another: through ssh each connection
/// costs a key exchange (about 0.3 s here), so a cold wake of a remote
/// domain would otherwise pay for three instead of two.
#[derive(Default)]
struct Spares {
    state: Mutex<SpareState>,
    opened: Condvar,
}

#[derive(Default)]
struct SpareState {
    idle: Vec<Arc<dyn Hypervisor>>,
    opening: bool,
}

impl Spares {
    /// Keeps `hv` for a later action (more than [`MAX_SPARE_LANES`] are
    /// closed).
    fn keep(&self, hv: Arc<dyn Hypervisor>) {
        let mut state = lock(&self.state);
        if state.idle.len() < MAX_SPARE_LANES {
            state.idle.push(hv);
        }
    }

    /// An idle connection still alive, waiting for the one being opened if
    /// there is none; `None` when there is none and none coming.
    fn take(&self) -> Option<Arc<dyn Hypervisor>> {
        let mut state = lock(&self.state);
        loop {
            while let Some(hv) = state.idle.pop() {
                if hv.is_alive() {
                    return Some(hv);
                }
            }
            if !state.opening {
                return None;
            }
            state = self
                .opened
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Marks a background opening as started; false (nothing to open) if
    /// one already runs or one is idle.
    fn start_opening(&self) -> bool {
        let mut state = lock(&self.state);
        if state.opening || !state.idle.is_empty() {
            return false;
        }
        state.opening = true;
        true
    }

    /// Ends a background opening with what it opened, if anything.
    fn finish_opening(&self, opened: Option<Arc<dyn Hypervisor>>) {
        let mut state = lock(&self.state);
        state.opening = false;
        if let Some(hv) = opened {
            if state.idle.len() < MAX_SPARE_LANES {
                state.idle.push(hv);
            }
        }
        drop(state);
        self.opened.notify_all();
    }

    /// Closes the idle ones (their daemon went away).
    fn clear(&self) {
        lock(&self.state).idle.clear();
    }
}

/// A background opening under way: ended by [`Opening::done`], or on drop
/// (a panic in the connect, a thread that never ran) with nothing, so an
/// action never waits for an opening that will not end.
struct Opening(Option<Arc<Spares>>);

impl Opening {
    fn done(mut self, opened: Option<Arc<dyn Hypervisor>>) {
        if let Some(spares) = self.0.take() {
            spares.finish_opening(opened);
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(spares) = self.0.take() {
            spares.finish_opening(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::hypervisor::{DomainRecord, Listed};
    use crate::model::{Action, DomainState, Uuid};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection that is alive and answers nothing else: what the spares
    /// hold is all these tests look at.
    struct Idle;

    impl Hypervisor for Idle {
        fn list(&self) -> Result<Vec<Listed>, HvError> {
            Err(HvError::other("unused"))
        }
        fn records(&self, _: &[Listed], _: &(dyn Fn() + Sync)) -> Vec<DomainRecord> {
            Vec::new()
        }
        fn domain(&self, _: Uuid) -> Result<DomainRecord, HvError> {
            Err(HvError::other("unused"))
        }
        fn state(&self, _: Uuid) -> Result<DomainState, HvError> {
            Err(HvError::other("unused"))
        }
        fn has_managed_save(&self, _: Uuid) -> Result<bool, HvError> {
            Err(HvError::other("unused"))
        }
        fn perform(&self, _: Uuid, _: Action) -> Result<(), HvError> {
            Err(HvError::other("unused"))
        }
        fn ping(&self) -> Result<(), HvError> {
            Ok(())
        }
        fn is_alive(&self) -> bool {
            true
        }
    }

    /// Counts its connects; each fails while `refuse` is set.
    #[derive(Default)]
    struct Counting {
        connects: AtomicUsize,
        refuse: bool,
        independent: bool,
    }

    impl Connector for Counting {
        fn uri(&self) -> &str {
            "fake:///"
        }
        fn connect(&self) -> Result<Arc<dyn Hypervisor>, HvError> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            if self.refuse {
                Err(HvError::other("Connection refused"))
            } else {
                Ok(Arc::new(Idle))
            }
        }
        fn independent_connections(&self) -> bool {
            self.independent
        }
    }

    #[test]
    fn an_action_waits_for_the_connection_being_opened_instead_of_opening_another() {
        let spares = Arc::new(Spares::default());
        assert!(spares.take().is_none(), "none idle, none coming");
        assert!(spares.start_opening());
        assert!(!spares.start_opening(), "one opening at a time");
        let taker = {
            let spares = Arc::clone(&spares);
            std::thread::spawn(move || spares.take())
        };
        let opened: Arc<dyn Hypervisor> = Arc::new(Idle);
        spares.finish_opening(Some(Arc::clone(&opened)));
        let taken = taker.join().expect("taker").expect("the opened connection");
        assert!(Arc::ptr_eq(&taken, &opened));
        assert!(spares.take().is_none(), "taken once");

        // A failed opening wakes the waiter with nothing.
        assert!(spares.start_opening());
        let taker = {
            let spares = Arc::clone(&spares);
            std::thread::spawn(move || spares.take())
        };
        spares.finish_opening(None);
        assert!(taker.join().expect("taker").is_none());
    }

    #[test]
    fn an_opening_that_never_ends_normally_still_wakes_the_waiter() {
        // A connect that panicked, or a thread that could not start: the
        // Opening is dropped without done().
        let spares = Arc::new(Spares::default());
        assert!(spares.start_opening());
        let opening = Opening(Some(Arc::clone(&spares)));
        let taker = {
            let spares = Arc::clone(&spares);
            std::thread::spawn(move || spares.take())
        };
        drop(opening);
        assert!(taker.join().expect("taker").is_none());
        assert!(spares.start_opening(), "no opening left marked");
    }

    #[test]
    fn at_most_three_idle_connections_are_kept() {
        let spares = Spares::default();
        for _ in 0..5 {
            spares.keep(Arc::new(Idle));
        }
        let kept = std::iter::from_fn(|| spares.take()).count();
        assert_eq!(kept, MAX_SPARE_LANES);
    }

    #[test]
    fn the_main_connection_is_made_once_and_a_failure_is_not_retried_at_once() {
        let connector = Arc::new(Counting::default());
        let pool = Pool::new(connector.clone(), Heartbeat::default());
        assert!(pool.open_now().is_none(), "none before first use");
        let first = pool.connection().expect("connected");
        let again = pool.connection().expect("connected");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(connector.connects.load(Ordering::SeqCst), 1);
        assert!(pool.open_now().is_some());
        pool.drop_connection(&first);
        assert!(pool.open_now().is_none(), "a dead one is forgotten");

        let refusing = Arc::new(Counting {
            refuse: true,
            ..Counting::default()
        });
        let pool = Pool::new(refusing.clone(), Heartbeat::default());
        assert!(pool.connection().is_err());
        assert!(pool.connection().is_err(), "the last error, at once");
        assert_eq!(refusing.connects.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_action_gets_a_connection_of_its_own_only_where_they_are_independent() {
        let shared = Arc::new(Counting::default());
        let pool = Pool::new(shared, Heartbeat::default());
        let main = pool.connection().expect("connected");
        assert!(pool.lane(Arc::clone(&main)).is_main(), "test:/// state");

        let independent = Arc::new(Counting {
            independent: true,
            ..Counting::default()
        });
        let pool = Pool::new(independent, Heartbeat::default());
        let main = pool.connection().expect("connected");
        let lane = pool.lane(Arc::clone(&main));
        assert!(!lane.is_main());
        let own = Arc::clone(&lane.hv);
        drop(lane);
        let next = pool.lane(main);
        assert!(Arc::ptr_eq(&next.hv, &own), "kept for the next action");
    }
}
