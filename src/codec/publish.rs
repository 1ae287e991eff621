//! PUBLISH (both directions), and the allocation-free fast path to encode one from slices.
use super::primitives::{
    check_out_str, check_topic, write_binary, write_header, write_u16, Reader,
};
use super::{Error, PacketType, QoS};

/// PUBLISH. `pkid` is 0 for QoS 0 (no packet identifier on the wire) and non-zero otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub pkid: u16,
    pub payload: &'a [u8],
}

/// The DUP bit in a PUBLISH's first byte: set it in an already-encoded packet to mark a resend.
pub const DUP_FLAG: u8 = 0x08;

impl<'a> Publish<'a> {
    pub(super) fn read(flags: u8, r: &mut Reader<'a>) -> Result<Self, Error> {
        // parse_fixed_header already rejected QoS 3 and DUP on QoS 0.
        let qos = QoS::from_u8((flags >> 1) & 3).ok_or(Error::InvalidQoS)?;
        let topic = r.string("topic name")?;
        check_topic(topic)?;
        let pkid = if qos == QoS::AtMostOnce { 0 } else { r.pkid()? };
        let payload = r.rest();
        Ok(Publish {
            dup: flags & DUP_FLAG != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            pkid,
            payload,
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
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

/// The checks of `check_out_str` + `check_topic` in one pass over the bytes (the hot path's only scan).
#[inline]
fn check_publish_topic(topic: &str) -> Result<(), Error> {
    let b = topic.as_bytes();
    if b.len() > u16::MAX as usize
        || b.is_empty()
        || b.iter().any(|&c| c == 0 || c == b'+' || c == b'#')
    {
        check_out_str(topic, "topic name")?;
        check_topic(topic)?;
    }
    Ok(())
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
    check_publish_topic(topic)?;
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
    let remaining = 2 + topic.len() + if has_id { 2 } else { 0 } + payload_len;
    let b1 = 0x30 | ((qos as u8) << 1) | retain as u8 | if dup { DUP_FLAG } else { 0 };
    let start = out.len();
    write_header(out, b1, remaining)?;
    write_binary(out, topic.as_bytes());
    if has_id {
        write_u16(out, pkid);
    }
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
                payload: b""
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
        });
        assert_eq!(
            p.encode(Protocol::V311, &mut out),
            Err(Error::NulInString {
                field: "topic name"
            })
        );
    }
}
