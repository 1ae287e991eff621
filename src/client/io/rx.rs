//! The receive side, with backpressure: read the socket, feed the session only as far as the event queue has
//! room for the messages it produces ([`Session::handle_read_bounded`](crate::session::Session)), and
//! forward the session's events to the event queue.
//!
//! When the next PUBLISH does not fit, the unfed bytes stay in `Rx::buf`, the socket is no longer read (the
//! kernel buffers fill and TCP flow control holds the broker back) and the thread asks the owner for a
//! wake-up on the next drain (`io_wants_room`, as for acknowledgement room). Once there is room it feeds the
//! rest and reads the socket again without waiting for a readiness event (edge-triggered). The session is
//! told of the pause so that keep-alive does not kill the connection.
//!
//! Reading also waits for the other direction: each PUBLISH (QoS 1/2) and PUBREL read makes the session owe
//! the broker an acknowledgement, so while more than `max_unsent_bytes` wait unsent the socket is not read
//! (a broker that sends but does not read cannot grow the transmit buffer). Once the socket takes them
//! reading resumes; if the broker takes nothing for the keep-alive, the connection is dropped
//! ([`Timeout::Unread`]).
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Instant;

use super::spool::SPOOL_TOKEN;
use super::timer::Timer;
use super::Io;
use crate::client::events::EV_HDR;
use crate::client::shared::Shared;
use crate::client::Event;
use crate::clock::later;
use crate::codec::QoS;
use crate::error::{Error, Timeout};
use crate::session::Event as SEvent;

/// Reads per turn before giving writes a chance (the rest is read on the next turn).
const MAX_READS: usize = 64;

/// What was read and not yet fed, and the pause.
pub(super) struct Rx {
    buf: Vec<u8>,
    /// `buf[off..]` was read from the transport but not yet taken by the session (no event room).
    off: usize,
    /// Non-zero while reading is paused: the event-queue room the session's next PUBLISH needs.
    blocked: usize,
    /// When the current pause began.
    paused_at: Option<Instant>,
    /// The socket may have more to read (the read loop stopped early).
    pub read_more: bool,
    /// Reading waits for the broker to take what is owed to it: the transport's socket writes when the
    /// wait began or last made progress.
    unsent_wait: Option<u64>,
    /// A read brought bytes since the thread last slept (`Config::ack_interval`).
    pub got: bool,
    /// A read brought bytes since the thread last acknowledged at once (see [`Io::ack_before_sleep`]).
    pub unacked: bool,
}

impl Default for Rx {
    fn default() -> Rx {
        Rx {
            buf: Vec::with_capacity(64 << 10),
            off: 0,
            blocked: 0,
            paused_at: None,
            read_more: false,
            unsent_wait: None,
            got: false,
            unacked: false,
        }
    }
}

impl Rx {
    /// The connection is gone: forget what was read, end a pause.
    pub fn reset(&mut self, now: Instant, sh: &Shared) {
        self.read_more = false;
        self.unsent_wait = None;
        self.resumed(now, sh);
        self.buf.clear();
        self.off = 0;
    }

    /// Reading is paused until the event queue has room (see [`Io::rx_room`]).
    pub(super) fn waits_for_room(&self) -> bool {
        self.blocked != 0
    }

    /// Reading runs (again): end the pause, if any. True when there was one.
    fn resumed(&mut self, now: Instant, sh: &Shared) -> bool {
        self.blocked = 0;
        let Some(t) = self.paused_at.take() else {
            return false;
        };
        let ns = now.saturating_duration_since(t).as_nanos();
        sh.ctr
            .rx_paused_time
            .fetch_add(ns.min(u64::MAX as u128) as u64, Relaxed);
        sh.ctr.rx_paused_now.store(false, Relaxed);
        true
    }
}

impl Io {
    /// The socket is ready: drive the connect/handshake, read everything, feed the session.
    pub(super) fn on_socket(&mut self, now: Instant) {
        self.tx.stalled = false;
        let Some(conn) = self.link.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.flush() {
            self.lost(now, e);
            return;
        }
        for i in 0.. {
            // Bytes left unfed by a pause go first; while still paused, leave the socket unread.
            if (self.rx.blocked > 0 || self.rx.off < self.rx.buf.len()) && !self.feed(now) {
                return;
            }
            if self.unsent_full(now, i > 0) {
                return;
            }
            if i == MAX_READS {
                self.rx.read_more = true;
                break;
            }
            let Some(conn) = self.link.conn.as_mut() else {
                return;
            };
            self.rx.buf.clear();
            self.rx.off = 0;
            match conn.read(&mut self.rx.buf) {
                Ok(0) if self.rx.buf.is_empty() => break,
                Ok(_) => {}
                Err(e) => {
                    self.lost(now, e);
                    return;
                }
            }
            if !self.link.attached && conn.is_established() {
                self.attach(now);
            }
            if self.rx.buf.is_empty() {
                continue;
            }
            self.rx.got = true;
            self.rx.unacked = true;
            self.sh
                .ctr
                .bytes_in
                .fetch_add(self.rx.buf.len() as u64, Relaxed);
            if !self.link.attached {
                self.rx.off = self.rx.buf.len();
                continue;
            }
            if !self.feed(now) {
                return;
            }
            if self.link.conn.as_ref().is_some_and(|c| c.drained()) {
                // Nothing more until the next readiness event: no read that would find nothing.
                break;
            }
        }
        if !self.link.attached && self.link.conn.as_ref().is_some_and(|c| c.is_established()) {
            self.attach(now);
        }
    }

    /// Feed `buf[off..]` to the session as far as the event queue has room for the messages it produces.
    /// False when it stopped: reading paused (no room), or the connection was lost.
    fn feed(&mut self, now: Instant) -> bool {
        loop {
            let room = self.sh.events.message_room();
            let r =
                self.session
                    .handle_read_bounded(&self.rx.buf[self.rx.off..], now, room, EV_HDR);
            self.drain_session_events(now);
            let p = match r {
                Ok(p) => p,
                Err(e) => {
                    self.lost(now, e);
                    return false;
                }
            };
            self.rx.off += p.consumed;
            let Some(need) = p.blocked else {
                if self.rx.resumed(now, &self.sh) && self.link.attached {
                    self.session.handle_reader_paused(false, now);
                }
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
            self.rx.blocked = need;
            if self.rx_room() {
                continue; // drained meanwhile
            }
            if self.rx.paused_at.is_none() {
                self.rx.paused_at = Some(now);
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

    /// More than `max_unsent_bytes` owed to the broker wait unsent (after handing the session's output to the
    /// transport when `fed`): stop reading — what the broker sends next would only add to them — until the
    /// socket takes them. True while so (or when the connection was lost meanwhile).
    fn unsent_full(&mut self, now: Instant, fed: bool) -> bool {
        if !self.link.up {
            return false;
        }
        if fed {
            self.transmit();
        }
        let Some(conn) = self.link.conn.as_ref() else {
            return true;
        };
        let pending = conn.pending();
        if pending <= self.p.max_unsent {
            if self.rx.unsent_wait.take().is_some() {
                self.timers.stop(Timer::Unread);
                self.session.handle_reader_paused(false, now);
            }
            return false;
        }
        if self.rx.unsent_wait.is_none() {
            self.rx.unsent_wait = Some(conn.io_stats().socket_writes);
            // The PINGRESP may wait unread meanwhile; the keep-alive applies to the broker's reading instead.
            self.session.handle_reader_paused(true, now);
            self.arm_unread(now);
            log::debug!(
                "qmqtt: {pending} bytes owed to the broker wait unsent, reading paused until it takes them"
            );
        }
        true
    }

    /// Reading waits for the socket to take what is owed, and now it has.
    pub(super) fn unsent_room(&self) -> bool {
        self.rx.unsent_wait.is_some() && self.link.pending() <= self.p.max_unsent
    }

    fn arm_unread(&mut self, now: Instant) {
        let ka = self.p.session.keep_alive;
        if !ka.is_zero() {
            self.timers.set(Timer::Unread, later(now, ka));
        }
    }

    /// A keep-alive has passed since reading began to wait for the broker to take what is owed to it: if it
    /// took nothing meanwhile, drop the connection.
    pub(super) fn unread_expired(&mut self, now: Instant) {
        let (Some(w), Some(conn)) = (self.rx.unsent_wait, self.link.conn.as_ref()) else {
            return;
        };
        let writes = conn.io_stats().socket_writes;
        if writes != w {
            self.rx.unsent_wait = Some(writes);
            self.arm_unread(now);
            return;
        }
        let e = Error::Timeout(Timeout::Unread {
            unsent: conn.pending(),
            limit: self.p.session.keep_alive,
        });
        self.lost(now, e);
    }

    /// Reading is paused and the event queue now has room for the message that paused it. While it has
    /// not, asks the owner's next drain for a wake-up (announced before looking, see `delivered_room`).
    pub(super) fn rx_room(&self) -> bool {
        if self.rx.blocked == 0 {
            return false;
        }
        self.sh.io_wants_room.store(true, SeqCst);
        let room = self.sh.events.message_room() >= self.rx.blocked;
        if !room {
            self.sh.owner_must_drain();
        }
        room
    }

    /// The session's events → the event queue (and the driver's own state for CONNACK and acknowledgements).
    fn drain_session_events(&mut self, now: Instant) {
        let mut connected = false;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SEvent::Connected { session_present } => {
                    connected = true;
                    self.on_connected(now, session_present);
                }
                SEvent::Message {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties,
                } => {
                    self.sh.ctr.received.fetch_add(1, Relaxed);
                    if !self
                        .sh
                        .events
                        .push_message(topic, payload, qos, retain, properties)
                    {
                        self.sh.ctr.dropped_incoming.fetch_add(1, Relaxed);
                    }
                }
                SEvent::Failed { token, qos, cause } => {
                    self.sh.ctr.failed.fetch_add(1, Relaxed);
                    if token & SPOOL_TOKEN != 0 {
                        if let Some(sp) = self.sp.as_deref_mut() {
                            sp.refused(token & !SPOOL_TOKEN, &cause, &self.sh);
                        }
                        continue;
                    }
                    if let Some(sp) = self.sp.as_deref_mut() {
                        sp.copies.done(token);
                    }
                    self.sh.events.push_event(Event::Failed {
                        token,
                        qos,
                        cause: &cause,
                    });
                }
                SEvent::Delivered { token, .. } if token & SPOOL_TOKEN != 0 => {
                    self.sh.ctr.acked.fetch_add(1, Relaxed);
                    if let Some(sp) = self.sp.as_deref_mut() {
                        sp.acknowledged(token & !SPOOL_TOKEN, &self.sh);
                    }
                }
                SEvent::Delivered { token, qos } => {
                    if let Some(sp) = self.sp.as_deref_mut() {
                        sp.copies.done(token);
                    }
                    self.sh.ctr.acked.fetch_add(1, Relaxed);
                    if !self.sh.events.push_event(Event::Delivered { token, qos }) {
                        log::error!("qmqtt: event queue full, Delivered for token {token} lost");
                    }
                }
                // An owner waiting for the outcome gets it directly, and no event.
                SEvent::Subscribed { filter, granted } => {
                    if granted.is_none() {
                        self.sh.ctr.sub_refused.fetch_add(1, Relaxed);
                    }
                    if !self.sh.resolve_ack(false, filter, granted) {
                        self.sh
                            .events
                            .push_event(Event::Subscribed { filter, granted });
                    }
                }
                SEvent::Unsubscribed { filter } => {
                    if !self.sh.resolve_ack(true, filter, Some(QoS::AtMostOnce)) {
                        self.sh.events.push_event(Event::Unsubscribed { filter });
                    }
                }
            }
        }
        if connected {
            self.after_connected(now);
        }
    }
}
