//! The send side: move as many queued messages into the session as the in-flight window, the event queue's
//! room (for their Delivered events, which are never dropped) and the socket allow — the spool's backlog and
//! the queue as the [`DrainScheduler`](crate::spool::DrainScheduler) splits the room — and hand the encoded
//! bytes to the transport in one write.
//!
//! QoS 1/2 messages enter the session in batches ([`Io::window_room`]): once the window has been full, it is
//! refilled when at most half of it is in flight (or when all that is queued fits), so that under load each
//! refill is half a window of PUBLISH packets in one write and one TLS record, not one message per
//! acknowledgement; while the window has more room than that, a message leaves at once.
//!
//! Before sleeping the thread marks the publish queue `io_waiting` if the queue is empty, so the first
//! publish wakes it; while it is busy, or blocked by a full window, publishers make no syscall. With
//! `linger`, an active stream is collected every `linger` instead.
use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use super::timer::Timer;
use super::Io;
use crate::client::events::EV_HDR;
use crate::client::queue::{split_body, Hdr, TakeBudget, HDR};
use crate::client::shared::lock;
use crate::client::Event;
use crate::clock::later;
use crate::codec::Properties;
use crate::codec::QoS;
use crate::session::SessionError;

/// Bytes of queued messages taken per batch.
pub(super) const CHUNK: usize = 64 << 10;
/// Batches per turn of the I/O loop.
const BATCHES_PER_TURN: usize = 8;
/// Stop encoding more messages while the transport holds this many unsent bytes (the socket is slow).
pub(super) const HIGH_WATER: usize = 256 << 10;
/// Event-queue bytes kept free for connection events beyond the Delivered records.
const CONTROL_SLACK: usize = 16 << 10;

/// Messages taken from the publish queue and not yet accepted by the session (records as in the queue).
#[derive(Default)]
pub(super) struct Staged {
    pub buf: Vec<u8>,
    pub off: usize,
}

impl Staged {
    /// Records are waiting.
    pub fn left(&self) -> bool {
        self.off < self.buf.len()
    }

    /// The next record's header.
    pub fn front(&self) -> Option<Hdr> {
        self.left().then(|| Hdr::decode(&self.buf[self.off..]))
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.off = 0;
    }
}

/// The send side's state.
pub(super) struct Tx {
    /// The session's output for the transport (swapped with the transport's buffer, not copied).
    buf: Vec<u8>,
    pub staged: Staged,
    /// The session refused a publish it said it could take (e.g. no packet identifier free): wait for the
    /// socket or a timer before trying again, rather than spinning.
    pub stalled: bool,
    /// When messages were last taken from the queue (for `linger`).
    last_take: Option<Instant>,
    /// The window has been full since it last drained to half: refill in a batch ([`Io::window_room`]).
    refill_hold: Cell<bool>,
    /// The last look found queued QoS 1/2 messages held back by the window (`Config::ack_interval`).
    pub acks_awaited: Cell<bool>,
}

impl Default for Tx {
    fn default() -> Tx {
        Tx {
            buf: Vec::with_capacity(CHUNK + 1024),
            staged: Staged::default(),
            stalled: false,
            last_take: None,
            refill_hold: Cell::new(false),
            acks_awaited: Cell::new(false),
        }
    }
}

impl Io {
    /// The transport holds so much unsent that encoding more would only queue it.
    pub(super) fn socket_full(&self) -> bool {
        self.link.pending() >= HIGH_WATER
    }

    /// True when queued work could proceed right now; otherwise marks the queue `io_waiting` (if it is
    /// empty) so that the next publish wakes this thread.
    pub(super) fn can_send_more(&mut self) -> bool {
        self.timers.stop(Timer::Linger);
        // Set again by `window_open` if that is still why nothing moves (not when the link, the socket or a
        // stall is: collecting acknowledgements would not help then).
        self.tx.acks_awaited.set(false);
        if !self.link.up || self.tx.stalled || self.socket_full() {
            return false;
        }
        let now = Instant::now();
        let mut queued = false;
        let front = if let Some(h) = self.sp.as_deref().and_then(|sp| sp.front()) {
            Some(h)
        } else if self
            .sp
            .as_deref()
            .is_some_and(|sp| sp.backlog_ready(now, &self.timers))
        {
            return self.window_open()
                && self.session.can_publish(QoS::AtLeastOnce)
                && self.delivered_room(QoS::AtLeastOnce) > 0;
        } else if self.sp.as_deref().is_some_and(|sp| sp.live_waits()) {
            // Strict order: queued messages wait for the backlog (which waits for a retry).
            return false;
        } else if let Some(h) = self.tx.staged.front() {
            Some(h)
        } else {
            let linger = self.p.linger;
            let window = (linger * 10).max(Duration::from_millis(10));
            let active =
                !linger.is_zero() && self.tx.last_take.is_some_and(|t| t.elapsed() < window);
            let mut q = lock(&self.sh.pubq);
            let f = q.front();
            queued = true;
            if f.is_none() {
                // While a stream is active with `linger`, come back after `linger` instead of having every
                // burst wake us.
                q.io_waiting = !active;
                if active {
                    self.timers.set(Timer::Linger, later(now, linger));
                }
            }
            f
        };
        match front {
            None => false,
            Some(h) => {
                self.session.can_publish(h.qos)
                    && (!queued || h.qos == QoS::AtMostOnce || self.window_open())
                    && self.delivered_room(h.qos) > 0
            }
        }
    }

    /// QoS 1/2 messages waiting to enter the session, for [`Io::window_room`]: those in the publish queue or
    /// staged; with a spool backlog, more than any window.
    fn waiting(&self) -> usize {
        if self.sp.as_deref().is_some_and(|sp| sp.has_backlog()) {
            usize::MAX
        } else {
            self.sh.ctr.queued.load(Relaxed) as usize
        }
    }

    /// Queued QoS 1/2 messages may enter the session now ([`Io::window_room`]). While they wait for more
    /// acknowledgements, the ones received are acknowledged at once ([`Conn::ack_now`]): a broker with Nagle's
    /// algorithm would otherwise hold the next ones back until the delayed-ACK timeout.
    ///
    /// [`Conn::ack_now`]: crate::transport::Conn::ack_now
    fn window_open(&self) -> bool {
        let open = self.window_room(self.waiting()) > 0;
        self.tx.acks_awaited.set(!open);
        if !open {
            if let Some(c) = self.link.conn.as_ref() {
                c.ack_now();
            }
        }
        open
    }

    /// How many QoS 1/2 messages may enter the session now, `pending` being how many wait: the whole free
    /// window — except once the window has been full, when none until at most half of it is in flight
    /// again, unless all `pending` fit (the window is refilled in batches, not one message per
    /// acknowledgement, and a lone message still leaves at once; see the module docs).
    pub(super) fn window_room(&self, pending: usize) -> usize {
        let free = self.session.inflight_free();
        let window = free + self.session.inflight();
        let hold = &self.tx.refill_hold;
        if free == 0 {
            hold.set(true);
        } else if free >= window - window / 2 {
            hold.set(false);
        }
        if !hold.get() || pending <= free {
            free
        } else {
            0
        }
    }

    /// How many more messages of this QoS may enter the session without risking a Delivered event that
    /// would not fit in the event queue.
    pub(super) fn delivered_room(&self, qos: QoS) -> usize {
        if qos == QoS::AtMostOnce && !self.p.qos0_events {
            return usize::MAX;
        }
        // Announce the need before looking, so a concurrent drain cannot be missed (see `poll_events`).
        self.sh.io_wants_room.store(true, SeqCst);
        let free = self.sh.events.free().saturating_sub(CONTROL_SLACK) / EV_HDR;
        let room = free.saturating_sub(self.session.inflight());
        if room > 0 {
            // Withdrawn only if the receive side does not wait for room too (`rx_room`): the flag is
            // theirs as well, and the next drain must still wake this thread to resume reading.
            if !self.rx.waits_for_room() {
                self.sh.io_wants_room.store(false, SeqCst);
            }
        } else {
            self.sh.owner_must_drain();
        }
        room
    }

    /// Move messages into the session while the window, the event queue and the socket allow: the
    /// spool's backlog and the queue as the scheduler splits the room (strict order: the backlog first — it
    /// is older than anything in memory, including messages staged for a spill that failed).
    pub(super) fn send_queued(&mut self, now: Instant) {
        // Bounded per turn, so that a producer that never pauses cannot keep this thread from reading the
        // socket, running timers and commands.
        for _ in 0..BATCHES_PER_TURN {
            if self.link.conn.is_none() || self.socket_full() {
                return;
            }
            let live_left = self.tx.staged.left();
            let (spool_left, backlog) = self.sp.as_deref().map_or((false, false), |sp| {
                (sp.staged(), sp.backlog_ready(now, &self.timers))
            });
            if !spool_left && (backlog || !live_left) && !self.fill(now) {
                return;
            }
            let mut moved = self.feed_spooled(now);
            if !self.sp.as_deref().is_some_and(|sp| sp.live_waits()) {
                moved += self.feed_live(now);
            }
            self.transmit();
            if moved == 0 || self.link.conn.is_none() {
                return;
            }
        }
    }

    /// Stage a batch from the spool and/or the queue. False when nothing was staged.
    fn fill(&mut self, now: Instant) -> bool {
        let live_empty = !self.tx.staged.left();
        if live_empty {
            self.tx.staged.clear();
        }
        let mut reliable = self
            .window_room(self.waiting())
            .min(self.delivered_room(QoS::AtLeastOnce));
        let mut fire = self.delivered_room(QoS::AtMostOnce);
        if let Some(sp) = self.sp.as_deref_mut() {
            if let Some(from_live) =
                sp.stage_backlog(now, reliable, fire, &mut self.timers, &self.sh)
            {
                if sp.strict {
                    // Queued messages are newer than the backlog: they wait for it.
                    return sp.staged() || !live_empty;
                }
                reliable = reliable.min(from_live);
                fire = fire.min(from_live);
            }
            if sp.live_waits() {
                return sp.staged();
            }
        }
        if live_empty && (reliable > 0 || fire > 0) {
            let budget = TakeBudget {
                reliable,
                fire,
                bytes: CHUNK,
                messages: usize::MAX,
            };
            let mut q = lock(&self.sh.pubq);
            let n = q.take(budget, &mut self.tx.staged.buf);
            self.sh.release_queue(q);
            if n > 0 && !self.p.linger.is_zero() {
                self.tx.last_take = Some(now);
            }
        }
        self.tx.staged.left() || self.sp.as_deref().is_some_and(|sp| sp.staged())
    }

    /// Hand staged queue messages to the session. Returns how many it took.
    fn feed_live(&mut self, now: Instant) -> usize {
        let (mut moved, mut moved_bytes) = (0, 0);
        let st = &mut self.tx.staged;
        while st.left() {
            let h = Hdr::decode(&st.buf[st.off..]);
            if !self.session.can_publish(h.qos) {
                break;
            }
            let t0 = st.off + h.topic_at();
            let t1 = t0 + h.topic_len;
            let p1 = t1 + h.payload_len;
            let topic = || crate::codec::primitives::utf8(&st.buf[t0..t1]).unwrap_or("");
            let r = if h.pre > 0 {
                // Queued as its PUBLISH packet (QoS 0, MQTT 3.1.1).
                self.session
                    .publish_qos0_packet(&st.buf[st.off + HDR..p1], now)
            } else if h.props {
                let (props, payload) = split_body(true, &st.buf[t1..p1]);
                let props = Properties::from_validated(props);
                self.session
                    .publish_with(h.token, topic(), payload, h.qos, h.retain, props, now)
            } else {
                self.session
                    .publish(h.token, topic(), &st.buf[t1..p1], h.qos, h.retain, now)
            };
            let accepted = r.is_ok();
            match r {
                Ok(()) => {}
                Err(SessionError::NotReady(why)) => {
                    log::debug!("qmqtt: publish deferred: {why}");
                    self.tx.stalled = true;
                    break;
                }
                Err(SessionError::Failed(cause)) => {
                    log::warn!(
                        "qmqtt: message {} to {:?} failed: {cause}",
                        h.token,
                        topic()
                    );
                    self.sh.ctr.failed.fetch_add(1, Relaxed);
                    self.sh.events.push_event(Event::Failed {
                        token: h.token,
                        qos: h.qos,
                        cause: &cause,
                    });
                }
                Err(e) => log::error!("qmqtt: message {} to {:?} dropped: {e}", h.token, topic()),
            }
            if h.qos != QoS::AtMostOnce && accepted {
                if let Some(sp) = self.sp.as_deref_mut() {
                    sp.copies.push(h.token, &st.buf[st.off..p1]);
                }
            }
            st.off = p1;
            moved += 1;
            moved_bytes += h.topic_len + h.payload_len;
            if h.qos == QoS::AtMostOnce && self.p.qos0_events {
                self.sh.events.push_event(Event::Delivered {
                    token: h.token,
                    qos: h.qos,
                });
            }
        }
        // Once per batch: the owner's threads add to `queued` on every publish, so a write per message
        // here would move that cache line between the cores for every message.
        if moved > 0 {
            let c = &self.sh.ctr;
            c.queued.fetch_sub(moved as u64, Relaxed);
            c.queued_bytes.fetch_sub(moved_bytes as u64, Relaxed);
            c.sent.fetch_add(moved as u64, Relaxed);
        }
        moved
    }

    /// Hand staged spool records to the session. Returns how many it took.
    fn feed_spooled(&mut self, now: Instant) -> usize {
        if self.sp.as_deref().is_none_or(|sp| !sp.staged()) {
            return 0;
        }
        // Room for the Delivered events, as for queued messages (see `delivered_room`).
        let room = [
            self.delivered_room(QoS::AtMostOnce),
            self.delivered_room(QoS::AtLeastOnce),
        ];
        let Some(sp) = self.sp.as_deref_mut() else {
            return 0;
        };
        let (moved, stalled) = sp.feed(&mut self.session, room, &self.sh, self.p.qos0_events, now);
        self.tx.stalled |= stalled;
        moved
    }

    /// Session output → transport, then flush.
    pub(super) fn transmit(&mut self) {
        self.tx.buf.clear();
        self.session.poll_transmit(&mut self.tx.buf);
        let Some(conn) = self.link.conn.as_mut() else {
            self.tx.buf.clear();
            return;
        };
        if !self.tx.buf.is_empty() {
            self.sh
                .ctr
                .bytes_out
                .fetch_add(self.tx.buf.len() as u64, Relaxed);
            // Hands the buffer over (a swap when the transport has nothing queued): no copy per batch.
            if let Err(e) = conn.write_owned(&mut self.tx.buf) {
                self.tx.buf.clear();
                self.lost(Instant::now(), e);
                return;
            }
        }
        if conn.pending() > 0 {
            let r = conn.flush();
            self.sh.ctr.socket_writes.store(
                self.link.writes_base + conn.io_stats().socket_writes,
                Relaxed,
            );
            if let Err(e) = r {
                self.lost(Instant::now(), e);
            }
        }
    }
}
