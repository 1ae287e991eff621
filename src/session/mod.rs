//! The sans-I/O MQTT session: one connection's protocol state machine.
//!
//! STUB written by the lead to fix the interface the driver uses (quinn-proto shape). The session owner
//! implements it and may add to it, but keeps these signatures and meanings.
//!
//! The caller (the driver in [`crate::client`], or a test) owns the socket and the clock:
//! - `handle_*` feed input: transport up/down, received bytes, the time;
//! - `publish`/`subscribe`/`unsubscribe`/`disconnect` are commands; they never touch a socket;
//! - `poll_transmit`, `poll_timeout`, `poll_event` hand back output; call them after every input.
use std::fmt;
use std::time::{Duration, Instant};

use crate::codec::{ConnectReturnCode, Protocol, QoS};

/// A delivery token: strictly increasing per connection, assigned by the caller (the publish queue).
pub type Token = u64;

/// Last will, sent in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

/// Everything the protocol needs to know; the transport's options live elsewhere.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub client_id: String,
    pub protocol: Protocol,
    /// Keep-alive interval; zero turns PINGREQ off. KX default 60 s.
    pub keep_alive: Duration,
    /// How long to wait for PINGRESP (or CONNACK) before declaring the connection dead.
    pub response_timeout: Duration,
    /// Clean session flag in CONNECT. KX default true.
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    /// In-flight window for outgoing QoS 1/2 PUBLISH (1..=65535).
    pub max_inflight: u16,
    /// Largest incoming packet accepted (bytes, whole packet); bigger ones are a protocol error.
    pub max_packet_size: usize,
}

/// What the session reports to its owner.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// CONNACK accepted.
    Connected {
        session_present: bool,
    },
    /// An incoming application message (QoS 2: delivered once, on PUBLISH, duplicates suppressed).
    Message {
        topic: &'a str,
        payload: &'a [u8],
        qos: QoS,
        retain: bool,
    },
    /// A QoS 1/2 publish was acknowledged (PUBACK / PUBCOMP).
    Delivered {
        token: Token,
    },
    /// SUBACK for a filter: `granted` is `None` when the broker refused (0x80).
    Subscribed {
        filter: &'a str,
        granted: Option<QoS>,
    },
    Unsubscribed {
        filter: &'a str,
    },
}

/// Why the session gave up on the current connection. The message says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The broker refused CONNECT.
    Refused(ConnectReturnCode),
    /// The broker sent something that is not valid MQTT (message names it).
    Protocol(String),
    /// No CONNACK / PINGRESP in time.
    Timeout(&'static str),
    /// The command is not possible in this state (e.g. publish while the window is full).
    NotReady(&'static str),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for SessionError {}

/// One connection's protocol state.
pub struct Session {
    _cfg: SessionConfig,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        Session { _cfg: cfg }
    }
    /// The transport is up: queues CONNECT and starts the CONNACK timer.
    pub fn handle_connected(&mut self, _now: Instant) {
        todo!()
    }
    /// The transport went down. In-flight QoS 1/2 messages are kept for resending on the next connection
    /// (with DUP when the broker kept the session, as new publishes otherwise); subscriptions are replayed
    /// when it did not.
    pub fn handle_disconnected(&mut self) {
        todo!()
    }
    /// Feed bytes read from the transport (any split). Complete packets are processed at once.
    pub fn handle_read(&mut self, _data: &[u8], _now: Instant) -> Result<(), SessionError> {
        todo!()
    }
    /// Let timers fire (keep-alive PINGREQ, ping / CONNACK timeout).
    pub fn handle_timeout(&mut self, _now: Instant) -> Result<(), SessionError> {
        todo!()
    }
    /// CONNACK accepted and not yet lost.
    pub fn is_connected(&self) -> bool {
        todo!()
    }
    /// True when a publish of this QoS would be accepted now (connected; window not full for QoS 1/2).
    pub fn can_publish(&self, _qos: QoS) -> bool {
        todo!()
    }
    /// Free slots in the in-flight window.
    pub fn inflight_free(&self) -> usize {
        todo!()
    }
    /// Messages in flight (sent, not yet fully acknowledged).
    pub fn inflight(&self) -> usize {
        todo!()
    }
    /// Encode a PUBLISH for sending. QoS 1/2 take an in-flight slot and a packet id until acknowledged.
    /// Allocation-free once the session's buffers are warm.
    pub fn publish(
        &mut self,
        _token: Token,
        _topic: &str,
        _payload: &[u8],
        _qos: QoS,
        _retain: bool,
        _now: Instant,
    ) -> Result<(), SessionError> {
        todo!()
    }
    /// Subscribe (remembered and replayed after a reconnect that lost the session).
    pub fn subscribe(
        &mut self,
        _filter: &str,
        _qos: QoS,
        _now: Instant,
    ) -> Result<(), SessionError> {
        todo!()
    }
    pub fn unsubscribe(&mut self, _filter: &str, _now: Instant) -> Result<(), SessionError> {
        todo!()
    }
    /// Queue DISCONNECT (a clean close: the broker discards the will).
    pub fn disconnect(&mut self) {
        todo!()
    }
    /// Append every pending outgoing byte to `out`. Returns the number of bytes appended.
    pub fn poll_transmit(&mut self, _out: &mut Vec<u8>) -> usize {
        todo!()
    }
    /// The next instant `handle_timeout` must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
    /// The next event, borrowing from the session's receive buffer until the next `handle_*` call.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        todo!()
    }
}
