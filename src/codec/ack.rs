//! The acknowledgements: PUBACK, PUBREC, PUBREL, PUBCOMP (QoS 1/2 flows) and UNSUBACK.
//!
//! In MQTT 3.1.1 each is a packet identifier alone. MQTT 5 adds a reason code and properties (the four
//! QoS acknowledgements may leave both out when the reason is Success and there are no properties, which is
//! the MQTT 3.1.1 form: [`encode_ack`] writes it for either protocol) and gives UNSUBACK one reason code per
//! filter.
use super::primitives::{write_header, write_u16, Reader};
use super::properties::{Properties, PropertyScope};
use super::{Error, PacketType, ReasonCode};

/// PUBACK, PUBREC, PUBREL or PUBCOMP (the packet type says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    pub pkid: u16,
    /// MQTT 5; [`ReasonCode::Success`] in MQTT 3.1.1.
    pub reason: ReasonCode,
    /// MQTT 5; empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

/// PUBACK: QoS 1 PUBLISH received.
pub type PubAck<'a> = Ack<'a>;
/// PUBREC: QoS 2 PUBLISH received (step 1 of 3).
pub type PubRec<'a> = Ack<'a>;
/// PUBREL: release a QoS 2 message (step 2 of 3).
pub type PubRel<'a> = Ack<'a>;
/// PUBCOMP: QoS 2 flow complete (step 3 of 3).
pub type PubComp<'a> = Ack<'a>;

impl<'a> Ack<'a> {
    /// Success without properties: the MQTT 3.1.1 acknowledgement.
    pub const fn new(pkid: u16) -> Self {
        Ack {
            pkid,
            reason: ReasonCode::Success,
            properties: Properties::EMPTY,
        }
    }

    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        if !v5 || r.is_empty() {
            return Ok(Ack::new(pkid));
        }
        let reason = read_reason(r)?;
        // A body of 3 bytes has no property length: no properties.
        let properties = if r.is_empty() {
            Properties::EMPTY
        } else {
            Properties::read(r, PropertyScope::Packet(r.packet()))?
        };
        Ok(Ack {
            pkid,
            reason,
            properties,
        })
    }

    pub(super) fn write(
        &self,
        out: &mut Vec<u8>,
        packet: PacketType,
        v5: bool,
    ) -> Result<(), Error> {
        let short = self.reason == ReasonCode::Success && self.properties.is_empty();
        if short {
            return encode_ack(out, packet, self.pkid).map(|_| ());
        }
        if !v5 {
            return Err(Error::NeedsMqtt5 {
                packet,
                what: "a reason code or properties",
            });
        }
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId { packet });
        }
        check_reason(packet, self.reason)?;
        self.properties.check(PropertyScope::Packet(packet))?;
        let len = if self.properties.is_empty() {
            3
        } else {
            3 + self.properties.encoded_len()
        };
        write_header(out, first_byte(packet)?, len)?;
        write_u16(out, self.pkid);
        out.push(self.reason.to_u8());
        if !self.properties.is_empty() {
            self.properties.write(out);
        }
        Ok(())
    }
}

/// UNSUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubAck<'a> {
    pub pkid: u16,
    /// MQTT 5: one reason code per filter of the UNSUBSCRIBE, in order (each valid for
    /// [`ReasonCode::from_u8`] in UNSUBACK); empty in MQTT 3.1.1.
    pub reason_codes: &'a [u8],
    /// MQTT 5; empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

impl<'a> UnsubAck<'a> {
    /// The MQTT 3.1.1 UNSUBACK.
    pub const fn new(pkid: u16) -> Self {
        UnsubAck {
            pkid,
            reason_codes: &[],
            properties: Properties::EMPTY,
        }
    }

    /// The reason codes as types.
    pub fn reasons(&self) -> impl Iterator<Item = ReasonCode> + 'a {
        reason_list(PacketType::UnsubAck, self.reason_codes)
    }

    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        if !v5 {
            return Ok(UnsubAck::new(pkid));
        }
        let properties = Properties::read(r, PropertyScope::Packet(PacketType::UnsubAck))?;
        let reason_codes = read_reason_list(r, PacketType::UnsubAck)?;
        Ok(UnsubAck {
            pkid,
            reason_codes,
            properties,
        })
    }

    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if !v5 {
            if !self.reason_codes.is_empty() || !self.properties.is_empty() {
                return Err(Error::NeedsMqtt5 {
                    packet: PacketType::UnsubAck,
                    what: "reason codes or properties",
                });
            }
            return encode_ack(out, PacketType::UnsubAck, self.pkid).map(|_| ());
        }
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::UnsubAck,
            });
        }
        check_reason_list(PacketType::UnsubAck, self.reason_codes)?;
        self.properties
            .check(PropertyScope::Packet(PacketType::UnsubAck))?;
        let len = 2 + self.properties.encoded_len() + self.reason_codes.len();
        write_header(out, 0xb0, len)?;
        write_u16(out, self.pkid);
        self.properties.write(out);
        out.extend_from_slice(self.reason_codes);
        Ok(())
    }
}

/// A reason code byte, valid for the reader's packet.
pub(super) fn read_reason(r: &mut Reader<'_>) -> Result<ReasonCode, Error> {
    let packet = r.packet();
    let code = r.u8("reason code")?;
    ReasonCode::from_u8(packet, code).ok_or(Error::InvalidReasonCode { packet, code })
}

/// A reason code about to be encoded in `packet`.
pub(super) fn check_reason(packet: PacketType, reason: ReasonCode) -> Result<(), Error> {
    if reason.is_valid_in(packet) {
        Ok(())
    } else {
        Err(Error::InvalidReasonCode {
            packet,
            code: reason.to_u8(),
        })
    }
}

/// The rest of the body as a non-empty list of reason codes valid in `packet` (SUBACK, UNSUBACK).
pub(super) fn read_reason_list<'a>(
    r: &mut Reader<'a>,
    packet: PacketType,
) -> Result<&'a [u8], Error> {
    let codes = r.rest();
    check_reason_list(packet, codes)?;
    Ok(codes)
}

pub(super) fn check_reason_list(packet: PacketType, codes: &[u8]) -> Result<(), Error> {
    if codes.is_empty() {
        return Err(Error::Malformed {
            packet,
            what: "no reason code (one per topic filter is required)",
        });
    }
    match codes
        .iter()
        .find(|&&c| ReasonCode::from_u8(packet, c).is_none())
    {
        Some(&code) => Err(Error::InvalidReasonCode { packet, code }),
        None => Ok(()),
    }
}

/// Iterate a list checked by `check_reason_list`.
pub(super) fn reason_list(
    packet: PacketType,
    codes: &[u8],
) -> impl Iterator<Item = ReasonCode> + '_ {
    codes
        .iter()
        .map(move |&c| ReasonCode::from_u8(packet, c).unwrap_or(ReasonCode::UnspecifiedError))
}

fn first_byte(packet: PacketType) -> Result<u8, Error> {
    Ok(match packet {
        PacketType::PubAck => 0x40,
        PacketType::PubRec => 0x50,
        PacketType::PubRel => 0x62,
        PacketType::PubComp => 0x70,
        PacketType::UnsubAck => 0xb0,
        _ => {
            return Err(Error::Malformed {
                packet,
                what: "not a two-byte acknowledgement type",
            })
        }
    })
}

/// Fast path for the session: append a four-byte acknowledgement of `packet` type for `pkid` (non-zero) —
/// the MQTT 3.1.1 form, and MQTT 5's for Success without properties.
pub fn encode_ack(out: &mut Vec<u8>, packet: PacketType, pkid: u16) -> Result<usize, Error> {
    let b1 = first_byte(packet)?;
    if pkid == 0 {
        return Err(Error::ZeroPacketId { packet });
    }
    out.push(b1);
    out.push(2);
    write_u16(out, pkid);
    Ok(4)
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Packet, PropertiesBuf, Property, Protocol};
    use super::*;

    const V5: DecodeOptions = DecodeOptions {
        protocol: Protocol::V5,
        max_packet_size: 1 << 20,
    };

    fn enc(p: Packet<'_>) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        p.encode(Protocol::V5, &mut out).map(|_| out)
    }

    /// MQTT 5 §3.4: the three PUBACK forms.
    #[test]
    fn puback_forms() {
        // Success, no properties: the 3.1.1 bytes.
        assert_eq!(
            enc(Packet::PubAck(PubAck::new(10))).unwrap(),
            [0x40, 2, 0, 10]
        );
        // A reason, no properties: reason code without property length.
        let a = Ack {
            reason: ReasonCode::NoMatchingSubscribers,
            ..Ack::new(10)
        };
        assert_eq!(enc(Packet::PubAck(a)).unwrap(), [0x40, 3, 0, 10, 0x10]);
        assert_eq!(
            decode(&[0x40, 3, 0, 10, 0x10], &V5).unwrap(),
            Some((Packet::PubAck(a), 5))
        );
        // Reason and properties (a Reason String).
        let mut props = PropertiesBuf::new();
        props.push(Property::ReasonString("full")).unwrap();
        let a = Ack {
            pkid: 10,
            reason: ReasonCode::QuotaExceeded,
            properties: props.properties(),
        };
        let b = [0x40, 11, 0, 10, 0x97, 7, 0x1F, 0, 4, b'f', b'u', b'l', b'l'];
        assert_eq!(enc(Packet::PubAck(a)).unwrap(), b);
        assert_eq!(decode(&b, &V5).unwrap(), Some((Packet::PubAck(a), b.len())));
        // The long form of Success decodes as the short one.
        assert_eq!(
            decode(&[0x40, 4, 0, 10, 0, 0], &V5).unwrap(),
            Some((Packet::PubAck(PubAck::new(10)), 6))
        );
        // PUBREL/PUBCOMP: Packet Identifier not found.
        assert_eq!(
            decode(&[0x62, 3, 0, 1, 0x92], &V5).unwrap().unwrap().0,
            Packet::PubRel(Ack {
                reason: ReasonCode::PacketIdentifierNotFound,
                ..Ack::new(1)
            })
        );
        // mosquitto's PUBACK 0x95 Packet too large is accepted (an error code).
        assert_eq!(
            decode(&[0x40, 3, 0, 1, 0x95], &V5).unwrap().unwrap().0,
            Packet::PubAck(Ack {
                reason: ReasonCode::PacketTooLarge,
                ..Ack::new(1)
            })
        );
    }

    #[test]
    fn ack_errors() {
        // A success code of another packet, an undefined code.
        assert_eq!(
            decode(&[0x40, 3, 0, 1, 0x18], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::PubAck,
                code: 0x18
            })
        );
        assert_eq!(
            decode(&[0x70, 3, 0, 1, 0x10], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::PubComp,
                code: 0x10
            })
        );
        // A property PUBACK may not carry.
        assert_eq!(
            decode(&[0x40, 7, 0, 1, 0, 3, 0x23, 0, 1], &V5),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Packet(PacketType::PubAck),
                property: super::super::PropertyId::TopicAlias
            })
        );
        // Property length running past the packet; trailing bytes.
        assert!(matches!(
            decode(&[0x40, 5, 0, 1, 0, 5, 0x1F], &V5),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[0x40, 5, 0, 1, 0, 0, 9], &V5),
            Err(Error::Malformed { .. })
        ));
        // Encoding: a reason on an MQTT 3.1.1 connection, a reason not valid in the packet.
        let a = Ack {
            reason: ReasonCode::NotAuthorized,
            ..Ack::new(1)
        };
        let mut out = Vec::new();
        assert_eq!(
            Packet::PubAck(a).encode(Protocol::V311, &mut out),
            Err(Error::NeedsMqtt5 {
                packet: PacketType::PubAck,
                what: "a reason code or properties"
            })
        );
        let a = Ack {
            reason: ReasonCode::GrantedQoS1,
            ..Ack::new(1)
        };
        assert_eq!(
            Packet::PubRec(a).encode(Protocol::V5, &mut out),
            Err(Error::InvalidReasonCode {
                packet: PacketType::PubRec,
                code: 1
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn unsuback() {
        // pkid 3, no properties, reasons Success and No subscription existed.
        let b = [0xb0, 5, 0, 3, 0, 0x00, 0x11];
        let (p, _) = decode(&b, &V5).unwrap().unwrap();
        let Packet::UnsubAck(u) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            u.reasons().collect::<Vec<_>>(),
            [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        );
        assert_eq!(enc(p).unwrap(), b);
        assert!(matches!(
            decode(&[0xb0, 3, 0, 3, 0], &V5),
            Err(Error::Malformed { .. })
        ));
        assert_eq!(
            decode(&[0xb0, 4, 0, 3, 0, 0x10], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::UnsubAck,
                code: 0x10
            })
        );
        // The 3.1.1 UNSUBACK is read as such.
        assert_eq!(
            decode(&[0xb0, 2, 0, 3], &DecodeOptions::default())
                .unwrap()
                .unwrap()
                .0,
            Packet::UnsubAck(UnsubAck::new(3))
        );
    }
}
