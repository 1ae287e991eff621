//! The connection's life: connect, the CONNACK, loss, reconnect with exponential backoff and jitter, and the
//! stop (DISCONNECT pushed out until the stop deadline); commands that wait for a connection.
//!
//! A host name (the broker's, or its HTTP proxy's when one is used) is resolved on a thread of its own (`getaddrinfo` blocks and cannot be interrupted) which
//! wakes the I/O thread with the addresses: the connect timeout covers the lookup, and a stuck lookup
//! holds neither the connect timeout nor `disconnect` (the attempt, and with it the lookup's answer, is
//! abandoned; the thread ends when `getaddrinfo` returns).
//!
//! A lost connection (transport error, protocol error, refusal, timeout) is reported once per loss as
//! `ConnectionLost` (and for the very first attempt); with `reconnect` the next attempt is scheduled and
//! reported as `Reconnecting`. Queued messages wait meanwhile; the session keeps unacknowledged QoS 1/2
//! messages and resends them on the next connection.
//!
//! Several brokers (`Config::uri` a list): each round of attempts starts with the first; an attempt that
//! fails before its CONNACK moves on to the next broker at once (no event, `last_error` says why); only a
//! round that reached none counts as a failed attempt (events, backoff). A connection that was up and is lost
//! starts a new round, so the first broker is preferred again once it is back. The session is the same
//! whichever broker is reached: unacknowledged messages are resent there.
//!
//! TLS files (CA, client certificate, key) whose inode, size or modification time changed are read again
//! before each attempt; a replacement that cannot be used (unreadable, invalid) leaves the previous
//! material in use and says why in the log.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::timer::Timer;
use super::{Io, SOCK};
use crate::client::shared::{lock, Cmd, Shared};
use crate::client::Event;
use crate::clock::later;
use crate::codec::ConnectReturnCode;
use crate::error::{Doing, Error, Timeout};
use crate::session::SessionError;
use crate::transport::{tls_config, Conn, TlsFiles};

/// A connection that stayed up this long resets the reconnect backoff to `backoff_min`; one that died sooner
/// (a broker that accepts and drops at once) keeps the backoff growing. Short enough that a flaky link
/// which carries traffic between cuts reconnects at once each time.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);

/// Where the connection is.
pub(super) struct Link {
    pub conn: Option<Conn>,
    /// `session.handle_connected` was called for the current transport connection.
    pub attached: bool,
    /// CONNACK accepted on the current connection.
    pub up: bool,
    ever_up: bool,
    /// Failed attempts (and short-lived connections) since the last connection that stayed up for
    /// `STABLE_CONNECTION`: the exponent of the reconnect backoff.
    attempt: u32,
    /// When the current connection's CONNACK came.
    up_since: Option<Instant>,
    /// The broker of `Params::targets` tried now (or connected).
    pub target: usize,
    /// Jitter (xorshift64).
    rng: u64,
    /// Lost without reconnect: nothing more to do.
    pub dead: bool,
    /// Socket writes of earlier connections.
    pub writes_base: u64,
    /// The broker's host name being resolved on its own thread: its answer comes here.
    pub resolving: Option<mpsc::Receiver<std::io::Result<Vec<SocketAddr>>>>,
}

impl Link {
    pub fn new(sh: &Arc<Shared>) -> Link {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Link {
            conn: None,
            attached: false,
            up: false,
            ever_up: false,
            attempt: 0,
            up_since: None,
            target: 0,
            rng: (t ^ ((std::process::id() as u64) << 32) ^ (Arc::as_ptr(sh) as u64)) | 1,
            dead: false,
            writes_base: 0,
            resolving: None,
        }
    }

    /// backoff_min · 2^(attempt−1), capped at backoff_max, then a random point in its upper half.
    fn backoff(&mut self, min: Duration, max: Duration) -> Duration {
        let shift = self.attempt.saturating_sub(1).min(30);
        let base = min.checked_mul(1u32 << shift).unwrap_or(max).min(max);
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

    /// Bytes the transport holds unsent (0 without a connection).
    pub fn pending(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.pending())
    }
}

impl Io {
    pub(super) fn take_commands(&mut self, now: Instant) {
        let cmds = std::mem::take(&mut *lock(&self.sh.cmds));
        for c in cmds {
            match c {
                Cmd::Stop(at) => self.timers.set_earliest(Timer::Stop, at),
                Cmd::ReconnectNow => {
                    if self.timers.is_set(Timer::Reconnect) {
                        self.timers.set(Timer::Reconnect, now);
                    }
                }
                c => self.pending.push_back(c),
            }
        }
        if self.link.up {
            self.run_pending(now);
        }
    }

    fn run_pending(&mut self, now: Instant) {
        while let Some(c) = self.pending.pop_front() {
            let r = match &c {
                Cmd::Subscribe(f, o, id) => self.session.subscribe_with(f, *o, *id, now),
                Cmd::Unsubscribe(f) => self.session.unsubscribe(f, now),
                Cmd::Stop(_) | Cmd::ReconnectNow => Ok(()),
            };
            match r {
                Ok(()) => {}
                Err(SessionError::NotReady(why)) => {
                    log::debug!("qmqtt: command deferred: {why}");
                    self.pending.push_front(c);
                    break;
                }
                Err(e) => {
                    log::error!("qmqtt: subscription command refused: {e}");
                    if let Cmd::Subscribe(f, ..) = &c {
                        self.sh.ctr.sub_refused.fetch_add(1, Relaxed);
                        if !self.sh.resolve_ack(false, f, None) {
                            self.sh.events.push_event(Event::Subscribed {
                                filter: f,
                                granted: None,
                            });
                        }
                    }
                }
            }
        }
    }

    pub(super) fn start_connect(&mut self, now: Instant) {
        self.reload_tls();
        let n = self.p.targets.len();
        let t = &self.p.targets[self.link.target];
        log::info!(
            "qmqtt: connecting to {}:{} (attempt {}{}{})",
            t.ep.host,
            t.ep.port,
            self.link.attempt + 1,
            if n > 1 {
                format!(", broker {} of {n}", self.link.target + 1)
            } else {
                String::new()
            },
            match &t.proxy {
                Some(c) => format!(", through the HTTP proxy {} ({})", c.proxy, c.source),
                None => String::new(),
            }
        );
        // The timeout covers the name lookup too.
        self.timers
            .set(Timer::Connect, later(now, self.p.connect_timeout));
        let (host, port) = Conn::lookup_name(&t.ep, t.proxy.as_ref());
        let host = host.to_string();
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return self.connect_to(now, None);
        }
        let (tx, rx) = mpsc::channel();
        let waker = self.sh.waker.clone();
        let spawned = std::thread::Builder::new()
            .name("qmqtt-dns".into())
            .spawn(move || {
                if tx.send(crate::transport::resolve(&host, port)).is_ok() {
                    let _ = waker.wake();
                }
            });
        match spawned {
            Ok(_) => self.link.resolving = Some(rx),
            // No thread to spare: resolve here, as the transport does.
            Err(_) => self.connect_to(now, None),
        }
    }

    /// The name lookup answered: connect to the addresses (or report it). Nothing while it has not.
    pub(super) fn resolved(&mut self, now: Instant) {
        let Some(rx) = &self.link.resolving else {
            return;
        };
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Ok(Vec::new()),
        };
        self.link.resolving = None;
        let t = &self.p.targets[self.link.target];
        match r {
            Ok(addrs) if !addrs.is_empty() => self.connect_to(now, Some(&addrs)),
            Ok(_) => self.lost(now, Conn::lookup_failed(&t.ep, t.proxy.as_ref(), None)),
            Err(e) => self.lost(now, Conn::lookup_failed(&t.ep, t.proxy.as_ref(), Some(e))),
        }
    }

    /// Start the transport connection (to `addrs`, or resolving the host here when `None`).
    fn connect_to(&mut self, now: Instant, addrs: Option<&[SocketAddr]>) {
        let tls = self.p.tls.clone().map(|c| (c, &self.p.tls_opts));
        let t = &self.p.targets[self.link.target];
        let r = match addrs {
            Some(a) => Conn::connect_resolved(&t.ep, t.proxy.as_ref(), a, tls),
            None => Conn::connect_via(&t.ep, t.proxy.as_ref(), tls),
        };
        match r {
            Ok(mut c) => {
                if let Err(e) = c.register(self.poll.registry(), SOCK) {
                    let e = Error::System {
                        doing: Doing::WatchSocket,
                        cause: e.into(),
                    };
                    self.lost(now, e);
                    return;
                }
                self.link.conn = Some(c);
                // A loopback connect may already be complete.
                self.on_socket(now);
            }
            Err(e) => self.lost(now, e),
        }
    }

    /// TLS files changed since they were read: read them again; keep what was in use if they cannot be used.
    fn reload_tls(&mut self) {
        let Some(old) = &self.p.tls_files else {
            return;
        };
        // The state first: a file replaced while it is read shows as changed next time.
        let files = TlsFiles::of(&self.p.tls_opts);
        if files == *old {
            return;
        }
        match tls_config(&self.p.tls_opts) {
            Ok(c) => {
                log::info!("qmqtt: TLS files changed: certificates and keys read again");
                self.p.tls = Some(c);
            }
            Err(e) => log::warn!(
                "qmqtt: TLS files changed but cannot be used ({e}); the previous certificates and keys \
                 stay in use"
            ),
        }
        self.p.tls_files = Some(files);
    }

    pub(super) fn connect_timed_out(&mut self, now: Instant) {
        let t = &self.p.targets[self.link.target];
        if self.link.resolving.is_some() {
            let why = format!(
                "no answer within the connect timeout ({:?})",
                self.p.connect_timeout
            );
            let cause = std::io::Error::new(std::io::ErrorKind::TimedOut, why);
            let e = Conn::lookup_failed(&t.ep, t.proxy.as_ref(), Some(cause));
            return self.lost(now, e);
        }
        let ep = &t.ep;
        let e = Error::Timeout(Timeout::Connect {
            host: ep.host.clone(),
            port: ep.port,
            limit: self.p.connect_timeout,
        });
        self.lost(now, e);
    }

    /// The transport is established: the session sends CONNECT.
    pub(super) fn attach(&mut self, now: Instant) {
        self.link.attached = true;
        self.session.handle_connected(now);
    }

    /// CONNACK accepted.
    pub(super) fn on_connected(&mut self, now: Instant, session_present: bool) {
        // State first, so that whoever sees the event also sees it in `is_connected`/`stats`.
        self.link.up = true;
        self.timers.stop(Timer::Connect);
        if self.link.ever_up {
            self.sh.ctr.reconnects.fetch_add(1, Relaxed);
        }
        self.link.ever_up = true;
        // The backoff starts again only once this connection has proved stable (see `lost`): a broker that
        // accepts and then drops us at once must not be retried in a hot loop.
        self.link.up_since = Some(now);
        self.sh.ctr.connected.store(true, Relaxed);
        *lock(&self.sh.server) = Some(self.session.server().clone());
        *lock(&self.sh.broker) = Some(self.p.targets[self.link.target].ep.to_string());
        self.sh.set_first(Ok(()));
        self.sh
            .events
            .push_event(Event::Connected { session_present });
    }

    /// After the session's events of a CONNACK were forwarded.
    pub(super) fn after_connected(&mut self, now: Instant) {
        let ep = &self.p.targets[self.link.target].ep;
        log::info!("qmqtt: connected to {}:{}", ep.host, ep.port);
        self.run_pending(now);
    }

    /// The connection is gone (or never came): report, reset, schedule the next attempt.
    pub(super) fn lost(&mut self, now: Instant, cause: Error) {
        let l = &mut self.link;
        if let (Some(c), Error::Protocol(_)) = (l.conn.as_mut(), &cause) {
            // MQTT 5: the session queued a DISCONNECT saying why; give it to the socket if it takes it now.
            let mut out = Vec::new();
            if self.session.poll_transmit(&mut out) > 0 && c.write_owned(&mut out).is_ok() {
                let _ = c.flush();
            }
        }
        if let Some(mut c) = l.conn.take() {
            l.writes_base += c.io_stats().socket_writes;
            let _ = c.deregister();
        }
        if l.attached {
            self.session.handle_disconnected();
            l.attached = false;
        }
        let was_up = std::mem::replace(&mut l.up, false);
        if let Some(t) = l.up_since.take() {
            if now.saturating_duration_since(t) >= STABLE_CONNECTION {
                l.attempt = 0;
            }
        }
        // A lookup still running is abandoned (its thread ends when getaddrinfo returns).
        l.resolving = None;
        self.timers.stop(Timer::Connect);
        self.timers.stop(Timer::Unread);
        self.rx.reset(now, &self.sh);
        self.sh.ctr.connected.store(false, Relaxed);
        self.tx.stalled = false;
        if self.p.protocol_fallback
            && matches!(
                cause,
                Error::Refused {
                    code: ConnectReturnCode::UnacceptableProtocolVersion,
                    ..
                }
            )
            && self.session.fall_back_to_v31()
        {
            log::warn!("qmqtt: the broker refused MQTT 3.1.1; trying MQTT 3.1 (MQTTVersion 0)");
            self.timers.set(Timer::Reconnect, now);
            return;
        }
        if was_up {
            // The owner reports it (its ConnectionLost event): the log says it only in detail.
            log::info!("qmqtt: connection lost: {cause}");
        } else {
            log::error!("qmqtt: connect failed: {cause}");
        }
        *lock(&self.sh.last_error) = Some(cause.clone());
        // Several brokers: on to the next one at once; a round ends after the last one.
        if !was_up && self.link.target + 1 < self.p.targets.len() {
            self.link.target += 1;
            self.timers.set(Timer::Reconnect, now);
            return;
        }
        self.link.target = 0;
        self.sh.set_first(Err(cause.clone()));
        // Reported once per loss (and for the very first attempt), not for every failed reconnect attempt:
        // those show as `Reconnecting` and in `last_error` (KX calls `disconn` once per lost connection).
        let l = &mut self.link;
        if was_up || !l.ever_up && l.attempt == 0 {
            self.sh
                .events
                .push_event(Event::ConnectionLost { cause: &cause });
        }
        // With a spool, what is left goes there when the thread finishes.
        let nothing_left = self.sp.is_some()
            || !self.tx.staged.left()
                && self.session.inflight() == 0
                && lock(&self.sh.pubq).is_empty();
        if self.timers.is_set(Timer::Stop) && nothing_left {
            // Stopping anyway; no point reconnecting.
            self.link.dead = true;
            return;
        }
        if self.p.reconnect {
            let l = &mut self.link;
            l.attempt = l.attempt.saturating_add(1);
            let delay = l.backoff(self.p.backoff_min, self.p.backoff_max);
            let attempt = l.attempt;
            self.timers.set(Timer::Reconnect, later(now, delay));
            log::info!("qmqtt: reconnecting in {delay:?} (attempt {attempt})");
            self.sh
                .events
                .push_event(Event::Reconnecting { delay, attempt });
        } else {
            self.sh.close_queue();
            self.link.dead = true;
        }
    }

    /// Send DISCONNECT if connected, push it out (waiting for the socket at most until the stop deadline),
    /// close; with a spool, what is still in memory goes to it.
    pub(super) fn finish(&mut self) {
        self.sh.close_queue();
        if self.link.up {
            self.session.disconnect();
            self.transmit();
            let deadline = self.timers.get(Timer::Stop).unwrap_or_else(Instant::now);
            while self.link.pending() > 0 {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let _ = self.poll.poll(
                    &mut self.events,
                    Some(deadline.saturating_duration_since(now)),
                );
                if let Some(c) = self.link.conn.as_mut() {
                    if c.flush().is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(mut c) = self.link.conn.take() {
            c.close(); // TLS close_notify, shutdown of the sending side
            let _ = c.deregister();
        }
        if self.link.attached {
            self.session.handle_disconnected();
            self.link.attached = false;
        }
        self.link.up = false;
        self.sh.ctr.connected.store(false, Relaxed);
        self.sh.set_first(Err(Error::LocallyClosed));
        if let Some(sp) = self.sp.take() {
            sp.finish(&mut self.tx.staged, &mut self.timers, &self.sh);
        }
    }
}
