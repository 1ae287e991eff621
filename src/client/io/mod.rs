//! The I/O thread (`qmqtt-io`): owns the socket and the session of one connection.
//!
//! It sleeps in `mio::Poll` on the socket and a waker, until the nearest of the session's deadline
//! (keep-alive, PINGRESP and CONNACK timeouts) and its own ([`timer`]) — or, while queued messages wait
//! for acknowledgements that keep coming, for `ack_interval` ([`Io::collect_acks`]). Each turn ([`Io::run`], here) it
//! runs commands, lets due timers fire, reads and feeds the session, sends a batch, spools what cannot be
//! sent, then sleeps. The parts, one file each:
//!
//! - [`link`] — the connection's life: connect (through the broker list, re-reading changed TLS files),
//!   the CONNACK, loss, reconnect with backoff and jitter, the stop (DISCONNECT); subscribe/unsubscribe
//!   commands that wait for a connection.
//! - [`rx`] — the receive side with backpressure: the session is fed only as far as the event queue has
//!   room for what it produces; otherwise the rest stays unfed, the socket unread (TCP flow control holds
//!   the broker back), and the owner's next drain wakes the thread. The session's events go to the event
//!   queue from here.
//!   It also stops reading while more than `max_unsent_bytes` owed to the broker wait unsent (each PUBLISH
//!   and PUBREL read owes an acknowledgement), and drops a connection whose broker reads nothing for the
//!   keep-alive meanwhile.
//! - [`tx`] — the send side: as many queued messages as the window, the event queue's room (for their
//!   Delivered events) and the socket allow, encoded into one buffer handed to the transport in one write
//!   (many messages per TLS record and per syscall); the QoS 1/2 window refilled in batches; `linger`; the
//!   publish queue's `io_waiting` handshake (publishers wake the thread only when it sleeps on an empty
//!   queue).
//! - [`spool`] — with `Config::spool`, [`SpoolSide`](spool::SpoolSide): spilling what cannot be sent,
//!   feeding the backlog, acknowledgements, flushes, the spool's stats (the client module's
//!   "Store-and-forward" section).
//! - [`timer`] — the table of the thread's deadlines.
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token as MioToken};

use super::shared::{lock, Cmd, Shared};
use crate::error::Error;
use crate::session::{Session, SessionConfig};
use crate::spool::Spool;
use crate::transport::proxy::Choice;
use crate::transport::{Endpoint, TlsFiles, TlsOptions};

mod copies;
mod link;
mod rx;
mod spool;
mod timer;
mod tx;

use link::Link;
use rx::Rx;
use spool::SpoolSide;
use timer::{Timer, TimerTable};
use tx::Tx;

pub(crate) const SOCK: MioToken = MioToken(0);
pub(crate) const WAKE: MioToken = MioToken(1);

/// One broker of the configuration's list, and the HTTP proxy that reaches it (if any).
pub(crate) struct Target {
    pub ep: Endpoint,
    pub proxy: Option<Choice>,
}

/// Everything the I/O thread needs from the configuration.
pub(crate) struct Params {
    /// The brokers, tried in order (see `link`).
    pub targets: Vec<Target>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The state of the TLS files `tls` was read from: a change is read again before a reconnect.
    pub tls_files: Option<TlsFiles>,
    pub tls_opts: TlsOptions,
    pub session: SessionConfig,
    pub connect_timeout: Duration,
    pub reconnect: bool,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub qos0_events: bool,
    pub protocol_fallback: bool,
    pub linger: Duration,
    pub ack_interval: Duration,
    pub batch_scheduling: bool,
    /// `Config::max_unsent_bytes`.
    pub max_unsent: usize,
}

/// Build the driver on the caller's thread (the spool's counters are in the stats when this returns) and
/// start its thread.
pub(crate) fn start(
    sh: Arc<Shared>,
    poll: Poll,
    p: Params,
    spool: Option<Spool>,
) -> std::io::Result<JoinHandle<()>> {
    let sp = spool.map(|s| SpoolSide::new(s, p.session.max_inflight.max(1) as usize, &sh));
    let mut io = Io {
        session: Session::new(p.session.clone()),
        link: Link::new(&sh),
        sh,
        poll,
        events: Events::with_capacity(16),
        p,
        timers: TimerTable::default(),
        rx: Rx::default(),
        tx: Tx::default(),
        pending: VecDeque::new(),
        sp,
    };
    std::thread::Builder::new()
        .name("qmqtt-io".into())
        .spawn(move || {
            let _exit = ExitGuard(io.sh.clone());
            if io.p.batch_scheduling {
                batch_scheduling();
            }
            io.run();
        })
}

/// Marks the thread as finished when dropped (also on a panic).
struct ExitGuard(Arc<Shared>);
impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.ctr.connected.store(false, Relaxed);
        self.0.close_queue();
        *lock(&self.0.exited) = true;
        self.0.exited_cv.notify_all();
        // After `exited`: `LinkWatch` waiters check it.
        self.0.set_first(Err(Error::Stopped));
    }
}

/// The driver of one connection; each part in its own file (see the module docs).
struct Io {
    sh: Arc<Shared>,
    poll: Poll,
    events: Events,
    p: Params,
    session: Session,
    timers: TimerTable,
    link: Link,
    rx: Rx,
    tx: Tx,
    /// Subscribe/unsubscribe commands waiting for a connection.
    pending: VecDeque<Cmd>,
    /// The disk spool, if configured.
    sp: Option<Box<SpoolSide>>,
}

impl Io {
    fn run(&mut self) {
        self.start_connect(Instant::now());
        loop {
            let now = Instant::now();
            self.take_commands(now);
            if self.timers.take_expired(Timer::Reconnect, now) {
                self.start_connect(now);
            }
            self.resolved(now);
            if self.timers.is_expired(Timer::Connect, now) {
                self.connect_timed_out(now);
            }
            if self.link.attached && self.session.poll_timeout().is_some_and(|t| now >= t) {
                self.tx.stalled = false;
                if let Err(e) = self.session.handle_timeout(now) {
                    self.lost(now, e);
                }
            }
            if self.timers.take_expired(Timer::Unread, now) {
                self.unread_expired(now);
            }
            if self.rx.read_more || self.rx_room() || self.unsent_room() {
                self.rx.read_more = false;
                self.on_socket(now);
            }
            if self.link.up {
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
            self.sh
                .ctr
                .dropped_oversize
                .store(self.session.oversize_dropped(), Relaxed);
            let (aliased, saved) = self.session.alias_stats();
            self.sh.ctr.topic_aliased.store(aliased, Relaxed);
            self.sh.ctr.topic_alias_bytes_saved.store(saved, Relaxed);
            if self.link.dead || (self.timers.is_set(Timer::Stop) && self.should_stop(now)) {
                break;
            }
            let busy =
                self.rx.read_more || self.can_send_more() || self.rx_room() || self.unsent_room();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                if self.sp.is_some() {
                    let mut q = lock(&self.sh.pubq);
                    // Wake me at the high-water mark to spill; offline, at the first publish too (it is
                    // spilled OFFLINE_SPILL_DELAY later, so that a crash loses nothing).
                    q.spill_watch = true;
                    if !self.link.up && q.is_empty() {
                        q.io_waiting = true;
                    }
                }
                self.timeout(now)
            };
            if !busy && self.collect_acks(timeout) {
                continue;
            }
            if !busy {
                self.ack_before_sleep();
            }
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

    /// About to sleep after reading: have the kernel acknowledge what was read now, not after its
    /// delayed-ACK timeout (up to 40 ms). A broker with Nagle's algorithm on (mosquitto's default) holds its
    /// next small packet until the last one is acknowledged, so a client that reads without answering —
    /// a subscriber, or reading resumed after the owner drained the event queue — would otherwise get the
    /// stream in bursts 40 ms apart. One `setsockopt` per sleep that follows a read.
    fn ack_before_sleep(&mut self) {
        if std::mem::take(&mut self.rx.unacked) {
            if let Some(c) = self.link.conn.as_ref() {
                c.ack_now();
            }
        }
    }

    /// `Config::ack_interval`: while queued messages wait for the window and the last read brought
    /// acknowledgements, sleep the interval (or until the nearest deadline) without a readiness wake-up per
    /// arriving segment, then read what came meanwhile. True when it did (the loop goes round again); false
    /// when the thread should wait on the poller as usual — a read that found nothing ends the collecting,
    /// so a broker that stops answering costs no wake-ups.
    fn collect_acks(&mut self, timeout: Option<Duration>) -> bool {
        let got = std::mem::take(&mut self.rx.got);
        let interval = self.p.ack_interval;
        if interval.is_zero() || !got || !self.tx.acks_awaited.get() {
            return false;
        }
        std::thread::sleep(timeout.map_or(interval, |t| t.min(interval)));
        self.sh.ctr.wakeups.fetch_add(1, Relaxed);
        self.on_socket(Instant::now());
        true
    }

    /// Nearest deadline as a poll timeout (None: sleep until woken).
    fn timeout(&self, now: Instant) -> Option<Duration> {
        // The backlog's rate limit matters only while there is a backlog to send.
        let draining = self.link.up && self.sp.as_deref().is_some_and(|sp| sp.has_backlog());
        let mine = self.timers.earliest(|t| t != Timer::SpoolDrain || draining);
        let session = self.session.poll_timeout().filter(|_| self.link.attached);
        let t = match (mine, session) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        t.map(|t| t.saturating_duration_since(now))
    }

    /// While stopping: done when everything is delivered, or at the deadline.
    fn should_stop(&self, now: Instant) -> bool {
        if self.timers.is_expired(Timer::Stop, now) {
            return true;
        }
        !self.tx.staged.left()
            && lock(&self.sh.pubq).is_empty()
            && self.session.inflight() == 0
            && self.link.conn.as_ref().is_none_or(|c| c.pending() == 0)
            && self.sp.as_deref().is_none_or(|sp| sp.drained())
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
