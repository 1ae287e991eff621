//! The publish queue: messages copied by the owner's thread, waiting for the I/O thread.
//!
//! One [`ByteRing`] behind the client's mutex. A record is a 16-byte header (topic length, flags, body
//! length, token, prefix length) followed by the topic and the body: the payload, or — for an MQTT 5
//! message with properties (flag [`Hdr::props`]) — the properties' length (`u32`, little-endian), the
//! properties, then the payload. Under MQTT 3.1/3.1.1 a QoS 0 message is queued as its PUBLISH packet: the
//! packet's first bytes ([`Hdr::pre`], from [`publish_qos0_prefix`]) come before the topic, so the record
//! after its header is the packet the I/O thread hands on as it is, with no encoding. Producers push under
//! the lock (`memcpy`s, no allocation); the I/O thread takes a batch under the lock by copying whole records
//! into its own staging buffer, and encodes them after releasing it, so the lock is only ever held for
//! copies.
//!
//! Both bounds (`queue_bytes`, `queue_messages`) are enforced here; a full queue applies the
//! [`FullPolicy`]. The `io_waiting` flag is how a producer knows the I/O thread sleeps waiting for work: it is
//! set by the I/O thread under the lock when it found the queue empty, and the first producer to push after
//! that clears it and wakes the thread — so a stream of publishes costs one wake-up, not one per message.
//! `room_waiters` is the other direction: owners blocked in `Client::wait_for_room` set it, and the I/O
//! thread's take that brings the queue down to half wakes them, once.
use super::ring::ByteRing;
use super::{Counters, FullPolicy, PublishError};
use crate::codec::{publish_len, publish_qos0_prefix, QoS, MAX_REMAINING_LENGTH};
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
    /// Bytes of a QoS 0 PUBLISH packet's start before the topic (0: the record is not a packet).
    pub pre: usize,
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
        h[3] = self.pre as u8;
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
            pre: h[3] as usize,
        }
    }
    /// Whole record size in the queue.
    pub(crate) fn record_len(&self) -> usize {
        HDR + self.pre + self.topic_len + self.payload_len
    }
    /// Where the topic starts in the record.
    pub(crate) fn topic_at(&self) -> usize {
        HDR + self.pre
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
    /// QoS 0 messages are queued as PUBLISH packets (MQTT 3.1/3.1.1).
    qos0_packets: bool,
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
        qos0_packets: bool,
    ) -> Option<PubQueue> {
        Some(PubQueue {
            ring: ByteRing::new(queue_bytes)?,
            qos0_packets,
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
        let (need, body) = self.record_len(topic, props, payload, qos)?;
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
        let mut h = Hdr {
            topic_len: topic.len(),
            payload_len: body,
            qos,
            retain,
            props: !props.is_empty(),
            token,
            pre: 0,
        };
        if self.as_packet(qos, props) {
            // `record_len` checked the sizes.
            let (pre, n) = publish_qos0_prefix(topic.len(), body, retain)
                .map_err(|_| PublishError::TooLarge)?;
            h.pre = n;
            self.ring
                .push(&[&h.encode(), &pre[..n], topic.as_bytes(), payload]);
        } else if props.is_empty() {
            self.ring.push(&[&h.encode(), topic.as_bytes(), payload]);
        } else {
            let n = (props.len() as u32).to_le_bytes();
            self.ring
                .push(&[&h.encode(), topic.as_bytes(), &n, props, payload]);
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

    /// This message is queued as its PUBLISH packet.
    fn as_packet(&self, qos: QoS, props: &[u8]) -> bool {
        self.qos0_packets && qos == QoS::AtMostOnce && props.is_empty()
    }

    /// The bytes a message takes in the queue and the length of its body (properties and payload).
    /// `TooLarge` when it can never fit: more than the whole queue, or than an MQTT packet can carry.
    pub(crate) fn record_len(
        &self,
        topic: &str,
        props: &[u8],
        payload: &[u8],
        qos: QoS,
    ) -> Result<(usize, usize), PublishError> {
        let body = if props.is_empty() {
            payload.len()
        } else {
            4 + props.len() + payload.len()
        };
        let need = if self.as_packet(qos, props) {
            HDR + publish_len(topic, body, qos)
        } else {
            HDR + topic.len() + body
        };
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

    /// Up to `reliable` QoS 1/2 and `fire` QoS 0 messages, with no byte or message bound that matters.
    fn budget(reliable: usize, fire: usize) -> TakeBudget {
        TakeBudget {
            reliable,
            fire,
            bytes: 1 << 20,
            messages: usize::MAX,
        }
    }

    fn q(bytes: usize, msgs: usize, p: FullPolicy) -> (PubQueue, Counters) {
        (
            PubQueue::new(bytes, msgs, p, false).unwrap(),
            Counters::default(),
        )
    }

    #[test]
    fn tokens_increase_and_records_round_trip() {
        let (mut q, c) = q(1024, 10, FullPolicy::Error);
        assert_eq!(q.push("a/b", b"xyz", QoS::AtLeastOnce, true, &c), Ok(1));
        assert_eq!(q.push("c", b"", QoS::AtMostOnce, false, &c), Ok(2));
        assert_eq!(c.queued.load(Relaxed), 2);
        assert_eq!(c.queued_bytes.load(Relaxed), 7);
        let mut out = Vec::new();
        let b = budget(10, 10);
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
                token: 1,
                pre: 0
            }
        );
        assert_eq!(&out[HDR..HDR + 6], b"a/bxyz");
        let h2 = Hdr::decode(&out[HDR + 6..HDR + 6 + HDR]);
        assert_eq!((h2.token, h2.qos, h2.retain), (2, QoS::AtMostOnce, false));
        assert!(q.is_empty());
    }

    #[test]
    fn qos0_messages_are_queued_as_their_packets_under_mqtt_3() {
        let mut q = PubQueue::new(1 << 20, 10, FullPolicy::Error, true).unwrap();
        let c = Counters::default();
        let big = vec![b'p'; 200]; // a remaining length of two bytes
        type Msg<'a> = (&'a str, &'a [u8], QoS, bool, &'a [u8]);
        let msgs: [Msg; 5] = [
            ("a/b", b"xyz", QoS::AtMostOnce, true, &[]),
            ("c", b"", QoS::AtMostOnce, false, &[]),
            ("s/é", &big, QoS::AtMostOnce, false, &[]),
            ("r", b"1", QoS::AtLeastOnce, false, &[]),
            ("t", b"xy", QoS::AtMostOnce, false, &[0x02, 0, 0, 0, 60]),
        ];
        let mut need = Vec::new();
        for (topic, payload, qos, retain, props) in msgs {
            need.push(q.record_len(topic, props, payload, qos).unwrap().0);
            q.push_with(topic, props, payload, qos, retain, &c).unwrap();
        }
        // Counted as topic and payload, as any record.
        assert_eq!(
            c.queued_bytes.load(Relaxed),
            (3 + 3) + 1 + (4 + 200) + 2 + 1 + 4 + 5 + 2
        );
        let mut out = Vec::new();
        let b = budget(10, 10);
        assert_eq!(q.take(b, &mut out), 5);
        let mut at = 0;
        for ((topic, payload, qos, retain, _), need) in msgs.into_iter().zip(need) {
            let h = Hdr::decode(&out[at..]);
            assert_eq!(h.record_len(), need, "{topic}");
            let rec = &out[at + HDR..at + need];
            if h.pre > 0 {
                let mut wire = Vec::new();
                crate::codec::encode_publish(&mut wire, topic, payload, qos, retain, false, 0)
                    .unwrap();
                assert_eq!(rec, &wire[..], "{topic}");
                assert_eq!(&out[at + h.topic_at()..][..h.topic_len], topic.as_bytes());
            } else {
                // QoS 1 and a message with properties stay records.
                assert!(qos != QoS::AtMostOnce || topic == "t", "{topic}");
                assert_eq!(&rec[..topic.len()], topic.as_bytes());
            }
            at += need;
        }
        assert_eq!(at, out.len());
    }

    #[test]
    fn properties_travel_before_the_payload() {
        let (mut q, c) = q(1024, 10, FullPolicy::Error);
        assert_eq!(
            q.push_with("t", &[0x02, 0, 0, 0, 60], b"xy", QoS::AtMostOnce, false, &c),
            Ok(1)
        );
        let mut out = Vec::new();
        let b = budget(10, 10);
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
        let b = budget(1, 100);
        // One reliable slot: token 1 only (token 2 is QoS 1 and must not be overtaken).
        assert_eq!(q.take(b, &mut out), 1);
        assert_eq!(q.front().unwrap().token, 2);
        out.clear();
        let b = budget(2, 100);
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
        let mut q = PubQueue::new(HDR * 4 + 8, 3, FullPolicy::Error, false).unwrap();
        let (one, _) = q.record_len("ab", &[], b"xy", QoS::AtLeastOnce).unwrap();
        assert_eq!(one, HDR + 4);
        assert_eq!(q.check_batch(2 * one, 2, &c), Ok(()));
        assert_eq!(q.check_batch(one, 4, &c), Err(PublishError::QueueFull));
        assert_eq!(q.check_batch(5 * one, 1, &c), Err(PublishError::QueueFull));
        assert_eq!(c.refused_full.load(Relaxed), 5);
        assert_eq!(
            q.record_len("a", &[], &[0; 200], QoS::AtLeastOnce),
            Err(PublishError::TooLarge)
        );
        let mut d = PubQueue::new(HDR * 4 + 8, 3, FullPolicy::DropOldest, false).unwrap();
        assert_eq!(d.check_batch(5 * one, 5, &c), Ok(()));
    }
}
