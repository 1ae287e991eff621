//! The publish queue: messages copied by the owner's thread, waiting for the I/O thread.
//!
//! One [`ByteRing`] behind the client's mutex. A record is a 16-byte header (topic length, flags, body
//! length, token) followed by the topic and the body: the payload, or — for an MQTT 5 message with
//! properties (flag [`Hdr::props`]) — the properties' length (`u32`, little-endian), the properties, then the
//! payload. Producers push under the lock (two `memcpy`s, no
//! allocation); the I/O thread takes a batch under the lock by copying whole records into its own staging
//! buffer, and encodes them after releasing it, so the lock is only ever held for copies.
//!
//! Both bounds (`queue_bytes`, `queue_messages`) are enforced here; a full queue applies the
//! [`FullPolicy`]. The `io_waiting` flag is how a producer knows the I/O thread sleeps waiting for work: it is
//! set by the I/O thread under the lock when it found the queue empty, and the first producer to push after
//! that clears it and wakes the thread — so a stream of publishes costs one wake-up, not one per message.
//! `room_waiters` is the other direction: owners blocked in `Client::wait_for_room` set it, and the I/O
//! thread's take that brings the queue down to half wakes them, once.
use super::ring::ByteRing;
use super::{Counters, FullPolicy, PublishError};
use crate::codec::{QoS, MAX_REMAINING_LENGTH};
use crate::session::Token;
use std::sync::atomic::Ordering::Relaxed;

/// Bytes of the per-message header in the queue (counted against `queue_bytes`).
pub(crate) const HDR: usize = 16;

/// A queued message's header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hdr {
    pub topic_len: usize,
    /// The body: the payload, with the properties before it when `props`.
    pub payload_len: usize,
    pub qos: QoS,
    pub retain: bool,
    /// The body starts with MQTT 5 properties (`u32` length, then the bytes).
    pub props: bool,
    pub token: Token,
}

/// Split a record's body into its properties (empty without [`Hdr::props`]) and its payload.
pub(crate) fn split_body(props: bool, body: &[u8]) -> (&[u8], &[u8]) {
    if !props || body.len() < 4 {
        return (&[], body);
    }
    let n = (u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize).min(body.len() - 4);
    (&body[4..4 + n], &body[4 + n..])
}

impl Hdr {
    pub(crate) fn encode(&self) -> [u8; HDR] {
        let mut h = [0u8; HDR];
        h[0..2].copy_from_slice(&(self.topic_len as u16).to_le_bytes());
        h[2] = self.qos as u8 | if self.retain { 4 } else { 0 } | if self.props { 8 } else { 0 };
        h[4..8].copy_from_slice(&(self.payload_len as u32).to_le_bytes());
        h[8..16].copy_from_slice(&self.token.to_le_bytes());
        h
    }
    pub(crate) fn decode(h: &[u8]) -> Hdr {
        let mut tl = [0u8; 2];
        tl.copy_from_slice(&h[0..2]);
        let mut pl = [0u8; 4];
        pl.copy_from_slice(&h[4..8]);
        let mut tok = [0u8; 8];
        tok.copy_from_slice(&h[8..16]);
        Hdr {
            topic_len: u16::from_le_bytes(tl) as usize,
            payload_len: u32::from_le_bytes(pl) as usize,
            qos: QoS::from_u8(h[2] & 3).unwrap_or(QoS::AtMostOnce),
            retain: h[2] & 4 != 0,
            props: h[2] & 8 != 0,
            token: u64::from_le_bytes(tok),
        }
    }
    /// Whole record size in the queue.
    pub(crate) fn record_len(&self) -> usize {
        HDR + self.topic_len + self.payload_len
    }
}

/// How many messages of each kind the I/O thread may take now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TakeBudget {
    /// QoS 1/2 messages (free in-flight slots, limited by room for their Delivered events).
    pub reliable: usize,
    /// QoS 0 messages.
    pub fire: usize,
    /// Stop after this many bytes (at least one record is always taken if allowed).
    pub bytes: usize,
    /// Stop after this many messages in all.
    pub messages: usize,
}

pub(crate) struct PubQueue {
    ring: ByteRing,
    max_messages: usize,
    policy: FullPolicy,
    /// The token of the next message (strictly increasing from 1).
    next_token: Token,
    /// Set by `disconnect` (or a lost connection without reconnect): publishes are refused.
    pub closed: bool,
    /// The I/O thread sleeps waiting for this queue to become non-empty.
    pub io_waiting: bool,
    /// An owner waits in [`Client::wait_for_room`](super::Client::wait_for_room) for the queue to drain to
    /// half of its bounds.
    pub room_waiters: bool,
    /// The I/O thread (with a spool) wants a wake-up when the queue passes its high-water mark, to spill
    /// the oldest messages to disk; the push that crosses it sets `io_waiting` for its publisher to wake.
    pub spill_watch: bool,
    /// The high-water mark: bytes and messages.
    hw_bytes: usize,
    hw_messages: usize,
}

impl PubQueue {
    /// `None` when `queue_bytes` cannot be allocated (see [`ByteRing::new`]).
    pub(crate) fn new(
        queue_bytes: usize,
        queue_messages: usize,
        policy: FullPolicy,
    ) -> Option<PubQueue> {
        Some(PubQueue {
            ring: ByteRing::new(queue_bytes)?,
            max_messages: queue_messages,
            policy,
            next_token: 1,
            closed: false,
            io_waiting: false,
            room_waiters: false,
            spill_watch: false,
            hw_bytes: queue_bytes - queue_bytes / 4,
            hw_messages: (queue_messages - queue_messages / 4).max(1),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.ring.count()
    }

    /// At or above the high-water mark (¾ of `queue_bytes` or of `queue_messages`).
    pub(crate) fn over_high_water(&self) -> bool {
        self.ring.len() >= self.hw_bytes || self.ring.count() >= self.hw_messages
    }

    /// How much to take to get below half of the bounds (where spilling stops once started by the
    /// high-water mark): `(bytes, messages)`, `usize::MAX` for a bound not passed; `None` when below both.
    pub(crate) fn over_low_water(&self) -> Option<(usize, usize)> {
        let bytes = self.ring.len().saturating_sub(self.ring.capacity() / 2);
        let msgs = self.ring.count().saturating_sub(self.max_messages / 2);
        let or_max = |x: usize| if x == 0 { usize::MAX } else { x };
        match (bytes, msgs) {
            (0, 0) => None,
            (b, m) => Some((or_max(b), or_max(m))),
        }
    }

    /// At most half of both bounds is used: what an owner in `wait_for_room` waits for (half, not room
    /// for one message, so that a producer faster than the network wakes once per half queue).
    pub(crate) fn half_free(&self) -> bool {
        self.over_low_water().is_none()
    }

    /// After a take: true (once) when owners wait for room and there is now; the caller wakes them.
    pub(crate) fn room_made(&mut self) -> bool {
        let made = self.room_waiters && self.half_free();
        if made {
            self.room_waiters = false;
        }
        made
    }

    /// Header of the oldest message, if any.
    pub(crate) fn front(&self) -> Option<Hdr> {
        if self.ring.is_empty() {
            return None;
        }
        let mut h = [0u8; HDR];
        self.ring.peek(0, &mut h);
        Some(Hdr::decode(&h))
    }

    /// Queue one message (already validated). Returns its token; applies the full policy.
    /// The caller checks `io_waiting` afterwards to decide whether to wake the I/O thread.
    pub(crate) fn push(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        ctr: &Counters,
    ) -> Result<Token, PublishError> {
        self.push_with(topic, &[], payload, qos, retain, ctr)
    }

    /// [`PubQueue::push`] with MQTT 5 properties (validated bytes; empty: none).
    pub(crate) fn push_with(
        &mut self,
        topic: &str,
        props: &[u8],
        payload: &[u8],
        qos: QoS,
        retain: bool,
        ctr: &Counters,
    ) -> Result<Token, PublishError> {
        if self.closed {
            return Err(PublishError::NotConnected);
        }
        let (need, body) = self.record_len(topic, props, payload)?;
        if need > self.ring.free() || self.ring.count() >= self.max_messages {
            if self.spill_watch {
                // Full without having crossed the mark on a push (one large message): spill now.
                self.spill_watch = false;
                self.io_waiting = true;
            }
            match self.policy {
                FullPolicy::Error => {
                    ctr.refused_full.fetch_add(1, Relaxed);
                    return Err(PublishError::QueueFull);
                }
                FullPolicy::DropNewest => {
                    ctr.dropped_newest.fetch_add(1, Relaxed);
                    let t = self.next_token;
                    self.next_token += 1;
                    return Ok(t);
                }
                FullPolicy::DropOldest => {
                    while need > self.ring.free() || self.ring.count() >= self.max_messages {
                        let Some(h) = self.front() else { break };
                        self.ring.consume(h.record_len(), 1);
                        ctr.dropped_oldest.fetch_add(1, Relaxed);
                        ctr.queued.fetch_sub(1, Relaxed);
                        ctr.queued_bytes
                            .fetch_sub((h.topic_len + h.payload_len) as u64, Relaxed);
                    }
                }
            }
        }
        let token = self.next_token;
        self.next_token += 1;
        let h = Hdr {
            topic_len: topic.len(),
            payload_len: body,
            qos,
            retain,
            props: !props.is_empty(),
            token,
        }
        .encode();
        if props.is_empty() {
            self.ring.push(&[&h, topic.as_bytes(), payload]);
        } else {
            let n = (props.len() as u32).to_le_bytes();
            self.ring.push(&[&h, topic.as_bytes(), &n, props, payload]);
        }
        if self.spill_watch && self.over_high_water() {
            self.spill_watch = false;
            self.io_waiting = true;
        }
        ctr.queued.fetch_add(1, Relaxed);
        ctr.queued_bytes
            .fetch_add((topic.len() + body) as u64, Relaxed);
        Ok(token)
    }

    /// The bytes a message takes in the queue and the length of its body (properties and payload).
    /// `TooLarge` when it can never fit: more than the whole queue, or than an MQTT packet can carry.
    pub(crate) fn record_len(
        &self,
        topic: &str,
        props: &[u8],
        payload: &[u8],
    ) -> Result<(usize, usize), PublishError> {
        let body = if props.is_empty() {
            payload.len()
        } else {
            4 + props.len() + payload.len()
        };
        let need = HDR + topic.len() + body;
        // MQTT's remaining length: topic (2 + len) + packet id (2) + payload ≤ 268 435 455.
        if need > self.ring.capacity() || topic.len() + body + 4 > MAX_REMAINING_LENGTH {
            return Err(PublishError::TooLarge);
        }
        Ok((need, body))
    }

    /// Before queueing a batch of `count` messages taking `need` bytes: with the `Error` policy the whole
    /// batch must fit now (the other policies take every message, dropping to make room). Counts the
    /// refusal of all of them otherwise.
    pub(crate) fn check_batch(
        &mut self,
        need: usize,
        count: usize,
        ctr: &Counters,
    ) -> Result<(), PublishError> {
        if self.closed {
            return Err(PublishError::NotConnected);
        }
        let fits = need <= self.ring.free()
            && count <= self.max_messages.saturating_sub(self.ring.count());
        if fits || self.policy != FullPolicy::Error {
            return Ok(());
        }
        if self.spill_watch {
            // As in `push_with`: full without having crossed the mark on a push; spill now.
            self.spill_watch = false;
            self.io_waiting = true;
        }
        ctr.refused_full.fetch_add(count as u64, Relaxed);
        Err(PublishError::QueueFull)
    }

    /// Move whole records from the front into `out` (appended) within `budget`. Returns records taken.
    pub(crate) fn take(&mut self, budget: TakeBudget, out: &mut Vec<u8>) -> usize {
        let (mut n, mut bytes) = (0usize, 0usize);
        let (mut reliable, mut fire) = (budget.reliable, budget.fire);
        let mut h = [0u8; HDR];
        while bytes < self.ring.len() {
            self.ring.peek(bytes, &mut h);
            let hd = Hdr::decode(&h);
            let slot = if hd.qos == QoS::AtMostOnce {
                &mut fire
            } else {
                &mut reliable
            };
            if *slot == 0
                || n >= budget.messages
                || (n > 0 && bytes + hd.record_len() > budget.bytes)
            {
                break;
            }
            *slot -= 1;
            bytes += hd.record_len();
            n += 1;
        }
        if n > 0 {
            self.ring.copy_front(bytes, out);
            self.ring.consume(bytes, n);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(bytes: usize, msgs: usize, p: FullPolicy) -> (PubQueue, Counters) {
        (PubQueue::new(bytes, msgs, p).unwrap(), Counters::default())
    }

    #[test]
    fn tokens_increase_and_records_round_trip() {
        let (mut q, c) = q(1024, 10, FullPolicy::Error);
        assert_eq!(q.push("a/b", b"xyz", QoS::AtLeastOnce, true, &c), Ok(1));
        assert_eq!(q.push("c", b"", QoS::AtMostOnce, false, &c), Ok(2));
        assert_eq!(c.queued.load(Relaxed), 2);
        assert_eq!(c.queued_bytes.load(Relaxed), 7);
        let mut out = Vec::new();
        let b = TakeBudget {
            reliable: 10,
            fire: 10,
            bytes: 1 << 20,
            messages: usize::MAX,
        };
        assert_eq!(q.take(b, &mut out), 2);
        let h = Hdr::decode(&out[..HDR]);
        assert_eq!(
            h,
            Hdr {
                topic_len: 3,
                payload_len: 3,
                qos: QoS::AtLeastOnce,
                retain: true,
                props: false,
                token: 1
            }
        );
        assert_eq!(&out[HDR..HDR + 6], b"a/bxyz");
        let h2 = Hdr::decode(&out[HDR + 6..HDR + 6 + HDR]);
        assert_eq!((h2.token, h2.qos, h2.retain), (2, QoS::AtMostOnce, false));
        assert!(q.is_empty());
    }

    #[test]
    fn properties_travel_before_the_payload() {
        let (mut q, c) = q(1024, 10, FullPolicy::Error);
        assert_eq!(
            q.push_with("t", &[0x02, 0, 0, 0, 60], b"xy", QoS::AtMostOnce, false, &c),
            Ok(1)
        );
        let mut out = Vec::new();
        let b = TakeBudget {
            reliable: 10,
            fire: 10,
            bytes: 1 << 20,
            messages: usize::MAX,
        };
        assert_eq!(q.take(b, &mut out), 1);
        let h = Hdr::decode(&out[..HDR]);
        assert!(h.props && h.payload_len == 4 + 5 + 2);
        assert_eq!(h.record_len(), out.len());
        let body = &out[HDR + 1..];
        assert_eq!(
            split_body(true, body),
            (&[0x02, 0, 0, 0, 60][..], &b"xy"[..])
        );
        assert_eq!(split_body(false, b"xy"), (&[][..], &b"xy"[..]));
    }

    #[test]
    fn take_respects_window_and_order() {
        let (mut q, c) = q(4096, 100, FullPolicy::Error);
        for i in 0..5 {
            let qos = if i == 2 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            q.push("t", b"p", qos, false, &c).unwrap();
        }
        let mut out = Vec::new();
        let b = TakeBudget {
            reliable: 1,
            fire: 100,
            bytes: 1 << 20,
            messages: usize::MAX,
        };
        // One reliable slot: token 1 only (token 2 is QoS 1 and must not be overtaken).
        assert_eq!(q.take(b, &mut out), 1);
        assert_eq!(q.front().unwrap().token, 2);
        out.clear();
        let b = TakeBudget {
            reliable: 2,
            fire: 100,
            bytes: 1 << 20,
            messages: usize::MAX,
        };
        assert_eq!(q.take(b, &mut out), 3); // 2 (QoS1), 3 (QoS0), 4 (QoS1)
        assert_eq!(q.front().unwrap().token, 5);
    }

    #[test]
    fn full_policies() {
        // Room for exactly two 1-byte-topic 3-byte-payload messages (20 bytes each).
        let (mut q1, c1) = q(2 * (HDR + 4), 100, FullPolicy::Error);
        q1.push("t", b"abc", QoS::AtMostOnce, false, &c1).unwrap();
        q1.push("t", b"abc", QoS::AtMostOnce, false, &c1).unwrap();
        assert_eq!(
            q1.push("t", b"abc", QoS::AtMostOnce, false, &c1),
            Err(PublishError::QueueFull)
        );
        assert_eq!(c1.refused_full.load(Relaxed), 1);
        assert_eq!(
            q1.push("t", &[0u8; 100], QoS::AtMostOnce, false, &c1),
            Err(PublishError::TooLarge)
        );

        let (mut q2, c2) = q(1 << 16, 2, FullPolicy::DropOldest);
        for _ in 0..5 {
            q2.push("t", b"abc", QoS::AtLeastOnce, false, &c2).unwrap();
        }
        assert_eq!(c2.dropped_oldest.load(Relaxed), 3);
        assert_eq!(q2.front().unwrap().token, 4);
        assert_eq!(c2.queued.load(Relaxed), 2);

        let (mut q3, c3) = q(1 << 16, 2, FullPolicy::DropNewest);
        for _ in 0..5 {
            q3.push("t", b"abc", QoS::AtLeastOnce, false, &c3).unwrap();
        }
        assert_eq!(c3.dropped_newest.load(Relaxed), 3);
        assert_eq!(q3.count(), 2);
        assert_eq!(q3.front().unwrap().token, 1);
        assert_eq!(
            q3.push("t", b"abc", QoS::AtLeastOnce, false, &c3),
            Ok(6),
            "tokens keep increasing"
        );

        let (mut q4, c4) = q(1 << 16, 2, FullPolicy::Error);
        q4.closed = true;
        assert_eq!(
            q4.push("t", b"abc", QoS::AtMostOnce, false, &c4),
            Err(PublishError::NotConnected)
        );
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_batch_is_checked_whole() {
        let c = Counters::default();
        let mut q = PubQueue::new(HDR * 4 + 8, 3, FullPolicy::Error).unwrap();
        let (one, _) = q.record_len("ab", &[], b"xy").unwrap();
        assert_eq!(one, HDR + 4);
        assert_eq!(q.check_batch(2 * one, 2, &c), Ok(()));
        assert_eq!(q.check_batch(one, 4, &c), Err(PublishError::QueueFull));
        assert_eq!(q.check_batch(5 * one, 1, &c), Err(PublishError::QueueFull));
        assert_eq!(c.refused_full.load(Relaxed), 5);
        assert_eq!(
            q.record_len("a", &[], &[0; 200]),
            Err(PublishError::TooLarge)
        );
        let mut d = PubQueue::new(HDR * 4 + 8, 3, FullPolicy::DropOldest).unwrap();
        assert_eq!(d.check_batch(5 * one, 5, &c), Ok(()));
    }
}
