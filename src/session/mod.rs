//! The sans-I/O MQTT session: one connection's protocol state machine.
//!
//! The quinn-proto shape: no sockets, no threads, no clock reads. The caller (the driver in
//! [`crate::client`], or a test) owns the socket and the clock:
//! - `handle_*` feed input: transport up/down, received bytes, the time;
//! - `publish`/`subscribe`/`unsubscribe`/`disconnect` are commands; they never touch a socket;
//! - `poll_transmit`, `poll_timeout`, `poll_event` hand back output; call them after every input.
//!
//! What it owns: CONNECT/CONNACK (and its timeout), keep-alive PINGREQ and the PINGRESP timeout, packet
//! identifiers, the outgoing in-flight window, the QoS 1/2 flows in both directions, resending after a
//! reconnect and replaying subscriptions when the broker lost the session.
//!
//! Memory is bounded and warm paths do not allocate:
//! - outgoing QoS 1/2 messages live in at most `max_inflight` slots, each with a reusable `Vec<u8>` holding
//!   the encoded PUBLISH; a slot's packet identifiers are `slot + 1 + k·max_inflight`, so an acknowledgement
//!   finds its slot by arithmetic (no map);
//! - identifiers in use and incoming QoS 2 identifiers awaiting PUBREL are two 65 536-bit bitsets (8 KiB each);
//! - the receive buffer holds at most one partial packet (≤ `max_packet_size`, checked from the fixed header
//!   before the body is buffered) plus the packets of the current `handle_read`, whose events borrow it. It is
//!   compacted at the next `handle_read`; bytes of events not yet polled are kept, so poll every event before
//!   feeding more bytes to keep it small. Under MQTT 3.1.1/3.1 a PUBLISH over `max_packet_size` is read past
//!   (only its topic and packet id are buffered), acknowledged and counted ([`Session::oversize_dropped`]).
//!
//! Receive backpressure: [`Session::handle_read_bounded`] takes a budget for the events it produces and stops
//! before a PUBLISH whose event would not fit, returning how many input bytes it took, so that the owner never
//! has to acknowledge a message it cannot keep. While the owner leaves the rest of the stream unread it says so
//! with [`Session::handle_reader_paused`]: the PINGRESP timeout is not enforced then (the PINGRESP may be waiting
//! unread behind the messages) and PINGREQ keeps going out every keep-alive so the broker keeps the connection.
//!
//! MQTT 5 ([`Protocol::V5`], settings in [`Mqtt5Config`]): CONNECT carries the session expiry, receive
//! maximum, maximum packet size, topic alias maximum and user properties; the CONNACK's limits
//! ([`ServerInfo`]) then bind the connection — never more QoS 1/2 in flight than its Receive Maximum (messages
//! kept from an earlier connection wait for room, oldest first), no PUBLISH over its Maximum Packet Size or
//! Maximum QoS, no retain without Retain Available, subscriptions it cannot serve refused before sending, its
//! Server Keep Alive and Assigned Client Identifier used. Topics published again go under an alias (module
//! `alias`: an LRU up to the broker's Topic Alias Maximum, cleared at each CONNACK; slots keep the topic
//! itself, so a resend never depends on an alias), and the broker's aliases are resolved. Reason codes: a
//! refusing PUBACK/PUBREC ends the message ([`Event::Failed`]), the broker's DISCONNECT is
//! [`Error::Disconnected`], and a violation by the broker queues our DISCONNECT with its reason code.
//!
//! Delivery guarantee: a QoS 1/2 message given to [`Session::publish`] stays in its slot until PUBACK/PUBCOMP.
//! After a reconnect it is resent with DUP (or, in the PUBREC state, its PUBREL is resent) when the broker kept
//! the session, and resent as a fresh PUBLISH otherwise (the broker forgot it, so at-least-once beats loss).
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::codec::{
    self, encode_ack, encode_publish, encode_publish_v5, parse_fixed_header, Ack, ConnAck, Connect,
    ConnectReturnCode, DecodeOptions, Disconnect, Filters, LastWill, Packet, PacketType,
    Properties, PropertiesBuf, Property, PropertyScope, Protocol, Publish, QoS, ReasonCode,
    Subscribe, SubscribeReturnCode, SubscriptionOptions, TopicList, Unsubscribe, DUP_FLAG,
};
use crate::error::{ConfigError, DeliveryError, Error, Key, Timeout, Violation};

mod alias;

use alias::{Alias, InAliases, OutAliases};

/// A delivery token: strictly increasing per connection, assigned by the caller (the publish queue).
pub type Token = u64;

/// Last will, sent in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5: Will Delay Interval, Message Expiry Interval, Content Type, Payload Format Indicator,
    /// Response Topic, Correlation Data, User Properties. Must be empty for MQTT 3.1/3.1.1.
    pub properties: PropertiesBuf,
}

/// The MQTT 5 settings of a connection (MQTT 3.1/3.1.1 ignore them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt5Config {
    /// Session Expiry Interval sent in CONNECT, seconds: how long the broker keeps the session after the
    /// connection ends (0, the default: it ends with the connection; `u32::MAX`: never). With clean start
    /// off, a reconnect within this time resumes the session.
    pub session_expiry: u32,
    /// Receive Maximum sent in CONNECT: how many QoS 1/2 messages the broker may have unacknowledged
    /// towards this client (65535, the default, is left out of CONNECT).
    pub receive_maximum: u16,
    /// Topic Alias Maximum sent in CONNECT: aliases the broker may use towards this client (0: none).
    pub topic_alias_maximum: u16,
    /// At most this many topic aliases for what this client publishes (also bounded by the broker's Topic
    /// Alias Maximum); 0 turns outgoing aliases off. Default 16.
    pub topic_aliases: u16,
    /// User Properties of CONNECT.
    pub user_properties: Vec<(String, String)>,
    /// Ask the broker for Response Information (request/response: a topic prefix it grants).
    pub request_response_information: bool,
}

impl Default for Mqtt5Config {
    fn default() -> Self {
        Mqtt5Config {
            session_expiry: 0,
            receive_maximum: u16::MAX,
            topic_alias_maximum: 0,
            topic_aliases: 16,
            user_properties: Vec::new(),
            request_response_information: false,
        }
    }
}

/// What the broker's CONNACK said about the connection: its MQTT 5 properties (under MQTT 3.1/3.1.1, the
/// defaults: no limits beyond the protocol's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub session_present: bool,
    /// QoS 1/2 messages the client may have unacknowledged towards the broker (65535 when not said).
    pub receive_maximum: u16,
    /// Largest packet the broker accepts (`None`: MQTT's limit).
    pub maximum_packet_size: Option<u32>,
    /// Aliases the client may use (0: none).
    pub topic_alias_maximum: u16,
    pub maximum_qos: QoS,
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub subscription_identifiers_available: bool,
    pub shared_subscription_available: bool,
    /// The keep-alive the broker imposes (seconds), replacing the client's.
    pub server_keep_alive: Option<u16>,
    /// The session expiry the broker grants, when it changed the client's.
    pub session_expiry_interval: Option<u32>,
    /// The client id the broker assigned (the client sent an empty one).
    pub assigned_client_identifier: Option<String>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

impl Default for ServerInfo {
    fn default() -> Self {
        ServerInfo {
            session_present: false,
            receive_maximum: u16::MAX,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keep_alive: None,
            session_expiry_interval: None,
            assigned_client_identifier: None,
            response_information: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        }
    }
}

impl ServerInfo {
    fn from_connack(c: &ConnAck<'_>) -> ServerInfo {
        let mut i = ServerInfo {
            session_present: c.session_present,
            ..ServerInfo::default()
        };
        for p in c.properties.iter() {
            match p {
                Property::ReceiveMaximum(v) => i.receive_maximum = v,
                Property::MaximumPacketSize(v) => i.maximum_packet_size = Some(v),
                Property::TopicAliasMaximum(v) => i.topic_alias_maximum = v,
                Property::MaximumQoS(q) => i.maximum_qos = q,
                Property::RetainAvailable(b) => i.retain_available = b,
                Property::WildcardSubscriptionAvailable(b) => i.wildcard_subscription_available = b,
                Property::SubscriptionIdentifierAvailable(b) => {
                    i.subscription_identifiers_available = b
                }
                Property::SharedSubscriptionAvailable(b) => i.shared_subscription_available = b,
                Property::ServerKeepAlive(v) => i.server_keep_alive = Some(v),
                Property::SessionExpiryInterval(v) => i.session_expiry_interval = Some(v),
                Property::AssignedClientIdentifier(v) => {
                    i.assigned_client_identifier = Some(v.into())
                }
                Property::ResponseInformation(v) => i.response_information = Some(v.into()),
                Property::ServerReference(v) => i.server_reference = Some(v.into()),
                Property::ReasonString(v) => i.reason_string = Some(v.into()),
                Property::UserProperty(k, v) => i.user_properties.push((k.into(), v.into())),
                _ => {}
            }
        }
        i
    }
}

/// Everything the protocol needs to know; the transport's options live elsewhere.
#[derive(Clone)]
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
    /// In-flight window for outgoing QoS 1/2 PUBLISH (1..=65535; 0 is taken as 1).
    pub max_inflight: u16,
    /// Largest incoming packet accepted (bytes, whole packet); bigger ones are a protocol error. MQTT 5
    /// sends it as the Maximum Packet Size, so the broker does not send bigger ones.
    pub max_packet_size: usize,
    /// MQTT 5 settings.
    pub mqtt5: Mqtt5Config,
}

/// Debug shows everything but the password (it prints as `<redacted>`): configurations end up in logs.
impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("client_id", &self.client_id)
            .field("protocol", &self.protocol)
            .field("keep_alive", &self.keep_alive)
            .field("response_timeout", &self.response_timeout)
            .field("clean_session", &self.clean_session)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will)
            .field("max_inflight", &self.max_inflight)
            .field("max_packet_size", &self.max_packet_size)
            .field("mqtt5", &self.mqtt5)
            .finish()
    }
}

/// What the session reports to its owner.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// CONNACK accepted.
    Connected {
        session_present: bool,
    },
    /// An incoming application message (QoS 2: delivered once, on PUBLISH, duplicates suppressed). MQTT 5:
    /// the topic is resolved from its Topic Alias; `properties` are the PUBLISH's (its Topic Alias included).
    Message {
        topic: &'a str,
        payload: &'a [u8],
        qos: QoS,
        retain: bool,
        properties: Properties<'a>,
    },
    /// A QoS 1/2 publish was acknowledged (PUBACK: QoS 1 / PUBCOMP: QoS 2).
    Delivered {
        token: Token,
        qos: QoS,
    },
    /// MQTT 5: a QoS 1/2 publish the broker refused (PUBACK / PUBREC with an error reason code). It is not
    /// sent again.
    Failed {
        token: Token,
        qos: QoS,
        cause: DeliveryError,
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

/// What [`Session::handle_read_bounded`] did with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadProgress {
    /// Bytes of the input taken; the caller keeps the rest and feeds it again (first) later.
    pub consumed: usize,
    /// `Some(cost)` when it stopped before a complete PUBLISH that did not fit in the budget: call again when
    /// at least `cost` is available (`per_event` plus its topic and payload). The packet is held by the
    /// session.
    pub blocked: Option<usize>,
}

/// Why the session refused a command (the connection is unaffected). A failure of the connection itself is
/// an [`Error`] from the `handle_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The command is not possible in this state (e.g. publish while the window is full).
    NotReady(&'static str),
    /// The command's arguments cannot be sent as MQTT (e.g. a wildcard in a PUBLISH topic); the message says
    /// which and how to fix it.
    Invalid(String),
    /// The message cannot be delivered on this connection (too large for the broker, a QoS or retain it
    /// does not support): report it failed.
    Failed(DeliveryError),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::NotReady(m) => f.write_str(m),
            SessionError::Invalid(m) => f.write_str(m),
            SessionError::Failed(e) => e.fmt(f),
        }
    }
}
impl std::error::Error for SessionError {}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No transport.
    Disconnected,
    /// CONNECT queued, waiting for CONNACK.
    Connecting,
    /// CONNACK accepted.
    Connected,
    /// DISCONNECT queued; acknowledgements are still processed.
    Closing,
    /// An error ended this connection; waiting for `handle_disconnected`.
    Failed,
}

const NOT_CONNECTED: &str =
    "not connected to the broker: wait for the Connected event (the client reconnects by itself)";
const WINDOW_FULL: &str =
    "the in-flight window is full (max_inflight QoS 1/2 messages unacknowledged): wait for Delivered events \
     or raise max_inflight";
const NO_PKID: &str =
    "all 65535 packet identifiers are in use: wait for acknowledgements before sending more QoS 1/2 \
     messages or subscriptions";

/// A 65 536-bit set indexed by packet identifier, with its size.
struct IdSet(Box<[u64; 1024]>, usize);

impl IdSet {
    fn new() -> Self {
        IdSet(Box::new([0; 1024]), 0)
    }
    fn count(&self) -> usize {
        self.1
    }
    fn contains(&self, id: u16) -> bool {
        self.0[id as usize >> 6] & (1 << (id & 63)) != 0
    }
    fn insert(&mut self, id: u16) {
        let w = &mut self.0[id as usize >> 6];
        self.1 += (*w & (1 << (id & 63)) == 0) as usize;
        *w |= 1 << (id & 63);
    }
    fn remove(&mut self, id: u16) {
        let w = &mut self.0[id as usize >> 6];
        self.1 -= (*w & (1 << (id & 63)) != 0) as usize;
        *w &= !(1 << (id & 63));
    }
    fn clear(&mut self) {
        self.0.fill(0);
        self.1 = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish,
    /// PUBREC received, PUBREL sent, waiting for PUBCOMP.
    Release,
}

/// One outgoing QoS 1/2 message in flight.
struct Slot {
    state: SlotState,
    token: Token,
    pkid: u16,
    qos: QoS,
    /// Send order, for resending in order.
    seq: u64,
    /// Which of this slot's identifiers to try next.
    next_gen: u16,
    /// Kept from an earlier connection and not sent on this one yet (the broker's Receive Maximum).
    held: bool,
    /// The encoded PUBLISH (DUP clear). Reused across messages.
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    /// The options and the Subscription Identifier (MQTT 5).
    Subscribe(SubscriptionOptions, Option<u32>),
    Unsubscribe,
}

/// A subscription, remembered for replay.
struct Sub {
    filter: String,
    opts: SubscriptionOptions,
    id: Option<u32>,
}

/// A SUBSCRIBE / UNSUBSCRIBE waiting for its acknowledgement.
struct Request {
    pkid: u16,
    kind: ReqKind,
    filter: String,
}

/// An event whose borrowed parts are ranges into `rx` (messages) or `ev_text` (filters).
#[derive(Debug, Clone)]
enum Ev {
    Connected {
        session_present: bool,
    },
    Message {
        /// In `rx`, or in `ev_text` (a topic resolved from its alias) when `topic_in_text`.
        topic: Range<usize>,
        topic_in_text: bool,
        payload: Range<usize>,
        properties: Range<usize>,
        qos: QoS,
        retain: bool,
    },
    Delivered {
        token: Token,
        qos: QoS,
    },
    Failed {
        token: Token,
        qos: QoS,
        cause: DeliveryError,
    },
    Subscribed {
        filter: Range<usize>,
        granted: Option<QoS>,
    },
    Unsubscribed {
        filter: Range<usize>,
    },
}

/// An incoming PUBLISH over `max_packet_size` being read past: its fixed header and head stay in `rx`.
struct Skip {
    header_len: usize,
    /// Body bytes not yet read.
    left: usize,
    qos: QoS,
    size: usize,
}

/// One connection's protocol state.
pub struct Session {
    cfg: SessionConfig,
    state: State,
    session_present: bool,

    // Output.
    tx: Vec<u8>,
    last_tx: Option<Instant>,
    connack_deadline: Option<Instant>,
    ping_deadline: Option<Instant>,

    // Input.
    rx: Vec<u8>,
    /// End of the complete packets in `rx`; `rx[rx_done..]` is a partial packet.
    rx_done: usize,
    /// An incoming PUBLISH over `max_packet_size` being read past (MQTT 3.1.1/3.1).
    skip: Option<Skip>,
    /// Such messages discarded (and acknowledged) so far.
    oversize_dropped: u64,
    events: VecDeque<Ev>,
    ev_text: String,
    /// Incoming QoS 2 identifiers delivered and awaiting PUBREL.
    awaiting_rel: IdSet,
    /// The owner stopped reading (see `handle_reader_paused`).
    rx_paused: bool,

    // Outgoing identifiers and in-flight messages.
    ids_in_use: IdSet,
    /// Slots: `max_inflight`, fixed (the identifiers' arithmetic depends on it).
    window: u16,
    /// In flight on this connection at most: the window, or the broker's Receive Maximum if lower.
    quota: usize,
    /// Slots `held`.
    held: usize,
    slots: Vec<Slot>,
    free_slots: Vec<u16>,
    inflight: usize,
    seq: u64,
    next_req_id: u16,
    scratch: Vec<u16>,

    // Subscriptions.
    subs: Vec<Sub>,
    requests: Vec<Request>,

    // MQTT 5.
    /// The broker's CONNACK of this (or the last) connection.
    server: ServerInfo,
    /// The keep-alive in force (the broker's Server Keep Alive replaces the configured one).
    keep_alive: Duration,
    /// The client id the broker assigned, used for the next CONNECT.
    assigned_id: Option<String>,
    out_aliases: OutAliases,
    in_aliases: InAliases,
    /// PUBLISHes sent under a known alias, and the topic bytes that saved.
    aliased: u64,
    alias_saved: u64,
    /// Set when CONNECT cannot be encoded from the configuration; reported by the next `handle_timeout`.
    config_error: Option<ConfigError>,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        let window = cfg.max_inflight.max(1);
        Session {
            cfg,
            state: State::Disconnected,
            session_present: false,
            tx: Vec::new(),
            last_tx: None,
            connack_deadline: None,
            ping_deadline: None,
            rx: Vec::new(),
            rx_done: 0,
            skip: None,
            oversize_dropped: 0,
            events: VecDeque::new(),
            ev_text: String::new(),
            awaiting_rel: IdSet::new(),
            rx_paused: false,
            ids_in_use: IdSet::new(),
            window,
            quota: window as usize,
            held: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            inflight: 0,
            seq: 0,
            next_req_id: 0,
            scratch: Vec::new(),
            subs: Vec::new(),
            requests: Vec::new(),
            server: ServerInfo::default(),
            keep_alive: Duration::ZERO,
            assigned_id: None,
            out_aliases: OutAliases::default(),
            in_aliases: InAliases::default(),
            aliased: 0,
            alias_saved: 0,
            config_error: None,
        }
    }

    /// Check that CONNECT can be built from `cfg` (strings' lengths, no NUL, a will topic without
    /// wildcards, a password only with a user name). `handle_connected` with a bad configuration fails at the
    /// next `handle_timeout` with the same error.
    pub fn check_config(cfg: &SessionConfig) -> Result<(), ConfigError> {
        encode_connect(cfg, &cfg.client_id, &mut Vec::new())
            .map(|_| ())
            .map_err(connect_config_error)
    }

    /// The configuration this session was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// What the broker's last accepted CONNACK said (MQTT 3.1.1: the defaults).
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// PUBLISHes sent with a topic alias in place of their topic, and the topic bytes that saved.
    pub fn alias_stats(&self) -> (u64, u64) {
        (self.aliased, self.alias_saved)
    }

    /// Incoming messages over `max_packet_size` read past, discarded and acknowledged (MQTT 3.1.1/3.1).
    pub fn oversize_dropped(&self) -> u64 {
        self.oversize_dropped
    }

    /// Take bytes of the oversize PUBLISH being skipped from `input`: its head (topic length, topic, packet
    /// id: at most 65 539 bytes) into `rx` after its fixed header, the rest discarded. Once it is all read,
    /// acknowledge it as if delivered (a broker would resend it for ever otherwise) and count it.
    fn skip_publish(&mut self, input: &mut &[u8], now: Instant) -> Result<(), Error> {
        let Some(s) = self.skip.as_mut() else {
            return Ok(());
        };
        let head = &self.rx[self.rx_done + s.header_len..];
        let want = match (s.qos, head.len()) {
            (QoS::AtMostOnce, _) => 0,
            (_, 0 | 1) => 2,
            _ => 2 + u16::from_be_bytes([head[0], head[1]]) as usize + 2,
        };
        let take = if head.len() < want {
            (want - head.len()).min(input.len()).min(s.left)
        } else {
            s.left.min(input.len())
        };
        if head.len() < want {
            self.rx.extend_from_slice(&input[..take]);
        }
        *input = &input[take..];
        s.left -= take;
        if s.left > 0 {
            return Ok(());
        }
        let (qos, size) = (s.qos, s.size);
        let head = &self.rx[self.rx_done + s.header_len..];
        let pkid = (want > 0 && head.len() >= want)
            .then(|| u16::from_be_bytes([head[want - 2], head[want - 1]]));
        self.skip = None;
        self.rx.truncate(self.rx_done);
        let pkid = match (qos, pkid) {
            (QoS::AtMostOnce, _) => 0,
            (_, Some(id)) if id != 0 => id,
            _ => {
                return Err(self.fail_protocol(codec::Error::Malformed {
                    packet: PacketType::Publish,
                    what: "no packet identifier",
                }))
            }
        };
        self.oversize_dropped += 1;
        log::warn!(
            "qmqtt: discarded an incoming message of {size} bytes (over the maximum of {} bytes; \
             acknowledged so that the broker does not resend it)",
            self.cfg.max_packet_size
        );
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack(PacketType::PubAck, pkid, now),
            QoS::ExactlyOnce => {
                self.awaiting_rel.insert(pkid);
                self.ack(PacketType::PubRec, pkid, now);
            }
        }
        Ok(())
    }

    /// The transport is up: queues CONNECT and starts the CONNACK timer.
    pub fn handle_connected(&mut self, now: Instant) {
        self.tx.clear();
        self.rx.truncate(self.rx_done);
        self.ping_deadline = None;
        self.rx_paused = false;
        self.keep_alive = self.cfg.keep_alive;
        let id = match (&self.assigned_id, self.cfg.client_id.is_empty()) {
            (Some(a), true) => a.as_str(),
            _ => self.cfg.client_id.as_str(),
        };
        if let Err(e) = encode_connect(&self.cfg, id, &mut self.tx) {
            // The configuration cannot be encoded (e.g. a will topic with a wildcard). Surface it as a
            // refusal-like failure at once rather than sending garbage.
            self.config_error = Some(connect_config_error(e));
            self.state = State::Failed;
            self.connack_deadline = Some(now);
            return;
        }
        self.last_tx = Some(now);
        self.connack_deadline = now.checked_add(self.cfg.response_timeout);
        self.state = State::Connecting;
    }

    /// The transport went down. In-flight QoS 1/2 messages are kept for resending on the next connection
    /// (with DUP when the broker kept the session, as new publishes otherwise); subscriptions are replayed
    /// when it did not.
    /// Speak MQTT 3.1 from the next connection on, if speaking 3.1.1 (paho's `MQTTVersion` 0 fallback after
    /// the broker refused 3.1.1). False otherwise.
    pub fn fall_back_to_v31(&mut self) -> bool {
        if self.cfg.protocol != Protocol::V311 {
            return false;
        }
        self.cfg.protocol = Protocol::V31;
        true
    }

    pub fn handle_disconnected(&mut self) {
        self.state = State::Disconnected;
        self.skip = None;
        self.tx.clear();
        self.rx.truncate(self.rx_done);
        self.connack_deadline = None;
        self.ping_deadline = None;
        self.last_tx = None;
        self.rx_paused = false;
    }

    /// Feed bytes read from the transport (any split). Complete packets are processed at once.
    pub fn handle_read(&mut self, data: &[u8], now: Instant) -> Result<(), Error> {
        self.handle_read_bounded(data, now, usize::MAX, 0)
            .map(|_| ())
    }

    /// Like [`Session::handle_read`], but the events produced may cost at most `budget`, where an event costs
    /// `per_event` plus its text (topic and payload of a message, the filter of a SUBACK/UNSUBACK). Before
    /// processing a complete PUBLISH it checks that its event's cost (known from the fixed header) fits in
    /// what is left, and stops otherwise: nothing is acknowledged that did not fit.
    /// Other packets are always processed (their events are small; the caller keeps a reserve for them) and
    /// their cost is taken from the budget. `usize::MAX` means unbounded.
    ///
    /// Returns how many bytes of `data` were taken; feed the rest (after polling the events and waiting for
    /// room) before any new bytes.
    pub fn handle_read_bounded(
        &mut self,
        data: &[u8],
        now: Instant,
        budget: usize,
        per_event: usize,
    ) -> Result<ReadProgress, Error> {
        self.compact();
        if matches!(self.state, State::Disconnected | State::Failed) {
            return Ok(ReadProgress {
                consumed: data.len(),
                blocked: None,
            });
        }
        let mut budget = budget;
        let mut input = data;
        loop {
            if self.skip.is_some() {
                while self.skip.is_some() && !input.is_empty() {
                    self.skip_publish(&mut input, now)?;
                }
                if self.skip.is_some() {
                    break; // input used up
                }
                continue;
            }
            let partial = &self.rx[self.rx_done..];
            // MQTT 3.1.1/3.1: a PUBLISH over the limit is skipped, so its header is read without the limit.
            let opts = DecodeOptions {
                protocol: self.cfg.protocol,
                max_packet_size: if self.cfg.protocol == Protocol::V5 {
                    self.cfg.max_packet_size
                } else {
                    codec::MAX_REMAINING_LENGTH + 5
                },
            };
            match parse_fixed_header(partial, &opts) {
                Err(e) => return Err(self.fail_protocol(e)),
                Ok(Some(h)) if h.packet_len() > self.cfg.max_packet_size => {
                    let max = self.cfg.max_packet_size;
                    let size = h.packet_len();
                    if h.packet_type != PacketType::Publish || self.state != State::Connected {
                        return Err(self.fail_protocol(codec::Error::PacketTooLarge { size, max }));
                    }
                    let Some(qos) = QoS::from_u8((h.flags >> 1) & 3) else {
                        return Err(self.fail_protocol(codec::Error::InvalidQoS));
                    };
                    self.skip = Some(Skip {
                        header_len: h.header_len,
                        left: h.remaining_len - (partial.len() - h.header_len),
                        qos,
                        size,
                    });
                }
                Ok(Some(h)) => {
                    let need = h.packet_len() - partial.len();
                    if need == 0 {
                        let bounded = budget != usize::MAX;
                        if bounded && h.packet_type == PacketType::Publish {
                            let cost = publish_event_cost(&h)
                                .saturating_add(self.in_aliases.longest)
                                .saturating_add(per_event);
                            if cost > budget {
                                return Ok(ReadProgress {
                                    consumed: data.len() - input.len(),
                                    blocked: Some(cost),
                                });
                            }
                        }
                        let before = self.events.len();
                        let start = self.rx_done;
                        self.rx_done += h.packet_len();
                        self.process(start, h, now)?;
                        if bounded {
                            budget = budget.saturating_sub(self.events_cost(before, per_event));
                        }
                        continue;
                    }
                    if input.is_empty() {
                        break;
                    }
                    let take = need.min(input.len());
                    self.rx.extend_from_slice(&input[..take]);
                    input = &input[take..];
                }
                Ok(None) => {
                    // Header incomplete: take one byte at a time (at most 5), so an oversize packet is
                    // refused from its header, before its body is buffered.
                    let Some((&b, rest)) = input.split_first() else {
                        break;
                    };
                    self.rx.push(b);
                    input = rest;
                }
            }
        }
        Ok(ReadProgress {
            consumed: data.len(),
            blocked: None,
        })
    }

    /// The owner stopped (`true`) or resumed (`false`) reading the transport, e.g. because its event queue
    /// is full. While paused the PINGRESP timeout is not enforced (the PINGRESP may sit unread behind the
    /// messages) and a PINGREQ goes out every keep-alive even with one unanswered, so the broker keeps the
    /// connection. On resuming, an unanswered PINGREQ gets a full `response_timeout` from then.
    pub fn handle_reader_paused(&mut self, paused: bool, now: Instant) {
        if self.rx_paused && !paused {
            if let Some(d) = self.ping_deadline {
                let fresh = now.checked_add(self.cfg.response_timeout).unwrap_or(d);
                self.ping_deadline = Some(d.max(fresh));
            }
        }
        self.rx_paused = paused;
    }

    /// Let timers fire (keep-alive PINGREQ, ping / CONNACK timeout).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        match self.state {
            State::Failed => {
                if self.connack_deadline.is_some_and(|d| now >= d) {
                    self.connack_deadline = None;
                    if let Some(e) = self.config_error.take() {
                        return Err(Error::Config(e));
                    }
                }
            }
            State::Connecting => {
                if self.connack_deadline.is_some_and(|d| now >= d) {
                    self.state = State::Failed;
                    self.connack_deadline = None;
                    return Err(Error::Timeout(Timeout::ConnAck));
                }
            }
            State::Connected => {
                if !self.rx_paused && self.ping_deadline.is_some_and(|d| now >= d) {
                    self.state = State::Failed;
                    self.ping_deadline = None;
                    return Err(Error::Timeout(Timeout::PingResp));
                }
                let ping_free = self.ping_deadline.is_none() || self.rx_paused;
                if ping_free && self.keepalive_due().is_some_and(|d| now >= d) {
                    self.tx.extend_from_slice(&[0xc0, 0]);
                    self.last_tx = Some(now);
                    if self.ping_deadline.is_none() {
                        self.ping_deadline = now.checked_add(self.cfg.response_timeout);
                    }
                }
            }
            State::Disconnected | State::Closing => {}
        }
        Ok(())
    }

    /// CONNACK accepted and not yet lost.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// True when a publish of this QoS would be accepted now (connected; for QoS 1/2 the window not full,
    /// nor the broker's Receive Maximum reached).
    pub fn can_publish(&self, qos: QoS) -> bool {
        self.is_connected() && (qos == QoS::AtMostOnce || self.inflight < self.quota)
    }

    /// Free slots in the in-flight window (within the broker's Receive Maximum).
    pub fn inflight_free(&self) -> usize {
        self.quota.saturating_sub(self.inflight)
    }

    /// Messages in flight (sent, not yet fully acknowledged).
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Send a QoS 0 PUBLISH the caller encoded (MQTT 3.1/3.1.1: [`codec::publish_qos0_prefix`], the checked
    /// topic, the payload), as it is: what [`Session::publish`] does for QoS 0, without encoding.
    pub fn publish_qos0_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), SessionError> {
        if self.state != State::Connected {
            return Err(SessionError::NotReady(NOT_CONNECTED));
        }
        if self.cfg.protocol == Protocol::V5 {
            return Err(SessionError::Invalid(
                "a QoS 0 PUBLISH packet without properties is MQTT 3.1.1's; under MQTT 5 use publish"
                    .into(),
            ));
        }
        self.tx.extend_from_slice(packet);
        self.last_tx = Some(now);
        Ok(())
    }

    /// Encode a PUBLISH for sending. QoS 1/2 take an in-flight slot and a packet id until acknowledged.
    /// Allocation-free once the session's buffers are warm.
    pub fn publish(
        &mut self,
        token: Token,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        now: Instant,
    ) -> Result<(), SessionError> {
        self.publish_with(token, topic, payload, qos, retain, Properties::EMPTY, now)
    }

    /// [`Session::publish`] with MQTT 5 properties (Message Expiry Interval, Content Type, Response Topic,
    /// Correlation Data, User Properties…; not Topic Alias, which the session assigns itself, nor
    /// Subscription Identifier, which only a broker sends). Under MQTT 5 the broker's limits apply: a
    /// message larger than its Maximum Packet Size, above its Maximum QoS or retained where it keeps no
    /// retained messages is [`SessionError::Failed`]. A topic published again goes under its alias when the
    /// broker allows aliases (`Mqtt5Config::topic_aliases`).
    #[allow(clippy::too_many_arguments)]
    pub fn publish_with(
        &mut self,
        token: Token,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties<'_>,
        now: Instant,
    ) -> Result<(), SessionError> {
        if self.state != State::Connected {
            return Err(SessionError::NotReady(NOT_CONNECTED));
        }
        let v5 = self.cfg.protocol == Protocol::V5;
        if v5 {
            self.check_v5_publish(topic, payload.len(), qos, retain, properties)?;
        } else if !properties.is_empty() {
            return Err(SessionError::Failed(DeliveryError::Invalid(
                codec::Error::NeedsMqtt5 {
                    packet: PacketType::Publish,
                    what: "properties",
                },
            )));
        }
        if qos == QoS::AtMostOnce {
            if v5 {
                let p = publish_v5(topic, payload, qos, retain, 0, properties);
                self.send_v5(&p).map_err(invalid)?;
            } else {
                encode_publish(&mut self.tx, topic, payload, qos, retain, false, 0)
                    .map_err(invalid)?;
            }
            self.last_tx = Some(now);
            return Ok(());
        }
        if self.inflight >= self.quota {
            return Err(SessionError::NotReady(WINDOW_FULL));
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None if self.slots.len() < self.window as usize => {
                self.slots.push(Slot {
                    state: SlotState::Free,
                    token: 0,
                    pkid: 0,
                    qos,
                    seq: 0,
                    next_gen: 0,
                    held: false,
                    buf: Vec::new(),
                });
                (self.slots.len() - 1) as u16
            }
            None => return Err(SessionError::NotReady(WINDOW_FULL)),
        };
        let Some(pkid) = self.slot_pkid(slot) else {
            self.free_slots.push(slot);
            return Err(SessionError::NotReady(NO_PKID));
        };
        let s = &mut self.slots[slot as usize];
        s.buf.clear();
        // The slot keeps the topic itself (no alias): a resend may go on another connection.
        let r = if v5 {
            let p = publish_v5(topic, payload, qos, retain, pkid, properties);
            encode_publish_v5(&mut s.buf, &p, None).map(|_| ())
        } else {
            encode_publish(&mut s.buf, topic, payload, qos, retain, false, pkid).map(|_| ())
        };
        if let Err(e) = r {
            self.free_slots.push(slot);
            return Err(invalid(e));
        }
        self.ids_in_use.insert(pkid);
        s.state = SlotState::Publish;
        s.token = token;
        s.pkid = pkid;
        s.qos = qos;
        s.seq = self.seq;
        s.held = false;
        self.seq += 1;
        self.inflight += 1;
        if v5 && self.out_aliases_on() {
            let p = publish_v5(topic, payload, qos, retain, pkid, properties);
            if self.send_v5(&p).is_err() {
                // Cannot be: the same packet was just encoded into the slot.
                let s = &self.slots[slot as usize];
                self.tx.extend_from_slice(&s.buf);
            }
        } else {
            self.tx.extend_from_slice(&self.slots[slot as usize].buf);
        }
        self.last_tx = Some(now);
        Ok(())
    }

    /// The broker's limits and the direction rules for an MQTT 5 PUBLISH.
    fn check_v5_publish(
        &self,
        topic: &str,
        payload_len: usize,
        qos: QoS,
        retain: bool,
        properties: Properties<'_>,
    ) -> Result<(), SessionError> {
        let srv = &self.server;
        if qos > srv.maximum_qos {
            return Err(SessionError::Failed(DeliveryError::QoSNotSupported {
                qos,
                max: srv.maximum_qos,
            }));
        }
        if retain && !srv.retain_available {
            return Err(SessionError::Failed(DeliveryError::RetainNotSupported));
        }
        if !properties.is_empty() {
            if let Some(p) = properties.iter().find(|p| {
                matches!(
                    p,
                    Property::TopicAlias(_) | Property::SubscriptionIdentifier(_)
                )
            }) {
                return Err(SessionError::Failed(DeliveryError::Invalid(
                    codec::Error::PropertyNotAllowed {
                        scope: PropertyScope::Packet(PacketType::Publish),
                        property: p.id(),
                    },
                )));
            }
        }
        if let Some(max) = srv.maximum_packet_size {
            let size = publish_v5_len(topic.len(), properties.encoded_len(), payload_len, qos);
            if size > max as usize {
                return Err(SessionError::Failed(DeliveryError::TooLarge { size, max }));
            }
        }
        Ok(())
    }

    fn out_aliases_on(&self) -> bool {
        self.server.topic_alias_maximum > 0 && self.cfg.mqtt5.topic_aliases > 0
    }

    /// Encode an MQTT 5 PUBLISH into `tx`, under a topic alias when the connection has them.
    fn send_v5(&mut self, p: &Publish<'_>) -> Result<usize, codec::Error> {
        match self.out_aliases.get(p.topic) {
            None => encode_publish_v5(&mut self.tx, p, None),
            Some(Alias::New(a)) => encode_publish_v5(&mut self.tx, p, Some(a)),
            Some(Alias::Known(a)) => {
                let n = encode_publish_v5(&mut self.tx, &Publish { topic: "", ..*p }, Some(a))?;
                self.aliased += 1;
                self.alias_saved += p.topic.len() as u64;
                Ok(n)
            }
        }
    }

    /// Subscribe (remembered and replayed after a reconnect that lost the session).
    pub fn subscribe(&mut self, filter: &str, qos: QoS, now: Instant) -> Result<(), SessionError> {
        self.request(
            filter,
            ReqKind::Subscribe(SubscriptionOptions::new(qos), None),
            now,
        )
    }

    /// Subscribe with MQTT 5 subscription options (no local, retain as published, retain handling) and a
    /// Subscription Identifier (carried by the messages it matches, in their properties). Refused when the
    /// broker said it has no wildcard, shared or identified subscriptions, or under MQTT 3.1.1 with
    /// anything but a QoS.
    pub fn subscribe_with(
        &mut self,
        filter: &str,
        opts: SubscriptionOptions,
        id: Option<u32>,
        now: Instant,
    ) -> Result<(), SessionError> {
        self.request(filter, ReqKind::Subscribe(opts, id), now)
    }

    pub fn unsubscribe(&mut self, filter: &str, now: Instant) -> Result<(), SessionError> {
        self.request(filter, ReqKind::Unsubscribe, now)
    }

    /// Queue DISCONNECT (a clean close: the broker discards the will; MQTT 5: Normal disconnection).
    pub fn disconnect(&mut self) {
        if matches!(self.state, State::Connected | State::Connecting) {
            self.tx.extend_from_slice(&[0xe0, 0]);
            self.state = State::Closing;
            self.ping_deadline = None;
            self.connack_deadline = None;
        }
    }

    /// Append every pending outgoing byte to `out`. Returns the number of bytes appended.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.tx.len();
        if out.is_empty() {
            // Hand the buffer over instead of copying it; the caller's (empty, warm) one comes back.
            std::mem::swap(out, &mut self.tx);
        } else {
            out.extend_from_slice(&self.tx);
            self.tx.clear();
        }
        n
    }

    /// The next instant `handle_timeout` must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connecting => self.connack_deadline,
            // While the reader is paused only the next PINGREQ is due (the PINGRESP timeout is not enforced).
            State::Connected if self.rx_paused => self.keepalive_due(),
            State::Connected => self.ping_deadline.or_else(|| self.keepalive_due()),
            // A CONNECT that could not be encoded fails at the first timeout.
            State::Failed => self.connack_deadline,
            State::Disconnected | State::Closing => None,
        }
    }

    /// The next event, borrowing from the session's receive buffer until the next `handle_*` call.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let ev = self.events.pop_front()?;
        Some(match ev {
            Ev::Connected { session_present } => Event::Connected { session_present },
            Ev::Message {
                topic,
                topic_in_text,
                payload,
                properties,
                qos,
                retain,
            } => Event::Message {
                // Validated UTF-8 when decoded.
                topic: if topic_in_text {
                    &self.ev_text[topic]
                } else {
                    std::str::from_utf8(&self.rx[topic]).unwrap_or_default()
                },
                payload: &self.rx[payload],
                qos,
                retain,
                properties: Properties::from_validated(&self.rx[properties]),
            },
            Ev::Delivered { token, qos } => Event::Delivered { token, qos },
            Ev::Failed { token, qos, cause } => Event::Failed { token, qos, cause },
            Ev::Subscribed { filter, granted } => Event::Subscribed {
                filter: &self.ev_text[filter],
                granted,
            },
            Ev::Unsubscribed { filter } => Event::Unsubscribed {
                filter: &self.ev_text[filter],
            },
        })
    }

    // ----- internals -----

    fn keepalive_due(&self) -> Option<Instant> {
        if self.keep_alive.is_zero() {
            return None;
        }
        self.last_tx?.checked_add(self.keep_alive)
    }

    /// What the events from `from` on cost (see `handle_read_bounded`).
    fn events_cost(&self, from: usize, per_event: usize) -> usize {
        self.events
            .range(from..)
            .map(|e| {
                per_event
                    + match e {
                        Ev::Message {
                            topic,
                            payload,
                            properties,
                            ..
                        } => topic.len() + payload.len() + properties.len(),
                        Ev::Subscribed { filter, .. } | Ev::Unsubscribed { filter } => filter.len(),
                        Ev::Connected { .. } | Ev::Delivered { .. } | Ev::Failed { .. } => 0,
                    }
            })
            .sum()
    }

    fn fail_protocol(&mut self, e: codec::Error) -> Error {
        let connecting = self.state == State::Connecting;
        self.fail(Violation::Malformed {
            cause: e,
            connecting,
        })
    }

    fn fail(&mut self, v: Violation) -> Error {
        if self.cfg.protocol == Protocol::V5 && self.state != State::Failed {
            // Tell the broker why (the owner may still write it before closing).
            let d = Disconnect {
                reason: v.reason_code(),
                properties: Properties::EMPTY,
            };
            let _ = Packet::Disconnect(d).encode(Protocol::V5, &mut self.tx);
        }
        self.state = State::Failed;
        self.connack_deadline = None;
        self.ping_deadline = None;
        Error::Protocol(v)
    }

    /// Drop the bytes of packets whose events have been polled.
    fn compact(&mut self) {
        let keep_from = self
            .events
            .iter()
            .find_map(|e| match e {
                Ev::Message {
                    topic,
                    topic_in_text: false,
                    ..
                } => Some(topic.start),
                Ev::Message { properties, .. } => Some(properties.start),
                _ => None,
            })
            .unwrap_or(self.rx_done)
            .min(self.rx_done);
        // Keep the header bytes of a pending message event too: topic.start is past its header, which is
        // already processed, so dropping up to topic.start is safe.
        if keep_from > 0 {
            self.rx.drain(..keep_from);
            self.rx_done -= keep_from;
            for e in self.events.iter_mut() {
                if let Ev::Message {
                    topic,
                    topic_in_text,
                    payload,
                    properties,
                    ..
                } = e
                {
                    if !*topic_in_text {
                        *topic = topic.start - keep_from..topic.end - keep_from;
                    }
                    *payload = payload.start - keep_from..payload.end - keep_from;
                    *properties = properties.start - keep_from..properties.end - keep_from;
                }
            }
        }
        if !self.events.iter().any(|e| {
            matches!(
                e,
                Ev::Subscribed { .. }
                    | Ev::Unsubscribed { .. }
                    | Ev::Message {
                        topic_in_text: true,
                        ..
                    }
            )
        }) {
            self.ev_text.clear();
        }
    }

    /// The next identifier for slot `slot`: `slot + 1 + k·window`, skipping identifiers in use.
    fn slot_pkid(&mut self, slot: u16) -> Option<u16> {
        let w = self.window as u32;
        let base = slot as u32 + 1;
        let gens = (u16::MAX as u32 - base) / w + 1;
        let s = &mut self.slots[slot as usize];
        for i in 0..gens {
            let g = (s.next_gen as u32 + i) % gens;
            let id = (base + g * w) as u16;
            if !self.ids_in_use.contains(id) {
                s.next_gen = ((g + 1) % gens) as u16;
                return Some(id);
            }
        }
        None
    }

    fn slot_of(&self, pkid: u16) -> Option<usize> {
        let s = (pkid as usize - 1) % self.window as usize;
        let slot = self.slots.get(s)?;
        (slot.state != SlotState::Free && slot.pkid == pkid).then_some(s)
    }

    fn free_slot(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        slot.state = SlotState::Free;
        self.ids_in_use.remove(slot.pkid);
        self.free_slots.push(s as u16);
        self.inflight -= 1;
        if self.held > 0 {
            // A place under the broker's Receive Maximum: the oldest message kept from before goes out.
            let next = (0..self.slots.len())
                .filter(|&i| self.slots[i].held)
                .min_by_key(|&i| self.slots[i].seq);
            if let Some(i) = next {
                self.send_slot(i);
                self.last_tx = self.last_tx.or(Some(Instant::now()));
            }
        }
    }

    /// Put a slot's message on the wire of this connection: resent with DUP when the broker kept the
    /// session (or its PUBREL, in the release state), as a new PUBLISH otherwise.
    fn send_slot(&mut self, i: usize) {
        let present = self.session_present;
        let s = &mut self.slots[i];
        if s.held {
            s.held = false;
            self.held -= 1;
        }
        if present && s.state == SlotState::Release {
            let _ = encode_ack(&mut self.tx, PacketType::PubRel, s.pkid);
            return;
        }
        s.state = SlotState::Publish;
        let start = self.tx.len();
        self.tx.extend_from_slice(&s.buf);
        if present {
            self.tx[start] |= DUP_FLAG;
        }
    }

    /// A free identifier for a SUBSCRIBE/UNSUBSCRIBE.
    fn request_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
            let id = self.next_req_id;
            if !self.ids_in_use.contains(id) {
                self.ids_in_use.insert(id);
                return Some(id);
            }
        }
        None
    }

    fn request(&mut self, filter: &str, kind: ReqKind, now: Instant) -> Result<(), SessionError> {
        if self.state != State::Connected {
            return Err(SessionError::NotReady(NOT_CONNECTED));
        }
        codec::primitives::check_out_str(filter, "topic filter").map_err(invalid)?;
        codec::primitives::check_filter(filter).map_err(invalid)?;
        if let ReqKind::Subscribe(opts, id) = kind {
            self.check_subscribe(filter, opts, id)?;
        }
        let pkid = self.request_pkid().ok_or(SessionError::NotReady(NO_PKID))?;
        match kind {
            ReqKind::Subscribe(opts, id) => match self.subs.iter_mut().find(|s| s.filter == filter)
            {
                Some(s) => (s.opts, s.id) = (opts, id),
                None => self.subs.push(Sub {
                    filter: filter.to_owned(),
                    opts,
                    id,
                }),
            },
            ReqKind::Unsubscribe => self.subs.retain(|s| s.filter != filter),
        }
        self.requests.push(Request {
            pkid,
            kind,
            filter: filter.to_owned(),
        });
        self.send_request(self.requests.len() - 1);
        self.last_tx = Some(now);
        Ok(())
    }

    /// What the protocol and the broker allow of a subscription.
    fn check_subscribe(
        &self,
        filter: &str,
        opts: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<(), SessionError> {
        let no = |what: &str, prop: &str| {
            Err(SessionError::Invalid(format!(
                "cannot subscribe to {filter:?}: the broker does not support {what} ({prop} 0 in its CONNACK)"
            )))
        };
        if self.cfg.protocol != Protocol::V5 {
            if !opts.is_v311() || id.is_some() {
                return Err(invalid(codec::Error::NeedsMqtt5 {
                    packet: PacketType::Subscribe,
                    what: "subscription options or a subscription identifier",
                }));
            }
            return Ok(());
        }
        let srv = &self.server;
        if filter.starts_with("$share/") && !srv.shared_subscription_available {
            return no("shared subscriptions", "Shared Subscription Available");
        }
        if filter.contains(['+', '#']) && !srv.wildcard_subscription_available {
            return no("wildcards", "Wildcard Subscription Available");
        }
        if id.is_some() && !srv.subscription_identifiers_available {
            return no(
                "subscription identifiers",
                "Subscription Identifier Available",
            );
        }
        if let Some(id) = id {
            PropertiesBuf::new()
                .push(Property::SubscriptionIdentifier(id))
                .map_err(invalid)?;
        }
        let list = [(filter, opts)];
        Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: Filters::with_options(&list),
            properties: Properties::EMPTY,
        })
        .encode(Protocol::V5, &mut Vec::new())
        .map_err(invalid)?;
        Ok(())
    }

    fn send_request(&mut self, i: usize) {
        let r = &self.requests[i];
        let res = match r.kind {
            ReqKind::Subscribe(opts, id) => {
                let list = [(r.filter.as_str(), opts)];
                let mut props = PropertiesBuf::new();
                if let Some(id) = id {
                    let _ = props.push(Property::SubscriptionIdentifier(id));
                }
                Packet::Subscribe(Subscribe {
                    pkid: r.pkid,
                    filters: Filters::with_options(&list),
                    properties: props.properties(),
                })
                .encode(self.cfg.protocol, &mut self.tx)
            }
            ReqKind::Unsubscribe => {
                let list = [r.filter.as_str()];
                Packet::Unsubscribe(Unsubscribe {
                    pkid: r.pkid,
                    filters: TopicList::new(&list),
                    properties: Properties::EMPTY,
                })
                .encode(self.cfg.protocol, &mut self.tx)
            }
        };
        if let Err(e) = res {
            // Filters were validated when the request was made.
            log::error!("cannot encode a remembered request for {:?}: {e}", r.filter);
        }
    }

    fn process(&mut self, start: usize, h: codec::FixedHeader, now: Instant) -> Result<(), Error> {
        let rx = std::mem::take(&mut self.rx);
        let body_start = start + h.header_len;
        let r = match codec::decode_body(
            &h,
            &rx[body_start..start + h.packet_len()],
            self.cfg.protocol,
        ) {
            Ok(p) => self.on_packet(p, rx.as_ptr() as usize, now),
            // What a broker of MQTT 3.1.1 only answers an MQTT 5 CONNECT: its return code 1..=5.
            Err(codec::Error::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: code @ 1..=5,
            }) if self.state == State::Connecting => {
                self.state = State::Failed;
                self.connack_deadline = None;
                Err(Error::Mqtt311Only {
                    code: ConnectReturnCode::from_u8(code),
                })
            }
            Err(e) => Err(self.fail_protocol(e)),
        };
        self.rx = rx;
        r
    }

    fn on_packet(&mut self, p: Packet<'_>, base: usize, now: Instant) -> Result<(), Error> {
        if self.state == State::Connecting && !matches!(p, Packet::ConnAck(_)) {
            return Err(self.fail(Violation::BeforeConnAck(p.packet_type())));
        }
        match p {
            Packet::ConnAck(c) => self.on_connack(c, now)?,
            Packet::Publish(p) => {
                let at = |s: &[u8]| s.as_ptr() as usize - base;
                let payload = at(p.payload);
                let props = p.properties.as_bytes();
                // Empty properties may be a static slice (MQTT 3.1.1): no range into `rx` then.
                let properties = if props.is_empty() {
                    payload..payload
                } else {
                    at(props)..at(props) + props.len()
                };
                let (topic, topic_in_text) = if props.is_empty() {
                    (
                        at(p.topic.as_bytes())..at(p.topic.as_bytes()) + p.topic.len(),
                        false,
                    )
                } else {
                    self.resolve_alias(&p, base)?
                };
                if p.qos == QoS::ExactlyOnce
                    && !self.awaiting_rel.contains(p.pkid)
                    && self.cfg.protocol == Protocol::V5
                {
                    let max = self.cfg.mqtt5.receive_maximum;
                    if max < u16::MAX && self.awaiting_rel.count() >= max as usize {
                        return Err(self.fail(Violation::ReceiveMaximumExceeded(max)));
                    }
                }
                let ev = Ev::Message {
                    topic,
                    topic_in_text,
                    payload: payload..payload + p.payload.len(),
                    properties,
                    qos: p.qos,
                    retain: p.retain,
                };
                match p.qos {
                    QoS::AtMostOnce => self.events.push_back(ev),
                    QoS::AtLeastOnce => {
                        self.events.push_back(ev);
                        self.ack(PacketType::PubAck, p.pkid, now);
                    }
                    QoS::ExactlyOnce => {
                        if !self.awaiting_rel.contains(p.pkid) {
                            self.awaiting_rel.insert(p.pkid);
                            self.events.push_back(ev);
                        }
                        self.ack(PacketType::PubRec, p.pkid, now);
                    }
                }
            }
            Packet::PubRel(r) => {
                self.awaiting_rel.remove(r.pkid);
                self.ack(PacketType::PubComp, r.pkid, now);
            }
            Packet::PubAck(a) => match self.slot_of(a.pkid) {
                Some(s) if self.slots[s].qos == QoS::AtLeastOnce => {
                    let token = self.slots[s].token;
                    self.free_slot(s);
                    self.events
                        .push_back(delivered_or_failed(token, QoS::AtLeastOnce, &a));
                }
                _ => log::debug!("ignoring PUBACK for packet id {} not awaiting one", a.pkid),
            },
            Packet::PubRec(a) => match self.slot_of(a.pkid) {
                Some(s) if self.slots[s].qos == QoS::ExactlyOnce && a.reason.is_error() => {
                    let token = self.slots[s].token;
                    self.free_slot(s);
                    self.events
                        .push_back(delivered_or_failed(token, QoS::ExactlyOnce, &a));
                }
                Some(s) if self.slots[s].qos == QoS::ExactlyOnce => {
                    self.slots[s].state = SlotState::Release;
                    self.ack(PacketType::PubRel, a.pkid, now);
                }
                _ => log::debug!("ignoring PUBREC for packet id {} not awaiting one", a.pkid),
            },
            Packet::PubComp(a) => match self.slot_of(a.pkid) {
                Some(s) if self.slots[s].state == SlotState::Release => {
                    let token = self.slots[s].token;
                    if a.reason != ReasonCode::Success {
                        // Packet Identifier not found: the broker already completed it (a resumed session).
                        log::debug!("PUBCOMP {} with {}", a.pkid, a.reason);
                    }
                    self.free_slot(s);
                    self.events.push_back(Ev::Delivered {
                        token,
                        qos: QoS::ExactlyOnce,
                    });
                }
                _ => log::debug!("ignoring PUBCOMP for packet id {} not awaiting one", a.pkid),
            },
            Packet::SubAck(a) => {
                let Some(i) = self.requests.iter().position(|r| r.pkid == a.pkid) else {
                    log::debug!("ignoring SUBACK for unknown packet id {}", a.pkid);
                    return Ok(());
                };
                let ReqKind::Subscribe(..) = self.requests[i].kind else {
                    return Err(self.fail(Violation::WrongAck {
                        request: PacketType::Unsubscribe,
                        answer: PacketType::SubAck,
                        pkid: a.pkid,
                    }));
                };
                let r = self.requests.swap_remove(i);
                self.ids_in_use.remove(r.pkid);
                let granted = match a.codes().next() {
                    Some(SubscribeReturnCode::Success(q)) => Some(q),
                    _ => None,
                };
                if granted.is_none() {
                    self.subs.retain(|s| s.filter != r.filter);
                    if let Some(reason) = a
                        .reasons()
                        .next()
                        .filter(|_| self.cfg.protocol == Protocol::V5)
                    {
                        log::warn!(
                            "the broker refused the subscription to {:?}: {reason}{}",
                            r.filter,
                            a.properties
                                .reason_string()
                                .map(|s| format!(" ({s})"))
                                .unwrap_or_default()
                        );
                    }
                }
                let filter = self.push_text(&r.filter);
                self.events.push_back(Ev::Subscribed { filter, granted });
            }
            Packet::UnsubAck(a) => {
                let Some(i) = self.requests.iter().position(|r| r.pkid == a.pkid) else {
                    log::debug!("ignoring UNSUBACK for unknown packet id {}", a.pkid);
                    return Ok(());
                };
                if self.requests[i].kind != ReqKind::Unsubscribe {
                    return Err(self.fail(Violation::WrongAck {
                        request: PacketType::Subscribe,
                        answer: PacketType::UnsubAck,
                        pkid: a.pkid,
                    }));
                }
                let r = self.requests.swap_remove(i);
                self.ids_in_use.remove(r.pkid);
                let filter = self.push_text(&r.filter);
                self.events.push_back(Ev::Unsubscribed { filter });
            }
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) if self.cfg.protocol == Protocol::V5 => {
                self.state = State::Failed;
                self.connack_deadline = None;
                self.ping_deadline = None;
                return Err(Error::Disconnected {
                    reason_code: d.reason,
                    reason: d.properties.reason_string().map(str::to_owned),
                    server_reference: d.properties.server_reference().map(str::to_owned),
                });
            }
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect(_) => {
                return Err(self.fail(Violation::ClientOnly(p.packet_type())));
            }
            Packet::Auth(_) if self.cfg.protocol == Protocol::V5 => {
                return Err(self.fail(Violation::Unrequested(PacketType::Auth)));
            }
            Packet::Auth(_) => {
                return Err(self.fail(Violation::Mqtt5Only(PacketType::Auth)));
            }
        }
        Ok(())
    }

    /// An MQTT 5 PUBLISH's topic: its own (setting its alias, if it carries one), or the one its alias
    /// stands for (copied into `ev_text`, as the alias may be set again before the event is polled).
    fn resolve_alias(
        &mut self,
        p: &Publish<'_>,
        base: usize,
    ) -> Result<(Range<usize>, bool), Error> {
        let start = p.topic.as_ptr() as usize - base;
        let own = start..start + p.topic.len();
        let Some(a) = p.properties.topic_alias() else {
            return Ok((own, false));
        };
        let max = self.in_aliases.max();
        if a > max {
            return Err(self.fail(Violation::TopicAliasInvalid { alias: a, max }));
        }
        if !p.topic.is_empty() {
            self.in_aliases.set(a, p.topic);
            return Ok((own, false));
        }
        match self.in_aliases.get(a) {
            Some(t) => {
                let from = self.ev_text.len();
                self.ev_text.push_str(t);
                Ok((from..self.ev_text.len(), true))
            }
            None => Err(self.fail(Violation::UnknownTopicAlias(a))),
        }
    }

    fn push_text(&mut self, s: &str) -> Range<usize> {
        let start = self.ev_text.len();
        self.ev_text.push_str(s);
        start..self.ev_text.len()
    }

    fn ack(&mut self, t: PacketType, pkid: u16, now: Instant) {
        // pkid is non-zero: the decoder rejects 0.
        if encode_ack(&mut self.tx, t, pkid).is_ok() {
            self.last_tx = Some(now);
        }
    }

    fn on_connack(&mut self, c: ConnAck, now: Instant) -> Result<(), Error> {
        if self.state != State::Connecting {
            return Err(self.fail(Violation::SecondConnAck));
        }
        self.connack_deadline = None;
        let v5 = self.cfg.protocol == Protocol::V5;
        if c.code != ConnectReturnCode::Accepted || c.reason.is_error() {
            self.state = State::Failed;
            return Err(Error::Refused {
                code: c.code,
                reason_code: v5.then_some(c.reason),
                reason: c.properties.reason_string().map(str::to_owned),
                server_reference: c.properties.server_reference().map(str::to_owned),
            });
        }
        self.state = State::Connected;
        self.session_present = c.session_present;
        self.server = if v5 {
            ServerInfo::from_connack(&c)
        } else {
            ServerInfo {
                session_present: c.session_present,
                ..ServerInfo::default()
            }
        };
        self.quota = (self.window as usize).min(self.server.receive_maximum as usize);
        if let Some(k) = self.server.server_keep_alive {
            self.keep_alive = Duration::from_secs(k.into());
        }
        if let Some(id) = &self.server.assigned_client_identifier {
            self.assigned_id = Some(id.clone());
        }
        let aliases = self
            .server
            .topic_alias_maximum
            .min(self.cfg.mqtt5.topic_aliases);
        self.out_aliases.reset(if v5 { aliases } else { 0 });
        self.in_aliases.reset(if v5 {
            self.cfg.mqtt5.topic_alias_maximum
        } else {
            0
        });
        self.events.push_back(Ev::Connected {
            session_present: c.session_present,
        });
        if !c.session_present {
            // The broker forgot our incoming QoS 2 state too.
            self.awaiting_rel.clear();
        }
        // Resend in-flight messages in their original order, as many as the broker's Receive Maximum allows;
        // the rest are held until acknowledgements make room.
        self.scratch.clear();
        self.scratch.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state != SlotState::Free)
                .map(|(i, _)| i as u16),
        );
        let slots = &self.slots;
        self.scratch
            .sort_unstable_by_key(|&i| slots[i as usize].seq);
        self.held = 0;
        for k in 0..self.scratch.len() {
            let i = self.scratch[k] as usize;
            if k < self.quota {
                self.slots[i].held = false;
                self.send_slot(i);
            } else {
                self.slots[i].held = true;
                self.held += 1;
            }
        }
        // Pending SUBSCRIBE / UNSUBSCRIBE never acknowledged: send again.
        for i in 0..self.requests.len() {
            self.send_request(i);
        }
        if !c.session_present {
            for k in 0..self.subs.len() {
                let (filter, opts, id) = (
                    self.subs[k].filter.clone(),
                    self.subs[k].opts,
                    self.subs[k].id,
                );
                if self
                    .requests
                    .iter()
                    .any(|r| r.filter == filter && matches!(r.kind, ReqKind::Subscribe(..)))
                {
                    continue;
                }
                let Some(pkid) = self.request_pkid() else {
                    log::warn!("no free packet identifier to re-subscribe {filter:?}");
                    break;
                };
                self.requests.push(Request {
                    pkid,
                    kind: ReqKind::Subscribe(opts, id),
                    filter,
                });
                self.send_request(self.requests.len() - 1);
            }
        }
        if !self.tx.is_empty() {
            self.last_tx = Some(now);
        }
        Ok(())
    }
}

/// The event for a PUBACK (QoS 1) or an error PUBREC (QoS 2): an error reason code fails the message.
fn delivered_or_failed(token: Token, qos: QoS, a: &Ack<'_>) -> Ev {
    if a.reason.is_error() {
        Ev::Failed {
            token,
            qos,
            cause: DeliveryError::Refused {
                code: a.reason,
                reason: a.properties.reason_string().map(str::to_owned),
            },
        }
    } else {
        Ev::Delivered { token, qos }
    }
}

/// An MQTT 5 PUBLISH to encode.
fn publish_v5<'a>(
    topic: &'a str,
    payload: &'a [u8],
    qos: QoS,
    retain: bool,
    pkid: u16,
    properties: Properties<'a>,
) -> Publish<'a> {
    Publish {
        dup: false,
        qos,
        retain,
        topic,
        pkid,
        payload,
        properties,
    }
}

/// Whole size of an MQTT 5 PUBLISH with its topic (no alias), `props_len` property bytes (with their
/// length prefix) and payload.
fn publish_v5_len(topic: usize, props_len: usize, payload: usize, qos: QoS) -> usize {
    let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic + id + props_len + payload;
    1 + codec::primitives::remaining_length_len(remaining) + remaining
}

/// Topic plus payload bytes of a PUBLISH, from its fixed header (remaining length less the topic's length
/// prefix and, for QoS 1/2, the packet identifier). MQTT 5: its properties too (with their length prefix, a
/// byte or more beyond what the event takes); a topic resolved from an alias is added by the caller.
fn publish_event_cost(h: &codec::FixedHeader) -> usize {
    let pkid = if (h.flags >> 1) & 3 != 0 { 2 } else { 0 };
    h.remaining_len.saturating_sub(2 + pkid)
}

fn encode_connect(
    cfg: &SessionConfig,
    client_id: &str,
    out: &mut Vec<u8>,
) -> Result<usize, codec::Error> {
    let will = cfg.will.as_ref().map(|w| LastWill {
        topic: &w.topic,
        message: &w.payload,
        qos: w.qos,
        retain: w.retain,
        properties: w.properties.properties(),
    });
    let mut props = PropertiesBuf::new();
    if cfg.protocol == Protocol::V5 {
        let m = &cfg.mqtt5;
        if m.session_expiry > 0 {
            props.push(Property::SessionExpiryInterval(m.session_expiry))?;
        }
        if m.receive_maximum > 0 && m.receive_maximum < u16::MAX {
            props.push(Property::ReceiveMaximum(m.receive_maximum))?;
        }
        if cfg.max_packet_size > 0 && cfg.max_packet_size < codec::MAX_REMAINING_LENGTH + 5 {
            props.push(Property::MaximumPacketSize(cfg.max_packet_size as u32))?;
        }
        if m.topic_alias_maximum > 0 {
            props.push(Property::TopicAliasMaximum(m.topic_alias_maximum))?;
        }
        if m.request_response_information {
            props.push(Property::RequestResponseInformation(true))?;
        }
        for (k, v) in &m.user_properties {
            props.push(Property::UserProperty(k, v))?;
        }
    }
    let connect = Connect {
        protocol: cfg.protocol,
        keep_alive: cfg.keep_alive.as_secs().min(u16::MAX as u64) as u16,
        client_id,
        clean_session: cfg.clean_session,
        will,
        username: cfg.username.as_deref(),
        password: cfg.password.as_deref(),
        properties: props.properties(),
    };
    Packet::Connect(connect).encode(cfg.protocol, out)
}

/// A configuration CONNECT cannot carry.
fn connect_config_error(e: codec::Error) -> ConfigError {
    ConfigError::invalid(
        Key::Connect,
        format!("cannot connect with this configuration: {e}"),
    )
}

fn invalid(e: codec::Error) -> SessionError {
    SessionError::Invalid(format!("cannot send this: {e}"))
}
