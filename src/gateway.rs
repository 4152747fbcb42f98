//! The loop: where packets enter. It polls, spawns and writes; what it does
//! on each event is decided in [`Control`], the words come from the
//! [`Reporter`], libvirt is the [`Fleet`]'s.
//!
//! One thread polls the sockets, the signal pipe and the workers' mailbox.
//! Each round it hands what workers concluded to the control, ticks it
//! (due requests go to new workers, looks after a start, the idle exit),
//! sleeps in `poll` until something happens or a deadline comes, and drains
//! every queued datagram. It never calls libvirt itself, so a slow start, a
//! stopped daemon or a silent host delays nobody else, and SIGTERM is
//! answered at once.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::decide::ask::{Ask, Target};
use crate::decide::control::{
    Check, Config, Control, Effect, Event, Hosts, Looked, Note, Reply, Route, Stats,
};
use crate::decide::outcome::Exit;
use crate::ingress::packet;
use crate::ingress::sockets::{self, Listener};
use crate::libvirt::fleet::{Conclusion, Fleet};
use crate::libvirt::host::HostEvent;
use crate::libvirt::host::health::Health;
use crate::model::Source;
use crate::report::notify::Notifier;
use crate::report::{Reporter, StatusView};
use crate::secret::Hash;

/// Largest UDP payload; a magic packet may sit anywhere in it.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read per round before anything else, so a flood cannot starve
/// wakes, signals or the watchdog.
const MAX_DRAIN_BATCH: usize = 8_192;

/// A readable end that `poll` watches, and the writable end that rings it.
fn bell() -> io::Result<(UnixStream, UnixStream)> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    Ok((read, write))
}

/// Empties a bell's read end; true if it had rung.
fn drain_bell(read: &UnixStream) -> bool {
    let mut buf = [0u8; 64];
    let mut rang = false;
    while matches!((&*read).read(&mut buf), Ok(n) if n > 0) {
        rang = true;
    }
    rang
}

/// SIGTERM/SIGINT (or a test's trigger), through a pipe `poll` watches.
#[derive(Debug)]
pub struct Shutdown {
    pipe: UnixStream,
    requested: bool,
}

/// Asks a [`Shutdown`] to stop the loop, as SIGTERM would.
#[derive(Debug)]
pub struct Trigger(UnixStream);

impl Trigger {
    /// Requests the stop.
    pub fn stop(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

impl Shutdown {
    /// Installs handlers for SIGTERM and SIGINT.
    pub(crate) fn install() -> io::Result<Self> {
        let (shutdown, Trigger(write)) = Shutdown::manual()?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        Ok(shutdown)
    }

    /// A shutdown only its trigger requests (for tests driving the loop in
    /// process, where a signal would stop every test at once).
    pub fn manual() -> io::Result<(Self, Trigger)> {
        let (read, write) = bell()?;
        Ok((
            Shutdown {
                pipe: read,
                requested: false,
            },
            Trigger(write),
        ))
    }

    /// True once a stop was requested (checked without blocking).
    pub(crate) fn requested(&mut self) -> bool {
        if !self.requested {
            self.requested = drain_bell(&self.pipe);
        }
        self.requested
    }
}

/// What workers and hosts tell the loop.
enum Message {
    /// A request ended (decided, or waiting for libvirt).
    Concluded(Ask, Conclusion),
    /// Something changed on a host.
    Host(HostEvent),
    /// An HTTP wake request.
    Http(Submission),
    /// An HTTP request was answered; `authenticated`: its token opened a
    /// domain, which makes it activity for the idle timeout.
    HttpDone { authenticated: bool },
    /// A domain is about to be put to sleep on request, or was.
    Slept,
    /// The look after a start came back.
    Looked(Check, Looked),
}

impl From<Message> for Event<oneshot::Sender<Reply>> {
    fn from(message: Message) -> Self {
        match message {
            Message::Concluded(ask, Conclusion::Decided(decision)) => Event::Decided(ask, decision),
            Message::Concluded(ask, Conclusion::Wait(waiting)) => Event::Waits(ask, waiting),
            Message::Host(HostEvent::Back) => Event::HostBack,
            Message::Host(HostEvent::Refreshed) => Event::Refreshed,
            Message::Http(Submission { ask, source, reply }) => Event::Http(ask, source, reply),
            Message::HttpDone { authenticated } => Event::HttpDone { authenticated },
            Message::Slept => Event::Slept,
            Message::Looked(check, looked) => Event::Looked(check, looked),
        }
    }
}

/// What the control may ask the hosts: only what they know without
/// calling libvirt.
impl Hosts for Fleet {
    fn route(&self, target: &Target, now: Instant) -> Route {
        Fleet::route(self, target, now, SystemTime::now())
    }

    fn vouches(&self, token: &Hash) -> bool {
        Fleet::vouches(self, token)
    }

    fn any_answers(&self) -> bool {
        self.hosts()
            .iter()
            .any(|host| host.health() == Health::Answering)
    }
}

/// An HTTP wake request for the loop, and where its answer goes. Dropping
/// `reply` unanswered (the gateway stops) tells the HTTP side as much.
#[derive(Debug)]
pub(crate) struct Submission {
    /// What is asked, with the token's hash.
    pub(crate) ask: Ask,
    /// The HTTP peer.
    pub(crate) source: Source,
    /// Where the answer goes.
    pub(crate) reply: tokio::sync::oneshot::Sender<Reply>,
}

/// The HTTP side's way into the loop: requests enter the same book as
/// magic packets (de-duplication, retries, the slots), and are decided by
/// the same workers.
#[derive(Clone)]
pub(crate) struct Submitter {
    mailbox: Mailbox,
    busy: Arc<AtomicUsize>,
}

impl Submitter {
    /// Hands a request to the loop.
    pub(crate) fn submit(&self, submission: Submission) {
        self.mailbox.send(Message::Http(submission));
    }

    /// Keeps the gateway from its idle exit while an HTTP request is being
    /// answered (a caller waiting for its domain to come up included). Only
    /// a request whose token opened a domain ([`Busy::authenticated`]) is
    /// activity: the idle time then counts from its answer. Others (health
    /// checks, made-up tokens) never keep the gateway running.
    pub(crate) fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy {
            submitter: self.clone(),
            authenticated: false,
        }
    }

    /// A domain is about to be put to sleep, or was: the loop forgets which
    /// wakes brought a domain up (see
    /// [`crate::decide::book::Book::forget_wakes`]).
    pub(crate) fn slept(&self) {
        self.mailbox.send(Message::Slept);
    }
}

/// An HTTP request being answered; see [`Submitter::busy`].
pub(crate) struct Busy {
    submitter: Submitter,
    authenticated: bool,
}

impl Busy {
    /// The request's token opened a domain.
    pub(crate) fn authenticated(&mut self) {
        self.authenticated = true;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Told before the count drops: once the loop sees no request being
        // answered, the activity is already in its mailbox.
        let authenticated = self.authenticated;
        self.submitter
            .mailbox
            .send(Message::HttpDone { authenticated });
        self.submitter.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The workers' side of the mailbox: send, then ring the bell.
#[derive(Clone)]
struct Mailbox {
    tx: Sender<Message>,
    bell: Arc<UnixStream>,
}

impl Mailbox {
    fn send(&self, message: Message) {
        if self.tx.send(message).is_ok() {
            // A full bell already rings: WouldBlock is fine.
            let _ = (&*self.bell).write(&[1]);
        }
    }
}

/// The gateway: sockets in, wake requests out.
pub struct Gateway {
    listeners: Vec<Listener>,
    control: Control<oneshot::Sender<Reply>>,
    fleet: Arc<Fleet>,
    mailbox: Mailbox,
    inbox: Receiver<Message>,
    bell: UnixStream,
    reporter: Reporter,
    notifier: Notifier,
    shutdown: Shutdown,
    idle_timeout: Option<Duration>,
    uris: String,
    listener_lost: bool,
    buf: Vec<u8>,
    /// HTTP requests being answered.
    http_busy: Arc<AtomicUsize>,
    /// Where the HTTP wake listens (for the "listening on" line).
    http_addresses: Vec<String>,
}

impl Gateway {
    /// A gateway serving `listeners` (non-blocking), waking through `fleet`.
    pub fn new(
        listeners: Vec<Listener>,
        fleet: Fleet,
        config: Config,
        shutdown: Shutdown,
        notifier: Notifier,
        reporter: Reporter,
    ) -> io::Result<Self> {
        let (bell_read, bell_write) = bell()?;
        let (tx, inbox) = mpsc::channel();
        let mailbox = Mailbox {
            tx,
            bell: Arc::new(bell_write),
        };
        for host in fleet.hosts() {
            let mailbox = mailbox.clone();
            host.on_event(move |event| mailbox.send(Message::Host(event)));
        }
        Ok(Gateway {
            listeners,
            uris: fleet.uris(),
            fleet: Arc::new(fleet),
            idle_timeout: config.idle_timeout,
            control: Control::new(config, Instant::now()),
            mailbox,
            inbox,
            bell: bell_read,
            reporter,
            notifier,
            shutdown,
            listener_lost: false,
            buf: vec![0; MAX_DATAGRAM],
            http_busy: Arc::new(AtomicUsize::new(0)),
            http_addresses: Vec::new(),
        })
    }

    /// Names the HTTP wake's addresses in the "listening on" line, with
    /// their scheme (`HTTP` or `HTTPS`).
    pub(crate) fn announce_http(&mut self, addresses: &[String], scheme: &str) {
        self.http_addresses = addresses
            .iter()
            .map(|a| format!("{a} ({scheme})"))
            .collect();
    }

    /// The way in for HTTP wake requests.
    pub(crate) fn submitter(&self) -> Submitter {
        Submitter {
            mailbox: self.mailbox.clone(),
            busy: Arc::clone(&self.http_busy),
        }
    }

    /// The hosts, for what the HTTP side asks of them directly (domain
    /// lists, the state while a caller waits).
    pub(crate) fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet)
    }

    /// Serves until idle or stopped.
    pub fn run(mut self) -> (Exit, Stats) {
        let addresses: Vec<String> = (self.listeners.iter().map(Listener::describe))
            .chain(self.http_addresses.iter().cloned())
            .collect();
        self.reporter
            .listening(&addresses, &self.uris, self.idle_timeout);
        // Ready once the sockets are held, before libvirt is contacted.
        let status = self.status(Instant::now());
        self.notifier.ready(&status);
        let exit = loop {
            let now = Instant::now();
            self.notifier.watchdog(now);
            self.notifier.flush_status(now);
            self.reporter.close_windows(now, &self.uris, false);
            if self.shutdown.requested() {
                break Exit::Signal;
            }
            if self.listener_lost {
                break Exit::ListenerLost;
            }
            self.collect(now);
            let http_busy = self.http_busy.load(Ordering::SeqCst);
            if let Some(exit) = self.on(Event::Tick { http_busy }, now) {
                break exit;
            }
            if self.control.status_changed() {
                let status = self.status(now);
                self.notifier.status(&status, now);
            }
            self.wait(now);
            self.drain();
        };
        self.finish(exit)
    }

    /// Hands `event` to the control and carries out what it says; returns
    /// the exit, if it is time.
    fn on(&mut self, event: Event<oneshot::Sender<Reply>>, now: Instant) -> Option<Exit> {
        let mut exit = None;
        for effect in self.control.on(event, now, &*self.fleet) {
            match effect {
                Effect::Spawn(ask) => self.spawn_worker(ask, now),
                Effect::Reply(waiter, reply) => {
                    // A caller that hung up needs no answer.
                    let _ = waiter.send(reply);
                }
                Effect::Look(check) => self.look(check),
                Effect::Say(note) => say(&mut self.reporter, note, &self.uris, now),
                Effect::Exit(why) => exit = Some(why),
            }
        }
        exit
    }

    /// Takes in what workers and hosts told.
    fn collect(&mut self, now: Instant) {
        if !drain_bell(&self.bell) {
            return;
        }
        while let Ok(message) = self.inbox.try_recv() {
            self.on(message.into(), now);
        }
    }

    fn spawn_worker(&mut self, ask: Ask, now: Instant) {
        let (fleet, mailbox) = (Arc::clone(&self.fleet), self.mailbox.clone());
        let asked = ask.clone();
        let spawned = std::thread::Builder::new()
            .name("wol-wake".into())
            .spawn(move || {
                // Fleet::wake never unwinds: a panic concludes the request
                // ("internal error"), or it would count as in flight forever.
                let conclusion = fleet.wake(asked.clone());
                mailbox.send(Message::Concluded(asked, conclusion));
            });
        if let Err(e) = spawned {
            self.reporter.no_worker(&ask.target, &e, now);
            self.on(Event::NoWorker(ask), now);
        }
    }

    /// Looks at a domain acted on, on a thread of its own (a hung libvirt
    /// holds that thread, not the loop).
    fn look(&mut self, check: Check) {
        let Some(host) = self.fleet.host(&check.domain.uri).cloned() else {
            return;
        };
        let mailbox = self.mailbox.clone();
        let (sent, failed) = (check.clone(), mailbox.clone());
        let spawned = std::thread::Builder::new()
            .name("wol-check".into())
            .spawn(move || {
                let found = host.state_of(&sent.domain.name).map_err(|e| e.to_string());
                mailbox.send(Message::Looked(sent, found));
            });
        // Without a thread the look is skipped (it only reports), and so
        // is not waited for.
        if let Err(e) = spawned {
            failed.send(Message::Looked(check, Err(e.to_string())));
        }
    }

    fn status(&self, now: Instant) -> String {
        let gauge = self.control.gauge(now);
        self.reporter.status(&StatusView {
            pending: gauge.pending,
            waiting_for: gauge.waiting_for.as_deref(),
            idle_left: gauge.idle_left,
        })
    }

    /// Sleeps in `poll` until a socket, the signal pipe or the mailbox is
    /// readable, or the next deadline (the control's, the watchdog, status,
    /// log summary).
    fn wait(&mut self, now: Instant) {
        let deadline = [
            self.control.deadline(now),
            self.notifier.watchdog_due(),
            self.notifier.status_due(),
            self.reporter.summary_due(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(now);
            Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        let mut fds: Vec<PollFd<'_>> = self
            .listeners
            .iter()
            .map(|s| PollFd::new(s, PollFlags::IN))
            .collect();
        fds.push(PollFd::new(&self.shutdown.pipe, PollFlags::IN));
        fds.push(PollFd::new(&self.bell, PollFlags::IN));
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // Should not happen; avoid a busy loop if it does.
                warn!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Reads every queued datagram (up to a batch cap) into the control.
    fn drain(&mut self) {
        // One clock read per round, not per datagram: a round takes at most
        // a few milliseconds, far below every window it feeds.
        let now = Instant::now();
        let Gateway {
            listeners,
            buf,
            control,
            fleet,
            reporter,
            uris,
            ..
        } = self;
        let mut rejected = 0;
        let drained = sockets::drain(listeners, buf, MAX_DRAIN_BATCH, |payload, source| {
            match packet::parse_with_password(payload) {
                Ok(magic) => {
                    let event = Event::Packet(Ask::from(magic), source);
                    // A packet only ever makes the control say something:
                    // workers start on the tick.
                    for effect in control.on(event, now, &**fleet) {
                        if let Effect::Say(note) = effect {
                            say(reporter, note, uris, now);
                        }
                    }
                }
                Err(reason) => {
                    rejected += 1;
                    reporter.rejected(&source, payload.len(), &reason, now);
                }
            }
        });
        if drained.lost.is_some() {
            self.listener_lost = true;
        }
        let read = Event::Read {
            count: drained.read,
            rejected,
        };
        self.control.on(read, Instant::now(), &*self.fleet);
        self.control.drained_for(now.elapsed());
    }

    /// The exit's accounting and summary.
    fn finish(self, exit: Exit) -> (Exit, Stats) {
        let Gateway {
            control,
            fleet,
            mut reporter,
            mut notifier,
            uris,
            ..
        } = self;
        reporter.close_windows(Instant::now(), &uris, true);
        let summary = control.finish();
        let status = reporter.exit(
            exit,
            &summary.stats,
            &summary.undecided,
            summary.waiting_for.as_ref(),
            fleet.refreshes(),
        );
        notifier.stopping(&status);
        // Never close libvirt connections on the way out: closing one waits
        // for the daemon's answer, which a stopped daemon never gives. The
        // kernel closes the sockets when the process exits, a moment later.
        std::mem::forget(fleet);
        (exit, summary.stats)
    }
}

/// Puts what the control says into words.
fn say(reporter: &mut Reporter, note: Note, uris: &str, now: Instant) {
    match note {
        Note::Decision(request, decision) => reporter.decision(&request, &decision, uris, now),
        Note::Resumed(resumed) => reporter.resumed(&resumed),
        Note::Duplicate {
            mac,
            source,
            ago,
            first,
        } => reporter.duplicate(mac, &source, ago, first, now),
        Note::Dropped {
            mac,
            source,
            max_pending,
        } => reporter.dropped(mac, &source, max_pending, now),
        Note::Throttled { mac, source, left } => reporter.throttled(mac, &source, left, now),
        Note::StoppedAgain {
            domain,
            verb,
            state,
            reason,
            after,
        } => reporter.stopped_again(&domain, verb, state, reason, after, now),
        Note::LookFailed { domain, error } => {
            debug!("cannot look at {} after its start: {error}", domain.name);
        }
    }
}
