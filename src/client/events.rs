//! The event queue: what the I/O thread reports to the owner, and the file descriptor that says so.
//!
//! Records (received messages with their topic and payload copied; small control records) live in one
//! [`ByteRing`]. Its capacity is `event_queue_bytes` plus a reserve for control events: received messages may
//! only use the first `event_queue_bytes` (the I/O thread checks [`EventQueue::message_room`] before letting
//! the session take a PUBLISH, and stops reading while there is no room), control events may use the
//! reserve too. The I/O thread keeps enough room for the `Delivered` events its in-flight messages will
//! produce (it stops feeding the session otherwise), so acknowledgements are never dropped.
//!
//! Delivery completions are kept as runs: a `Delivered` for the token after the last record's run (same QoS)
//! extends that record instead of adding one. Tokens are increasing and brokers acknowledge in order, so a
//! stream of QoS 1 publishes that the owner does not drain (a tight loop on q's thread) takes one record,
//! not 24 bytes per message: completions never fill the queue, and neither the window nor reading stops
//! for them. [`EventQueue::poll`] hands a run out as one `Delivered` per token, splitting it at `max`.
//!
//! The descriptor (an `eventfd`, a pipe elsewhere) is readable exactly while records are queued: it is
//! written on the empty → non-empty transition and drained when a poll empties the queue, both under the
//! queue's lock, so the two can never disagree.
//!
//! [`EventQueue::poll`] copies a batch of records into a scratch buffer under the lock and calls the owner's
//! callback after releasing it: a slow callback never holds up the I/O thread.
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use super::ring::ByteRing;
use super::Event;
use crate::codec::{Properties, QoS};
use crate::error::{DeliveryError, Error};
use crate::session::Token;

/// Bytes of a record header.
pub(crate) const EV_HDR: usize = 24;

const K_CONNECTED: u8 = 0;
const K_MESSAGE: u8 = 1;
const K_DELIVERED: u8 = 2;
const K_LOST: u8 = 3;
const K_RECONNECTING: u8 = 4;
const K_SUBSCRIBED: u8 = 5;
const K_UNSUBSCRIBED: u8 = 6;
const K_FAILED: u8 = 7;

/// Longest text kept in a control record (a filter); longer ones are cut at a char boundary.
const MAX_TEXT: usize = 1024;

/// A record: its header fields and up to three byte strings (a message's topic, payload and properties; the
/// length of the third is kept in `extra`, which messages do not use otherwise).
struct Rec<'a> {
    kind: u8,
    b1: u8,
    b2: u8,
    extra: u32,
    n: u64,
    s1: &'a [u8],
    s2: &'a [u8],
    s3: &'a [u8],
}

impl Rec<'_> {
    fn header(&self) -> [u8; EV_HDR] {
        let mut h = [0u8; EV_HDR];
        h[0] = self.kind;
        h[1] = self.b1;
        h[2] = self.b2;
        h[4..8].copy_from_slice(&(self.s1.len() as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(self.s2.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&self.extra.to_le_bytes());
        h[16..24].copy_from_slice(&self.n.to_le_bytes());
        h
    }
    fn len(&self) -> usize {
        EV_HDR + self.s1.len() + self.s2.len() + self.s3.len()
    }
}

/// Bytes after a record's header.
fn body_len(h: &[u8]) -> usize {
    let third = if h[0] == K_MESSAGE {
        u32_at(h, 12) as usize
    } else {
        0
    };
    u32_at(h, 4) as usize + u32_at(h, 8) as usize + third
}

/// Events a record holds: a `K_DELIVERED` run one per token, any other record one.
fn events_in(h: &[u8]) -> usize {
    if h[0] == K_DELIVERED {
        u32_at(h, 12) as usize
    } else {
        1
    }
}

fn u32_at(h: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_le_bytes(b)
}
fn u64_at(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

fn cut_text(s: &str) -> &[u8] {
    if s.len() <= MAX_TEXT {
        return s.as_bytes();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// The readiness descriptor.
struct Signal {
    fd: OwnedFd,
    /// The write end when this is a pipe.
    #[cfg(not(target_os = "linux"))]
    wr: OwnedFd,
}

impl Signal {
    #[cfg(target_os = "linux")]
    fn new() -> std::io::Result<Signal> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Signal {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
    #[cfg(not(target_os = "linux"))]
    fn new() -> std::io::Result<Signal> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds has room for the two descriptors pipe writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for fd in fds {
            // SAFETY: plain fcntl on descriptors we own.
            unsafe {
                libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        // SAFETY: fresh descriptors we own.
        Ok(Signal {
            fd: unsafe { OwnedFd::from_raw_fd(fds[0]) },
            wr: unsafe { OwnedFd::from_raw_fd(fds[1]) },
        })
    }

    fn raise(&self) {
        #[cfg(target_os = "linux")]
        let (fd, buf) = (self.fd.as_raw_fd(), 1u64.to_ne_bytes());
        #[cfg(not(target_os = "linux"))]
        let (fd, buf) = (self.wr.as_raw_fd(), [1u8]);
        // SAFETY: buf is valid for its length. A full counter/pipe (EAGAIN) still leaves the fd readable.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    }

    fn clear(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: buf is valid for its length; the fd is non-blocking.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            // An eventfd is emptied by one read; a pipe may need more.
            if r <= 0 || cfg!(target_os = "linux") {
                break;
            }
        }
    }
}

struct Inner {
    ring: ByteRing,
    /// The causes of the `K_LOST` records in the ring, in order (one per record, so as bounded as they).
    lost: VecDeque<Error>,
    /// The causes of the `K_FAILED` records, likewise.
    failed: VecDeque<DeliveryError>,
    /// Where the last record starts (bytes after the read position) when it is a `K_DELIVERED` run that a
    /// completion may extend.
    run_at: Option<usize>,
    /// Events waiting (a run holds `extra` of them).
    events: usize,
}

/// Where `poll` copies a batch before calling back (only the owner's thread uses it).
#[derive(Default)]
struct Scratch {
    bytes: Vec<u8>,
    lost: Vec<Error>,
    failed: Vec<DeliveryError>,
}

pub(crate) struct EventQueue {
    inner: Mutex<Inner>,
    scratch: Mutex<Scratch>,
    signal: Signal,
    /// Received messages may fill the ring up to here; the rest is the control reserve.
    msg_budget: usize,
}

impl EventQueue {
    /// `msg_budget` bytes for received messages plus `reserve` bytes only control events may use. An error
    /// of kind `OutOfMemory` when they cannot be allocated (see [`ByteRing::new`]).
    pub(crate) fn new(msg_budget: usize, reserve: usize) -> std::io::Result<EventQueue> {
        let ring = msg_budget
            .checked_add(reserve)
            .and_then(ByteRing::new)
            .ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(EventQueue {
            inner: Mutex::new(Inner {
                ring,
                lost: VecDeque::new(),
                failed: VecDeque::new(),
                run_at: None,
                events: 0,
            }),
            scratch: Mutex::new(Scratch::default()),
            signal: Signal::new()?,
            msg_budget,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.signal.fd.as_raw_fd()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it; the ring stays consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, r: &Rec<'_>, limit: usize) -> bool {
        self.push_with(r, limit, |_| {})
    }

    /// Push `r`; once it is in, `then` runs under the same lock.
    fn push_with(&self, r: &Rec<'_>, limit: usize, then: impl FnOnce(&mut Inner)) -> bool {
        let mut g = self.lock();
        if g.ring.len() + r.len() > limit.min(g.ring.capacity()) {
            return false;
        }
        let was_empty = g.ring.is_empty();
        let at = g.ring.len();
        if r.s3.is_empty() {
            g.ring.push(&[&r.header(), r.s1, r.s2]);
        } else {
            g.ring.push(&[&r.header(), r.s1, r.s2, r.s3]);
        }
        g.run_at = (r.kind == K_DELIVERED).then_some(at);
        g.events += 1;
        then(&mut g);
        if was_empty {
            self.signal.raise();
        }
        true
    }

    /// Queue a received message; false when it does not fit (the caller counts it as dropped).
    pub(crate) fn push_message(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties<'_>,
    ) -> bool {
        let props = properties.as_bytes();
        self.push(
            &Rec {
                kind: K_MESSAGE,
                b1: qos as u8,
                b2: retain as u8,
                extra: props.len() as u32,
                n: 0,
                s1: topic.as_bytes(),
                s2: payload,
                s3: props,
            },
            self.msg_budget,
        )
    }

    /// Queue an event (the I/O thread's, copied in): a received message as [`push_message`](Self::push_message)
    /// does; any other may use the reserve too, false only when even that is full.
    pub(crate) fn push_event(&self, e: Event<'_>) -> bool {
        let r = match e {
            Event::Message {
                topic,
                payload,
                qos,
                retain,
                properties,
            } => return self.push_message(topic, payload, qos, retain, properties),
            Event::Connected { session_present } => Rec {
                kind: K_CONNECTED,
                b1: 0,
                b2: session_present as u8,
                extra: 0,
                n: 0,
                s1: &[],
                s2: &[],
                s3: &[],
            },
            Event::Delivered { token, qos } => {
                if self.extend_run(token, qos) {
                    return true;
                }
                Rec {
                    kind: K_DELIVERED,
                    b1: qos as u8,
                    b2: 0,
                    extra: 1,
                    n: token,
                    s1: &[],
                    s2: &[],
                    s3: &[],
                }
            }
            Event::ConnectionLost { cause } => {
                let r = Rec {
                    kind: K_LOST,
                    b1: 0,
                    b2: 0,
                    extra: 0,
                    n: 0,
                    s1: &[],
                    s2: &[],
                    s3: &[],
                };
                return self.push_with(&r, usize::MAX, |g| g.lost.push_back(cause.clone()));
            }
            Event::Failed { token, qos, cause } => {
                let r = Rec {
                    kind: K_FAILED,
                    b1: qos as u8,
                    b2: 0,
                    extra: 0,
                    n: token,
                    s1: &[],
                    s2: &[],
                    s3: &[],
                };
                return self.push_with(&r, usize::MAX, |g| g.failed.push_back(cause.clone()));
            }
            Event::Reconnecting { delay, attempt } => Rec {
                kind: K_RECONNECTING,
                b1: 0,
                b2: 0,
                extra: attempt,
                n: delay.as_nanos().min(u64::MAX as u128) as u64,
                s1: &[],
                s2: &[],
                s3: &[],
            },
            Event::Subscribed { filter, granted } => Rec {
                kind: K_SUBSCRIBED,
                b1: granted.map(|q| q as u8).unwrap_or(0xff),
                b2: 0,
                extra: 0,
                n: 0,
                s1: cut_text(filter),
                s2: &[],
                s3: &[],
            },
            Event::Unsubscribed { filter } => Rec {
                kind: K_UNSUBSCRIBED,
                b1: 0,
                b2: 0,
                extra: 0,
                n: 0,
                s1: cut_text(filter),
                s2: &[],
                s3: &[],
            },
        };
        self.push(&r, usize::MAX)
    }

    /// Add `token` to the last record when it is the run just before it (same QoS). Only the I/O thread
    /// pushes, so the last record cannot change between this and a push that follows.
    fn extend_run(&self, token: Token, qos: QoS) -> bool {
        let mut g = self.lock();
        let Some(at) = g.run_at else { return false };
        let mut h = [0u8; EV_HDR];
        g.ring.peek(at, &mut h);
        let count = u32_at(&h, 12);
        if h[1] != qos as u8 || count == u32::MAX || u64_at(&h, 16) + u64::from(count) != token {
            return false;
        }
        g.ring.poke(at + 12, &(count + 1).to_le_bytes());
        g.events += 1;
        true
    }

    /// Bytes a received message may still take now (its record: `EV_HDR` + topic + payload). Only the I/O
    /// thread pushes, so this can only grow until it pushes again.
    pub(crate) fn message_room(&self) -> usize {
        let g = self.lock();
        self.msg_budget
            .min(g.ring.capacity())
            .saturating_sub(g.ring.len())
    }

    /// The most a received message's record can ever take (`event_queue_bytes`).
    pub(crate) fn message_capacity(&self) -> usize {
        self.msg_budget
    }

    /// Free bytes in the whole ring (reserve included).
    pub(crate) fn free(&self) -> usize {
        self.lock().ring.free()
    }

    /// Events waiting now.
    pub(crate) fn len(&self) -> usize {
        self.lock().events
    }

    /// Hand up to `max` events to `f`. Returns how many. A call from inside `f` returns 0.
    pub(crate) fn poll(&self, max: usize, f: &mut dyn FnMut(Event<'_>)) -> usize {
        let Ok(mut guard) = self.scratch.try_lock() else {
            return 0; // re-entered from a callback (or polled from two threads at once)
        };
        let scratch = &mut *guard;
        scratch.bytes.clear();
        if !scratch.lost.is_empty() {
            scratch.lost.clear();
        }
        if !scratch.failed.is_empty() {
            scratch.failed.clear();
        }
        // Records copied, events they hold.
        let (mut recs, mut n) = (0, 0);
        {
            let mut g = self.lock();
            let mut bytes = 0usize;
            let (mut lost, mut failed) = (0, 0);
            let mut h = [0u8; EV_HDR];
            // Events to take from the front of a run that does not fit whole.
            let mut part = 0;
            while n < max && bytes < g.ring.len() {
                g.ring.peek(bytes, &mut h);
                let events = events_in(&h);
                if n + events > max {
                    part = max - n;
                    break;
                }
                bytes += EV_HDR + body_len(&h);
                lost += usize::from(h[0] == K_LOST);
                failed += usize::from(h[0] == K_FAILED);
                recs += 1;
                n += events;
            }
            if recs > 0 {
                g.ring.copy_front(bytes, &mut scratch.bytes);
                g.ring.consume(bytes, recs);
                g.run_at = g.run_at.and_then(|at| at.checked_sub(bytes));
                if lost > 0 {
                    scratch.lost.extend(g.lost.drain(..lost));
                }
                if failed > 0 {
                    scratch.failed.extend(g.failed.drain(..failed));
                }
            }
            if part > 0 {
                // The run now in front: its first `part` tokens go out, the rest stays.
                let first = u64_at(&h, 16);
                let left = u32_at(&h, 12) - part as u32;
                h[12..16].copy_from_slice(&(part as u32).to_le_bytes());
                scratch.bytes.extend_from_slice(&h);
                g.ring.poke(12, &left.to_le_bytes());
                g.ring.poke(16, &(first + part as u64).to_le_bytes());
                recs += 1;
                n += part;
            }
            g.events -= n;
            if g.ring.is_empty() {
                self.signal.clear();
            }
        }
        let (buf, mut lost, mut failed) =
            (&scratch.bytes, scratch.lost.iter(), scratch.failed.iter());
        let mut off = 0;
        for _ in 0..recs {
            let h = &buf[off..off + EV_HDR];
            let l1 = u32_at(h, 4) as usize;
            let l2 = u32_at(h, 8) as usize;
            let s1 = &buf[off + EV_HDR..off + EV_HDR + l1];
            let s2 = &buf[off + EV_HDR + l1..off + EV_HDR + l1 + l2];
            let s3 = &buf[off + EV_HDR + l1 + l2..off + EV_HDR + body_len(h)];
            off += EV_HDR + body_len(h);
            let text = std::str::from_utf8(s1).unwrap_or("");
            let qos = QoS::from_u8(h[1]).unwrap_or(QoS::AtMostOnce);
            let ev = match h[0] {
                K_CONNECTED => Event::Connected {
                    session_present: h[2] != 0,
                },
                K_MESSAGE => Event::Message {
                    topic: text,
                    payload: s2,
                    qos,
                    retain: h[2] != 0,
                    // Copied from a decoded PUBLISH.
                    properties: Properties::from_validated(s3),
                },
                K_DELIVERED => {
                    let first = u64_at(h, 16);
                    for token in first..first + u64::from(u32_at(h, 12)) {
                        f(Event::Delivered { token, qos });
                    }
                    continue;
                }
                K_LOST => match lost.next() {
                    Some(cause) => Event::ConnectionLost { cause },
                    None => continue, // cannot be: one cause per record
                },
                K_FAILED => match failed.next() {
                    Some(cause) => Event::Failed {
                        token: u64_at(h, 16),
                        qos,
                        cause,
                    },
                    None => continue,
                },
                K_RECONNECTING => Event::Reconnecting {
                    delay: Duration::from_nanos(u64_at(h, 16)),
                    attempt: u32_at(h, 12),
                },
                K_SUBSCRIBED => Event::Subscribed {
                    filter: text,
                    granted: QoS::from_u8(h[1]),
                },
                _ => Event::Unsubscribed { filter: text },
            };
            f(ev);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn fd_is_readable_exactly_while_events_wait() {
        let q = EventQueue::new(1024, 256).unwrap();
        assert!(!readable(q.fd()));
        assert!(q.push_message("a/b", b"one", QoS::AtLeastOnce, true, Properties::EMPTY));
        assert!(q.push_event(Event::Delivered {
            token: 7,
            qos: QoS::ExactlyOnce
        }));
        assert!(readable(q.fd()));
        let mut seen = Vec::new();
        assert_eq!(q.poll(1, &mut |e| seen.push(format!("{e:?}"))), 1);
        assert!(readable(q.fd()), "one event still waits");
        assert_eq!(q.poll(10, &mut |e| seen.push(format!("{e:?}"))), 1);
        assert!(!readable(q.fd()), "drained: the fd must not stay readable");
        assert_eq!(q.poll(10, &mut |_| panic!("nothing queued")), 0);
        assert_eq!(
            seen,
            vec![
                r#"Message { topic: "a/b", payload: [111, 110, 101], qos: AtLeastOnce, retain: true, properties: [] }"#
                    .to_string(),
                "Delivered { token: 7, qos: ExactlyOnce }".to_string()
            ]
        );
        assert!(q.push_event(Event::Reconnecting {
            delay: Duration::from_millis(1500),
            attempt: 3
        }));
        assert!(readable(q.fd()));
        let mut got = None;
        q.poll(10, &mut |e| {
            if let Event::Reconnecting { delay, attempt } = e {
                got = Some((delay, attempt));
            }
        });
        assert_eq!(got, Some((Duration::from_millis(1500), 3)));
        assert!(!readable(q.fd()));
    }

    #[test]
    fn messages_are_bounded_control_events_use_the_reserve() {
        let q = EventQueue::new(100, 200).unwrap();
        let e = Properties::EMPTY;
        assert!(q.push_message("t", &[0u8; 60], QoS::AtMostOnce, false, e)); // 85 bytes
        assert!(!q.push_message("t", &[0u8; 60], QoS::AtMostOnce, false, e));
        for i in 0..8 {
            // Not consecutive: eight records (see `completions_are_kept_as_runs`).
            assert!(q.push_event(Event::Delivered {
                token: 2 * i,
                qos: QoS::AtLeastOnce
            }));
        }
        assert_eq!(q.free(), 300 - 85 - 8 * EV_HDR);
        let mut kinds = Vec::new();
        q.poll(100, &mut |e| {
            kinds.push(matches!(e, Event::Message { .. }));
        });
        assert_eq!(kinds.len(), 9);
        assert!(kinds[0] && !kinds[1]);
    }

    #[test]
    fn completions_are_kept_as_runs() {
        let q = EventQueue::new(100, 200).unwrap();
        let d = |token, qos| Event::Delivered { token, qos };
        // 100,000 consecutive QoS 1 completions take one record.
        for t in 1..=100_000 {
            assert!(q.push_event(d(t, QoS::AtLeastOnce)));
        }
        assert_eq!((q.free(), q.len()), (300 - EV_HDR, 100_000));
        // another QoS, a gap, a message: new records; the message ends the run before it
        assert!(q.push_event(d(100_001, QoS::ExactlyOnce)));
        assert!(q.push_event(d(100_003, QoS::ExactlyOnce)));
        assert!(q.push_event(d(100_004, QoS::ExactlyOnce)));
        assert!(q.push_message("t", b"m", QoS::AtMostOnce, false, Properties::EMPTY));
        assert!(q.push_event(d(100_005, QoS::ExactlyOnce)));
        assert_eq!(q.free(), 300 - 5 * EV_HDR - 2);
        // handed out one per token, in order, split at `max`; a split run still grows at its end
        let mut seen = Vec::new();
        let mut rec = |e: Event<'_>| {
            seen.push(match e {
                Event::Delivered { token, qos } => (token, qos as u8),
                _ => (0, 9),
            })
        };
        assert_eq!(q.poll(1000, &mut rec), 1000);
        assert_eq!(q.len(), 99_005);
        assert_eq!(q.poll(98_999, &mut rec), 98_999);
        assert!(q.push_event(d(100_006, QoS::ExactlyOnce)));
        assert_eq!(q.poll(usize::MAX, &mut rec), 7);
        assert_eq!(q.len(), 0);
        assert!(q.push_event(d(100_007, QoS::ExactlyOnce)));
        assert_eq!(q.poll(usize::MAX, &mut rec), 1);
        let mut want: Vec<(u64, u8)> = (1..=100_000).map(|t| (t, 1)).collect();
        want.extend([(100_001, 2), (100_003, 2), (100_004, 2), (0, 9)]);
        want.extend([(100_005, 2), (100_006, 2), (100_007, 2)]);
        assert_eq!(seen, want);
        assert_eq!(q.free(), 300);
    }

    #[test]
    fn reentrant_poll_returns_zero() {
        let q = EventQueue::new(1024, 256).unwrap();
        q.push_event(Event::Connected {
            session_present: false,
        });
        let mut inner = usize::MAX;
        q.poll(10, &mut |_| inner = q.poll(10, &mut |_| {}));
        assert_eq!(inner, 0);
    }
}
