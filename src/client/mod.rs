//! The driver: one I/O thread per connection, and [`Client`], the Rust API over it.
//!
//! Producer side (any thread, typically q's main thread): [`Client::publish`] copies topic and payload into
//! a bounded byte queue under a short lock (no allocation, no syscall in the common case) and wakes the I/O
//! thread only if it sleeps waiting for work; it never waits on the network. A full queue applies
//! [`FullPolicy`]. Tokens are strictly increasing from 1 per `Client`. A producer that may block (not q's
//! main thread) waits for room with [`Client::wait_for_room`] rather than polling: woken once, when the
//! queue has drained to half.
//!
//! The I/O thread (`qmqtt-io`) sleeps in `mio::Poll` until the socket, the waker or a timer needs it, moves
//! as many queued messages as the in-flight window allows into the session, and hands their bytes to the
//! transport in one write (many messages per TLS record and per syscall). It reconnects with exponential
//! backoff and jitter; messages published meanwhile wait in the queue, unacknowledged QoS 1/2 messages in
//! the session. It runs as `SCHED_BATCH` so that waking it never preempts the publisher
//! (`Config::batch_scheduling`); `Config::linger` lets it collect an active stream instead of being woken
//! per burst, and `Config::ack_interval` lets it collect acknowledgements while publishes wait for the
//! window instead of being woken by each one.
//!
//! MQTT 5 (`Config::protocol` V5, `Config::mqtt5`): [`Client::publish_with`] carries per-message properties
//! through the queue (and the spool), [`Client::subscribe_with`] subscription options and identifiers;
//! received messages come with their properties, a message the broker refuses (or that breaks its limits)
//! ends as [`Event::Failed`], and `Stats::server` holds what its CONNACK negotiated.
//!
//! Events flow back through a bounded queue; its file descriptor ([`Client::event_fd`]) is readable exactly
//! while events are waiting (the q layer registers it with `sd1`). Acknowledgements are never dropped: the
//! I/O thread stops feeding the session when the event queue could not take the acknowledgements of what is
//! in flight, and a drain wakes it again. Completions of consecutive tokens share one record (a run), so an
//! owner that does not drain only pauses sending when they are out of order or of mixed QoS.
//!
//! Received messages are never acknowledged and then dropped for lack of room (receive backpressure): when
//! the event queue cannot take the next incoming PUBLISH (any QoS), the I/O thread stops reading the socket
//! and leaves the rest of the stream in the kernel's buffers, so TCP flow control holds the broker back (it
//! queues per its own limits, e.g. mosquitto's `max_queued_messages`). The owner's next drain wakes it and
//! reading resumes. While paused, PINGREQs still go out and the PINGRESP timeout is suspended, so a slow owner
//! does not cost the connection. Pauses show in `Stats::rx_paused`/`rx_paused_time`/`rx_paused_now`. The one
//! exception: a message larger than the whole message part of the event queue (`event_queue_bytes`) can
//! never be queued; it is acknowledged, dropped and counted in `Stats::dropped_incoming` (keep
//! `max_packet_size` below `event_queue_bytes` to rule that out).
//!
//! Bounds: `queue_bytes`/`queue_messages` (publish queue), `event_queue_bytes` (+ a control reserve of
//! 2·`max_inflight`·24 bytes + 64 KiB), `max_packet_size` (incoming), and fixed internal batch sizes (64 KiB
//! taken per batch, 256 KiB unsent in the transport before the thread stops encoding more, at most one
//! transport read — 1 MiB — held unfed while receiving is paused).
//!
//! # Store-and-forward (`Config::spool`, off by default)
//!
//! With a [`SpoolConfig`], telemetry the publish queue cannot hold goes to a bounded, crash-safe disk
//! spool ([`crate::spool`]) and is delivered in order when the broker is back, also after a restart:
//!
//! * **Open**: [`Client::connect`] opens the spool on the caller's thread (a directory locked by another
//!   client or process, or a bad spool configuration, is a [`ClientError::Config`] at once) and moves it
//!   into the I/O thread; the publisher's thread never touches the disk.
//! * **Spill** (I/O thread, oldest first: what it has staged, then the queue's front, in appends of up to
//!   64 KiB): while connected but unable to send (window full, socket backed up, or — strict order —
//!   a spooled backlog ahead), when the queue passes ¾ of `queue_bytes` or `queue_messages`, down to half
//!   (the push that crosses the mark wakes the thread); while disconnected, everything, 100 ms after it
//!   was published; on stop (`disconnect`, drop), everything left in memory, including queued QoS 1/2
//!   messages still unacknowledged in the window (kept as copies while in flight: at least once). The
//!   producer never waits for the disk: it sees `QueueFull` (or its `FullPolicy`) only when the I/O
//!   thread cannot spill fast enough, or the spool refused (`SpoolFull::Refuse`, disk full: retried
//!   after 1 s, the messages stay in memory meanwhile: one 64 KiB spill batch beyond `queue_bytes`).
//! * **Send**: staged queue messages first, then the spool's backlog and the queue as
//!   [`DrainScheduler`](crate::spool::DrainScheduler) splits the window: `drain_rate: None` — strict
//!   publish order, queued messages wait for the backlog; `Some(r)` — the backlog at most `r` msg/s,
//!   live messages beside it.
//! * **Acks**: PUBACK/PUBCOMP of a spooled message (QoS 0: when handed to the socket) advance the spool's
//!   acknowledged position through an [`AckTracker`](crate::spool::AckTracker). The session keeps
//!   spooled QoS 1/2 messages in its window across reconnects and resends them, so a lost connection
//!   needs no rewind. `Delivered` carries the message's token; for messages spooled by a previous run
//!   (stale tokens) it is not emitted, they are counted in `Stats::spool_delivered_previous`.
//! * **Durability**: the spool's `SyncPolicy` (default: `fdatasync` at most once a second, from the I/O
//!   loop's timer). A `kill -9` loses what was only in memory (at most 100 ms of publishes while
//!   disconnected, the queue below its mark while connected); what the broker acknowledged within the
//!   spool's `ack_interval` before a crash is sent again.
//! * **Stats**: `spooled`, `spooled_bytes`, `spool_oldest_age_ms`, `spilled`, `spool_dropped_oldest`,
//!   `spool_refused`, `spool_disk_full`, `spool_bytes_written`, `last_spool_error`.
//!
//! Pieces: `ring` (the byte FIFO both queues use), `queue` (the publish queue and its full policies),
//! `events` (the event queue and its descriptor), `shared` (what the owner and the I/O thread share: queues,
//! commands, counters), `stats` (the one table of the statistics: `Stats`, the counters, `.mqtt.stats[]`'s
//! counts), `io/` (the I/O thread: the poll loop in `io/mod.rs`, `link` connect/loss/backoff,
//! `rx` receiving with backpressure, `tx` sending, `spool` the disk spool's side, `timer` its deadlines).
use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::later;
use crate::codec::{Properties, Property, Protocol, QoS, SubscriptionOptions};
use crate::error::{ConfigError, DeliveryError, Doing, Error, Fault, Key};
use crate::session::{Mqtt5Config, SessionConfig, Token, Will};
use crate::spool::{Spool, SpoolConfig, SpoolError};
use crate::transport::{proxy, Endpoint, TlsFiles, TlsOptions};

mod events;
mod io;
mod queue;
mod ring;
mod shared;
mod stats;

use shared::{lock, AckWait, Cmd, Shared};
use stats::Counters;
pub use stats::Stats;

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
#[derive(Clone)]
pub struct Config {
    /// `tcp://`, `ssl://`, `mqtt://`, `mqtts://`, `ws://`, `wss://` `host[:port]`; several brokers of one
    /// service (an HA pair, cluster nodes: paho's `serverURIs`) separated by commas. Each connect tries them
    /// in order and stays with the first that answers (its CONNACK); a failed attempt moves on to the next at
    /// once, the reconnect backoff is between rounds. Unacknowledged QoS 1/2 messages are resent to whichever
    /// broker is reached (`Stats::broker` says which).
    pub uri: String,
    /// KX `httpProxy`: the HTTP proxy for plain brokers (`tcp://`, `ws://`), `http://[user:password@]host:port`;
    /// `None`: the environment decides (`$http_proxy` and KX's rules, see [`crate::transport::proxy::select`]);
    /// `Some("")`: no proxy.
    pub http_proxy: Option<String>,
    /// KX `httpsProxy`: the same for TLS brokers (`ssl://`, `wss://`; `$https_proxy`). TLS runs inside the
    /// tunnel.
    pub https_proxy: Option<String>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// KX `keepAliveInterval`, 60 s.
    pub keep_alive: Duration,
    /// KX `cleansession`, true. With `false` across a restart of the process, packet identifiers start at
    /// 1 again while the broker may still hold one for a QoS 2 message of the previous process awaiting
    /// its PUBREL: mosquitto takes the new PUBLISH as a new message and delivers it; the old one, never
    /// released, is not delivered (messages cross a restart in the spool, not in the broker's session).
    pub clean_session: bool,
    /// KX `connectTimeout`, 30 s: name lookup + TCP + TLS + CONNACK, per broker of a list.
    pub connect_timeout: Duration,
    /// KX `MQTTVersion` (3 → 3.1, 4 or 0 → 3.1.1, 5 → 5). Under MQTT 5 `clean_session` is Clean Start.
    pub protocol: Protocol,
    /// In-flight window for QoS 1/2 (KX `maxInflightMessages` / `reliable`); default 100.
    pub max_inflight: u16,
    pub will: Option<Will>,
    /// TLS options, used when the URI scheme is `ssl://` / `mqtts://` / `wss://` (in a list, for its TLS
    /// brokers). A setting that differs from its default fails `Client::connect` (`Fault::NeedsTls`) when no
    /// broker of `uri` uses TLS.
    pub tls: TlsOptions,
    /// Publish queue bound in bytes (topic + payload + a small header per message). Default 4 MiB. Allocated
    /// at connect (pages touched on use): at most the machine's physical memory, more (or what the allocator
    /// refuses) is a [`ConfigError`] with [`Fault::TooLarge`]; the same for `event_queue_bytes`.
    pub queue_bytes: usize,
    /// Publish queue bound in messages. Default 100 000.
    pub queue_messages: usize,
    pub full_policy: FullPolicy,
    /// Event queue bound in bytes for received messages (each takes 24 bytes plus topic and payload). Default
    /// 4 MiB. When it is full the client stops reading from the broker until the owner drains events (TCP
    /// backpressure; nothing is acknowledged that is not queued; see `Stats::rx_paused`). Only a message that
    /// could never fit (its record larger than `event_queue_bytes`) is dropped and counted
    /// (`Stats::dropped_incoming`); keep `max_packet_size` below this bound to rule that out.
    pub event_queue_bytes: usize,
    /// Largest incoming packet accepted (whole packet, bytes). Default 1 MiB. Under MQTT 3.1.1/3.1 a bigger
    /// PUBLISH is read past without being kept (only its topic and packet id are buffered), acknowledged so
    /// that the broker does not resend it, logged and counted (`Stats::dropped_oversize`); the connection
    /// stays up. Any other bigger packet is a protocol error. MQTT 5 sends it to the broker (Maximum Packet
    /// Size), which then does not send bigger ones.
    pub max_packet_size: usize,
    /// Bytes owed to the broker (acknowledgements of what it sends, PINGREQ, …) held unsent at most: beyond
    /// this the client stops reading from the broker until the socket takes them (every PUBLISH and PUBREL
    /// read adds an acknowledgement, so a broker that sends but does not read would otherwise grow this
    /// buffer without bound), and drops the connection with [`Timeout::Unread`](crate::error::Timeout) when
    /// the broker takes nothing for the keep-alive. Queued messages stop being encoded earlier (at 256 KiB
    /// unsent). Default 1 MiB; 0 reads only when everything owed is out.
    pub max_unsent_bytes: usize,
    /// MQTT 5 settings: session expiry, receive maximum, topic aliases, CONNECT's user properties (errors
    /// under MQTT 3.1.1 unless left at their defaults).
    pub mqtt5: Mqtt5Config,
    /// Reconnect automatically after a lost connection. Default true.
    pub reconnect: bool,
    /// Exponential backoff bounds between reconnect attempts (with jitter). Defaults 1 s and 30 s.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Emit [`Event::Delivered`] for QoS 0 messages when they are handed to the socket. Default false (the
    /// q layer never reports QoS 0 deliveries, as KX).
    pub qos0_delivery_events: bool,
    /// With `protocol` V311: when the broker refuses it ("unacceptable protocol version"), try MQTT 3.1 at
    /// once (paho's `MQTTVersion` 0, the q layer's default). Default false.
    pub protocol_fallback: bool,
    /// Batching delay. Zero (default): a publish into an empty queue wakes the I/O thread at once (lowest
    /// latency; one `eventfd` write per burst when the thread is idle). Non-zero: while messages keep
    /// coming (one within the last `max(10·linger, 10 ms)`), the I/O thread collects them for up to `linger`
    /// instead of being woken, so publishers make no system call at all; messages wait at most `linger`.
    pub linger: Duration,
    /// While queued QoS 1/2 messages wait for the in-flight window (a stream faster than the broker's
    /// acknowledgements), the I/O thread reads the acknowledgements every `ack_interval` instead of being
    /// woken by each TCP segment that brings one or two: each wake-up then takes many (a QoS 1 stream over
    /// TLS to mosquitto: ~7× fewer wake-ups, about half the CPU per message; benches/README.md). It applies only while the
    /// window holds messages back and acknowledgements keep coming (a read that finds nothing returns to
    /// waiting for the socket); meanwhile received messages and commands wait at most this long too. A
    /// lone message, or a stream the window keeps up with, is unaffected. Default 200 µs; zero: woken by
    /// every arrival.
    pub ack_interval: Duration,
    /// Run the I/O thread as `SCHED_BATCH` (Linux): when a publish wakes it, it does not preempt the
    /// publishing thread (q's main thread) but runs at the next opportunity — on a busy 2-core box this
    /// cuts a waking publish from ~10 µs (a context switch) to ~1.5 µs. Default true.
    pub batch_scheduling: bool,
    /// Store-and-forward on local storage (off by default). With `Some`, messages the publish queue cannot
    /// hold while they cannot be sent (broker unreachable, window full) go to this bounded, crash-safe disk
    /// spool instead of being refused or dropped, and leave it in order once the broker is back — also
    /// after a restart of the process. See [`crate::spool`] and the "Store-and-forward" section of this
    /// module's docs.
    pub spool: Option<SpoolConfig>,
}

/// Debug shows everything but the password (it prints as `<redacted>`): configurations end up in logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("uri", &crate::transport::redacted_uris(&self.uri))
            .field(
                "http_proxy",
                &self
                    .http_proxy
                    .as_deref()
                    .map(crate::transport::redacted_uri),
            )
            .field(
                "https_proxy",
                &self
                    .https_proxy
                    .as_deref()
                    .map(crate::transport::redacted_uri),
            )
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("connect_timeout", &self.connect_timeout)
            .field("protocol", &self.protocol)
            .field("max_inflight", &self.max_inflight)
            .field("will", &self.will)
            .field("tls", &self.tls)
            .field("queue_bytes", &self.queue_bytes)
            .field("queue_messages", &self.queue_messages)
            .field("full_policy", &self.full_policy)
            .field("event_queue_bytes", &self.event_queue_bytes)
            .field("max_packet_size", &self.max_packet_size)
            .field("max_unsent_bytes", &self.max_unsent_bytes)
            .field("mqtt5", &self.mqtt5)
            .field("reconnect", &self.reconnect)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("qos0_delivery_events", &self.qos0_delivery_events)
            .field("protocol_fallback", &self.protocol_fallback)
            .field("linger", &self.linger)
            .field("ack_interval", &self.ack_interval)
            .field("batch_scheduling", &self.batch_scheduling)
            .field("spool", &self.spool)
            .finish()
    }
}

impl Config {
    /// A configuration with KX's defaults for this URI and client id.
    pub fn new(uri: impl Into<String>, client_id: impl Into<String>) -> Config {
        Config {
            uri: uri.into(),
            http_proxy: None,
            https_proxy: None,
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
            max_unsent_bytes: 1 << 20,
            mqtt5: Mqtt5Config::default(),
            reconnect: true,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            qos0_delivery_events: false,
            protocol_fallback: false,
            linger: Duration::ZERO,
            ack_interval: Duration::from_micros(200),
            batch_scheduling: true,
            spool: None,
        }
    }
}

/// Why a publish was refused (the q layer maps each to its short q error string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    QueueFull,
    /// The client was disconnected by its owner (or never connected and not reconnecting).
    NotConnected,
    TopicInvalid,
    /// Larger than the queue could ever hold or the protocol allows.
    TooLarge,
    /// Properties on a connection that is not MQTT 5.
    NeedsMqtt5,
    /// A property a client may not put in PUBLISH: Topic Alias (the client assigns aliases itself) or
    /// Subscription Identifier (only brokers send it).
    PropertyNotAllowed,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::QueueFull => {
                "the publish queue is full (the broker is slow or unreachable): retry later, or raise \
                 queue_bytes / queue_messages, or choose a drop policy"
            }
            PublishError::NotConnected => "not connected: the client was disconnected",
            PublishError::TopicInvalid => {
                "invalid topic: it must be 1 to 65535 bytes without '+', '#' or NUL"
            }
            PublishError::TooLarge => {
                "message too large for the publish queue (queue_bytes) or for MQTT (256 MiB)"
            }
            PublishError::NeedsMqtt5 => {
                "message properties need MQTT 5: connect with protocol V5 (MQTTVersion 5)"
            }
            PublishError::PropertyNotAllowed => {
                "a client may not send Topic Alias (aliases are assigned automatically) or Subscription \
                 Identifier (only brokers send it) in PUBLISH: leave them out"
            }
        })
    }
}
impl std::error::Error for PublishError {}

/// An event for the owner, borrowed from the event queue during [`Client::poll_events`].
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    Connected {
        session_present: bool,
    },
    /// A received message. MQTT 5: the topic resolved from its alias, and the PUBLISH's properties
    /// (Message Expiry Interval, Content Type, Response Topic, Correlation Data, User Properties,
    /// Subscription Identifiers…; empty under MQTT 3.1.1).
    Message {
        topic: &'a str,
        payload: &'a [u8],
        qos: QoS,
        retain: bool,
        properties: Properties<'a>,
    },
    /// QoS 1/2: acknowledged. QoS 0: written to the socket.
    Delivered {
        token: Token,
        qos: QoS,
    },
    /// MQTT 5: the message will not be delivered — the broker refused it (PUBACK/PUBREC reason code), or
    /// it breaks the broker's limits (Maximum Packet Size, Maximum QoS, Retain Available). Not sent again.
    Failed {
        token: Token,
        qos: QoS,
        cause: &'a DeliveryError,
    },
    /// The connection was lost (or the connect failed); `cause` says why (its `Display`: and what to do).
    ConnectionLost {
        cause: &'a Error,
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

/// How long `disconnect` waits for the I/O thread beyond its deadline.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// With a spool the I/O thread writes what is still in memory to disk when it stops (bounded by
/// `queue_bytes`; local I/O): worth waiting for, or a restart would find the spool still locked.
const SPOOL_STOP_GRACE: Duration = Duration::from_secs(10);

/// A topic name one may publish to: 1..=65535 bytes, no wildcards, no NUL (the codec's rule).
pub(crate) fn valid_topic(t: &str) -> bool {
    crate::codec::validate_topic(t).is_ok()
}

/// A topic filter one may subscribe to (the codec's rule).
fn check_filter(f: &str) -> Result<(), ClientError> {
    crate::codec::validate_filter(f).map_err(|e| {
        ClientError::Config(ConfigError::invalid(
            Key::TopicFilter,
            format!("topic filter {f:?}: {e}"),
        ))
    })
}

/// What [`validate`] hands the I/O thread: the brokers (each with its proxy) and, when one of them is TLS,
/// the rustls configuration and the state of the files it was read from.
type Checked = (
    Vec<io::Target>,
    Option<(Arc<rustls::ClientConfig>, TlsFiles)>,
);

/// Check a configuration; returns the brokers and, for TLS, the rustls configuration.
fn validate(cfg: &Config) -> Result<Checked, ConfigError> {
    let bad = |key: Key, m: String| Err(ConfigError::invalid(key, m));
    let id = &cfg.client_id;
    if id.len() > 65535 {
        return bad(
            Key::ClientId,
            "client id: longer than 65535 bytes; use a shorter id".into(),
        );
    }
    if id.contains('\0') {
        return bad(Key::ClientId, "client id: contains a NUL character".into());
    }
    if cfg.protocol != Protocol::V5 {
        let will_props = cfg.will.as_ref().is_some_and(|w| !w.properties.is_empty());
        if cfg.mqtt5 != Mqtt5Config::default() || will_props {
            return Err(ConfigError::new(
                Key::Mqtt5,
                Fault::Unsupported,
                "MQTT 5 settings (session expiry, receive maximum, topic aliases, user or will properties) \
                 need MQTTVersion 5",
            ));
        }
    }
    if cfg.protocol == Protocol::V31 && (id.is_empty() || id.len() > 23) {
        return bad(Key::ClientId, format!(
            "client id: MQTT 3.1 (MQTTVersion 3) needs 1 to 23 bytes, got {}; shorten it or use MQTTVersion 4",
            id.len()
        ));
    }
    if id.is_empty() && !cfg.clean_session && cfg.protocol != Protocol::V5 {
        return bad(
            Key::ClientId,
            "client id: an empty id needs cleansession true (the broker cannot keep a session for it)"
                .into(),
        );
    }
    if let Some(u) = &cfg.username {
        if u.len() > 65535 {
            return bad(Key::Username, "username: longer than 65535 bytes".into());
        }
    }
    if let Some(p) = &cfg.password {
        if p.len() > 65535 {
            return bad(Key::Password, "password: longer than 65535 bytes".into());
        }
        if cfg.username.is_none() {
            return bad(
                Key::Password,
                "password: MQTT sends a password only with a username; set username too".into(),
            );
        }
    }
    if cfg.keep_alive.as_secs() > 65535 {
        return bad(
            Key::KeepAlive,
            "keepAliveInterval: at most 65535 seconds".into(),
        );
    }
    if cfg.connect_timeout.is_zero() {
        return bad(
            Key::ConnectTimeout,
            "connectTimeout: must be more than 0".into(),
        );
    }
    if cfg.max_inflight == 0 {
        return bad(
            Key::MaxInflight,
            "maxInflightMessages: must be at least 1".into(),
        );
    }
    if cfg.queue_messages == 0 {
        return bad(
            Key::QueueMessages,
            "queue_messages: the publish queue must hold at least one message".into(),
        );
    }
    if cfg.queue_bytes < 64 {
        return bad(
            Key::QueueBytes,
            "queue_bytes: the publish queue needs at least 64 bytes".into(),
        );
    }
    if cfg.event_queue_bytes < 1024 {
        return bad(
            Key::EventQueueBytes,
            "event_queue_bytes: the event queue needs at least 1024 bytes".into(),
        );
    }
    if cfg.max_packet_size < 64 {
        return bad(
            Key::MaxPacketSize,
            "max_packet_size: must be at least 64 bytes".into(),
        );
    }
    if cfg.backoff_min.is_zero() || cfg.backoff_min > cfg.backoff_max {
        return bad(
            Key::Backoff,
            "backoff: backoff_min must be more than 0 and at most backoff_max".into(),
        );
    }
    if let Some(w) = &cfg.will {
        if !valid_topic(&w.topic) {
            return bad(
                Key::Will,
                format!(
                    "will topic {:?}: must be 1 to 65535 bytes without '+', '#' or NUL",
                    w.topic
                ),
            );
        }
        if w.payload.len() > 65535 {
            return bad(Key::Will, "will payload: longer than 65535 bytes".into());
        }
    }
    let env = |k: &str| std::env::var(k).ok();
    let mut targets = Vec::new();
    for uri in cfg.uri.split(',') {
        let ep = Endpoint::parse(uri).map_err(|e| e.within("uri"))?;
        let tls = ep.scheme.tls();
        let proxy = proxy::select(
            cfg.http_proxy.as_deref(),
            cfg.https_proxy.as_deref(),
            tls,
            &ep.host,
            ep.port,
            &env,
        )
        .map_err(|e| {
            let key = if tls { Key::HttpsProxy } else { Key::HttpProxy };
            ConfigError::invalid(key, e.to_string())
        })?;
        targets.push(io::Target { ep, proxy });
    }
    let any_tls = targets.iter().any(|t| t.ep.scheme.tls());
    if !any_tls {
        if let Some((key, name)) = tls_setting(&cfg.tls) {
            // Credentials would travel in clear text while the user believes in TLS. In a list mixing
            // plain and TLS brokers the TLS settings apply to the TLS ones.
            let uri = crate::transport::redacted_uris(&cfg.uri);
            let (what, one) = if targets.len() > 1 {
                (
                    format!("no broker of {uri} has"),
                    " for at least one (the TLS ones of a list take it)",
                )
            } else {
                (format!("{uri} is not"), "")
            };
            return Err(ConfigError::new(
                key,
                Fault::NeedsTls,
                format!(
                    "{name} is a TLS setting but {what} a TLS address: use ssl:// or mqtts:// \
                     (wss:// over WebSocket){one} for it to apply, or leave it out"
                ),
            ));
        }
    }
    let tls = if any_tls {
        // The files' state first: a file replaced while it is read shows as changed at the next reconnect.
        let files = TlsFiles::of(&cfg.tls);
        let c = crate::transport::tls_config(&cfg.tls).map_err(|e| e.within("tls"))?;
        Some((c, files))
    } else {
        None
    };
    Ok((targets, tls))
}

/// The first TLS setting that differs from its default, with its names (q option, `qmqtt` flag).
fn tls_setting(t: &TlsOptions) -> Option<(Key, &'static str)> {
    let d = TlsOptions::default();
    [
        (t.ca_file.is_some(), Key::CaFile, "trustStore (--cafile)"),
        (t.ca_dir.is_some(), Key::CaDir, "CApath (--capath)"),
        (t.cert_file.is_some(), Key::ClientCert, "keyStore (--cert)"),
        (t.key_file.is_some(), Key::PrivateKey, "privateKey (--key)"),
        (
            t.key_password.is_some(),
            Key::PrivateKeyPassword,
            "privateKeyPassword (--keypass)",
        ),
        (t.server_name.is_some(), Key::ServerName, "sni (--sni)"),
        (!t.alpn.is_empty(), Key::Alpn, "alpn (--alpn)"),
        (
            t.min_version != d.min_version,
            Key::TlsVersion,
            "sslVersion (--tls-version)",
        ),
        (
            !t.cipher_suites.is_empty(),
            Key::CipherSuites,
            "enabledCipherSuites (--ciphers)",
        ),
        (
            !t.verify_certificate,
            Key::VerifyCertificate,
            "enableServerCertAuth",
        ),
        (
            !t.verify_hostname,
            Key::VerifyHostname,
            "verify (--insecure)",
        ),
    ]
    .into_iter()
    .find(|s| s.0)
    .map(|(_, k, n)| (k, n))
}

/// A queue of `bytes` (the `key` setting, named `name`) cannot be allocated.
fn too_large(key: Key, name: &str, bytes: usize) -> ClientError {
    ClientError::Config(ConfigError::new(
        key,
        Fault::TooLarge,
        format!(
            "{name} {bytes}: more memory than this machine can give (at most its physical memory, {} \
             bytes; the default is 4 MiB)",
            ring::physical_memory()
        ),
    ))
}

/// A connection: the handle to its I/O thread.
pub struct Client {
    sh: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    protocol: Protocol,
    /// With a spool, stopping spills what is in memory to disk: `disconnect` waits for that.
    has_spool: bool,
}

impl Client {
    /// Validate the config, build TLS, spawn the I/O thread and start connecting. Returns at once.
    pub fn connect(cfg: Config) -> Result<Client, ClientError> {
        let (targets, tls) = validate(&cfg).map_err(ClientError::Config)?;
        // Opened here, on the caller's thread, so that a locked or unusable directory is reported now; then
        // moved into the I/O thread, the only one that touches it.
        let spool = match &cfg.spool {
            None => None,
            Some(sc) => Some(Spool::open(sc.clone()).map_err(|e| {
                ClientError::Config(match e {
                    SpoolError::Config(_) => ConfigError::invalid(Key::Spool, e.to_string()),
                    SpoolError::Locked { .. } => {
                        ConfigError::new(Key::Spool, Fault::Locked, e.to_string())
                    }
                    e => ConfigError::invalid(
                        Key::Spool,
                        format!("cannot open the spool in {}: {e}", sc.dir.display()),
                    ),
                })
            })?),
        };
        let sys = |doing: Doing| {
            move |e: std::io::Error| {
                ClientError::Connect(Error::System {
                    doing,
                    cause: e.into(),
                })
            }
        };
        let poll = mio::Poll::new().map_err(sys(Doing::CreatePoller))?;
        let waker = mio::Waker::new(poll.registry(), io::WAKE).map_err(sys(Doing::CreateWaker))?;
        let waker = Arc::new(waker);
        // Control reserve: a Delivered record per possible in-flight message (twice, for resends), plus room
        // for connection events.
        let reserve = 2 * cfg.max_inflight as usize * events::EV_HDR + (64 << 10);
        let evq = events::EventQueue::new(cfg.event_queue_bytes, reserve).map_err(|e| {
            if e.kind() == std::io::ErrorKind::OutOfMemory {
                too_large(
                    Key::EventQueueBytes,
                    "event_queue_bytes",
                    cfg.event_queue_bytes,
                )
            } else {
                sys(Doing::CreateEventQueue)(e)
            }
        })?;
        let qos0_packets = cfg.protocol != Protocol::V5;
        let pubq = queue::PubQueue::new(
            cfg.queue_bytes,
            cfg.queue_messages,
            cfg.full_policy,
            qos0_packets,
        )
        .ok_or_else(|| too_large(Key::QueueBytes, "queue_bytes", cfg.queue_bytes))?;
        let sh = Arc::new(Shared {
            pubq: Mutex::new(pubq),
            room_cv: Condvar::new(),
            waker,
            cmds: Mutex::new(Vec::new()),
            events: evq,
            ctr: Counters::default(),
            last_error: Mutex::new(None),
            last_spool_error: Mutex::new(None),
            server: Mutex::new(None),
            broker: Mutex::new(None),
            first: Mutex::new(None),
            first_cv: Condvar::new(),
            io_wants_room: AtomicBool::new(false),
            owner_must_drain: AtomicBool::new(false),
            acks: Mutex::new(shared::AckBoard::default()),
            acks_cv: Condvar::new(),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
        });
        let keep_alive = cfg.keep_alive;
        let response_timeout = if keep_alive.is_zero() {
            cfg.connect_timeout
        } else {
            cfg.connect_timeout
                .min(keep_alive.max(Duration::from_secs(1)))
        };
        let (tls, tls_files) = tls.unzip();
        let params = io::Params {
            targets,
            tls,
            tls_files,
            tls_opts: cfg.tls.clone(),
            session: SessionConfig {
                client_id: cfg.client_id.clone(),
                protocol: cfg.protocol,
                keep_alive,
                response_timeout,
                clean_session: cfg.clean_session,
                username: cfg.username.clone(),
                password: cfg.password.clone(),
                will: cfg.will.clone(),
                max_inflight: cfg.max_inflight,
                max_packet_size: cfg.max_packet_size,
                mqtt5: cfg.mqtt5.clone(),
            },
            connect_timeout: cfg.connect_timeout,
            reconnect: cfg.reconnect,
            backoff_min: cfg.backoff_min,
            backoff_max: cfg.backoff_max,
            qos0_events: cfg.qos0_delivery_events,
            protocol_fallback: cfg.protocol_fallback,
            linger: cfg.linger.min(Duration::from_secs(1)),
            ack_interval: cfg.ack_interval.min(Duration::from_secs(1)),
            batch_scheduling: cfg.batch_scheduling,
            max_unsent: cfg.max_unsent_bytes,
        };
        crate::session::Session::check_config(&params.session).map_err(ClientError::Config)?;
        let thread = io::start(sh.clone(), poll, params, spool).map_err(sys(Doing::StartThread))?;
        Ok(Client {
            sh,
            thread: Some(thread),
            protocol: cfg.protocol,
            has_spool: cfg.spool.is_some(),
        })
    }

    /// Block until the first CONNACK, or the first failure, or `timeout`. (KX's conn is synchronous; the q
    /// layer uses this for the first connection only.)
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let g = lock(&self.sh.first);
        let (g, _) = self
            .sh
            .first_cv
            .wait_timeout_while(g, timeout, |f| f.is_none())
            .unwrap_or_else(|e| e.into_inner());
        match &*g {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ClientError::Connect(e.clone())),
            None => Err(ClientError::Timeout),
        }
    }

    /// Copy one message into the publish queue. Never blocks on the network; no allocation.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Token, PublishError> {
        if !valid_topic(topic) {
            return Err(PublishError::TopicInvalid);
        }
        let (r, wake) = {
            let mut q = lock(&self.sh.pubq);
            let r = q.push(topic, payload, qos, retain, &self.sh.ctr);
            let wake = std::mem::take(&mut q.io_waiting);
            (r, wake)
        };
        if wake {
            let _ = self.sh.waker.wake();
        }
        r
    }

    /// [`Client::publish`] with MQTT 5 properties (build them with a
    /// [`PropertiesBuf`](crate::codec::PropertiesBuf)): Message Expiry Interval, Content Type, Payload
    /// Format Indicator, Response Topic, Correlation Data, User Properties. Topic aliases are the client's
    /// business (see `Mqtt5Config::topic_aliases`). No allocation.
    pub fn publish_with(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties<'_>,
    ) -> Result<Token, PublishError> {
        if !valid_topic(topic) {
            return Err(PublishError::TopicInvalid);
        }
        self.check_properties(properties)?;
        let (r, wake) = {
            let mut q = lock(&self.sh.pubq);
            let r = q.push_with(
                topic,
                properties.as_bytes(),
                payload,
                qos,
                retain,
                &self.sh.ctr,
            );
            let wake = std::mem::take(&mut q.io_waiting);
            (r, wake)
        };
        if wake {
            let _ = self.sh.waker.wake();
        }
        r
    }

    /// Properties a publish may carry on this connection.
    fn check_properties(&self, p: Properties<'_>) -> Result<(), PublishError> {
        if p.is_empty() {
            return Ok(());
        }
        if self.protocol != Protocol::V5 {
            return Err(PublishError::NeedsMqtt5);
        }
        if p.iter().any(|p| {
            matches!(
                p,
                Property::TopicAlias(_) | Property::SubscriptionIdentifier(_)
            )
        }) {
            return Err(PublishError::PropertyNotAllowed);
        }
        Ok(())
    }

    /// Several messages under one lock and one wake-up. Tokens are appended to `tokens`. All or nothing:
    /// every topic and size is checked, and (with [`FullPolicy::Error`]) room for the whole batch, before
    /// any message is queued — on an error nothing was queued and `tokens` is unchanged, so the caller can
    /// retry the whole batch without duplicating a prefix. (The drop policies take every message.)
    pub fn publish_batch<'a>(
        &self,
        msgs: impl IntoIterator<Item = (&'a str, &'a [u8]), IntoIter: Clone>,
        qos: QoS,
        retain: bool,
        tokens: &mut Vec<Token>,
    ) -> Result<(), PublishError> {
        self.publish_batch_with(msgs, qos, retain, Properties::EMPTY, tokens)
    }

    /// [`Client::publish_batch`], every message with the same MQTT 5 properties.
    pub fn publish_batch_with<'a>(
        &self,
        msgs: impl IntoIterator<Item = (&'a str, &'a [u8]), IntoIter: Clone>,
        qos: QoS,
        retain: bool,
        properties: Properties<'_>,
        tokens: &mut Vec<Token>,
    ) -> Result<(), PublishError> {
        self.check_properties(properties)?;
        let props = properties.as_bytes();
        let msgs = msgs.into_iter();
        let (r, wake) = {
            let mut q = lock(&self.sh.pubq);
            let mut r = Self::check_batch(&mut q, msgs.clone(), props, qos, &self.sh.ctr);
            if r.is_ok() {
                for (topic, payload) in msgs {
                    // Each fits after the check (the queue stays locked): no error mid-batch.
                    match q.push_with(topic, props, payload, qos, retain, &self.sh.ctr) {
                        Ok(t) => tokens.push(t),
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
            }
            let wake = std::mem::take(&mut q.io_waiting);
            (r, wake)
        };
        if wake {
            let _ = self.sh.waker.wake();
        }
        r
    }

    /// Block until the publish queue has drained to half of its bounds (`queue_bytes`, `queue_messages`):
    /// for a producer faster than the network, after [`PublishError::QueueFull`], instead of polling. The
    /// I/O thread wakes the waiters once, from the take that brings the queue down to half, so a producer
    /// that always has more to send wakes once per half queue, not per message.
    ///
    /// `Ok(())` when there is room — or when the I/O thread waits for [`Client::poll_events`] to make room
    /// in the event queue (for Delivered events or received messages), as the publish queue would not drain
    /// before: drain events, then publish. `Err(QueueFull)` when still above half after `timeout` (e.g.
    /// reconnecting), `Err(NotConnected)` once the client is disconnected. It blocks the calling thread: the
    /// q layer never calls it.
    pub fn wait_for_room(&self, timeout: Duration) -> Result<(), PublishError> {
        let must_drain = || self.sh.owner_must_drain.load(SeqCst);
        let g = lock(&self.sh.pubq);
        let (g, _) = self
            .sh
            .room_cv
            .wait_timeout_while(g, timeout, |q| {
                let wait = !q.closed && !q.half_free() && !must_drain();
                q.room_waiters |= wait;
                wait
            })
            .unwrap_or_else(|e| e.into_inner());
        if g.closed {
            Err(PublishError::NotConnected)
        } else if g.half_free() || must_drain() {
            Ok(())
        } else {
            Err(PublishError::QueueFull)
        }
    }

    /// Every topic and size of a batch, then room for all of it (see [`Client::publish_batch`]).
    fn check_batch<'a>(
        q: &mut queue::PubQueue,
        msgs: impl Iterator<Item = (&'a str, &'a [u8])>,
        props: &[u8],
        qos: QoS,
        ctr: &Counters,
    ) -> Result<(), PublishError> {
        let (mut need, mut count) = (0usize, 0usize);
        for (topic, payload) in msgs {
            if !valid_topic(topic) {
                return Err(PublishError::TopicInvalid);
            }
            need = need.saturating_add(q.record_len(topic, props, payload, qos)?.0);
            count += 1;
        }
        q.check_batch(need, count, ctr)
    }

    fn command(&self, c: Cmd) -> Result<(), ClientError> {
        if lock(&self.sh.pubq).closed {
            return Err(ClientError::NotConnected);
        }
        lock(&self.sh.cmds).push(c);
        let _ = self.sh.waker.wake();
        Ok(())
    }

    /// Subscribe to `filter` (sent now if connected, else at the next connection; replayed after reconnects
    /// that lost the session). The outcome arrives as [`Event::Subscribed`].
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        check_filter(filter)?;
        self.command(Cmd::Subscribe(
            filter.to_string(),
            SubscriptionOptions::new(qos),
            None,
        ))
    }

    /// MQTT 5: subscribe with subscription options (no local, retain as published, retain handling) and a
    /// Subscription Identifier (1..=268435455), which the matching messages carry in their properties. A
    /// shared subscription is `$share/GROUP/FILTER`. Refused by the I/O thread (logged, `Subscribed` with
    /// `granted: None`) if the broker does not support what it asks.
    pub fn subscribe_with(
        &self,
        filter: &str,
        opts: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<(), ClientError> {
        check_filter(filter)?;
        if self.protocol != Protocol::V5 && (!opts.is_v311() || id.is_some()) {
            return Err(ClientError::Config(ConfigError::new(
                Key::TopicFilter,
                Fault::Unsupported,
                "subscription options and identifiers need MQTT 5 (MQTTVersion 5)",
            )));
        }
        let max = crate::codec::properties::MAX_SUBSCRIPTION_ID;
        if id.is_some_and(|i| i == 0 || i > max) {
            return Err(ClientError::Config(ConfigError::invalid(
                Key::TopicFilter,
                format!("subscription identifier: must be 1 to {max}"),
            )));
        }
        self.command(Cmd::Subscribe(filter.to_string(), opts, id))
    }

    /// [`Client::subscribe`], and when connected a waiter for the broker's SUBACK: `None` when not connected
    /// (the subscription goes out at the next connection; its outcome arrives as [`Event::Subscribed`]).
    /// An outcome a waiter takes is not also sent as an event.
    pub fn subscribe_acked(
        &self,
        filter: &str,
        qos: QoS,
    ) -> Result<Option<AckWaiter>, ClientError> {
        check_filter(filter)?;
        let w = self.await_ack(false, filter);
        let cmd = Cmd::Subscribe(filter.to_string(), SubscriptionOptions::new(qos), None);
        self.command(cmd).map(|()| w)
    }

    /// [`Client::unsubscribe`] with a waiter for the UNSUBACK when connected (as [`Client::subscribe_acked`]).
    pub fn unsubscribe_acked(&self, filter: &str) -> Result<Option<AckWaiter>, ClientError> {
        check_filter(filter)?;
        let w = self.await_ack(true, filter);
        self.command(Cmd::Unsubscribe(filter.to_string()))
            .map(|()| w)
    }

    /// Register a waiter before the command goes out, so that no acknowledgement can come first.
    fn await_ack(&self, unsub: bool, filter: &str) -> Option<AckWaiter> {
        if !self.is_connected() {
            return None;
        }
        let mut b = lock(&self.sh.acks);
        b.next_id += 1;
        let id = b.next_id;
        b.waiting.push(AckWait {
            id,
            unsub,
            filter: filter.to_string(),
            outcome: None,
        });
        Some(AckWaiter {
            sh: self.sh.clone(),
            id,
        })
    }

    /// Unsubscribe from `filter`; confirmed by [`Event::Unsubscribed`].
    pub fn unsubscribe(&self, filter: &str) -> Result<(), ClientError> {
        check_filter(filter)?;
        self.command(Cmd::Unsubscribe(filter.to_string()))
    }

    /// Connected to the broker now (CONNACK accepted).
    pub fn is_connected(&self) -> bool {
        self.sh.ctr.connected.load(Relaxed)
    }

    /// The connection is connected or will reconnect by itself: not disconnected by its owner, the I/O
    /// thread still running (it ends after a loss only without `reconnect`).
    pub fn is_alive(&self) -> bool {
        self.thread.is_some() && !*lock(&self.sh.exited) && !lock(&self.sh.pubq).closed
    }

    /// Ask the I/O thread to make its next reconnect attempt now instead of after the backoff delay (a
    /// no-op while connected or connecting). Returns a [`LinkWatch`] to wait for the connection without
    /// holding the client.
    pub fn reconnect_now(&self) -> LinkWatch {
        lock(&self.sh.cmds).push(Cmd::ReconnectNow);
        let _ = self.sh.waker.wake();
        LinkWatch(self.sh.clone())
    }

    /// Stop: wait up to `timeout` for queued and in-flight messages to finish, send DISCONNECT, join the thread.
    /// Publishes are refused from now on. Calling it again does nothing.
    pub fn disconnect(&mut self, timeout: Duration) {
        let Some(t) = self.thread.take() else { return };
        self.sh.close_queue();
        let deadline = later(Instant::now(), timeout);
        lock(&self.sh.cmds).push(Cmd::Stop(deadline));
        let _ = self.sh.waker.wake();
        // The thread may be stuck in name resolution (the only blocking call it makes): wait for it up to
        // the deadline plus a short grace, then let it finish on its own rather than hang the caller.
        let g = lock(&self.sh.exited);
        let grace = later(
            deadline,
            if self.has_spool {
                SPOOL_STOP_GRACE
            } else {
                STOP_GRACE
            },
        );
        let (g, _) = self
            .sh
            .exited_cv
            .wait_timeout_while(g, grace.saturating_duration_since(Instant::now()), |e| !*e)
            .unwrap_or_else(|e| e.into_inner());
        let exited = *g;
        drop(g);
        if !exited {
            log::warn!(
                "qmqtt: the I/O thread did not stop in time (blocked resolving the broker's name?); it \
                 will exit on its own"
            );
            return;
        }
        if t.join().is_err() {
            log::error!("qmqtt: the I/O thread panicked; the connection is closed");
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            last_spool_error: lock(&self.sh.last_spool_error).clone(),
            last_error: lock(&self.sh.last_error).clone(),
            server: lock(&self.sh.server).clone(),
            broker: lock(&self.sh.broker).clone(),
            ..Stats::default()
        };
        self.sh.ctr.load_into(&mut s);
        s
    }

    /// Readable while events are waiting (level-triggered: stays readable until they are all drained).
    /// Valid as long as the `Client` lives.
    pub fn event_fd(&self) -> RawFd {
        self.sh.events.fd()
    }

    /// Hand up to `max` waiting events to `f`, in order. Returns how many. Never blocks on the network (it
    /// takes the event queue's lock for a copy). A call from inside `f` returns 0.
    pub fn poll_events(&self, max: usize, f: &mut dyn FnMut(Event<'_>)) -> usize {
        let n = self.sh.events.poll(max, f);
        if n > 0 && self.sh.owner_must_drain.load(SeqCst) {
            self.sh.owner_must_drain.store(false, SeqCst);
        }
        if n > 0 && self.sh.io_wants_room.load(SeqCst) && self.sh.io_wants_room.swap(false, SeqCst)
        {
            let _ = self.sh.waker.wake();
        }
        n
    }

    /// Events waiting now.
    pub fn pending_events(&self) -> usize {
        self.sh.events.len()
    }
}

impl Drop for Client {
    /// Same as `disconnect(0)`: DISCONNECT is sent if the socket takes it at once; never waits on the network.
    fn drop(&mut self) {
        self.disconnect(Duration::ZERO);
    }
}

/// Waits for a connection's link to be up (from [`Client::reconnect_now`]); holds no lock of the client.
pub struct LinkWatch(Arc<Shared>);

impl LinkWatch {
    /// Block until the connection is up (true), or `timeout` passes or the I/O thread ends (false).
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let sh = &self.0;
        let g = lock(&sh.first);
        let (_g, _) = sh
            .first_cv
            .wait_timeout_while(g, timeout, |_| {
                !sh.ctr.connected.load(Relaxed) && !*lock(&sh.exited)
            })
            .unwrap_or_else(|e| e.into_inner());
        sh.ctr.connected.load(Relaxed)
    }
}

/// Waits for one SUBACK/UNSUBACK (from [`Client::subscribe_acked`]); holds no lock of the client. Dropping
/// it stops waiting (an outcome that comes later is sent as an event).
pub struct AckWaiter {
    sh: Arc<Shared>,
    id: u64,
}

impl AckWaiter {
    /// The broker's answer within `timeout`: `Some(qos)` granted (any `Some` for an UNSUBACK), `None`
    /// refused; [`ClientError::Timeout`] when it did not come.
    pub fn wait(&self, timeout: Duration) -> Result<Option<QoS>, ClientError> {
        let b = lock(&self.sh.acks);
        let pending = |b: &mut shared::AckBoard| {
            b.waiting
                .iter()
                .any(|w| w.id == self.id && w.outcome.is_none())
        };
        let (mut b, _) = self
            .sh
            .acks_cv
            .wait_timeout_while(b, timeout, |b| pending(b) && !*lock(&self.sh.exited))
            .unwrap_or_else(|e| e.into_inner());
        match b.waiting.iter().find(|w| w.id == self.id) {
            Some(AckWait {
                outcome: Some(o), ..
            }) => {
                let o = *o;
                b.waiting.retain(|w| w.id != self.id);
                Ok(o)
            }
            _ => Err(ClientError::Timeout),
        }
    }
}

impl Drop for AckWaiter {
    fn drop(&mut self) {
        lock(&self.sh.acks).waiting.retain(|w| w.id != self.id);
    }
}

/// Why a connection could not be made or a command not accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientError {
    /// The configuration is wrong (found before connecting; names the setting).
    Config(ConfigError),
    /// Connecting failed: why (its `Display` also says what to change).
    Connect(Error),
    NotConnected,
    Timeout,
}
impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Config(c) => write!(f, "invalid configuration: {c}"),
            ClientError::Connect(e) => e.fmt(f),
            ClientError::NotConnected => f.write_str("not connected: the client was disconnected"),
            ClientError::Timeout => f.write_str(
                "timed out waiting for the broker's CONNACK (the connection is still being attempted)",
            ),
        }
    }
}
impl std::error::Error for ClientError {}
