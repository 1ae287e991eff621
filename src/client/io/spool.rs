//! The I/O thread's side of the disk spool ([`SpoolSide`]): spill what cannot be sent, stage the backlog for
//! the session, track acknowledgements, flush, and copy the spool's counters into the stats. The policy is
//! the client module's "Store-and-forward" section; the spool itself is [`crate::spool`].
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::copies::InflightCopies;
use super::timer::{Timer, TimerTable};
use super::tx::{Staged, CHUNK};
use super::Io;
use crate::client::queue::{split_body, Hdr, TakeBudget, HDR};
use crate::client::shared::{lock, Shared};
use crate::client::Event;
use crate::clock::{later, now_ms};
use crate::codec::Properties;
use crate::codec::QoS;
use crate::error::DeliveryError;
use crate::session::{Session, SessionError, Token};
use crate::spool::{self, AckTracker, DrainScheduler, Msg, Spool, SpoolError};

/// Session tokens of spooled messages: this bit plus the spool's sequence number (queue tokens never
/// reach it).
pub(super) const SPOOL_TOKEN: u64 = 1 << 63;
/// In a spool record's tag (the driver's to use): the body starts with MQTT 5 properties (the queue's
/// [`Hdr::props`]). Tokens count from 1 and never reach it.
const PROPS_TAG: u64 = 1 << 62;
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

/// The I/O thread's side of the disk spool.
pub(super) struct SpoolSide {
    spool: Spool,
    tracker: AckTracker,
    sched: DrainScheduler,
    /// `drain_rate: None`: strict publish order (queued messages wait while the spool has a backlog).
    pub strict: bool,
    /// Records read from the spool and not yet accepted by the session: `[Hdr (token = tag)][seq][topic]
    /// [payload]`.
    buf: Vec<u8>,
    off: usize,
    /// Spooled QoS 1/2 messages in the session: seq → (tag, QoS).
    inflight: HashMap<u64, (Token, QoS)>,
    /// The first sequence number appended by this process: records below it are a previous run's, their
    /// tags stale tokens.
    run_first: u64,
    /// Spilling since the queue passed its high-water mark (until it is below half).
    spilling: bool,
    /// Counters changed since they were last copied into the stats.
    dirty: bool,
    /// Largest append (segment_bytes, capped at SPILL_BATCH).
    batch_limit: usize,
    /// A message too large for the spool was reported.
    warned_large: bool,
    /// Queued QoS 1/2 messages in the window.
    pub copies: InflightCopies,
}

/// What the connection looks like this turn, for [`SpoolSide::turn`].
struct Turn {
    up: bool,
    /// Messages cannot go to the session now (down, stalled, socket full, window full, backlog first).
    blocked: bool,
    /// Staged queue messages are waiting.
    live_left: bool,
    queue_empty: bool,
    /// The publish queue is over its high-water mark / over half.
    high: bool,
    low: bool,
}

impl SpoolSide {
    /// Ready for the I/O thread; the spool's counters are in the stats from now on.
    pub fn new(spool: Spool, max_inflight: usize, sh: &Shared) -> Box<SpoolSide> {
        let strict = spool.config().drain_rate.is_none();
        let batch_limit = (spool.config().segment_bytes as usize).min(SPILL_BATCH);
        let mut inflight = HashMap::new();
        inflight.reserve(max_inflight);
        let mut sp = Box::new(SpoolSide {
            run_first: spool.next_seq(),
            sched: spool.drain_scheduler(),
            tracker: AckTracker::new(max_inflight + FIRE_ROOM),
            strict,
            buf: Vec::new(),
            off: 0,
            inflight,
            spilling: false,
            dirty: false,
            batch_limit,
            warned_large: false,
            copies: InflightCopies::default(),
            spool,
        });
        sp.store_stats(sh);
        sp
    }

    /// Records staged for the session.
    pub fn staged(&self) -> bool {
        self.off < self.buf.len()
    }

    /// The next staged record's header.
    pub fn front(&self) -> Option<Hdr> {
        self.staged().then(|| Hdr::decode(&self.buf[self.off..]))
    }

    /// Spooled messages not yet read.
    pub fn has_backlog(&self) -> bool {
        self.spool.unread() > 0
    }

    /// Nothing left to send from the spool (nothing unread, staged or in flight).
    pub fn drained(&self) -> bool {
        !self.staged() && self.spool.unread() == 0 && self.tracker.is_empty()
    }

    /// Strict order with a backlog: messages in memory (newer) wait for it.
    pub fn live_waits(&self) -> bool {
        self.strict && (self.staged() || self.spool.unread() > 0)
    }

    /// A backlog waits and the rate limiter (and a failed operation's retry delay) lets it go now.
    pub fn backlog_ready(&self, now: Instant, timers: &TimerTable) -> bool {
        self.spool.unread() > 0
            && timers.is_clear(Timer::SpoolDrain, now)
            && timers.is_clear(Timer::SpoolRetry, now)
    }

    /// Copy the spool's counters into the client's stats.
    fn store_stats(&mut self, sh: &Shared) {
        let c = &sh.ctr;
        let st = self.spool.stats();
        c.spooled.store(st.spooled_msgs, Relaxed);
        c.spooled_bytes.store(st.spooled_bytes, Relaxed);
        let oldest = st
            .oldest_age
            .map_or(0, |a| now_ms().saturating_sub(a.as_millis() as u64).max(1));
        // A `since_ms` counter: holds the time, read as an age.
        c.spool_oldest_age_ms.store(oldest, Relaxed);
        c.spool_dropped_oldest.store(st.dropped_oldest, Relaxed);
        c.spool_refused.store(st.refused, Relaxed);
        c.spool_disk_full.store(st.disk_full, Relaxed);
        c.spool_bytes_written.store(st.bytes_written, Relaxed);
    }

    /// `seq` is complete: advance the spool's acknowledged position when the completed prefix grew.
    fn complete(&mut self, seq: u64, sh: &Shared) {
        self.dirty = true;
        if let Some(a) = self.tracker.complete(seq) {
            if let Err(e) = self.spool.ack(a) {
                failed(sh, &e);
            }
        }
    }

    /// PUBACK/PUBCOMP of spooled message `seq`: complete it; Delivered with its token when this run spooled
    /// it (a previous run's token is stale: counted instead).
    pub fn acknowledged(&mut self, seq: u64, sh: &Shared) {
        let (tag, qos) = self.inflight.remove(&seq).unwrap_or((0, QoS::AtLeastOnce));
        self.complete(seq, sh);
        if seq < self.run_first {
            sh.ctr.spool_delivered_previous.fetch_add(1, Relaxed);
        } else if !sh.events.push_event(Event::Delivered { token: tag, qos }) {
            log::error!("qmqtt: event queue full, Delivered for token {tag} lost");
        }
    }

    /// The broker refused spooled message `seq` (an error PUBACK/PUBREC): complete it (it is not sent again)
    /// and report it failed when this run spooled it.
    pub fn refused(&mut self, seq: u64, cause: &DeliveryError, sh: &Shared) {
        let (tag, qos) = self.inflight.remove(&seq).unwrap_or((0, QoS::AtLeastOnce));
        self.complete(seq, sh);
        log::warn!("qmqtt: spooled message {seq} failed: {cause}");
        if seq >= self.run_first {
            sh.events.push_event(Event::Failed {
                token: tag,
                qos,
                cause,
            });
        }
    }

    /// Read up to what the scheduler gives the backlog out of `reliable`/`fire` room into the staging
    /// buffer. `None`: no backlog to send now; `Some(n)`: the live messages may take `n`.
    pub fn stage_backlog(
        &mut self,
        now: Instant,
        reliable: usize,
        fire: usize,
        timers: &mut TimerTable,
        sh: &Shared,
    ) -> Option<usize> {
        let retrying =
            timers.is_set(Timer::SpoolRetry) && !timers.is_expired(Timer::SpoolRetry, now);
        let backlog = if retrying { 0 } else { self.spool.unread() };
        if backlog == 0 {
            return None;
        }
        let room = reliable.saturating_add(if fire > 0 { FIRE_ROOM } else { 0 });
        let plan = self.sched.plan(now, room, backlog, room);
        timers.put(Timer::SpoolDrain, plan.wake_at);
        if plan.from_spool > 0 {
            self.buf.clear();
            self.off = 0;
            let buf = &mut self.buf;
            let r = self.spool.read_batch(plan.from_spool, CHUNK, |r| {
                let h = Hdr {
                    topic_len: r.topic.len(),
                    payload_len: r.payload.len(),
                    qos: r.qos,
                    retain: r.retain,
                    props: r.tag & PROPS_TAG != 0,
                    token: r.tag & !PROPS_TAG,
                    pre: 0,
                };
                buf.extend_from_slice(&h.encode());
                buf.extend_from_slice(&r.seq.to_le_bytes());
                buf.extend_from_slice(r.topic.as_bytes());
                buf.extend_from_slice(r.payload);
            });
            match r {
                Ok(0) => {
                    // Nothing readable although the spool counts a backlog: do not spin.
                    self.sched.refund(plan.from_spool);
                    timers.set(Timer::SpoolRetry, later(now, SPOOL_RETRY));
                }
                Ok(n) if n < plan.from_spool => self.sched.refund(plan.from_spool - n),
                Ok(_) => {}
                Err(e) => {
                    self.sched.refund(plan.from_spool);
                    failed(sh, &e);
                    timers.set(Timer::SpoolRetry, later(now, SPOOL_RETRY));
                }
            }
            self.dirty = true;
        }
        Some(plan.from_live)
    }

    /// Hand staged records to the session within `room` ([QoS 0, QoS 1/2] Delivered events). Returns how
    /// many it took, and whether the session stalled.
    pub fn feed(
        &mut self,
        session: &mut Session,
        mut room: [usize; 2],
        sh: &Shared,
        qos0_events: bool,
        now: Instant,
    ) -> (usize, bool) {
        let (mut moved, mut stalled) = (0, false);
        while self.off < self.buf.len() {
            let h = Hdr::decode(&self.buf[self.off..]);
            let r = &mut room[(h.qos != QoS::AtMostOnce) as usize];
            if !session.can_publish(h.qos) || *r == 0 {
                break;
            }
            *r -= 1;
            let mut sq = [0u8; 8];
            sq.copy_from_slice(&self.buf[self.off + HDR..self.off + SHDR]);
            let seq = u64::from_le_bytes(sq);
            let t0 = self.off + SHDR;
            let t1 = t0 + h.topic_len;
            let p1 = t1 + h.payload_len;
            let topic = crate::codec::primitives::utf8(&self.buf[t0..t1]).unwrap_or("");
            let (props, payload) = split_body(h.props, &self.buf[t1..p1]);
            let r = session.publish_with(
                SPOOL_TOKEN | seq,
                topic,
                payload,
                h.qos,
                h.retain,
                Properties::from_validated(props),
                now,
            );
            let done = match r {
                Ok(()) => h.qos == QoS::AtMostOnce,
                Err(SessionError::NotReady(why)) => {
                    log::debug!("qmqtt: publish deferred: {why}");
                    stalled = true;
                    break;
                }
                Err(SessionError::Failed(cause)) if seq >= self.run_first => {
                    log::warn!("qmqtt: spooled message {seq} to {topic:?} failed: {cause}");
                    sh.ctr.failed.fetch_add(1, Relaxed);
                    sh.events.push_event(Event::Failed {
                        token: h.token,
                        qos: h.qos,
                        cause: &cause,
                    });
                    true
                }
                Err(e) => {
                    log::error!("qmqtt: spooled message {seq} to {topic:?} dropped: {e}");
                    true
                }
            };
            self.off = p1;
            moved += 1;
            sh.ctr.sent.fetch_add(1, Relaxed);
            self.tracker.sent(seq);
            if done {
                // QoS 0: handed to the socket, as for queued messages (at most once).
                self.complete(seq, sh);
                if seq < self.run_first {
                    sh.ctr.spool_delivered_previous.fetch_add(1, Relaxed);
                } else if qos0_events && h.qos == QoS::AtMostOnce {
                    sh.events.push_event(Event::Delivered {
                        token: h.token,
                        qos: h.qos,
                    });
                }
            } else {
                self.inflight.insert(seq, (h.token, h.qos));
            }
        }
        if self.off >= self.buf.len() {
            self.buf.clear();
            self.off = 0;
        }
        (moved, stalled)
    }

    /// Once per turn: spill what cannot be sent, flush, update the stats.
    fn turn(
        &mut self,
        t: Turn,
        staged: &mut Staged,
        timers: &mut TimerTable,
        sh: &Shared,
        now: Instant,
    ) {
        timers.take_expired(Timer::SpoolRetry, now);
        timers.take_expired(Timer::SpoolDrain, now);
        let retrying = timers.is_set(Timer::SpoolRetry);
        let mut all = false;
        if !t.up && !retrying && (t.live_left || !t.queue_empty) {
            if !timers.is_set(Timer::SpoolSpill) {
                timers.set(Timer::SpoolSpill, later(now, OFFLINE_SPILL_DELAY));
            }
            all = timers.take_expired(Timer::SpoolSpill, now);
        } else {
            timers.stop(Timer::SpoolSpill);
        }
        let spill = t.blocked && (t.high || (self.spilling && t.low));
        self.spilling = spill;
        if !retrying && (all || spill) {
            self.spill(staged, timers, sh, now, all);
        }
        match self.spool.flush(now) {
            Ok(at) => timers.put(Timer::SpoolFlush, at),
            Err(e) => {
                failed(sh, &e);
                timers.set(Timer::SpoolFlush, later(now, SPOOL_RETRY));
            }
        }
        if self.dirty {
            self.dirty = false;
            self.store_stats(sh);
        }
    }

    /// Move the oldest messages held in memory (staged first, then the queue's front) to the spool: all of
    /// them, or until the queue is below half. Returns false when stopped by the spool (full, an error)
    /// or when nothing is left; true when the per-call bound ended it.
    fn spill(
        &mut self,
        staged: &mut Staged,
        timers: &mut TimerTable,
        sh: &Shared,
        now: Instant,
        all: bool,
    ) -> bool {
        for _ in 0..SPILL_BATCHES_PER_TURN {
            if !staged.left() {
                staged.clear();
                let mut q = lock(&sh.pubq);
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
                    bytes: bytes.min(self.batch_limit),
                    messages,
                };
                let n = q.take(budget, &mut staged.buf);
                sh.release_queue(q);
                if n == 0 {
                    return false;
                }
            }
            if !self.append(staged, timers, sh, now) {
                return false;
            }
        }
        true
    }

    /// Append `staged` to the spool, in appends of at most `batch_limit` bytes. False when the spool
    /// refused (the rest stays staged, in memory).
    fn append(
        &mut self,
        staged: &mut Staged,
        timers: &mut TimerTable,
        sh: &Shared,
        now: Instant,
    ) -> bool {
        while staged.left() {
            let (mut end, mut n, mut sbytes, mut bytes) = (staged.off, 0u64, 0usize, 0u64);
            while end < staged.buf.len() {
                let h = Hdr::decode(&staged.buf[end..]);
                let sb = spool::format::HDR + h.topic_len + h.payload_len;
                if n > 0 && sbytes + sb > self.batch_limit {
                    break;
                }
                sbytes += sb;
                bytes += (h.topic_len + h.payload_len) as u64;
                n += 1;
                end += h.record_len();
            }
            let batch = &staged.buf[staged.off..end];
            let mut pos = 0;
            let msgs = std::iter::from_fn(|| {
                if pos >= batch.len() {
                    return None;
                }
                let h = Hdr::decode(&batch[pos..]);
                let t0 = pos + h.topic_at();
                let t1 = t0 + h.topic_len;
                pos = t1 + h.payload_len;
                Some(Msg {
                    topic: crate::codec::primitives::utf8(&batch[t0..t1]).unwrap_or(""),
                    payload: &batch[t1..pos],
                    qos: h.qos,
                    retain: h.retain,
                    tag: h.token | if h.props { PROPS_TAG } else { 0 },
                })
            });
            let r = self.spool.append_batch(msgs);
            self.dirty = true;
            match r {
                Ok(_) => {
                    staged.off = end;
                    let c = &sh.ctr;
                    c.queued.fetch_sub(n, Relaxed);
                    c.queued_bytes.fetch_sub(bytes, Relaxed);
                    c.spilled.fetch_add(n, Relaxed);
                }
                Err(e) => {
                    if matches!(e, SpoolError::BatchTooLarge { .. }) {
                        // One message larger than segment_bytes: it stays in memory.
                        if !self.warned_large {
                            self.warned_large = true;
                            failed(sh, &e);
                        }
                    } else {
                        failed(sh, &e);
                    }
                    timers.set(Timer::SpoolRetry, later(now, SPOOL_RETRY));
                    return false;
                }
            }
        }
        staged.clear();
        true
    }

    /// The thread stops: what is still in memory goes to the spool, to be sent after a restart, and the
    /// spool is closed. (Spooled messages in flight stay unacknowledged in the spool and are sent again.)
    pub fn finish(mut self: Box<Self>, staged: &mut Staged, timers: &mut TimerTable, sh: &Shared) {
        let now = Instant::now();
        timers.stop(Timer::SpoolRetry);
        // Queued messages still unacknowledged in the window go first (they are the oldest in memory); the
        // broker may have them already: at least once.
        self.copies.unsend(staged, &sh.ctr);
        while self.spill(staged, timers, sh, now, true) {}
        self.store_stats(sh);
        if let Err(e) = self.spool.close() {
            failed(sh, &e);
        }
    }
}

fn failed(sh: &Shared, e: &SpoolError) {
    let m = e.to_string();
    log::error!("qmqtt: {m}");
    *lock(&sh.last_spool_error) = Some(m);
}

impl Io {
    /// Once per turn with a spool: what the connection can take now decides what to spill.
    pub(super) fn spool_turn(&mut self, now: Instant) {
        let up = self.link.up;
        let socket_full = self.socket_full();
        let live_left = self.tx.staged.left();
        let backlog_first = self.sp.as_deref().is_some_and(|sp| sp.live_waits());
        // Only a connection that cannot take messages now needs a look at the queue (its lock).
        let maybe_blocked = !up
            || self.tx.stalled
            || socket_full
            || self.session.inflight_free() == 0
            || backlog_first;
        let (queue_empty, high, low, front) = if maybe_blocked {
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
        let front = self.tx.staged.front().map(|h| h.qos).or(front);
        let window_full = front.is_some_and(|q| !self.session.can_publish(q));
        let t = Turn {
            up,
            blocked: !up || self.tx.stalled || socket_full || window_full || backlog_first,
            live_left,
            queue_empty,
            high,
            low,
        };
        if let Some(sp) = self.sp.as_deref_mut() {
            sp.turn(t, &mut self.tx.staged, &mut self.timers, &self.sh, now);
        }
    }
}
