//! MQTT packets ⇄ bytes: MQTT 3.1.1, the MQTT 3.1 `MQIsdp` CONNECT, and MQTT 5.
//!
//! Pure functions, no I/O. The decoder borrows from its input: a decoded [`Packet<'a>`] points into the
//! caller's buffer (MQTT 5 properties included), so decoding a PUBLISH allocates nothing. Encoders append to a
//! caller's `Vec<u8>`; [`encode_publish`] / [`encode_publish_header`] (MQTT 3.1/3.1.1) and
//! [`encode_publish_v5`] are the fast paths for the hot PUBLISH case.
//!
//! Every packet is both decodable and encodable (client and broker side), so tests and fuzzers can play
//! either role. Invalid input gives a typed [`Error`] (never a panic); a packet that is not complete yet gives
//! `Ok(None)` from [`decode`], distinct from any error.
//!
//! One set of packet structs serves every protocol: [`decode`] / [`Packet::encode`] take the [`Protocol`].
//! The MQTT 5 fields (reason codes, [`Properties`], subscription options) read as their defaults (success,
//! empty) from an MQTT 3.1.1 packet, and encoding a non-default one under MQTT 3.1.1 is
//! [`Error::NeedsMqtt5`]. MQTT 3.1.1's return codes stay types of their own ([`ConnectReturnCode`],
//! [`SubscribeReturnCode`]); MQTT 5's are [`ReasonCode`].
//!
//! One file per packet family: [`connect`] (CONNECT, CONNACK), [`publish`] (PUBLISH), [`ack`] (PUBACK, PUBREC,
//! PUBREL, PUBCOMP, UNSUBACK), [`subscribe`] (SUBSCRIBE, SUBACK, UNSUBSCRIBE), [`disconnect`] (DISCONNECT,
//! AUTH); MQTT 5 [`properties`] and [`reason`] codes; wire primitives in [`primitives`].
use std::fmt;

pub mod ack;
pub mod connect;
pub mod disconnect;
pub mod primitives;
pub mod properties;
pub mod publish;
pub mod reason;
pub mod subscribe;

pub use ack::{encode_ack, Ack, PubAck, PubComp, PubRec, PubRel, UnsubAck};
pub use connect::{ConnAck, Connect, LastWill};
pub use disconnect::{Auth, Disconnect};
pub use primitives::MAX_REMAINING_LENGTH;
pub use properties::{Properties, PropertiesBuf, Property, PropertyId, PropertyScope};
pub use publish::{
    encode_publish, encode_publish_header, encode_publish_v5, publish_len, publish_qos0_prefix,
    Publish, DUP_FLAG, QOS0_PREFIX_MAX,
};
pub use reason::ReasonCode;
pub use subscribe::{
    Filters, RetainHandling, SubAck, Subscribe, SubscribeReturnCode, SubscriptionOptions,
    TopicList, Unsubscribe,
};

use primitives::{read_remaining_length, Reader};

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `Some` for 0, 1, 2; `None` otherwise.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The protocol level sent in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1 (`MQIsdp`, level 3) — KX's `MQTTVersion 3`.
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4) — the default.
    V311,
    /// MQTT 5 (`MQTT`, level 5).
    V5,
}

impl Protocol {
    /// The protocol name and level written in CONNECT.
    pub fn name_and_level(self) -> (&'static str, u8) {
        match self {
            Protocol::V31 => ("MQIsdp", 3),
            Protocol::V311 => ("MQTT", 4),
            Protocol::V5 => ("MQTT", 5),
        }
    }
}

/// CONNACK return codes of MQTT 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    Accepted,
    UnacceptableProtocolVersion,
    IdentifierRejected,
    ServerUnavailable,
    BadUsernameOrPassword,
    NotAuthorized,
    /// A code the 3.1.1 specification does not define.
    Other(u8),
}

impl ConnectReturnCode {
    pub fn from_u8(v: u8) -> ConnectReturnCode {
        match v {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUsernameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            x => ConnectReturnCode::Other(x),
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            ConnectReturnCode::Accepted => 0,
            ConnectReturnCode::UnacceptableProtocolVersion => 1,
            ConnectReturnCode::IdentifierRejected => 2,
            ConnectReturnCode::ServerUnavailable => 3,
            ConnectReturnCode::BadUsernameOrPassword => 4,
            ConnectReturnCode::NotAuthorized => 5,
            ConnectReturnCode::Other(x) => x,
        }
    }
}

/// The specification's name and the code, e.g. `bad user name or password (4)`. (What to do about a
/// refusal is said by [`crate::error::Error::Refused`].)
impl fmt::Display for ConnectReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ConnectReturnCode::Accepted => "connection accepted",
            ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
            ConnectReturnCode::IdentifierRejected => "identifier rejected",
            ConnectReturnCode::ServerUnavailable => "server unavailable",
            ConnectReturnCode::BadUsernameOrPassword => "bad user name or password",
            ConnectReturnCode::NotAuthorized => "not authorized",
            ConnectReturnCode::Other(_) => "undefined in MQTT 3.1.1",
        };
        write!(f, "{name} ({})", self.to_u8())
    }
}

/// The control packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// MQTT 5 only (type 15 is reserved in MQTT 3.1.1).
    Auth = 15,
}

impl PacketType {
    pub fn from_u8(v: u8) -> Option<PacketType> {
        Some(match v {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }
    /// The name the specification uses, e.g. `"PUBACK"`.
    pub fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }
    /// The fixed-header flags (low nibble) this type must carry; `None` for PUBLISH, whose flags vary.
    fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// A set of packet types, one bit per type (the tables of properties and reason codes).
const fn packet_bits(types: &[PacketType]) -> u16 {
    let mut m = 0;
    let mut i = 0;
    while i < types.len() {
        m |= 1 << types[i] as u8;
        i += 1;
    }
    m
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid MQTT packet, or a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The packet (fixed header + remaining length) is bigger than the configured maximum.
    PacketTooLarge { size: usize, max: usize },
    /// The remaining length uses more than four bytes.
    MalformedRemainingLength,
    /// The packet type nibble is 0, or 15 (AUTH) outside MQTT 5.
    ReservedPacketType(u8),
    /// The fixed-header flags are not the ones the packet type requires.
    ReservedFlags { packet: PacketType, flags: u8 },
    /// A QoS field holds 3.
    InvalidQoS,
    /// A string field is not valid UTF-8.
    InvalidUtf8 { field: &'static str },
    /// A string field contains U+0000.
    NulInString { field: &'static str },
    /// A PUBLISH topic contains `+` or `#`.
    WildcardInTopic,
    /// A topic name or filter is empty.
    EmptyTopic,
    /// A topic filter uses `+` or `#` other than as a whole level (`#` last).
    InvalidFilter,
    /// Packet identifier 0 where a non-zero one is required.
    ZeroPacketId { packet: PacketType },
    /// The body is shorter/longer than its fields, or a field holds a value the protocol forbids.
    Malformed {
        packet: PacketType,
        what: &'static str,
    },
    /// CONNECT names a protocol / level this codec does not speak.
    UnsupportedProtocol { level: u8 },
    /// Encoding: a string or binary field is longer than 65 535 bytes.
    StringTooLong { field: &'static str, len: usize },
    /// Encoding: the packet's remaining length would exceed 268 435 455 bytes.
    PayloadTooLarge { size: usize },
    /// A property identifier MQTT 5 does not define (or one longer than a byte: none is).
    UnknownProperty { scope: PropertyScope, id: u8 },
    /// A property the packet (or the will) may not carry.
    PropertyNotAllowed {
        scope: PropertyScope,
        property: PropertyId,
    },
    /// A property given twice where the specification allows it once.
    DuplicateProperty {
        scope: PropertyScope,
        property: PropertyId,
    },
    /// A property value out of its range (e.g. Topic Alias 0).
    InvalidPropertyValue {
        property: PropertyId,
        what: &'static str,
    },
    /// A reason code undefined, or not one this packet may carry ([`ReasonCode::from_u8`]).
    InvalidReasonCode { packet: PacketType, code: u8 },
    /// Encoding: a packet or field only MQTT 5 has, for an MQTT 3.1/3.1.1 connection.
    NeedsMqtt5 {
        packet: PacketType,
        what: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::PacketTooLarge { size, max } => write!(
                f,
                "packet of {size} bytes exceeds the maximum packet size of {max} bytes: raise max_packet_size \
                 or send smaller messages"
            ),
            Error::MalformedRemainingLength => f.write_str(
                "malformed remaining length (more than 4 bytes): the peer is not speaking MQTT or the stream \
                 is corrupt; check the port is an MQTT port (TLS vs plain)",
            ),
            Error::ReservedPacketType(t) => write!(
                f,
                "reserved packet type {t}: the peer is not speaking this MQTT version or the stream is corrupt; \
                 check the port (TLS vs plain) and the protocol version"
            ),
            Error::ReservedFlags { packet, flags } => write!(
                f,
                "{packet} has invalid fixed-header flags {flags:#06b}: the peer violates MQTT"
            ),
            Error::InvalidQoS => f.write_str("QoS 3 is not a valid quality of service: use 0, 1 or 2"),
            Error::InvalidUtf8 { field } => {
                write!(f, "{field} is not valid UTF-8: MQTT strings must be UTF-8")
            }
            Error::NulInString { field } => {
                write!(f, "{field} contains U+0000, which MQTT forbids in strings: remove the NUL character")
            }
            Error::WildcardInTopic => f.write_str(
                "the PUBLISH topic contains a wildcard (+ or #): publish to a concrete topic; wildcards are \
                 for subscriptions only",
            ),
            Error::EmptyTopic => f.write_str("the topic is empty: topics and filters need at least one character"),
            Error::InvalidFilter => f.write_str(
                "invalid topic filter: '+' must be a whole level and '#' must be the whole last level \
                 (e.g. a/+/c, a/#)",
            ),
            Error::ZeroPacketId { packet } => {
                write!(f, "{packet} carries packet identifier 0, which MQTT forbids: the peer violates MQTT")
            }
            Error::Malformed { packet, what } => write!(f, "malformed {packet}: {what}"),
            Error::UnsupportedProtocol { level } => write!(
                f,
                "CONNECT asks for protocol level {level}: only MQTT 3.1 (MQIsdp, 3), 3.1.1 (MQTT, 4) and 5 \
                 (MQTT, 5) are supported"
            ),
            Error::StringTooLong { field, len } => {
                write!(f, "{field} is {len} bytes; MQTT limits it to 65535: shorten it")
            }
            Error::PayloadTooLarge { size } => write!(
                f,
                "packet body of {size} bytes exceeds MQTT's limit of {MAX_REMAINING_LENGTH} bytes: send a smaller \
                 payload"
            ),
            Error::UnknownProperty { scope, id } => write!(
                f,
                "{scope} carries property identifier {id:#04x}, which MQTT 5 does not define: the peer \
                 violates MQTT 5"
            ),
            Error::PropertyNotAllowed { scope, property } => write!(
                f,
                "{property} is not allowed in {scope}: leave it out (MQTT 5 lists which properties each \
                 packet may carry)"
            ),
            Error::DuplicateProperty { scope, property } => write!(
                f,
                "{property} appears more than once in {scope}, where MQTT 5 allows it once: give it once"
            ),
            Error::InvalidPropertyValue { property, what } => {
                write!(f, "invalid {property}: it {what}")
            }
            Error::InvalidReasonCode { packet, code } => {
                write!(
                    f,
                    "{packet} carries reason code {code:#04x}, which MQTT 5 does not define for it: the \
                     peer violates MQTT 5"
                )?;
                if *packet == PacketType::ConnAck && (1..=5).contains(code) {
                    f.write_str(" (an MQTT 3.1.1 broker refuses an MQTT 5 CONNECT this way: use MQTT 3.1.1)")?;
                }
                Ok(())
            }
            Error::NeedsMqtt5 { packet, what } => write!(
                f,
                "{packet} with {what} needs MQTT 5: connect with MQTT 5 or leave it out"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Check a PUBLISH topic before queueing it: non-empty, no `+`/`#`, no U+0000, at most 65 535 bytes.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    // Every publish is checked (by the client, then by the codec): one branch-free pass for a valid topic,
    // the checks one by one only to say what is wrong.
    let b = topic.as_bytes();
    if !b.is_empty() && b.len() <= u16::MAX as usize && primitives::no_nul_or_wildcard(b) {
        return Ok(());
    }
    primitives::check_out_str(topic, "topic name")?;
    primitives::check_topic(topic)
}

/// Check a subscription filter: non-empty, wildcards as whole levels (`#` last), no U+0000, ≤ 65 535 bytes.
pub fn validate_filter(filter: &str) -> Result<(), Error> {
    primitives::check_out_str(filter, "topic filter")?;
    primitives::check_filter(filter)
}

/// A decoded (or to-be-encoded) control packet, borrowing its strings and payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck<'a>),
    Publish(Publish<'a>),
    PubAck(PubAck<'a>),
    PubRec(PubRec<'a>),
    PubRel(PubRel<'a>),
    PubComp(PubComp<'a>),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(UnsubAck<'a>),
    PingReq,
    PingResp,
    Disconnect(Disconnect<'a>),
    /// MQTT 5 only.
    Auth(Auth<'a>),
}

/// What the decoder needs to know besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The protocol of this connection: MQTT 5 bodies carry reason codes and properties. (CONNECT says its
    /// own protocol and is read by it.)
    pub protocol: Protocol,
    /// Largest whole packet (fixed header included) accepted; a bigger one is [`Error::PacketTooLarge`],
    /// detected from the fixed header alone.
    pub max_packet_size: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            protocol: Protocol::V311,
            max_packet_size: primitives::MAX_REMAINING_LENGTH + 5,
        }
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Length of the fixed header (2..=5).
    pub header_len: usize,
    /// The remaining length (body size).
    pub remaining_len: usize,
}

impl FixedHeader {
    /// Header plus body.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Parse the fixed header at the start of `buf`, checking type, flags and size limit.
///
/// `Ok(None)`: more bytes are needed to know the header. Lets a reader reject an oversize packet before
/// buffering its body.
pub fn parse_fixed_header(buf: &[u8], opts: &DecodeOptions) -> Result<Option<FixedHeader>, Error> {
    let max_packet_size = opts.max_packet_size;
    let Some(&b1) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_u8(b1 >> 4)
        .filter(|&t| t != PacketType::Auth || opts.protocol == Protocol::V5)
        .ok_or(Error::ReservedPacketType(b1 >> 4))?;
    let flags = b1 & 0x0f;
    match packet_type.required_flags() {
        Some(req) if req != flags => {
            return Err(Error::ReservedFlags {
                packet: packet_type,
                flags,
            })
        }
        Some(_) => {}
        None => {
            if (flags >> 1) & 3 == 3 {
                return Err(Error::InvalidQoS);
            }
            if flags & 0b0110 == 0 && flags & 0b1000 != 0 {
                // DUP on a QoS 0 PUBLISH [MQTT-3.3.1-2].
                return Err(Error::ReservedFlags {
                    packet: packet_type,
                    flags,
                });
            }
        }
    }
    let Some((remaining_len, n)) = read_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let header = FixedHeader {
        packet_type,
        flags,
        header_len: 1 + n,
        remaining_len,
    };
    if header.packet_len() > max_packet_size {
        return Err(Error::PacketTooLarge {
            size: header.packet_len(),
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

/// Decode one packet from the start of `buf`.
///
/// - `Ok(Some((packet, len)))`: a whole packet of `len` bytes; the next packet starts at `buf[len..]`.
/// - `Ok(None)`: `buf` holds only the beginning of a packet; call again with more bytes.
/// - `Err(e)`: the bytes are not valid MQTT; the stream cannot be resynchronised.
pub fn decode<'a>(
    buf: &'a [u8],
    opts: &DecodeOptions,
) -> Result<Option<(Packet<'a>, usize)>, Error> {
    let Some(h) = parse_fixed_header(buf, opts)? else {
        return Ok(None);
    };
    let len = h.packet_len();
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[h.header_len..len];
    Ok(Some((decode_body(&h, body, opts.protocol)?, len)))
}

/// Decode the body of a packet whose fixed header was parsed by [`parse_fixed_header`]
/// (`body.len() == header.remaining_len`).
pub fn decode_body<'a>(
    h: &FixedHeader,
    body: &'a [u8],
    protocol: Protocol,
) -> Result<Packet<'a>, Error> {
    let v5 = protocol == Protocol::V5;
    let mut r = Reader::new(body, h.packet_type);
    let t = h.packet_type;
    let p = match t {
        PacketType::Connect => Packet::Connect(Connect::read(&mut r)?),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::read(&mut r, v5)?),
        PacketType::Publish => Packet::Publish(Publish::read(h.flags, &mut r, v5)?),
        PacketType::PubAck => Packet::PubAck(Ack::read(&mut r, v5)?),
        PacketType::PubRec => Packet::PubRec(Ack::read(&mut r, v5)?),
        PacketType::PubRel => Packet::PubRel(Ack::read(&mut r, v5)?),
        PacketType::PubComp => Packet::PubComp(Ack::read(&mut r, v5)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::read(&mut r, v5)?),
        PacketType::SubAck => Packet::SubAck(SubAck::read(&mut r, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(&mut r, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(&mut r, v5)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::read(&mut r, v5)?),
        PacketType::Auth if v5 => Packet::Auth(Auth::read(&mut r)?),
        PacketType::Auth => return Err(Error::ReservedPacketType(15)),
    };
    r.finish()?;
    Ok(p)
}

impl Packet<'_> {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Append this packet's bytes to `out` in `protocol`'s encoding (CONNECT in its own `protocol`'s);
    /// returns the number of bytes appended. On error nothing is appended.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<usize, Error> {
        let v5 = protocol == Protocol::V5;
        let start = out.len();
        let r = match self {
            Packet::Connect(c) => c.write(out),
            Packet::ConnAck(c) => c.write(out, v5),
            Packet::Publish(p) => p.write(out, v5),
            Packet::PubAck(a) => a.write(out, PacketType::PubAck, v5),
            Packet::PubRec(a) => a.write(out, PacketType::PubRec, v5),
            Packet::PubRel(a) => a.write(out, PacketType::PubRel, v5),
            Packet::PubComp(a) => a.write(out, PacketType::PubComp, v5),
            Packet::Subscribe(s) => s.write(out, v5),
            Packet::SubAck(s) => s.write(out, v5),
            Packet::Unsubscribe(u) => u.write(out, v5),
            Packet::UnsubAck(a) => a.write(out, v5),
            Packet::PingReq => {
                out.extend_from_slice(&[0xc0, 0]);
                Ok(())
            }
            Packet::PingResp => {
                out.extend_from_slice(&[0xd0, 0]);
                Ok(())
            }
            Packet::Disconnect(d) => d.write(out, v5),
            Packet::Auth(a) => a.write(out, v5),
        };
        if r.is_err() {
            out.truncate(start);
        }
        r.map(|_| out.len() - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(b: &[u8]) -> Result<Option<(Packet<'_>, usize)>, Error> {
        decode(b, &DecodeOptions::default())
    }

    #[test]
    fn simple_packets() {
        assert_eq!(dec(&[0xc0, 0]).unwrap(), Some((Packet::PingReq, 2)));
        assert_eq!(dec(&[0xd0, 0]).unwrap(), Some((Packet::PingResp, 2)));
        assert_eq!(
            dec(&[0xe0, 0]).unwrap(),
            Some((Packet::Disconnect(Disconnect::NORMAL), 2))
        );
        assert_eq!(
            dec(&[0xe0, 1, 0]),
            Err(Error::Malformed {
                packet: PacketType::Disconnect,
                what: "trailing bytes after the last field"
            })
        );
        assert_eq!(
            dec(&[0xe1, 0]),
            Err(Error::ReservedFlags {
                packet: PacketType::Disconnect,
                flags: 1
            })
        );
        assert_eq!(dec(&[0x00, 0]), Err(Error::ReservedPacketType(0)));
        assert_eq!(dec(&[0xf0, 0]), Err(Error::ReservedPacketType(15)));
        assert_eq!(dec(&[]).unwrap(), None);
        assert_eq!(dec(&[0xc0]).unwrap(), None);
    }

    #[test]
    fn acks() {
        assert_eq!(
            dec(&[0x40, 2, 0x12, 0x34]).unwrap(),
            Some((Packet::PubAck(PubAck::new(0x1234)), 4))
        );
        assert_eq!(
            dec(&[0x62, 2, 0, 1]).unwrap(),
            Some((Packet::PubRel(PubRel::new(1)), 4))
        );
        assert_eq!(
            dec(&[0x60, 2, 0, 1]),
            Err(Error::ReservedFlags {
                packet: PacketType::PubRel,
                flags: 0
            })
        );
        assert_eq!(
            dec(&[0x40, 2, 0, 0]),
            Err(Error::ZeroPacketId {
                packet: PacketType::PubAck
            })
        );
        assert_eq!(dec(&[0x40, 2, 0]).unwrap(), None);
        assert!(matches!(dec(&[0x40, 1, 0]), Err(Error::Malformed { .. })));
        assert!(matches!(
            dec(&[0x40, 3, 0, 1, 2]),
            Err(Error::Malformed { .. })
        ));
        let mut out = Vec::new();
        assert_eq!(
            Packet::PubRel(PubRel::new(7)).encode(Protocol::V311, &mut out),
            Ok(4)
        );
        assert_eq!(out, [0x62, 2, 0, 7]);
        assert_eq!(
            Packet::PubAck(PubAck::new(0)).encode(Protocol::V311, &mut out),
            Err(Error::ZeroPacketId {
                packet: PacketType::PubAck
            })
        );
        assert_eq!(out.len(), 4, "nothing appended on error");
    }

    #[test]
    fn validate() {
        validate_topic("a/b c/é").unwrap();
        assert_eq!(validate_topic("a/+"), Err(Error::WildcardInTopic));
        assert_eq!(validate_topic(""), Err(Error::EmptyTopic));
        assert_eq!(
            validate_topic("a\0"),
            Err(Error::NulInString {
                field: "topic name"
            })
        );
        validate_filter("a/+/#").unwrap();
        assert_eq!(validate_filter("a#"), Err(Error::InvalidFilter));
    }

    #[test]
    fn too_large_detected_from_header() {
        let opts = DecodeOptions {
            protocol: Protocol::V311,
            max_packet_size: 100,
        };
        // Only the header of a 200-byte PUBLISH: rejected without the body.
        assert_eq!(
            decode(&[0x30, 0xc6, 0x01], &opts),
            Err(Error::PacketTooLarge {
                size: 201,
                max: 100
            })
        );
        assert_eq!(parse_fixed_header(&[0x30, 0xc6], &opts).unwrap(), None);
    }

    #[test]
    fn return_codes_round_trip_and_show_their_code() {
        for c in 0..=6u8 {
            let code = ConnectReturnCode::from_u8(c);
            assert_eq!(code.to_u8(), c);
            assert!(code.to_string().ends_with(&format!("({c})")), "{code}");
        }
        assert_eq!(
            ConnectReturnCode::BadUsernameOrPassword.to_string(),
            "bad user name or password (4)"
        );
    }
}
