//! PUBLISH (both directions), and the allocation-free fast paths to encode one: [`encode_publish`] for
//! MQTT 3.1/3.1.1, [`encode_publish_v5`] (with a topic alias passed apart from the other properties) for
//! MQTT 5, and [`publish_qos0_prefix`] for a QoS 0 packet built from slices.
use super::primitives::{
    check_str, no_nul_or_wildcard, remaining_length_bytes, remaining_length_len, write_binary,
    write_header, write_remaining_length, write_u16, Reader,
};
use super::properties::{Properties, PropertyId, PropertyScope};
use super::{Error, PacketType, QoS};

const SCOPE: PropertyScope = PropertyScope::Packet(PacketType::Publish);

/// PUBLISH. `pkid` is 0 for QoS 0 (no packet identifier on the wire) and non-zero otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// In MQTT 5 it may be empty when the properties carry a Topic Alias the connection already set.
    pub topic: &'a str,
    pub pkid: u16,
    pub payload: &'a [u8],
    /// MQTT 5; empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

/// The DUP bit in a PUBLISH's first byte: set it in an already-encoded packet to mark a resend.
pub const DUP_FLAG: u8 = 0x08;

impl<'a> Publish<'a> {
    pub(super) fn read(flags: u8, r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        // parse_fixed_header already rejected QoS 3 and DUP on QoS 0.
        let qos = QoS::from_u8((flags >> 1) & 3).ok_or(Error::InvalidQoS)?;
        let topic = read_topic(r)?;
        if topic.is_empty() && !v5 {
            return Err(Error::EmptyTopic);
        }
        let pkid = if qos == QoS::AtMostOnce { 0 } else { r.pkid()? };
        let properties = if v5 {
            let p = Properties::read(r, SCOPE)?;
            if topic.is_empty() && p.topic_alias().is_none() {
                return Err(Error::EmptyTopic);
            }
            p
        } else {
            Properties::EMPTY
        };
        let payload = r.rest();
        Ok(Publish {
            dup: flags & DUP_FLAG != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            pkid,
            payload,
            properties,
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if v5 {
            return encode_publish_v5(out, self, None).map(|_| ());
        }
        if !self.properties.is_empty() {
            return Err(Error::NeedsMqtt5 {
                packet: PacketType::Publish,
                what: "properties",
            });
        }
        encode_publish_header(
            out,
            self.topic,
            self.payload.len(),
            self.qos,
            self.retain,
            self.dup,
            self.pkid,
        )?;
        out.extend_from_slice(self.payload);
        Ok(())
    }
}

/// Whole encoded size of a PUBLISH with this topic / payload length / QoS (for buffer reservation and
/// size limits).
pub fn publish_len(topic: &str, payload_len: usize, qos: QoS) -> usize {
    let remaining = 2 + topic.len() + if qos == QoS::AtMostOnce { 0 } else { 2 } + payload_len;
    1 + super::primitives::remaining_length_len(remaining) + remaining
}

/// A topic name, possibly empty: UTF-8 (one pass), then one pass for U+0000 and wildcards.
#[inline]
fn read_topic<'a>(r: &mut Reader<'a>) -> Result<&'a str, Error> {
    let b = r.binary("topic name")?;
    let topic = super::primitives::utf8(b).map_err(|_| Error::InvalidUtf8 {
        field: "topic name",
    })?;
    if !no_nul_or_wildcard(b) {
        check_str(b, "topic name")?;
        return Err(Error::WildcardInTopic);
    }
    Ok(topic)
}

/// Fast path: append a PUBLISH's fixed and variable header (everything but the payload) for a payload of
/// `payload_len` bytes; the caller appends the payload itself. Validates the topic and packet id. Returns the
/// header's length; on error nothing is appended.
pub fn encode_publish_header(
    out: &mut Vec<u8>,
    topic: &str,
    payload_len: usize,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
) -> Result<usize, Error> {
    super::validate_topic(topic)?;
    let has_id = check_id(qos, dup, pkid)?;
    let remaining = 2 + topic.len() + if has_id { 2 } else { 0 } + payload_len;
    let b1 = first_byte(qos, retain, dup);
    let start = out.len();
    write_header(out, b1, remaining)?;
    write_binary(out, topic.as_bytes());
    if has_id {
        write_u16(out, pkid);
    }
    Ok(out.len() - start)
}

/// The longest [`publish_qos0_prefix`]: the first byte, four of remaining length, two of topic length.
pub const QOS0_PREFIX_MAX: usize = 7;

/// What comes before the topic in a QoS 0 PUBLISH without properties (MQTT 3.1 and 3.1.1): the fixed header
/// and the topic's length. The packet is this prefix, the topic, then the payload — the bytes
/// [`encode_publish`] writes for QoS 0 — so a caller that checked the topic can build the packet from
/// slices. Returns the prefix and its length (4..=[`QOS0_PREFIX_MAX`]); `PayloadTooLarge` when the packet
/// cannot be that long, `StringTooLong` for a topic longer than 65,535 bytes.
pub fn publish_qos0_prefix(
    topic_len: usize,
    payload_len: usize,
    retain: bool,
) -> Result<([u8; QOS0_PREFIX_MAX], usize), Error> {
    let tlen = u16::try_from(topic_len).map_err(|_| Error::StringTooLong {
        field: "topic",
        len: topic_len,
    })?;
    let (rl, n) = remaining_length_bytes((2 + topic_len).saturating_add(payload_len))?;
    let mut p = [0u8; QOS0_PREFIX_MAX];
    p[0] = first_byte(QoS::AtMostOnce, retain, false);
    p[1..1 + n].copy_from_slice(&rl[..n]);
    p[1 + n..3 + n].copy_from_slice(&tlen.to_be_bytes());
    Ok((p, 3 + n))
}

/// Packet identifier and DUP rules; whether the packet carries an identifier.
#[inline]
fn check_id(qos: QoS, dup: bool, pkid: u16) -> Result<bool, Error> {
    let has_id = qos != QoS::AtMostOnce;
    if has_id && pkid == 0 {
        return Err(Error::ZeroPacketId {
            packet: PacketType::Publish,
        });
    }
    if !has_id && dup {
        return Err(Error::ReservedFlags {
            packet: PacketType::Publish,
            flags: DUP_FLAG,
        });
    }
    Ok(has_id)
}

#[inline]
fn first_byte(qos: QoS, retain: bool, dup: bool) -> u8 {
    0x30 | ((qos as u8) << 1) | retain as u8 | if dup { DUP_FLAG } else { 0 }
}

/// MQTT 5 fast path: append the whole PUBLISH `p`, with `topic_alias` (when `Some`) written as its first
/// property, ahead of `p.properties` (which must not hold another). `p.topic` may be empty when an alias is
/// given: the receiver maps the alias to the topic it was last sent with on this connection. The properties
/// are checked for PUBLISH in one pass over their identifiers (none when there are none). Returns the bytes
/// appended; on error nothing is appended.
pub fn encode_publish_v5(
    out: &mut Vec<u8>,
    p: &Publish<'_>,
    topic_alias: Option<u16>,
) -> Result<usize, Error> {
    if !p.topic.is_empty() {
        super::validate_topic(p.topic)?;
    }
    let has_id = check_id(p.qos, p.dup, p.pkid)?;
    let props = p.properties.as_bytes();
    let mut has_alias = false;
    if !props.is_empty() {
        has_alias = p.properties.check_seen(SCOPE)? & (1 << PropertyId::TopicAlias as u8) != 0;
    }
    match topic_alias {
        Some(0) => {
            return Err(Error::InvalidPropertyValue {
                property: PropertyId::TopicAlias,
                what: "must not be 0",
            })
        }
        Some(_) if has_alias => {
            return Err(Error::DuplicateProperty {
                scope: SCOPE,
                property: PropertyId::TopicAlias,
            })
        }
        Some(_) => has_alias = true,
        None => {}
    }
    if p.topic.is_empty() && !has_alias {
        return Err(Error::EmptyTopic);
    }
    let props_len = props.len() + if topic_alias.is_some() { 3 } else { 0 };
    let remaining = 2
        + p.topic.len()
        + if has_id { 2 } else { 0 }
        + remaining_length_len(props_len)
        + props_len
        + p.payload.len();
    let start = out.len();
    write_header(out, first_byte(p.qos, p.retain, p.dup), remaining)?;
    write_binary(out, p.topic.as_bytes());
    if has_id {
        write_u16(out, p.pkid);
    }
    write_remaining_length(out, props_len)?;
    if let Some(a) = topic_alias {
        out.push(PropertyId::TopicAlias as u8);
        write_u16(out, a);
    }
    out.extend_from_slice(props);
    out.extend_from_slice(p.payload);
    Ok(out.len() - start)
}

/// Fast path: append a whole PUBLISH from slices. Returns the bytes appended; on error nothing is appended.
pub fn encode_publish(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
) -> Result<usize, Error> {
    let n = encode_publish_header(out, topic, payload.len(), qos, retain, dup, pkid)?;
    out.extend_from_slice(payload);
    Ok(n + payload.len())
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Packet, Protocol};
    use super::*;
    use crate::codec::PropertyId;

    #[test]
    fn spec_publish_qos1() {
        // Topic "a/b", packet id 10, payload "hi".
        let mut out = Vec::new();
        let n = encode_publish(&mut out, "a/b", b"hi", QoS::AtLeastOnce, false, false, 10).unwrap();
        assert_eq!(out, [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i']);
        assert_eq!(n, out.len());
        assert_eq!(publish_len("a/b", 2, QoS::AtLeastOnce), out.len());
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b",
            pkid: 10,
            payload: b"hi",
            properties: Properties::EMPTY,
        };
        assert_eq!(
            decode(&out, &DecodeOptions::default()).unwrap(),
            Some((Packet::Publish(p), out.len()))
        );
        // The decoded packet borrows from the input.
        if let Some((Packet::Publish(d), _)) = decode(&out, &DecodeOptions::default()).unwrap() {
            assert_eq!(d.payload.as_ptr(), out[9..].as_ptr());
        }
    }

    #[test]
    fn qos0_has_no_id_and_may_have_empty_payload() {
        let mut out = Vec::new();
        encode_publish(&mut out, "t", b"", QoS::AtMostOnce, true, false, 0).unwrap();
        assert_eq!(out, [0x31, 3, 0, 1, b't']);
        let (p, _) = decode(&out, &DecodeOptions::default()).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: "t",
                pkid: 0,
                payload: b"",
                properties: Properties::EMPTY,
            })
        );
    }

    #[test]
    fn publish_errors() {
        let o = DecodeOptions::default();
        assert_eq!(
            decode(&[0x30, 4, 0, 2, b'a', b'+'], &o),
            Err(Error::WildcardInTopic)
        );
        assert_eq!(
            decode(&[0x30, 4, 0, 2, b'#', b'a'], &o),
            Err(Error::WildcardInTopic)
        );
        assert_eq!(decode(&[0x30, 2, 0, 0], &o), Err(Error::EmptyTopic));
        assert_eq!(
            decode(&[0x36, 5, 0, 1, b'a', 0, 1], &o),
            Err(Error::InvalidQoS)
        );
        assert_eq!(
            decode(&[0x32, 5, 0, 1, b'a', 0, 0], &o),
            Err(Error::ZeroPacketId {
                packet: PacketType::Publish
            })
        );
        assert_eq!(
            decode(&[0x38, 3, 0, 1, b'a'], &o),
            Err(Error::ReservedFlags {
                packet: PacketType::Publish,
                flags: 8
            })
        );
        assert_eq!(
            decode(&[0x30, 3, 0, 1, 0], &o),
            Err(Error::NulInString {
                field: "topic name"
            })
        );
        assert_eq!(
            decode(&[0x30, 3, 0, 1, 0xff], &o),
            Err(Error::InvalidUtf8 {
                field: "topic name"
            })
        );
        assert!(matches!(
            decode(&[0x30, 3, 0, 5, b'a'], &o),
            Err(Error::Malformed { .. })
        ));
        let mut out = vec![1];
        assert_eq!(
            encode_publish(&mut out, "a/#", b"", QoS::AtMostOnce, false, false, 0),
            Err(Error::WildcardInTopic)
        );
        assert_eq!(
            encode_publish(&mut out, "", b"", QoS::AtMostOnce, false, false, 0),
            Err(Error::EmptyTopic)
        );
        assert_eq!(
            encode_publish(&mut out, "a", b"", QoS::ExactlyOnce, false, false, 0),
            Err(Error::ZeroPacketId {
                packet: PacketType::Publish
            })
        );
        let long = "x".repeat(70_000);
        assert!(matches!(
            encode_publish(&mut out, &long, b"", QoS::AtMostOnce, false, false, 0),
            Err(Error::StringTooLong { .. })
        ));
        assert_eq!(out, [1], "nothing appended on error");
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a\0",
            pkid: 0,
            payload: b"",
            properties: Properties::EMPTY,
        });
        assert_eq!(
            p.encode(Protocol::V311, &mut out),
            Err(Error::NulInString {
                field: "topic name"
            })
        );
    }

    const V5: DecodeOptions = DecodeOptions {
        protocol: Protocol::V5,
        max_packet_size: 1 << 20,
    };

    #[test]
    fn publish_v5() {
        // Topic "a/b", packet id 10, properties: Topic Alias 1, payload "hi".
        let b = [
            0x32, 13, 0, 3, b'a', b'/', b'b', 0, 10, 3, 0x23, 0, 1, b'h', b'i',
        ];
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b",
            pkid: 10,
            payload: b"hi",
            properties: Properties::EMPTY,
        };
        let mut out = Vec::new();
        assert_eq!(encode_publish_v5(&mut out, &p, Some(1)), Ok(b.len()));
        assert_eq!(out, b);
        let (d, _) = decode(&b, &V5).unwrap().unwrap();
        let Packet::Publish(d) = d else {
            panic!("{d:?}")
        };
        assert_eq!(d.properties.topic_alias(), Some(1));
        assert_eq!(d.payload.as_ptr(), b[13..].as_ptr(), "borrowed");
        // The alias alone, topic left out; no properties (a zero property length).
        let alias_only = [0x30, 7, 0, 0, 3, 0x23, 0, 1, b'h'];
        let p0 = Publish {
            qos: QoS::AtMostOnce,
            pkid: 0,
            topic: "",
            payload: b"h",
            ..p
        };
        out.clear();
        encode_publish_v5(&mut out, &p0, Some(1)).unwrap();
        assert_eq!(out, alias_only);
        assert!(matches!(
            decode(&alias_only, &V5).unwrap().unwrap().0,
            Packet::Publish(Publish { topic: "", .. })
        ));
        out.clear();
        encode_publish_v5(&mut out, &Publish { topic: "t", ..p0 }, None).unwrap();
        assert_eq!(out, [0x30, 5, 0, 1, b't', 0, b'h']);
        // Two Subscription Identifiers (one per matching subscription) are fine in PUBLISH.
        let two_ids = [0x30, 9, 0, 1, b't', 4, 0x0B, 1, 0x0B, 2, b'h'];
        let (d, _) = decode(&two_ids, &V5).unwrap().unwrap();
        let Packet::Publish(d) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            d.properties.subscription_identifiers().collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn publish_v5_errors() {
        // No topic and no alias; alias 0; a property PUBLISH may not carry; properties running past.
        assert_eq!(
            decode(&[0x30, 4, 0, 0, 0, b'h'], &V5),
            Err(Error::EmptyTopic)
        );
        assert_eq!(
            decode(&[0x30, 6, 0, 0, 3, 0x23, 0, 0], &V5),
            Err(Error::InvalidPropertyValue {
                property: PropertyId::TopicAlias,
                what: "must not be 0"
            })
        );
        assert_eq!(
            decode(&[0x30, 8, 0, 1, b't', 3, 0x21, 0, 1, b'h'], &V5),
            Err(Error::PropertyNotAllowed {
                scope: SCOPE,
                property: PropertyId::ReceiveMaximum
            })
        );
        assert!(matches!(
            decode(&[0x30, 5, 0, 1, b't', 9, 0x23], &V5),
            Err(Error::Malformed { .. })
        ));
        // The topic is still checked when an alias is given.
        assert_eq!(
            decode(&[0x30, 7, 0, 1, b'#', 3, 0x23, 0, 1], &V5),
            Err(Error::WildcardInTopic)
        );
        let p = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "",
            pkid: 0,
            payload: b"",
            properties: Properties::EMPTY,
        };
        let mut out = vec![7];
        assert_eq!(
            encode_publish_v5(&mut out, &p, None),
            Err(Error::EmptyTopic)
        );
        assert!(matches!(
            encode_publish_v5(&mut out, &p, Some(0)),
            Err(Error::InvalidPropertyValue { .. })
        ));
        assert_eq!(
            encode_publish_v5(&mut out, &Publish { topic: "a/+", ..p }, Some(1)),
            Err(Error::WildcardInTopic)
        );
        // Properties do not fit MQTT 3.1.1.
        let mut props = super::super::PropertiesBuf::new();
        props
            .push(super::super::Property::MessageExpiryInterval(9))
            .unwrap();
        let p = Publish {
            topic: "t",
            properties: props.properties(),
            ..p
        };
        assert_eq!(
            Packet::Publish(p).encode(Protocol::V311, &mut out),
            Err(Error::NeedsMqtt5 {
                packet: PacketType::Publish,
                what: "properties"
            })
        );
        assert_eq!(out, [7], "nothing appended on error");
    }
}
