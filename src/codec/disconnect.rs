//! DISCONNECT and AUTH: a reason code and properties, both left out when the reason is 0x00 and there are
//! no properties (MQTT 3.1.1's DISCONNECT is always that empty form; AUTH is MQTT 5 only).
use super::ack::{check_reason, read_reason};
use super::primitives::{write_header, Reader};
use super::properties::{Properties, PropertyScope};
use super::{Error, PacketType, ReasonCode};

/// DISCONNECT. In MQTT 5 either side may send it, with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// MQTT 5; [`ReasonCode::NormalDisconnection`] in MQTT 3.1.1.
    pub reason: ReasonCode,
    /// MQTT 5 (Session Expiry Interval, Reason String, Server Reference, …); empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

impl Disconnect<'_> {
    /// Normal disconnection without properties: MQTT 3.1.1's DISCONNECT.
    pub const NORMAL: Disconnect<'static> = Disconnect {
        reason: ReasonCode::NormalDisconnection,
        properties: Properties::EMPTY,
    };
}

/// AUTH (MQTT 5 enhanced authentication): Success, Continue authentication or Re-authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    pub reason: ReasonCode,
    /// Authentication Method and Data, Reason String, User Properties.
    pub properties: Properties<'a>,
}

/// Read the optional reason code and properties that make up the body.
fn read_body<'a>(
    r: &mut Reader<'a>,
    short: ReasonCode,
) -> Result<(ReasonCode, Properties<'a>), Error> {
    if r.is_empty() {
        return Ok((short, Properties::EMPTY));
    }
    let reason = read_reason(r)?;
    // A one-byte body has no property length: no properties.
    let properties = if r.is_empty() {
        Properties::EMPTY
    } else {
        Properties::read(r, PropertyScope::Packet(r.packet()))?
    };
    Ok((reason, properties))
}

/// Append the packet in its shortest form.
fn write_body(
    out: &mut Vec<u8>,
    b1: u8,
    packet: PacketType,
    reason: ReasonCode,
    properties: Properties<'_>,
) -> Result<(), Error> {
    check_reason(packet, reason)?;
    properties.check(PropertyScope::Packet(packet))?;
    let len = match (reason.to_u8(), properties.is_empty()) {
        (0, true) => 0,
        (_, true) => 1,
        _ => 1 + properties.encoded_len(),
    };
    write_header(out, b1, len)?;
    if len > 0 {
        out.push(reason.to_u8());
    }
    if len > 1 {
        properties.write(out);
    }
    Ok(())
}

impl<'a> Disconnect<'a> {
    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        if !v5 {
            return Ok(Disconnect::NORMAL);
        }
        let (reason, properties) = read_body(r, ReasonCode::NormalDisconnection)?;
        Ok(Disconnect { reason, properties })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if !v5 && *self != Disconnect::NORMAL {
            return Err(Error::NeedsMqtt5 {
                packet: PacketType::Disconnect,
                what: "a reason code or properties",
            });
        }
        write_body(
            out,
            0xe0,
            PacketType::Disconnect,
            self.reason,
            self.properties,
        )
    }
}

impl<'a> Auth<'a> {
    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let (reason, properties) = read_body(r, ReasonCode::Success)?;
        Ok(Auth { reason, properties })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if !v5 {
            return Err(Error::NeedsMqtt5 {
                packet: PacketType::Auth,
                what: "any content (AUTH is MQTT 5 only)",
            });
        }
        write_body(out, 0xf0, PacketType::Auth, self.reason, self.properties)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        decode, DecodeOptions, Packet, PropertiesBuf, Property, PropertyId, Protocol,
    };
    use super::*;

    const V5: DecodeOptions = DecodeOptions {
        protocol: Protocol::V5,
        max_packet_size: 1 << 20,
    };

    fn enc(p: Packet<'_>, protocol: Protocol) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        p.encode(protocol, &mut out).map(|_| out)
    }

    /// MQTT 5 §3.14: the three DISCONNECT forms.
    #[test]
    fn disconnect_forms() {
        let d = Packet::Disconnect(Disconnect::NORMAL);
        assert_eq!(enc(d, Protocol::V5).unwrap(), [0xe0, 0]);
        assert_eq!(enc(d, Protocol::V311).unwrap(), [0xe0, 0]);
        // Explicit normal disconnection: read as the short form.
        assert_eq!(decode(&[0xe0, 1, 0], &V5).unwrap(), Some((d, 3)));
        assert_eq!(decode(&[0xe0, 2, 0, 0], &V5).unwrap(), Some((d, 4)));
        // Disconnect with Will Message, no properties: one byte.
        let w = Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWillMessage,
            properties: Properties::EMPTY,
        });
        assert_eq!(enc(w, Protocol::V5).unwrap(), [0xe0, 1, 0x04]);
        assert_eq!(decode(&[0xe0, 1, 4], &V5).unwrap(), Some((w, 3)));
        // The broker's: Session taken over, with a Reason String and a Server Reference.
        let mut p = PropertiesBuf::new();
        p.push(Property::ReasonString("bye"))
            .unwrap()
            .push(Property::ServerReference("b2"))
            .unwrap();
        let s = Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: p.properties(),
        });
        let b = [
            0xe0, 13, 0x8e, 11, 0x1F, 0, 3, b'b', b'y', b'e', 0x1C, 0, 2, b'b', b'2',
        ];
        assert_eq!(enc(s, Protocol::V5).unwrap(), b);
        assert_eq!(decode(&b, &V5).unwrap(), Some((s, b.len())));
        if let Some((Packet::Disconnect(d), _)) = decode(&b, &V5).unwrap() {
            assert_eq!(d.properties.reason_string(), Some("bye"));
            assert_eq!(d.properties.server_reference(), Some("b2"));
        }
    }

    #[test]
    fn disconnect_errors() {
        // MQTT 3.1.1: the body must be empty, and only the empty form can be sent.
        assert!(matches!(
            decode(&[0xe0, 1, 0], &DecodeOptions::default()),
            Err(Error::Malformed { .. })
        ));
        let w = Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWillMessage,
            properties: Properties::EMPTY,
        });
        assert_eq!(
            enc(w, Protocol::V311),
            Err(Error::NeedsMqtt5 {
                packet: PacketType::Disconnect,
                what: "a reason code or properties"
            })
        );
        // Success is not DISCONNECT's name for 0 (Normal disconnection is).
        let s = Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::EMPTY,
        });
        assert!(matches!(
            enc(s, Protocol::V5),
            Err(Error::InvalidReasonCode { .. })
        ));
        assert_eq!(
            decode(&[0xe0, 1, 0x10], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::Disconnect,
                code: 0x10
            })
        );
        // A property DISCONNECT may not carry.
        assert_eq!(
            decode(&[0xe0, 5, 0, 3, 0x23, 0, 1], &V5),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Packet(PacketType::Disconnect),
                property: PropertyId::TopicAlias
            })
        );
    }

    #[test]
    fn auth() {
        // Continue authentication, method "SCRAM", data "x".
        let mut p = PropertiesBuf::new();
        p.push(Property::AuthenticationMethod("SCRAM"))
            .unwrap()
            .push(Property::AuthenticationData(b"x"))
            .unwrap();
        let a = Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: p.properties(),
        });
        let b = [
            0xf0, 14, 0x18, 12, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0x16, 0, 1, b'x',
        ];
        assert_eq!(enc(a, Protocol::V5).unwrap(), b);
        assert_eq!(decode(&b, &V5).unwrap(), Some((a, b.len())));
        let ok = Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Properties::EMPTY,
        });
        assert_eq!(enc(ok, Protocol::V5).unwrap(), [0xf0, 0]);
        assert_eq!(decode(&[0xf0, 0], &V5).unwrap(), Some((ok, 2)));
        // MQTT 3.1.1: type 15 is reserved (from the header alone), AUTH cannot be sent.
        assert_eq!(
            decode(&[0xf0], &DecodeOptions::default()),
            Err(Error::ReservedPacketType(15))
        );
        assert!(matches!(
            enc(ok, Protocol::V311),
            Err(Error::NeedsMqtt5 { .. })
        ));
        // Flags must be 0; the reason must be one of AUTH's.
        assert!(matches!(
            decode(&[0xf1, 0], &V5),
            Err(Error::ReservedFlags { .. })
        ));
        assert_eq!(
            decode(&[0xf0, 1, 0x87], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::Auth,
                code: 0x87
            })
        );
    }
}
