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
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token as MioToken};

use super::events::{Control, EV_HDR};
use super::queue::{Hdr, TakeBudget, HDR};
use super::{lock, transport_msg, Cmd, Shared};
use crate::codec::{ConnectReturnCode, QoS};
use crate::session::{Event as SEvent, Session, SessionConfig, SessionError, Token};
use crate::transport::{Conn, Endpoint, TlsOptions};

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
}

/// Marks the thread as finished when dropped (also on a panic).
struct ExitGuard(Arc<Shared>);
impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.ctr.connected.store(false, Relaxed);
        self.0
            .set_first(Err("the connection's I/O thread stopped".into()));
        lock(&self.0.pubq).closed = true;
        *lock(&self.0.exited) = true;
        self.0.exited_cv.notify_all();
    }
}

pub(crate) fn run(sh: Arc<Shared>, poll: Poll, p: Params) {
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
    let mut io = Io {
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
        rng: seed,
        staged: Vec::new(),
        staged_off: 0,
        rbuf: Vec::with_capacity(64 << 10),
        rx_off: 0,
        rx_blocked: 0,
        rx_paused_at: None,
        tbuf: Vec::with_capacity(CHUNK + 1024),
        qos_of: HashMap::new(),
        pending: VecDeque::new(),
        stop_at: None,
        dead: false,
        read_more: false,
        writes_base: 0,
        stalled: false,
        last_take: None,
        lingering: false,
    };
    io.qos_of.reserve(io.p.session.max_inflight as usize);
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
    /// Failed attempts since the last successful connection.
    attempt: u32,
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
    /// QoS of each QoS 1/2 message handed to the session, until its Delivered event.
    qos_of: HashMap<Token, QoS>,
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
                let msg = format!(
                    "no MQTT connection to {}:{} within the connect timeout ({:?}); is the broker up and \
                     reachable? (raise connectTimeout for slow links)",
                    self.p.ep.host, self.p.ep.port, self.p.connect_timeout
                );
                self.lost(now, msg);
            }
            if self.attached && self.session.poll_timeout().is_some_and(|t| now >= t) {
                self.stalled = false;
                if let Err(e) = self.session.handle_timeout(now) {
                    self.lost(now, session_msg(&e));
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
            consider(Some(super::later(now, self.p.linger)));
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
        let front = if self.staged_off < self.staged.len() {
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
                Err(e) => log::error!("qmqtt: subscription command refused: {}", session_msg(&e)),
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
                    self.lost(now, format!("cannot watch the socket: {e}"));
                    return;
                }
                self.conn = Some(c);
                self.connect_deadline = Some(super::later(now, self.p.connect_timeout));
                // A loopback connect may already be complete.
                self.on_socket(now);
            }
            Err(e) => {
                let m = transport_msg(&e);
                self.lost(now, m);
            }
        }
    }

    /// The socket is ready: drive the connect/handshake, read everything, feed the session.
    fn on_socket(&mut self, now: Instant) {
        self.stalled = false;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.flush() {
            let m = transport_msg(&e);
            self.lost(now, m);
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
                    let m = transport_msg(&e);
                    self.lost(now, m);
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
                    self.lost(now, session_msg(&e));
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
                    self.lost(now, session_msg(&e));
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
                    self.attempt = 0;
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
                SEvent::Delivered { token } => {
                    let qos = self.qos_of.remove(&token).unwrap_or(QoS::AtLeastOnce);
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
    fn lost(&mut self, now: Instant, cause: String) {
        if let Some(mut c) = self.conn.take() {
            self.writes_base += c.io_stats().socket_writes;
            let _ = c.deregister();
        }
        if self.attached {
            self.session.handle_disconnected();
            self.attached = false;
        }
        let was_up = std::mem::replace(&mut self.up, false);
        self.connect_deadline = None;
        self.read_more = false;
        self.rx_resumed(now);
        self.rbuf.clear();
        self.rx_off = 0;
        self.sh.ctr.connected.store(false, Relaxed);
        self.stalled = false;
        if was_up {
            log::warn!("qmqtt: connection lost: {cause}");
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
        let nothing_left = self.staged_off >= self.staged.len()
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
            self.retry_at = Some(super::later(now, delay));
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

    /// Move queued messages into the session while the window, the event queue and the socket allow.
    fn send_queued(&mut self, now: Instant) {
        // Bounded per turn, so that a producer that never pauses cannot keep this thread from reading the
        // socket, running timers and commands.
        for _ in 0..BATCHES_PER_TURN {
            if self.conn.as_ref().is_none_or(|c| c.pending() >= HIGH_WATER) {
                return;
            }
            if self.staged_off >= self.staged.len() {
                self.staged.clear();
                self.staged_off = 0;
                let reliable = self
                    .session
                    .inflight_free()
                    .min(self.delivered_room(QoS::AtLeastOnce));
                let fire = self.delivered_room(QoS::AtMostOnce);
                let budget = TakeBudget {
                    reliable,
                    fire,
                    bytes: CHUNK,
                };
                let n = lock(&self.sh.pubq).take(budget, &mut self.staged);
                if n > 0 && !self.p.linger.is_zero() {
                    self.last_take = Some(now);
                }
                if n == 0 {
                    return;
                }
            }
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
                let r = self.session.publish(
                    h.token,
                    topic,
                    &self.staged[t1..p1],
                    h.qos,
                    h.retain,
                    now,
                );
                match r {
                    Ok(()) => {}
                    Err(SessionError::NotReady(why)) => {
                        log::debug!("qmqtt: publish deferred: {why}");
                        self.stalled = true;
                        break;
                    }
                    Err(e) => {
                        log::error!(
                            "qmqtt: message {} to {topic:?} dropped: {}",
                            h.token,
                            session_msg(&e)
                        );
                    }
                }
                self.staged_off = p1;
                moved += 1;
                let c = &self.sh.ctr;
                c.queued.fetch_sub(1, Relaxed);
                c.queued_bytes
                    .fetch_sub((h.topic_len + h.payload_len) as u64, Relaxed);
                c.sent.fetch_add(1, Relaxed);
                if h.qos != QoS::AtMostOnce {
                    self.qos_of.insert(h.token, h.qos);
                } else if self.p.qos0_events {
                    self.sh.events.push_control(Control::Delivered {
                        token: h.token,
                        qos: h.qos,
                    });
                }
            }
            self.transmit();
            if moved == 0 || self.conn.is_none() {
                return;
            }
        }
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
            if let Err(e) = conn.write(&self.tbuf) {
                self.tbuf.clear();
                let m = transport_msg(&e);
                self.lost(Instant::now(), m);
                return;
            }
            self.tbuf.clear();
        }
        if conn.pending() > 0 {
            let r = conn.flush();
            self.sh
                .ctr
                .socket_writes
                .store(self.writes_base + conn.io_stats().socket_writes, Relaxed);
            if let Err(e) = r {
                let m = transport_msg(&e);
                self.lost(Instant::now(), m);
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
        self.sh.set_first(Err(
            "the client was disconnected before the connection was made".into(),
        ));
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

/// A session error as a sentence that says what to do.
pub(crate) fn session_msg(e: &SessionError) -> String {
    match e {
        SessionError::Refused(code) => {
            let (what, fix) = match code {
                ConnectReturnCode::BadUsernameOrPassword => {
                    ("bad user name or password", "check username and password")
                }
                ConnectReturnCode::NotAuthorized => (
                    "not authorized",
                    "check the credentials and the broker's access rules",
                ),
                ConnectReturnCode::IdentifierRejected => (
                    "client id rejected",
                    "use another client id (unique, allowed characters and length)",
                ),
                ConnectReturnCode::ServerUnavailable => {
                    ("server unavailable", "retry later or check the broker")
                }
                ConnectReturnCode::UnacceptableProtocolVersion => (
                    "unacceptable protocol version",
                    "set MQTTVersion to one the broker supports (3 or 4)",
                ),
                ConnectReturnCode::Accepted | ConnectReturnCode::Other(_) => {
                    ("refused", "check the broker's log")
                }
            };
            format!("the broker refused the connection: {what} ({fix})")
        }
        SessionError::Protocol(m) => format!("protocol error from the broker: {m}"),
        SessionError::Timeout(m) => format!(
            "timeout: the broker did not send {m} in time (the link or the broker is stalled; the \
             connection is dropped and made again)"
        ),
        SessionError::NotReady(m) => format!("not ready: {m}"),
        SessionError::Invalid(m) => m.clone(),
    }
}
