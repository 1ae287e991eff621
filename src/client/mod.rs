//! The driver: one I/O thread per connection, and [`Client`], the Rust API over it.
//!
//! STUB written by the lead to fix the interface the q layer and the `qmqtt` command use. The client owner
//! implements it and may add to it, but keeps these names and meanings.
//!
//! Producer side (any thread, typically q's main thread): [`Client::publish`] copies topic and payload into
//! a bounded byte queue under a short lock and wakes the I/O thread; it never waits on the network.
//! The I/O thread sleeps in `mio::Poll` until the socket, the waker or a timer needs it, moves as many queued
//! messages as the in-flight window allows into the session, and writes them in one TLS write.
//! Events flow back through a bounded queue; its file descriptor ([`Client::event_fd`]) becomes readable when
//! events are waiting (the q layer registers it with `sd1`).
use std::fmt;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::codec::{Protocol, QoS};
use crate::session::{Token, Will};
use crate::transport::TlsOptions;

/// What happens when the publish queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Refuse the new message with [`PublishError::QueueFull`] (the caller is told; nothing lost silently).
    #[default]
    Error,
    /// Drop the oldest queued (not yet sent) messages to make room; counted in `Stats::dropped_oldest`.
    DropOldest,
    /// Drop the new message, returning its token as if accepted; counted in `Stats::dropped_newest`.
    DropNewest,
}

/// One connection's configuration. Defaults match KxSystems/mqtt except `max_inflight` (100, where paho's
/// `reliable=1` allows one message in flight).
#[derive(Debug, Clone)]
pub struct Config {
    /// `tcp://`, `ssl://`, `mqtt://`, `mqtts://` host[:port].
    pub uri: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// KX `keepAliveInterval`, 60 s.
    pub keep_alive: Duration,
    /// KX `cleansession`, true.
    pub clean_session: bool,
    /// KX `connectTimeout`, 30 s: TCP + TLS + CONNACK.
    pub connect_timeout: Duration,
    /// KX `MQTTVersion` (3 → 3.1, 4 or 0 → 3.1.1).
    pub protocol: Protocol,
    /// In-flight window for QoS 1/2 (KX `maxInflightMessages` / `reliable`); default 100.
    pub max_inflight: u16,
    pub will: Option<Will>,
    /// TLS options, used when the URI scheme is `ssl://` / `mqtts://`.
    pub tls: TlsOptions,
    /// Publish queue bound in bytes (topic + payload + a small header per message). Default 4 MiB.
    pub queue_bytes: usize,
    /// Publish queue bound in messages. Default 100 000.
    pub queue_messages: usize,
    pub full_policy: FullPolicy,
    /// Event queue bound in bytes (received messages are the bulk). Default 4 MiB; incoming messages that do
    /// not fit are dropped and counted (`Stats::dropped_incoming`).
    pub event_queue_bytes: usize,
    /// Largest incoming packet accepted. Default 1 MiB... see field docs in the implementation.
    pub max_packet_size: usize,
    /// Reconnect automatically after a lost connection. Default true.
    pub reconnect: bool,
    /// Exponential backoff bounds between reconnect attempts (with jitter). Defaults 1 s and 30 s.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Config {
    /// A configuration with KX's defaults for this URI and client id.
    pub fn new(uri: impl Into<String>, client_id: impl Into<String>) -> Config {
        Config {
            uri: uri.into(),
            client_id: client_id.into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(60),
            clean_session: true,
            connect_timeout: Duration::from_secs(30),
            protocol: Protocol::V311,
            max_inflight: 100,
            will: None,
            tls: TlsOptions::default(),
            queue_bytes: 4 << 20,
            queue_messages: 100_000,
            full_policy: FullPolicy::Error,
            event_queue_bytes: 4 << 20,
            max_packet_size: 1 << 20,
            reconnect: true,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why a publish was refused. Short `as_q_str` forms are the q error strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    QueueFull,
    /// The client was disconnected by its owner (or never connected and not reconnecting).
    NotConnected,
    TopicInvalid,
    /// Larger than the queue could ever hold or the protocol allows.
    TooLarge,
}

impl PublishError {
    /// The q-style error string.
    pub fn as_q_str(&self) -> &'static str {
        match self {
            PublishError::QueueFull => "queue full",
            PublishError::NotConnected => "not connected",
            PublishError::TopicInvalid => "topic",
            PublishError::TooLarge => "payload size",
        }
    }
}
impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for PublishError {}

/// An event for the owner, borrowed from the event queue during [`Client::poll_events`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Connected {
        session_present: bool,
    },
    Message {
        topic: &'a str,
        payload: &'a [u8],
        qos: QoS,
        retain: bool,
    },
    /// QoS 1/2: acknowledged. QoS 0: written to the socket.
    Delivered {
        token: Token,
        qos: QoS,
    },
    /// The connection was lost (or the connect failed); `cause` says why and what to do.
    ConnectionLost {
        cause: &'a str,
    },
    /// A reconnect attempt will be made after `delay`.
    Reconnecting {
        delay: Duration,
        attempt: u32,
    },
    Subscribed {
        filter: &'a str,
        granted: Option<QoS>,
    },
    Unsubscribed {
        filter: &'a str,
    },
}

/// Counters of one connection (monotonic unless said otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages / bytes waiting in the publish queue now.
    pub queued: u64,
    pub queued_bytes: u64,
    /// QoS 1/2 messages sent and not yet acknowledged, now.
    pub inflight: u64,
    pub sent: u64,
    pub acked: u64,
    pub dropped_oldest: u64,
    pub dropped_newest: u64,
    pub refused_full: u64,
    pub dropped_incoming: u64,
    pub received: u64,
    pub reconnects: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connected: bool,
    pub last_error: Option<String>,
}

/// A connection: the handle to its I/O thread.
pub struct Client {
    _p: (),
}

impl Client {
    /// Validate the config, build TLS, spawn the I/O thread and start connecting. Returns at once.
    pub fn connect(_cfg: Config) -> Result<Client, ClientError> {
        todo!()
    }
    /// Block until the first CONNACK, or the first failure, or `timeout`. (KX's conn is synchronous; the q
    /// layer uses this for the first connection only.)
    pub fn wait_connected(&self, _timeout: Duration) -> Result<(), ClientError> {
        todo!()
    }
    /// Copy one message into the publish queue. Never blocks on the network; no allocation.
    pub fn publish(
        &self,
        _topic: &str,
        _payload: &[u8],
        _qos: QoS,
        _retain: bool,
    ) -> Result<Token, PublishError> {
        todo!()
    }
    /// Several messages under one lock and one wake-up. Tokens are appended to `tokens`; on an error the
    /// messages before it stay queued.
    pub fn publish_batch<'a>(
        &self,
        _msgs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        _qos: QoS,
        _retain: bool,
        _tokens: &mut Vec<Token>,
    ) -> Result<(), PublishError> {
        todo!()
    }
    pub fn subscribe(&self, _filter: &str, _qos: QoS) -> Result<(), ClientError> {
        todo!()
    }
    pub fn unsubscribe(&self, _filter: &str) -> Result<(), ClientError> {
        todo!()
    }
    /// Connected to the broker now (CONNACK accepted).
    pub fn is_connected(&self) -> bool {
        todo!()
    }
    /// Stop: wait up to `timeout` for queued and in-flight messages to finish, send DISCONNECT, join the thread.
    pub fn disconnect(&mut self, _timeout: Duration) {
        todo!()
    }
    pub fn stats(&self) -> Stats {
        todo!()
    }
    /// Readable while events are waiting (level-triggered: stays readable until they are all drained).
    pub fn event_fd(&self) -> RawFd {
        todo!()
    }
    /// Hand up to `max` waiting events to `f`, in order. Returns how many. Never blocks.
    pub fn poll_events(&self, _max: usize, _f: &mut dyn FnMut(Event<'_>)) -> usize {
        todo!()
    }
}

/// Why a connection could not be made or a command not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The configuration is wrong (message names the option).
    Config(String),
    /// Connecting failed (message says why and what to change).
    Connect(String),
    NotConnected,
    Timeout,
}
impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for ClientError {}
