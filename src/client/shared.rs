//! What the owner's threads and the I/O thread share: the publish queue, the commands, the event queue,
//! the counters behind [`Stats`](super::Stats), the outcome of the first connection.
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::stats::Counters;
use super::{events, queue};
use crate::codec::{QoS, SubscriptionOptions};
use crate::error::Error;
use crate::session::ServerInfo;

/// A command for the I/O thread (rare: subscriptions and the stop).
pub(crate) enum Cmd {
    /// The filter, its options and an MQTT 5 Subscription Identifier.
    Subscribe(String, SubscriptionOptions, Option<u32>),
    Unsubscribe(String),
    /// Try to connect now if waiting for the next reconnect attempt (the owner asked to connect again).
    ReconnectNow,
    /// Drain until this instant at the latest, then send DISCONNECT and exit.
    Stop(Instant),
}

/// What the owner's threads and the I/O thread share.
pub(crate) struct Shared {
    pub pubq: Mutex<queue::PubQueue>,
    /// Notified (under `pubq`) when a take brought the queue down to half with owners waiting for room, and
    /// when the queue is closed.
    pub room_cv: Condvar,
    /// Shared with a name resolution's thread, which wakes the I/O thread when it is done.
    pub waker: Arc<mio::Waker>,
    pub cmds: Mutex<Vec<Cmd>>,
    pub events: events::EventQueue,
    pub ctr: Counters,
    pub last_error: Mutex<Option<Error>>,
    pub last_spool_error: Mutex<Option<String>>,
    /// The broker's CONNACK of the current (or last) connection.
    pub server: Mutex<Option<ServerInfo>>,
    /// The broker of the current (or last) connection (`Stats::broker`).
    pub broker: Mutex<Option<String>>,
    /// The outcome of the first connection attempt (for `wait_connected`), set once.
    pub first: Mutex<Option<Result<(), Error>>>,
    /// Notified (under `first`) when the first outcome is set, on every CONNACK and when the thread ends.
    pub first_cv: Condvar,
    /// The I/O thread stopped feeding the session because the event queue had no room for the
    /// acknowledgements; the next `poll_events` that frees room wakes it.
    pub io_wants_room: AtomicBool,
    /// The I/O thread is stopped until the owner drains the event queue (set when it finds no room, cleared
    /// by a `poll_events` that took something): owners in `wait_for_room` must drain first.
    pub owner_must_drain: AtomicBool,
    /// Owners waiting for a SUBACK/UNSUBACK ([`AckWaiter`](super::AckWaiter)); entries live while they wait.
    pub acks: Mutex<AckBoard>,
    pub acks_cv: Condvar,
    /// Set when the I/O thread has finished (even by a panic).
    pub exited: Mutex<bool>,
    pub exited_cv: Condvar,
}

/// A SUBACK (`unsub` false) or UNSUBACK an owner waits for, and its outcome once the I/O thread has it:
/// `Some(Some(qos))` granted (or unsubscribed), `Some(None)` refused.
pub(crate) struct AckWait {
    pub id: u64,
    pub unsub: bool,
    pub filter: String,
    pub outcome: Option<Option<QoS>>,
}

#[derive(Default)]
pub(crate) struct AckBoard {
    pub next_id: u64,
    pub waiting: Vec<AckWait>,
}

/// Lock, ignoring poisoning: every structure behind these locks stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Hand a SUBACK/UNSUBACK outcome to the oldest owner waiting for it; false when none waits.
    pub(crate) fn resolve_ack(&self, unsub: bool, filter: &str, outcome: Option<QoS>) -> bool {
        let mut b = lock(&self.acks);
        let Some(w) = b
            .waiting
            .iter_mut()
            .find(|w| w.outcome.is_none() && w.unsub == unsub && w.filter == filter)
        else {
            return false;
        };
        w.outcome = Some(outcome);
        self.acks_cv.notify_all();
        true
    }

    /// Refuse publishes from now on, and wake owners waiting for room (they are told).
    pub(crate) fn close_queue(&self) {
        lock(&self.pubq).closed = true;
        self.room_cv.notify_all();
    }

    /// Unlock the publish queue after taking from it, waking owners waiting for room if there is now.
    pub(crate) fn release_queue(&self, mut q: MutexGuard<'_, queue::PubQueue>) {
        let wake = q.room_made();
        drop(q);
        if wake {
            self.room_cv.notify_all();
        }
    }

    /// The I/O thread waits for the owner to drain the event queue: owners waiting for room in the publish
    /// queue must do that first (the queue would not drain before), so they are woken.
    pub(crate) fn owner_must_drain(&self) {
        self.owner_must_drain.store(true, SeqCst);
        if std::mem::take(&mut lock(&self.pubq).room_waiters) {
            self.room_cv.notify_all();
        }
    }

    pub(crate) fn set_first(&self, r: Result<(), Error>) {
        let mut f = lock(&self.first);
        if f.is_none() {
            *f = Some(r);
        }
        self.first_cv.notify_all();
    }
}
