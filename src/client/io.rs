//! The I/O thread (`qmqtt-io`): owns the socket and the session of one connection.
//!
//! It sleeps in `mio::Poll` on the socket and a waker, with a timeout that is the nearest of the session's
//! timer (keep-alive, ping and CONNACK timeouts), the connect deadline, the reconnect timer and the stop
//! deadline. Each turn it reads everything the socket has, feeds it to the session and forwards the session's
//! events to the event queue; runs commands (subscribe, unsubscribe, stop); takes a batch of queued messages
//! (as many as the in-flight window and the event queue's room allow), encodes them all and hands the bytes
//! to the transport in one write, so many messages share one TLS record and one syscall.
//!
//! Receive backpressure: the session is fed only as far as the event queue has room for the messages it
//! produces ([`Session::handle_read_bounded`]). When the next PUBLISH does not fit, the unfed bytes stay in
//! `rbuf`, the socket is no longer read (the kernel buffers fill and TCP flow control holds the broker back)
//! and the thread asks the owner for a wake-up on the next drain (`io_wants_room`, as for acknowledgement
//! room). Once there is room it feeds the rest and reads the socket again without waiting for a readiness
//! event (edge-triggered). The session is told of the pause so that keep-alive does not kill the connection.
//!
//! Before sleeping it marks the publish queue `io_waiting` if the queue is empty, so the first publish wakes
//! it; while it is busy, or blocked by a full window, publishers do not make a syscall.
//!
//! A lost connection (transport error, protocol error, refusal, ping timeout) is reported as
//! `ConnectionLost`; with `reconnect` the next attempt is scheduled with exponential backoff and jitter and
//! reported as `Reconnecting`. Queued messages wait meanwhile; the session keeps unacknowledged QoS 1/2
//! messages and resends them on the next connection.
//!
//! With a spool (`SpoolSide`), each turn also spills what cannot be sent, flushes the spool (its deadline
//! is part of the poll timeout) and copies its counters into the stats; see the client module's
//! "Store-and-forward" section.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token as MioToken};

use super::events::{Control, EV_HDR};
use super::queue::{Hdr, TakeBudget, HDR};
use super::{lock, Cmd, Shared};
use crate::clock::{later, now_ms};
use crate::codec::QoS;
use crate::error::{Doing, Error, Timeout};
use crate::session::{Event as SEvent, Session, SessionConfig, SessionError, Token};
use crate::spool::{self, AckTracker, DrainScheduler, Msg, Spool, SpoolError};
use crate::transport::{Conn, Endpoint, TlsOptions};

/// A connection that stayed up this long resets the reconnect backoff to `backoff_min`; one that died sooner
/// (a broker that accepts and drops at once) keeps the backoff growing. Short enough that a flaky link
/// which carries traffic between cuts reconnects at once each time.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

pub(crate) const SOCK: MioToken = MioToken(0);
pub(crate) const WAKE: MioToken = MioToken(1);

/// Bytes of queued messages taken per batch.
const CHUNK: usize = 64 << 10;
/// Batches per turn of the I/O loop.
const BATCHES_PER_TURN: usize = 8;
/// Stop encoding more messages while the transport holds this many unsent bytes (the socket is slow).
const HIGH_WATER: usize = 256 << 10;
/// Event-queue bytes kept free for connection events beyond the Delivered records.
const CONTROL_SLACK: usize = 16 << 10;
/// Reads per turn before giving writes a chance (the rest is read on the next turn).
const MAX_READS: usize = 64;
/// Session tokens of spooled messages: this bit plus the spool's sequence number (queue tokens never
/// reach it).
const SPOOL_TOKEN: u64 = 1 << 63;
/// Bytes of queued messages moved to the spool per append (one `write(2)`), at most `segment_bytes`: as
/// much as a send batch, so that the queue's lock is held no longer for a spill than for a send.
const SPILL_BATCH: usize = CHUNK;
/// Appends per spill call (bounds a turn: 4 MiB).
const SPILL_BATCHES_PER_TURN: usize = 64;
/// While disconnected, everything queued goes to the spool (so that a crash or a stop loses nothing) this
/// long after it was published, in one batch.
const OFFLINE_SPILL_DELAY: Duration = Duration::from_millis(100);
/// A failed spool operation (disk full, budget full with `Refuse`, I/O error) is retried after this.
const SPOOL_RETRY: Duration = Duration::from_secs(1);
/// Spooled QoS 0 messages read per turn beyond the in-flight window's room.
const FIRE_ROOM: usize = 256;
/// Bytes of a spooled record staged for the session: the queue's header (its token field holds the spool
/// tag) and the sequence number.
const SHDR: usize = HDR + 8;

/// Copy a spool's counters into the client's stats.
pub(crate) fn store_spool_stats(c: &super::Counters, sp: &mut Spool) {
    let st = sp.stats();
    c.spooled.store(st.spooled_msgs, Relaxed);
    c.spooled_bytes.store(st.spooled_bytes, Relaxed);
    let oldest = st
        .oldest_age
        .map_or(0, |a| now_ms().saturating_sub(a.as_millis() as u64).max(1));
    c.spool_oldest_ms.store(oldest, Relaxed);
    c.spool_dropped_oldest.store(st.dropped_oldest, Relaxed);
    c.spool_refused.store(st.refused, Relaxed);
    c.spool_disk_full.store(st.disk_full, Relaxed);
    c.spool_bytes_written.store(st.bytes_written, Relaxed);
}

/// Copies of the queued QoS 1/2 messages in the session's window (with a spool only), so that a stop
/// while they are unacknowledged (the broker unreachable) can put them in the spool instead of losing them.
/// Records as in the publish queue, in the order handed to the session; acknowledged ones are dropped from
/// the front at once and from the middle by an in-place compaction. Memory: the window's messages, at
/// most twice over.
#[derive(Default)]
struct InflightCopies {
    buf: Vec<u8>,
    /// Start of the first record in `buf`.
    head: usize,
    /// (token, record length, acknowledged).
    idx: VecDeque<(Token, usize, bool)>,
    /// Bytes of acknowledged records still in `buf`.
    done_bytes: usize,
}

impl InflightCopies {
    fn push(&mut self, token: Token, record: &[u8]) {
        self.buf.extend_from_slice(record);
        self.idx.push_back((token, record.len(), false));
    }

    fn done(&mut self, token: Token) {
        // Acknowledgements come mostly in order: the record is near the front.
        let Some(e) = self.idx.iter_mut().find(|e| e.0 == token && !e.2) else {
            return;
        };
        e.2 = true;
        self.done_bytes += e.1;
        while let Some(&(_, len, true)) = self.idx.front() {
            self.idx.pop_front();
            self.head += len;
            self.done_bytes -= len;
        }
        if self.idx.is_empty() {
            self.buf.clear();
            self.head = 0;
        } else if self.head + self.done_bytes > (self.buf.len() - self.head).max(4096) {
            self.compact();
        }
    }

    /// Move the unacknowledged records to the front of `buf` (in place, no allocation).
    fn compact(&mut self) {
        let (mut from, mut to) = (self.head, 0);
        self.idx.retain(|&(_, len, done)| {
            if !done {
                self.buf.copy_within(from..from + len, to);
                to += len;
            }
            from += len;
            !done
        });
        self.buf.truncate(to);
        self.head = 0;
        self.done_bytes = 0;
    }
}

/// The I/O thread's side of the disk spool (see the module docs of [`crate::spool`], "How the driver uses
/// it").
struct SpoolSide {
    spool: Spool,
    tracker: AckTracker,
    sched: DrainScheduler,
    /// `drain_rate: None`: strict publish order (queued messages wait while the spool has a backlog).
    strict: bool,
    /// Records read from the spool and not yet accepted by the session: `[Hdr (token = tag)][seq][topic]
    /// [payload]`.
    buf: Vec<u8>,
    off: usize,
    /// Spooled QoS 1/2 messages in the session: seq → (tag, QoS).
    inflight: HashMap<u64, (Token, QoS)>,
    /// The first sequence number appended by this process: records below it are a previous run's, their
    /// tags stale tokens.
    run_first: u64,
    /// The rate limiter has no token for the backlog until then.
    drain_wake: Option<Instant>,
    /// `Spool::flush` is due then.
    flush_at: Option<Instant>,
    /// Disconnected with messages queued: spill them all then.
    spill_at: Option<Instant>,
    /// A spool operation failed: no new attempt before then.
    retry_at: Option<Instant>,
    /// Spilling since the queue passed its high-water mark (until it is below half).
    spilling: bool,
    /// Counters changed since they were last copied into the stats.
    dirty: bool,
    /// Largest append (segment_bytes, capped at SPILL_BATCH).
    batch_limit: usize,
    /// A message too large for the spool was reported.
    warned_large: bool,
    /// Queued QoS 1/2 messages in the window.
    copies: InflightCopies,
}

impl SpoolSide {
    fn new(spool: Spool, max_inflight: usize) -> Box<SpoolSide> {
        let strict = spool.config().drain_rate.is_none();
        let batch_limit = (spool.config().segment_bytes as usize).min(SPILL_BATCH);
        let mut inflight = HashMap::new();
        inflight.reserve(max_inflight);
        Box::new(SpoolSide {
            run_first: spool.next_seq(),
            sched: spool.drain_scheduler(),
            tracker: AckTracker::new(max_inflight + FIRE_ROOM),
            strict,
            buf: Vec::new(),
            off: 0,
            inflight,
            drain_wake: None,
            flush_at: None,
            spill_at: None,
            retry_at: None,
            spilling: false,
            dirty: true,
            batch_limit,
            warned_large: false,
            copies: InflightCopies::default(),
            spool,
        })
    }

    /// Records staged for the session.
    fn staged(&self) -> bool {
        self.off < self.buf.len()
    }

    /// Nothing left to send from the spool (nothing unread, staged or in flight).
    fn drained(&self) -> bool {
        !self.staged() && self.spool.unread() == 0 && self.tracker.is_empty()
    }

    /// Strict order with a backlog: messages in memory (newer) wait for it.
    fn live_waits(&self) -> bool {
        self.strict && (self.staged() || self.spool.unread() > 0)
    }

    /// A backlog waits and the rate limiter lets it go now.
    fn backlog_ready(&self, now: Instant) -> bool {
        self.spool.unread() > 0
            && self.drain_wake.is_none_or(|t| now >= t)
            && self.retry_at.is_none_or(|t| now >= t)
    }

    /// `seq` is complete: advance the spool's acknowledged position when the completed prefix grew.
    fn complete(&mut self, seq: u64, sh: &Shared) {
        self.dirty = true;
        if let Some(a) = self.tracker.complete(seq) {
            if let Err(e) = self.spool.ack(a) {
                spool_failed(sh, &e);
            }
        }
    }
}

fn spool_failed(sh: &Shared, e: &SpoolError) {
    let m = e.to_string();
    log::error!("qmqtt: {m}");
    *lock(&sh.last_spool_error) = Some(m);
}

/// Everything the I/O thread needs from the configuration.
pub(crate) struct Params {
    pub ep: Endpoint,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub tls_opts: TlsOptions,
    pub session: SessionConfig,
    pub connect_timeout: Duration,
    pub reconnect: bool,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub qos0_events: bool,
    pub linger: Duration,
    pub batch_scheduling: bool,
    pub spool: Option<Spool>,
}

/// Marks the thread as finished when dropped (also on a panic).
struct ExitGuard(Arc<Shared>);
impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.ctr.connected.store(false, Relaxed);
        self.0.set_first(Err(Error::Stopped));
        lock(&self.0.pubq).closed = true;
        *lock(&self.0.exited) = true;
        self.0.exited_cv.notify_all();
    }
}

pub(crate) fn run(sh: Arc<Shared>, poll: Poll, mut p: Params) {
    let _exit = ExitGuard(sh.clone());
    if p.batch_scheduling {
        batch_scheduling();
    }
    let seed = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (t ^ ((std::process::id() as u64) << 32) ^ (Arc::as_ptr(&sh) as u64)) | 1
    };
    let sp = p
        .spool
        .take()
        .map(|s| SpoolSide::new(s, p.session.max_inflight.max(1) as usize));
    let mut io = Io {
        sp,
        session: Session::new(p.session.clone()),
        sh,
        poll,
        events: Events::with_capacity(16),
        p,
        conn: None,
        attached: false,
        up: false,
        ever_up: false,
        connect_deadline: None,
        retry_at: None,
        attempt: 0,
        up_since: None,
        rng: seed,
        staged: Vec::new(),
        staged_off: 0,
        rbuf: Vec::with_capacity(64 << 10),
        rx_off: 0,
        rx_blocked: 0,
        rx_paused_at: None,
        tbuf: Vec::with_capacity(CHUNK + 1024),
        pending: VecDeque::new(),
        stop_at: None,
        dead: false,
        read_more: false,
        writes_base: 0,
        stalled: false,
        last_take: None,
        lingering: false,
    };
    io.run();
}

struct Io {
    sh: Arc<Shared>,
    poll: Poll,
    events: Events,
    p: Params,
    session: Session,
    conn: Option<Conn>,
    /// `session.handle_connected` was called for the current transport connection.
    attached: bool,
    /// CONNACK accepted on the current connection.
    up: bool,
    ever_up: bool,
    connect_deadline: Option<Instant>,
    retry_at: Option<Instant>,
    /// Failed attempts (and short-lived connections) since the last connection that stayed up for
    /// `STABLE_CONNECTION`: the exponent of the reconnect backoff.
    attempt: u32,
    /// When the current connection's CONNACK came.
    up_since: Option<Instant>,
    rng: u64,
    /// Messages taken from the queue and not yet accepted by the session (records as in the queue).
    staged: Vec<u8>,
    staged_off: usize,
    rbuf: Vec<u8>,
    /// `rbuf[rx_off..]` was read from the transport but not yet taken by the session (no event room).
    rx_off: usize,
    /// Non-zero while reading is paused: the event-queue room the session's next PUBLISH needs.
    rx_blocked: usize,
    /// When the current pause began.
    rx_paused_at: Option<Instant>,
    tbuf: Vec<u8>,
    /// Subscribe/unsubscribe commands waiting for a connection.
    pending: VecDeque<Cmd>,
    stop_at: Option<Instant>,
    /// Lost without reconnect: nothing more to do.
    dead: bool,
    /// The socket may have more to read (the read loop stopped early).
    read_more: bool,
    /// Socket writes of earlier connections.
    writes_base: u64,
    /// The session refused a publish it said it could take (e.g. no packet identifier free): wait for the
    /// socket or a timer before trying again, rather than spinning.
    stalled: bool,
    /// When messages were last taken from the queue (for `linger`).
    last_take: Option<Instant>,
    /// Sleeping at most `linger` with an empty queue, without asking publishers for a wake-up.
    lingering: bool,
    /// The disk spool, if configured.
    sp: Option<Box<SpoolSide>>,
}

impl Io {
    fn run(&mut self) {
        self.start_connect(Instant::now());
        loop {
            let now = Instant::now();
            self.take_commands(now);
            if self.retry_at.is_some_and(|t| now >= t) {
                self.retry_at = None;
                self.start_connect(now);
            }
            if self.connect_deadline.is_some_and(|d| now >= d) {
                let e = Error::Timeout(Timeout::Connect {
                    host: self.p.ep.host.clone(),
                    port: self.p.ep.port,
                    limit: self.p.connect_timeout,
                });
                self.lost(now, e);
            }
            if self.attached && self.session.poll_timeout().is_some_and(|t| now >= t) {
                self.stalled = false;
                if let Err(e) = self.session.handle_timeout(now) {
                    self.lost(now, e);
                }
            }
            if self.read_more || self.rx_room() {
                self.read_more = false;
                self.on_socket(now);
            }
            if self.up {
                self.send_queued(now);
            }
            self.transmit();
            if self.sp.is_some() {
                self.spool_turn(now);
            }
            self.sh
                .ctr
                .inflight
                .store(self.session.inflight() as u64, Relaxed);
            if self.dead || (self.stop_at.is_some() && self.should_stop(now)) {
                break;
            }
            let busy = self.read_more || self.can_send_more() || self.rx_room();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                if self.sp.is_some() {
                    let mut q = lock(&self.sh.pubq);
                    // Wake me at the high-water mark to spill; offline, at the first publish too (it is
                    // spilled OFFLINE_SPILL_DELAY later, so that a crash loses nothing).
                    q.spill_watch = true;
                    if !self.up && q.is_empty() {
                        q.io_waiting = true;
                    }
                }
                self.timeout(now)
            };
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("qmqtt: the I/O poller failed ({e}); the connection is closed");
                    break;
                }
            }
            self.sh.ctr.wakeups.fetch_add(1, Relaxed);
            let socket_ready = self.events.iter().any(|e| e.token() == SOCK);
            if socket_ready {
                self.on_socket(Instant::now());
            }
        }
        self.finish();
    }

    /// Nearest deadline as a poll timeout (None: sleep until woken).
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.attached {
            consider(self.session.poll_timeout());
        }
        consider(self.connect_deadline);
        consider(self.retry_at);
        consider(self.stop_at);
        if self.lingering {
            consider(Some(later(now, self.p.linger)));
        }
        if let Some(sp) = self.sp.as_deref() {
            consider(sp.flush_at);
            consider(sp.spill_at);
            consider(sp.retry_at);
            if sp.spool.unread() > 0 && self.up {
                consider(sp.drain_wake);
            }
        }
        t.map(|t| t.saturating_duration_since(now))
    }

    /// True when queued work could proceed right now; otherwise marks the queue `io_waiting` (if it is
    /// empty) so that the next publish wakes this thread.
    fn can_send_more(&mut self) -> bool {
        self.lingering = false;
        if !self.up
            || self.stalled
            || self
                .conn
                .as_ref()
                .is_some_and(|c| c.pending() >= HIGH_WATER)
        {
            return false;
        }
        let now = Instant::now();
        let front = if let Some(sp) = self.sp.as_deref().filter(|sp| sp.staged()) {
            Some(Hdr::decode(&sp.buf[sp.off..]))
        } else if self.sp.as_deref().is_some_and(|sp| sp.backlog_ready(now)) {
            return self.session.can_publish(QoS::AtLeastOnce)
                && self.delivered_room(QoS::AtLeastOnce) > 0;
        } else if self.sp.as_deref().is_some_and(|sp| sp.live_waits()) {
            // Strict order: queued messages wait for the backlog (which waits for a retry).
            return false;
        } else if self.staged_off < self.staged.len() {
            Some(Hdr::decode(&self.staged[self.staged_off..]))
        } else {
            let linger = self.p.linger;
            let window = (linger * 10).max(Duration::from_millis(10));
            let active = !linger.is_zero() && self.last_take.is_some_and(|t| t.elapsed() < window);
            let mut q = lock(&self.sh.pubq);
            let f = q.front();
            if f.is_none() {
                // While a stream is active with `linger`, come back after `linger` instead of having every
                // burst wake us.
                q.io_waiting = !active;
                self.lingering = active;
            }
            f
        };
        match front {
            None => false,
            Some(h) => self.session.can_publish(h.qos) && self.delivered_room(h.qos) > 0,
        }
    }

    /// Reading is paused and the event queue now has room for the message that paused it. While it has
    /// not, asks the owner's next drain for a wake-up (announced before looking, see `delivered_room`).
    fn rx_room(&self) -> bool {
        if self.rx_blocked == 0 {
            return false;
        }
        self.sh.io_wants_room.store(true, SeqCst);
        self.sh.events.message_room() >= self.rx_blocked
    }

    /// How many more messages of this QoS may enter the session without risking a Delivered event that
    /// would not fit in the event queue.
    fn delivered_room(&self, qos: QoS) -> usize {
        if qos == QoS::AtMostOnce && !self.p.qos0_events {
            return usize::MAX;
        }
        // Announce the need before looking, so a concurrent drain cannot be missed (see `poll_events`).
        self.sh.io_wants_room.store(true, SeqCst);
        let free = self.sh.events.free().saturating_sub(CONTROL_SLACK) / EV_HDR;
        let room = free.saturating_sub(self.session.inflight());
        if room > 0 {
            self.sh.io_wants_room.store(false, SeqCst);
        }
        room
    }

    fn take_commands(&mut self, now: Instant) {
        let cmds = std::mem::take(&mut *lock(&self.sh.cmds));
        for c in cmds {
            match c {
                Cmd::Stop(at) => {
                    self.stop_at = Some(self.stop_at.map_or(at, |s| s.min(at)));
                }
                c => self.pending.push_back(c),
            }
        }
        if self.up {
            self.run_pending(now);
        }
    }

    fn run_pending(&mut self, now: Instant) {
        while let Some(c) = self.pending.pop_front() {
            let r = match &c {
                Cmd::Subscribe(f, q) => self.session.subscribe(f, *q, now),
                Cmd::Unsubscribe(f) => self.session.unsubscribe(f, now),
                Cmd::Stop(_) => Ok(()),
            };
            match r {
                Ok(()) => {}
                Err(SessionError::NotReady(why)) => {
                    log::debug!("qmqtt: command deferred: {why}");
                    self.pending.push_front(c);
                    break;
                }
                Err(e) => log::error!("qmqtt: subscription command refused: {e}"),
            }
        }
    }

    fn start_connect(&mut self, now: Instant) {
        log::info!(
            "qmqtt: connecting to {}:{} (attempt {})",
            self.p.ep.host,
            self.p.ep.port,
            self.attempt + 1
        );
        let tls = self.p.tls.clone().map(|c| (c, &self.p.tls_opts));
        match Conn::connect(&self.p.ep, tls) {
            Ok(mut c) => {
                if let Err(e) = c.register(self.poll.registry(), SOCK) {
                    let e = Error::System {
                        doing: Doing::WatchSocket,
                        cause: e.into(),
                    };
                    self.lost(now, e);
                    return;
                }
                self.conn = Some(c);
                self.connect_deadline = Some(later(now, self.p.connect_timeout));
                // A loopback connect may already be complete.
                self.on_socket(now);
            }
            Err(e) => self.lost(now, e),
        }
    }

    /// The socket is ready: drive the connect/handshake, read everything, feed the session.
    fn on_socket(&mut self, now: Instant) {
        self.stalled = false;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.flush() {
            self.lost(now, e);
            return;
        }
        for i in 0.. {
            // Bytes left unfed by a pause go first; while still paused, leave the socket unread.
            if (self.rx_blocked > 0 || self.rx_off < self.rbuf.len()) && !self.feed(now) {
                return;
            }
            if i == MAX_READS {
                self.read_more = true;
                break;
            }
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            self.rbuf.clear();
            self.rx_off = 0;
            match conn.read(&mut self.rbuf) {
                Ok(0) if self.rbuf.is_empty() => break,
                Ok(_) => {}
                Err(e) => {
                    self.lost(now, e);
                    return;
                }
            }
            if !self.attached && conn.is_established() {
                self.attach(now);
            }
            if self.rbuf.is_empty() {
                continue;
            }
            self.sh
                .ctr
                .bytes_in
                .fetch_add(self.rbuf.len() as u64, Relaxed);
            if !self.attached {
                self.rx_off = self.rbuf.len();
                continue;
            }
            if !self.feed(now) {
                return;
            }
        }
        if !self.attached && self.conn.as_ref().is_some_and(|c| c.is_established()) {
            self.attach(now);
        }
    }

    /// Feed `rbuf[rx_off..]` to the session as far as the event queue has room for the messages it produces.
    /// False when it stopped: reading paused (no room), or the connection was lost.
    fn feed(&mut self, now: Instant) -> bool {
        loop {
            let room = self.sh.events.message_room();
            let r = self
                .session
                .handle_read_bounded(&self.rbuf[self.rx_off..], now, room, EV_HDR);
            self.drain_session_events(now);
            let p = match r {
                Ok(p) => p,
                Err(e) => {
                    self.lost(now, e);
                    return false;
                }
            };
            self.rx_off += p.consumed;
            let Some(need) = p.blocked else {
                self.rx_resumed(now);
                return true;
            };
            if need > self.sh.events.message_capacity() {
                // Can never fit, however much the owner drains: take it (it is dropped and counted) rather
                // than stall the connection for good. Config docs: keep max_packet_size < event_queue_bytes.
                let r = self.session.handle_read_bounded(&[], now, usize::MAX, 0);
                self.drain_session_events(now);
                if let Err(e) = r {
                    self.lost(now, e);
                    return false;
                }
                continue;
            }
            self.rx_blocked = need;
            if self.rx_room() {
                continue; // drained meanwhile
            }
            if self.rx_paused_at.is_none() {
                self.rx_paused_at = Some(now);
                self.session.handle_reader_paused(true, now);
                self.sh.ctr.rx_paused.fetch_add(1, Relaxed);
                self.sh.ctr.rx_paused_now.store(true, Relaxed);
                log::debug!(
                    "qmqtt: event queue full, reading paused until the owner drains events"
                );
            }
            return false;
        }
    }

    /// Reading runs (again): end the pause, if any.
    fn rx_resumed(&mut self, now: Instant) {
        self.rx_blocked = 0;
        if let Some(t) = self.rx_paused_at.take() {
            if self.attached {
                self.session.handle_reader_paused(false, now);
            }
            let ns = now.saturating_duration_since(t).as_nanos();
            let c = &self.sh.ctr;
            c.rx_paused_ns
                .fetch_add(ns.min(u64::MAX as u128) as u64, Relaxed);
            c.rx_paused_now.store(false, Relaxed);
        }
    }

    fn attach(&mut self, now: Instant) {
        self.attached = true;
        self.session.handle_connected(now);
    }

    fn drain_session_events(&mut self, now: Instant) {
        let mut connected = false;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SEvent::Connected { session_present } => {
                    connected = true;
                    // State first, so that whoever sees the event also sees it in `is_connected`/`stats`.
                    self.up = true;
                    self.connect_deadline = None;
                    if self.ever_up {
                        self.sh.ctr.reconnects.fetch_add(1, Relaxed);
                    }
                    self.ever_up = true;
                    // The backoff starts again only once this connection has proved stable (see `lost`):
                    // a broker that accepts and then drops us at once must not be retried in a hot loop.
                    self.up_since = Some(now);
                    self.sh.ctr.connected.store(true, Relaxed);
                    self.sh.set_first(Ok(()));
                    self.sh
                        .events
                        .push_control(Control::Connected { session_present });
                }
                SEvent::Message {
                    topic,
                    payload,
                    qos,
                    retain,
                } => {
                    self.sh.ctr.received.fetch_add(1, Relaxed);
                    if !self.sh.events.push_message(topic, payload, qos, retain) {
                        self.sh.ctr.dropped_incoming.fetch_add(1, Relaxed);
                    }
                }
                SEvent::Delivered { token, .. } if token & SPOOL_TOKEN != 0 => {
                    self.sh.ctr.acked.fetch_add(1, Relaxed);
                    let Some(sp) = self.sp.as_deref_mut() else {
                        continue;
                    };
                    let seq = token & !SPOOL_TOKEN;
                    let (tag, qos) = sp.inflight.remove(&seq).unwrap_or((0, QoS::AtLeastOnce));
                    sp.complete(seq, &self.sh);
                    if seq >= sp.run_first {
                        if !self
                            .sh
                            .events
                            .push_control(Control::Delivered { token: tag, qos })
                        {
                            log::error!("qmqtt: event queue full, Delivered for token {tag} lost");
                        }
                    } else {
                        self.sh.ctr.spool_delivered_previous.fetch_add(1, Relaxed);
                    }
                }
                SEvent::Delivered { token, qos } => {
                    if let Some(sp) = self.sp.as_deref_mut() {
                        sp.copies.done(token);
                    }
                    self.sh.ctr.acked.fetch_add(1, Relaxed);
                    if !self
                        .sh
                        .events
                        .push_control(Control::Delivered { token, qos })
                    {
                        log::error!("qmqtt: event queue full, Delivered for token {token} lost");
                    }
                }
                SEvent::Subscribed { filter, granted } => {
                    self.sh
                        .events
                        .push_control(Control::Subscribed { filter, granted });
                }
                SEvent::Unsubscribed { filter } => {
                    self.sh
                        .events
                        .push_control(Control::Unsubscribed { filter });
                }
            }
        }
        if connected {
            log::info!("qmqtt: connected to {}:{}", self.p.ep.host, self.p.ep.port);
            self.run_pending(now);
        }
    }

    /// The connection is gone (or never came): report, reset, schedule the next attempt.
    fn lost(&mut self, now: Instant, cause: Error) {
        if let Some(mut c) = self.conn.take() {
            self.writes_base += c.io_stats().socket_writes;
            let _ = c.deregister();
        }
        if self.attached {
            self.session.handle_disconnected();
            self.attached = false;
        }
        let was_up = std::mem::replace(&mut self.up, false);
        if let Some(t) = self.up_since.take() {
            if now.saturating_duration_since(t) >= STABLE_CONNECTION {
                self.attempt = 0;
            }
        }
        self.connect_deadline = None;
        self.read_more = false;
        self.rx_resumed(now);
        self.rbuf.clear();
        self.rx_off = 0;
        self.sh.ctr.connected.store(false, Relaxed);
        self.stalled = false;
        if was_up {
            // The owner reports it (its ConnectionLost event): the log says it only in detail.
            log::info!("qmqtt: connection lost: {cause}");
        } else {
            log::error!("qmqtt: connect failed: {cause}");
        }
        *lock(&self.sh.last_error) = Some(cause.clone());
        self.sh.set_first(Err(cause.clone()));
        // Reported once per loss (and for the very first attempt), not for every failed reconnect attempt:
        // those show as `Reconnecting` and in `last_error` (KX calls `disconn` once per lost connection).
        if was_up || !self.ever_up && self.attempt == 0 {
            self.sh
                .events
                .push_control(Control::ConnectionLost { cause: &cause });
        }
        // With a spool, what is left goes there when the thread finishes.
        let nothing_left = self.sp.is_some()
            || self.staged_off >= self.staged.len()
                && self.session.inflight() == 0
                && lock(&self.sh.pubq).is_empty();
        if self.stop_at.is_some() && nothing_left {
            // Stopping anyway; no point reconnecting.
            self.dead = true;
            return;
        }
        if self.p.reconnect {
            self.attempt = self.attempt.saturating_add(1);
            let delay = self.backoff();
            self.retry_at = Some(later(now, delay));
            log::info!(
                "qmqtt: reconnecting in {delay:?} (attempt {})",
                self.attempt
            );
            self.sh.events.push_control(Control::Reconnecting {
                delay,
                attempt: self.attempt,
            });
        } else {
            lock(&self.sh.pubq).closed = true;
            self.dead = true;
        }
    }

    /// backoff_min · 2^(attempt−1), capped at backoff_max, then a random point in its upper half.
    fn backoff(&mut self) -> Duration {
        let shift = self.attempt.saturating_sub(1).min(30);
        let base = self
            .p
            .backoff_min
            .checked_mul(1u32 << shift)
            .unwrap_or(self.p.backoff_max)
            .min(self.p.backoff_max);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        let nanos = half.as_nanos() as u64;
        let jitter = if nanos == 0 {
            0
        } else {
            self.rng % (nanos + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Move messages into the session while the window, the event queue and the socket allow: the
    /// spool's backlog and the queue as the [`DrainScheduler`] splits the room (strict order: the backlog
    /// first — it is older than anything in memory, including messages staged for a spill that failed).
    fn send_queued(&mut self, now: Instant) {
        // Bounded per turn, so that a producer that never pauses cannot keep this thread from reading the
        // socket, running timers and commands.
        for _ in 0..BATCHES_PER_TURN {
            if self.conn.as_ref().is_none_or(|c| c.pending() >= HIGH_WATER) {
                return;
            }
            let live_left = self.staged_off < self.staged.len();
            let (spool_left, backlog) = self
                .sp
                .as_deref()
                .map_or((false, false), |sp| (sp.staged(), sp.backlog_ready(now)));
            if !spool_left && (backlog || !live_left) && !self.fill(now) {
                return;
            }
            let mut moved = self.feed_spooled(now);
            if !self.sp.as_deref().is_some_and(|sp| sp.live_waits()) {
                moved += self.feed_live(now);
            }
            self.transmit();
            if moved == 0 || self.conn.is_none() {
                return;
            }
        }
    }

    /// Stage a batch from the spool and/or the queue. False when nothing was staged.
    fn fill(&mut self, now: Instant) -> bool {
        let live_empty = self.staged_off >= self.staged.len();
        if live_empty {
            self.staged.clear();
            self.staged_off = 0;
        }
        let mut reliable = self
            .session
            .inflight_free()
            .min(self.delivered_room(QoS::AtLeastOnce));
        let mut fire = self.delivered_room(QoS::AtMostOnce);
        if let Some(sp) = self.sp.as_deref_mut() {
            let backlog = if sp.retry_at.is_some_and(|t| now < t) {
                0
            } else {
                sp.spool.unread()
            };
            if backlog > 0 {
                let room = reliable.saturating_add(if fire > 0 { FIRE_ROOM } else { 0 });
                let plan = sp.sched.plan(now, room, backlog, room);
                sp.drain_wake = plan.wake_at;
                if plan.from_spool > 0 {
                    sp.buf.clear();
                    sp.off = 0;
                    let buf = &mut sp.buf;
                    let r = sp.spool.read_batch(plan.from_spool, CHUNK, |r| {
                        let h = Hdr {
                            topic_len: r.topic.len(),
                            payload_len: r.payload.len(),
                            qos: r.qos,
                            retain: r.retain,
                            token: r.tag,
                        };
                        buf.extend_from_slice(&h.encode());
                        buf.extend_from_slice(&r.seq.to_le_bytes());
                        buf.extend_from_slice(r.topic.as_bytes());
                        buf.extend_from_slice(r.payload);
                    });
                    match r {
                        Ok(0) => {
                            // Nothing readable although the spool counts a backlog: do not spin.
                            sp.sched.refund(plan.from_spool);
                            sp.retry_at = Some(later(now, SPOOL_RETRY));
                        }
                        Ok(n) if n < plan.from_spool => sp.sched.refund(plan.from_spool - n),
                        Ok(_) => {}
                        Err(e) => {
                            sp.sched.refund(plan.from_spool);
                            spool_failed(&self.sh, &e);
                            sp.retry_at = Some(later(now, SPOOL_RETRY));
                        }
                    }
                    sp.dirty = true;
                }
                if sp.strict {
                    // Queued messages are newer than the backlog: they wait for it.
                    return sp.staged() || !live_empty;
                }
                reliable = reliable.min(plan.from_live);
                fire = fire.min(plan.from_live);
            }
        }
        if self.sp.as_deref().is_some_and(|sp| sp.live_waits()) {
            return self.sp.as_deref().is_some_and(|sp| sp.staged());
        }
        if live_empty && (reliable > 0 || fire > 0) {
            let budget = TakeBudget {
                reliable,
                fire,
                bytes: CHUNK,
                messages: usize::MAX,
            };
            let n = lock(&self.sh.pubq).take(budget, &mut self.staged);
            if n > 0 && !self.p.linger.is_zero() {
                self.last_take = Some(now);
            }
        }
        self.staged_off < self.staged.len() || self.sp.as_deref().is_some_and(|sp| sp.staged())
    }

    /// Hand staged queue messages to the session. Returns how many it took.
    fn feed_live(&mut self, now: Instant) -> usize {
        let mut moved = 0;
        while self.staged_off < self.staged.len() {
            let h = Hdr::decode(&self.staged[self.staged_off..]);
            if !self.session.can_publish(h.qos) {
                break;
            }
            let t0 = self.staged_off + HDR;
            let t1 = t0 + h.topic_len;
            let p1 = t1 + h.payload_len;
            let topic = std::str::from_utf8(&self.staged[t0..t1]).unwrap_or("");
            let r =
                self.session
                    .publish(h.token, topic, &self.staged[t1..p1], h.qos, h.retain, now);
            let accepted = r.is_ok();
            match r {
                Ok(()) => {}
                Err(SessionError::NotReady(why)) => {
                    log::debug!("qmqtt: publish deferred: {why}");
                    self.stalled = true;
                    break;
                }
                Err(e) => {
                    log::error!("qmqtt: message {} to {topic:?} dropped: {e}", h.token);
                }
            }
            if h.qos != QoS::AtMostOnce && accepted {
                if let Some(sp) = self.sp.as_deref_mut() {
                    sp.copies.push(h.token, &self.staged[self.staged_off..p1]);
                }
            }
            self.staged_off = p1;
            moved += 1;
            let c = &self.sh.ctr;
            c.queued.fetch_sub(1, Relaxed);
            c.queued_bytes
                .fetch_sub((h.topic_len + h.payload_len) as u64, Relaxed);
            c.sent.fetch_add(1, Relaxed);
            if h.qos == QoS::AtMostOnce && self.p.qos0_events {
                self.sh.events.push_control(Control::Delivered {
                    token: h.token,
                    qos: h.qos,
                });
            }
        }
        moved
    }

    /// Hand staged spool records to the session. Returns how many it took.
    fn feed_spooled(&mut self, now: Instant) -> usize {
        if self.sp.as_deref().is_none_or(|sp| !sp.staged()) {
            return 0;
        }
        // Room for the Delivered events, as for queued messages (see `delivered_room`).
        let mut room = [
            self.delivered_room(QoS::AtMostOnce),
            self.delivered_room(QoS::AtLeastOnce),
        ];
        let Some(sp) = self.sp.as_deref_mut() else {
            return 0;
        };
        let mut moved = 0;
        while sp.off < sp.buf.len() {
            let h = Hdr::decode(&sp.buf[sp.off..]);
            let r = &mut room[(h.qos != QoS::AtMostOnce) as usize];
            if !self.session.can_publish(h.qos) || *r == 0 {
                break;
            }
            *r -= 1;
            let mut sq = [0u8; 8];
            sq.copy_from_slice(&sp.buf[sp.off + HDR..sp.off + SHDR]);
            let seq = u64::from_le_bytes(sq);
            let t0 = sp.off + SHDR;
            let t1 = t0 + h.topic_len;
            let p1 = t1 + h.payload_len;
            let topic = std::str::from_utf8(&sp.buf[t0..t1]).unwrap_or("");
            let r = self.session.publish(
                SPOOL_TOKEN | seq,
                topic,
                &sp.buf[t1..p1],
                h.qos,
                h.retain,
                now,
            );
            let done = match r {
                Ok(()) => h.qos == QoS::AtMostOnce,
                Err(SessionError::NotReady(why)) => {
                    log::debug!("qmqtt: publish deferred: {why}");
                    self.stalled = true;
                    break;
                }
                Err(e) => {
                    log::error!("qmqtt: spooled message {seq} to {topic:?} dropped: {e}");
                    true
                }
            };
            sp.off = p1;
            moved += 1;
            self.sh.ctr.sent.fetch_add(1, Relaxed);
            sp.tracker.sent(seq);
            if done {
                // QoS 0: handed to the socket, as for queued messages (at most once).
                sp.complete(seq, &self.sh);
                if seq < sp.run_first {
                    self.sh.ctr.spool_delivered_previous.fetch_add(1, Relaxed);
                } else if self.p.qos0_events && h.qos == QoS::AtMostOnce {
                    self.sh.events.push_control(Control::Delivered {
                        token: h.token,
                        qos: h.qos,
                    });
                }
            } else {
                sp.inflight.insert(seq, (h.token, h.qos));
            }
        }
        if sp.off >= sp.buf.len() {
            sp.buf.clear();
            sp.off = 0;
        }
        moved
    }

    /// Once per turn with a spool: spill what cannot be sent, flush, update the stats.
    fn spool_turn(&mut self, now: Instant) {
        let up = self.up;
        let socket_full = self
            .conn
            .as_ref()
            .is_some_and(|c| c.pending() >= HIGH_WATER);
        let live_left = self.staged_off < self.staged.len();
        let backlog_first = self.sp.as_deref().is_some_and(|sp| sp.live_waits());
        // Only a connection that cannot take messages now needs a look at the queue (its lock).
        let maybe_blocked = !up
            || self.stalled
            || socket_full
            || self.session.inflight_free() == 0
            || backlog_first;
        let (empty, high, low, front) = if maybe_blocked {
            let q = lock(&self.sh.pubq);
            (
                q.is_empty(),
                q.over_high_water(),
                q.over_low_water().is_some(),
                q.front().map(|h| h.qos),
            )
        } else {
            (true, false, false, None)
        };
        let front = if live_left {
            Some(Hdr::decode(&self.staged[self.staged_off..]).qos)
        } else {
            front
        };
        let window_full = front.is_some_and(|q| !self.session.can_publish(q));
        let Some(sp) = self.sp.as_deref_mut() else {
            return;
        };
        if sp.retry_at.is_some_and(|t| now >= t) {
            sp.retry_at = None;
        }
        if sp.drain_wake.is_some_and(|t| now >= t) {
            sp.drain_wake = None;
        }
        let retrying = sp.retry_at.is_some();
        let blocked = !up || self.stalled || socket_full || window_full || backlog_first;
        let mut all = false;
        if !up && !retrying && (live_left || !empty) {
            let at = *sp
                .spill_at
                .get_or_insert_with(|| later(now, OFFLINE_SPILL_DELAY));
            if now >= at {
                sp.spill_at = None;
                all = true;
            }
        } else {
            sp.spill_at = None;
        }
        let spill = blocked && (high || (sp.spilling && low));
        sp.spilling = spill;
        if !retrying && (all || spill) {
            self.spill(now, all);
        }
        let Some(sp) = self.sp.as_deref_mut() else {
            return;
        };
        match sp.spool.flush(now) {
            Ok(t) => sp.flush_at = t,
            Err(e) => {
                spool_failed(&self.sh, &e);
                sp.flush_at = Some(later(now, SPOOL_RETRY));
            }
        }
        if sp.dirty {
            sp.dirty = false;
            store_spool_stats(&self.sh.ctr, &mut sp.spool);
        }
    }

    /// Move the oldest messages held in memory (staged first, then the queue's front) to the spool: all of
    /// them, or until the queue is below half. Returns false when stopped by the spool (full, an error)
    /// or when nothing is left; true when the per-call bound ended it.
    fn spill(&mut self, now: Instant, all: bool) -> bool {
        for _ in 0..SPILL_BATCHES_PER_TURN {
            let Some(sp) = self.sp.as_deref() else {
                return false;
            };
            if self.staged_off >= self.staged.len() {
                self.staged.clear();
                self.staged_off = 0;
                let mut q = lock(&self.sh.pubq);
                let (bytes, messages) = if all {
                    (usize::MAX, usize::MAX)
                } else {
                    match q.over_low_water() {
                        Some(x) => x,
                        None => return false,
                    }
                };
                let budget = TakeBudget {
                    reliable: usize::MAX,
                    fire: usize::MAX,
                    bytes: bytes.min(sp.batch_limit),
                    messages,
                };
                if q.take(budget, &mut self.staged) == 0 {
                    return false;
                }
            }
            if !self.append_staged(now) {
                return false;
            }
        }
        true
    }

    /// Append `staged[staged_off..]` to the spool, in appends of at most `batch_limit` bytes. False when the
    /// spool refused (the rest stays staged, in memory).
    fn append_staged(&mut self, now: Instant) -> bool {
        let Some(sp) = self.sp.as_deref_mut() else {
            return false;
        };
        while self.staged_off < self.staged.len() {
            let (mut end, mut n, mut sbytes, mut bytes) = (self.staged_off, 0u64, 0usize, 0u64);
            while end < self.staged.len() {
                let h = Hdr::decode(&self.staged[end..]);
                let sb = spool::format::HDR + h.topic_len + h.payload_len;
                if n > 0 && sbytes + sb > sp.batch_limit {
                    break;
                }
                sbytes += sb;
                bytes += (h.topic_len + h.payload_len) as u64;
                n += 1;
                end += h.record_len();
            }
            let batch = &self.staged[self.staged_off..end];
            let mut pos = 0;
            let msgs = std::iter::from_fn(|| {
                if pos >= batch.len() {
                    return None;
                }
                let h = Hdr::decode(&batch[pos..]);
                let t0 = pos + HDR;
                let t1 = t0 + h.topic_len;
                pos = t1 + h.payload_len;
                Some(Msg {
                    topic: std::str::from_utf8(&batch[t0..t1]).unwrap_or(""),
                    payload: &batch[t1..pos],
                    qos: h.qos,
                    retain: h.retain,
                    tag: h.token,
                })
            });
            let r = sp.spool.append_batch(msgs);
            sp.dirty = true;
            match r {
                Ok(_) => {
                    self.staged_off = end;
                    let c = &self.sh.ctr;
                    c.queued.fetch_sub(n, Relaxed);
                    c.queued_bytes.fetch_sub(bytes, Relaxed);
                    c.spilled.fetch_add(n, Relaxed);
                }
                Err(e) => {
                    if matches!(e, SpoolError::BatchTooLarge { .. }) {
                        // One message larger than segment_bytes: it stays in memory.
                        if !sp.warned_large {
                            sp.warned_large = true;
                            spool_failed(&self.sh, &e);
                        }
                    } else {
                        spool_failed(&self.sh, &e);
                    }
                    sp.retry_at = Some(later(now, SPOOL_RETRY));
                    return false;
                }
            }
        }
        self.staged.clear();
        self.staged_off = 0;
        true
    }

    /// Session output → transport, then flush.
    fn transmit(&mut self) {
        self.tbuf.clear();
        self.session.poll_transmit(&mut self.tbuf);
        let Some(conn) = self.conn.as_mut() else {
            self.tbuf.clear();
            return;
        };
        if !self.tbuf.is_empty() {
            self.sh
                .ctr
                .bytes_out
                .fetch_add(self.tbuf.len() as u64, Relaxed);
            // Hands the buffer over (a swap when the transport has nothing queued): no copy per batch.
            if let Err(e) = conn.write_owned(&mut self.tbuf) {
                self.tbuf.clear();
                self.lost(Instant::now(), e);
                return;
            }
        }
        if conn.pending() > 0 {
            let r = conn.flush();
            self.sh
                .ctr
                .socket_writes
                .store(self.writes_base + conn.io_stats().socket_writes, Relaxed);
            if let Err(e) = r {
                self.lost(Instant::now(), e);
            }
        }
    }

    /// While stopping: done when everything is delivered, or at the deadline.
    fn should_stop(&self, now: Instant) -> bool {
        if self.stop_at.is_some_and(|d| now >= d) {
            return true;
        }
        self.staged_off >= self.staged.len()
            && lock(&self.sh.pubq).is_empty()
            && self.session.inflight() == 0
            && self.conn.as_ref().is_none_or(|c| c.pending() == 0)
            && self.sp.as_deref().is_none_or(|sp| sp.drained())
    }

    /// Send DISCONNECT if connected, push it out (waiting for the socket at most until the stop deadline),
    /// close.
    fn finish(&mut self) {
        lock(&self.sh.pubq).closed = true;
        if self.up {
            self.session.disconnect();
            self.transmit();
            let deadline = self.stop_at.unwrap_or_else(Instant::now);
            while self.conn.as_ref().is_some_and(|c| c.pending() > 0) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let _ = self.poll.poll(
                    &mut self.events,
                    Some(deadline.saturating_duration_since(now)),
                );
                if let Some(c) = self.conn.as_mut() {
                    if c.flush().is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(mut c) = self.conn.take() {
            c.close(); // TLS close_notify, shutdown of the sending side
            let _ = c.deregister();
        }
        if self.attached {
            self.session.handle_disconnected();
            self.attached = false;
        }
        self.up = false;
        self.sh.ctr.connected.store(false, Relaxed);
        self.sh.set_first(Err(Error::LocallyClosed));
        if self.sp.is_some() {
            // What is still in memory goes to the spool, to be sent after a restart. (Spooled messages in
            // flight stay unacknowledged in the spool and are sent again.)
            let now = Instant::now();
            if let Some(sp) = self.sp.as_deref_mut() {
                sp.retry_at = None;
                // Queued messages still unacknowledged in the window go first (they are the oldest in
                // memory); the broker may have them already: at least once.
                sp.copies.compact();
                if !sp.copies.buf.is_empty() {
                    let c = &self.sh.ctr;
                    c.queued.fetch_add(sp.copies.idx.len() as u64, Relaxed);
                    let hdrs = (sp.copies.idx.len() * HDR) as u64;
                    c.queued_bytes
                        .fetch_add(sp.copies.buf.len() as u64 - hdrs, Relaxed);
                    sp.copies
                        .buf
                        .extend_from_slice(&self.staged[self.staged_off..]);
                    std::mem::swap(&mut sp.copies.buf, &mut self.staged);
                    self.staged_off = 0;
                    sp.copies.buf.clear();
                    sp.copies.idx.clear();
                    self.sh.ctr.inflight.store(0, Relaxed);
                }
            }
            while self.spill(now, true) {}
            if let Some(mut sp) = self.sp.take() {
                store_spool_stats(&self.sh.ctr, &mut sp.spool);
                if let Err(e) = sp.spool.close() {
                    spool_failed(&self.sh, &e);
                }
            }
        }
    }
}

/// Ask Linux to treat this thread as SCHED_BATCH: when a publisher wakes it, it does not preempt the
/// publisher (q's main thread) but runs on the next scheduling opportunity. On a busy 2-core gateway this
/// turns a publish that wakes the thread from ~10 µs (a context switch) into a plain `eventfd` write.
fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter struct.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if r != 0 {
            log::debug!(
                "qmqtt: SCHED_BATCH not available for the I/O thread: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(c: &InflightCopies) -> Vec<(Token, Vec<u8>)> {
        let mut pos = c.head;
        c.idx
            .iter()
            .filter_map(|&(t, len, done)| {
                let r = c.buf[pos..pos + len].to_vec();
                pos += len;
                (!done).then_some((t, r))
            })
            .collect()
    }

    #[test]
    fn inflight_copies_keep_the_unacknowledged_in_order() {
        let mut c = InflightCopies::default();
        let rec = |i: u8| vec![i; 3000];
        for t in 1..=5u64 {
            c.push(t, &rec(t as u8));
        }
        c.done(2);
        c.done(1); // front pops 1 and 2
        assert_eq!(c.head, 6000);
        c.done(4);
        c.done(42); // unknown: ignored
        assert_eq!(tokens(&c), vec![(3, rec(3)), (5, rec(5))]);
        c.push(6, &rec(6));
        c.compact();
        assert_eq!((c.head, c.buf.len()), (0, 9000));
        assert_eq!(tokens(&c), vec![(3, rec(3)), (5, rec(5)), (6, rec(6))]);
        for t in [3, 5, 6] {
            c.done(t);
        }
        assert!(c.buf.is_empty() && c.idx.is_empty());
        // A long in-order stream never holds more than the window (here 2) plus garbage below the bound.
        for t in 100..10_000u64 {
            c.push(t, &[1u8; 100]);
            if t >= 101 {
                c.done(t - 1);
            }
            assert!(c.buf.len() <= 8192 + 200, "{}", c.buf.len());
        }
    }
}
