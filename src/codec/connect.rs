//! CONNECT (client → broker) and CONNACK (broker → client).
//!
//! CONNECT names its protocol itself, so it is read and written by its own [`Connect::protocol`].
use super::ack::{check_reason, read_reason};
use super::primitives::{
    check_out_binary, check_out_str, check_topic, write_binary, write_header, write_u16, Reader,
};
use super::properties::{Properties, PropertyScope};
use super::{ConnectReturnCode, Error, PacketType, Protocol, QoS, ReasonCode};

/// The last will carried in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastWill<'a> {
    pub topic: &'a str,
    pub message: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (Will Delay Interval, Message Expiry Interval, …); empty before.
    pub properties: Properties<'a>,
}

/// CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// MQTT 3.1 (`MQIsdp`, 3), 3.1.1 (`MQTT`, 4) or 5 (`MQTT`, 5).
    pub protocol: Protocol,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    pub client_id: &'a str,
    /// Clean Session (MQTT 3.1/3.1.1) or Clean Start (MQTT 5).
    pub clean_session: bool,
    pub will: Option<LastWill<'a>>,
    pub username: Option<&'a str>,
    /// Before MQTT 5 a password needs a user name.
    pub password: Option<&'a [u8]>,
    /// MQTT 5 (Session Expiry Interval, Receive Maximum, …); empty before.
    pub properties: Properties<'a>,
}

const F_USERNAME: u8 = 0x80;
const F_PASSWORD: u8 = 0x40;
const F_WILL_RETAIN: u8 = 0x20;
const F_WILL: u8 = 0x04;
const F_CLEAN: u8 = 0x02;

impl<'a> Connect<'a> {
    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let name = r.binary("protocol name")?;
        let level = r.u8("protocol level")?;
        let protocol = match (name, level) {
            (b"MQTT", 4) => Protocol::V311,
            (b"MQIsdp", 3) => Protocol::V31,
            (b"MQTT", 5) => Protocol::V5,
            (b"MQTT", l) | (b"MQIsdp", l) => return Err(Error::UnsupportedProtocol { level: l }),
            _ => {
                return Err(Error::Malformed {
                    packet: PacketType::Connect,
                    what: "unknown protocol name (expected MQTT or MQIsdp)",
                })
            }
        };
        let flags = r.u8("connect flags")?;
        if flags & 1 != 0 {
            return Err(Error::Malformed {
                packet: PacketType::Connect,
                what: "reserved connect flag bit 0 is set",
            });
        }
        let v5 = protocol == Protocol::V5;
        let keep_alive = r.u16("keep alive")?;
        let properties = if v5 {
            let p = Properties::read(r, PropertyScope::Packet(PacketType::Connect))?;
            if p.authentication_data().is_some() && p.authentication_method().is_none() {
                return Err(Error::Malformed {
                    packet: PacketType::Connect,
                    what: "Authentication Data without Authentication Method",
                });
            }
            p
        } else {
            Properties::EMPTY
        };
        let client_id = r.string("client identifier")?;
        let will_qos = (flags >> 3) & 3;
        let will = if flags & F_WILL != 0 {
            let qos = QoS::from_u8(will_qos).ok_or(Error::InvalidQoS)?;
            let properties = if v5 {
                Properties::read(r, PropertyScope::Will)?
            } else {
                Properties::EMPTY
            };
            let topic = r.string("will topic")?;
            check_topic(topic)?;
            let message = r.binary("will message")?;
            Some(LastWill {
                topic,
                message,
                qos,
                retain: flags & F_WILL_RETAIN != 0,
                properties,
            })
        } else {
            if will_qos != 0 || flags & F_WILL_RETAIN != 0 {
                return Err(Error::Malformed {
                    packet: PacketType::Connect,
                    what: "will QoS or will retain set without the will flag",
                });
            }
            None
        };
        if !v5 && flags & F_PASSWORD != 0 && flags & F_USERNAME == 0 {
            return Err(Error::Malformed {
                packet: PacketType::Connect,
                what: "password flag set without user name",
            });
        }
        let username = if flags & F_USERNAME != 0 {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if flags & F_PASSWORD != 0 {
            Some(r.binary("password")?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            keep_alive,
            client_id,
            clean_session: flags & F_CLEAN != 0,
            will,
            username,
            password,
            properties,
        })
    }

    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        check_out_str(self.client_id, "client identifier")?;
        let v5 = self.protocol == Protocol::V5;
        let (name, level) = self.protocol.name_and_level();
        let mut len = 2 + name.len() + 1 + 1 + 2 + 2 + self.client_id.len();
        let will_props = self.will.map_or(Properties::EMPTY, |w| w.properties);
        if v5 {
            self.properties
                .check(PropertyScope::Packet(PacketType::Connect))?;
            if self.properties.authentication_data().is_some()
                && self.properties.authentication_method().is_none()
            {
                return Err(Error::Malformed {
                    packet: PacketType::Connect,
                    what: "Authentication Data needs an Authentication Method",
                });
            }
            will_props.check(PropertyScope::Will)?;
            len += self.properties.encoded_len();
            if self.will.is_some() {
                len += will_props.encoded_len();
            }
        } else if !self.properties.is_empty() || !will_props.is_empty() {
            return Err(Error::NeedsMqtt5 {
                packet: PacketType::Connect,
                what: "properties",
            });
        }
        let mut flags = 0u8;
        if self.clean_session {
            flags |= F_CLEAN;
        }
        if let Some(w) = &self.will {
            check_out_str(w.topic, "will topic")?;
            check_topic(w.topic)?;
            check_out_binary(w.message, "will message")?;
            flags |= F_WILL | ((w.qos as u8) << 3);
            if w.retain {
                flags |= F_WILL_RETAIN;
            }
            len += 2 + w.topic.len() + 2 + w.message.len();
        }
        if let Some(u) = self.username {
            check_out_str(u, "user name")?;
            flags |= F_USERNAME;
            len += 2 + u.len();
        }
        if let Some(p) = self.password {
            if self.username.is_none() && !v5 {
                return Err(Error::Malformed {
                    packet: PacketType::Connect,
                    what: "a password needs a user name in MQTT 3.1/3.1.1: set username too",
                });
            }
            check_out_binary(p, "password")?;
            flags |= F_PASSWORD;
            len += 2 + p.len();
        }
        write_header(out, 0x10, len)?;
        write_binary(out, name.as_bytes());
        out.push(level);
        out.push(flags);
        write_u16(out, self.keep_alive);
        if v5 {
            self.properties.write(out);
        }
        write_binary(out, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v5 {
                w.properties.write(out);
            }
            write_binary(out, w.topic.as_bytes());
            write_binary(out, w.message);
        }
        if let Some(u) = self.username {
            write_binary(out, u.as_bytes());
        }
        if let Some(p) = self.password {
            write_binary(out, p);
        }
        Ok(())
    }
}

/// CONNACK.
///
/// `code` and `reason` say the same thing in each protocol's terms: decoding fills both (the one on the wire,
/// and its counterpart: the five refusals MQTT 3.1.1 has map both ways, any other MQTT 5 refusal is
/// `ConnectReturnCode::Other(its value)`, any other MQTT 3.1.1 code `ReasonCode::UnspecifiedError`), so code
/// written for either protocol can test either. Encoding writes `code` for MQTT 3.1/3.1.1 and `reason` for
/// MQTT 5; build with [`ConnAck::new`] / [`ConnAck::v5`] to keep them consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck<'a> {
    pub session_present: bool,
    /// The MQTT 3.1/3.1.1 return code.
    pub code: ConnectReturnCode,
    /// The MQTT 5 reason code.
    pub reason: ReasonCode,
    /// MQTT 5 (the broker's limits, assigned client id, …); empty before.
    pub properties: Properties<'a>,
}

impl<'a> ConnAck<'a> {
    /// An MQTT 3.1/3.1.1 CONNACK.
    pub fn new(session_present: bool, code: ConnectReturnCode) -> Self {
        ConnAck {
            session_present,
            code,
            reason: reason_of(code),
            properties: Properties::EMPTY,
        }
    }

    /// An MQTT 5 CONNACK.
    pub fn v5(session_present: bool, reason: ReasonCode, properties: Properties<'a>) -> Self {
        ConnAck {
            session_present,
            code: code_of(reason),
            reason,
            properties,
        }
    }

    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        let flags = r.u8("acknowledge flags")?;
        if flags & 0xfe != 0 {
            return Err(Error::Malformed {
                packet: PacketType::ConnAck,
                what: "reserved acknowledge flags (bits 7-1) are set",
            });
        }
        let session_present = flags & 1 != 0;
        if !v5 {
            let code = ConnectReturnCode::from_u8(r.u8("return code")?);
            return Ok(ConnAck::new(session_present, code));
        }
        let reason = read_reason(r)?;
        if session_present && reason.is_error() {
            return Err(Error::Malformed {
                packet: PacketType::ConnAck,
                what: "session present with a refusal [MQTT-3.2.2-6]",
            });
        }
        let properties = Properties::read(r, PropertyScope::Packet(PacketType::ConnAck))?;
        Ok(ConnAck::v5(session_present, reason, properties))
    }

    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if !v5 {
            if !self.properties.is_empty() {
                return Err(Error::NeedsMqtt5 {
                    packet: PacketType::ConnAck,
                    what: "properties",
                });
            }
            out.extend_from_slice(&[0x20, 2, self.session_present as u8, self.code.to_u8()]);
            return Ok(());
        }
        check_reason(PacketType::ConnAck, self.reason)?;
        if self.session_present && self.reason.is_error() {
            return Err(Error::Malformed {
                packet: PacketType::ConnAck,
                what: "session present with a refusal [MQTT-3.2.2-6]",
            });
        }
        self.properties
            .check(PropertyScope::Packet(PacketType::ConnAck))?;
        write_header(out, 0x20, 2 + self.properties.encoded_len())?;
        out.push(self.session_present as u8);
        out.push(self.reason.to_u8());
        self.properties.write(out);
        Ok(())
    }
}

/// The MQTT 5 reason code for an MQTT 3.1.1 return code.
fn reason_of(code: ConnectReturnCode) -> ReasonCode {
    match code {
        ConnectReturnCode::Accepted => ReasonCode::Success,
        ConnectReturnCode::UnacceptableProtocolVersion => ReasonCode::UnsupportedProtocolVersion,
        ConnectReturnCode::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
        ConnectReturnCode::ServerUnavailable => ReasonCode::ServerUnavailable,
        ConnectReturnCode::BadUsernameOrPassword => ReasonCode::BadUserNameOrPassword,
        ConnectReturnCode::NotAuthorized => ReasonCode::NotAuthorized,
        ConnectReturnCode::Other(_) => ReasonCode::UnspecifiedError,
    }
}

/// The MQTT 3.1.1 return code for an MQTT 5 reason code.
fn code_of(reason: ReasonCode) -> ConnectReturnCode {
    match reason {
        ReasonCode::Success => ConnectReturnCode::Accepted,
        ReasonCode::UnsupportedProtocolVersion => ConnectReturnCode::UnacceptableProtocolVersion,
        ReasonCode::ClientIdentifierNotValid => ConnectReturnCode::IdentifierRejected,
        ReasonCode::ServerUnavailable => ConnectReturnCode::ServerUnavailable,
        ReasonCode::BadUserNameOrPassword => ConnectReturnCode::BadUsernameOrPassword,
        ReasonCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
        r => ConnectReturnCode::Other(r.to_u8()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Packet, PropertiesBuf, Property, PropertyId};
    use super::*;

    /// The CONNECT of MQTT 3.1.1 §3.1.2.10's example: protocol "MQTT", level 4, flags 0xCE (user name,
    /// password, will QoS 1, will, clean session), keep alive 10.
    #[test]
    fn spec_connect() {
        let c = Connect {
            protocol: Protocol::V311,
            keep_alive: 10,
            client_id: "c",
            clean_session: true,
            will: Some(LastWill {
                topic: "w",
                message: b"x",
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::EMPTY,
            }),
            username: Some("u"),
            password: Some(b"p"),
            properties: Properties::EMPTY,
        };
        let mut out = Vec::new();
        Packet::Connect(c).encode(Protocol::V311, &mut out).unwrap();
        let expect = [
            0x10, 25, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xce, 0, 10, 0, 1, b'c', 0, 1, b'w', 0, 1,
            b'x', 0, 1, b'u', 0, 1, b'p',
        ];
        assert_eq!(out, expect);
        assert_eq!(
            decode(&out, &DecodeOptions::default()).unwrap(),
            Some((Packet::Connect(c), out.len()))
        );
    }

    #[test]
    fn mqtt31_connect() {
        let c = Connect {
            protocol: Protocol::V31,
            keep_alive: 60,
            client_id: "id",
            clean_session: true,
            will: None,
            username: None,
            password: None,
            properties: Properties::EMPTY,
        };
        let mut out = Vec::new();
        Packet::Connect(c).encode(Protocol::V31, &mut out).unwrap();
        assert_eq!(
            &out[2..12],
            &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02]
        );
        assert_eq!(
            decode(&out, &DecodeOptions::default()).unwrap().unwrap().0,
            Packet::Connect(c)
        );
    }

    #[test]
    fn connect_errors() {
        let opts = DecodeOptions::default();
        // Level 6 is refused as unsupported, not misread.
        let b = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 10, 0, 0];
        assert_eq!(
            decode(&b, &opts),
            Err(Error::UnsupportedProtocol { level: 6 })
        );
        // Reserved flag bit.
        let b = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 10, 0, 0];
        assert!(matches!(decode(&b, &opts), Err(Error::Malformed { .. })));
        // Password without user name.
        let b = [
            0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 10, 0, 0, 0, 1, b'p',
        ];
        assert!(matches!(decode(&b, &opts), Err(Error::Malformed { .. })));
        // Will QoS 3.
        let b = [
            0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x1e, 0, 10, 0, 0, 0, 1, b'w', 0, 1, b'x',
        ];
        assert_eq!(decode(&b, &opts), Err(Error::InvalidQoS));
        // NUL in client id.
        let b = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, 0,
        ];
        assert_eq!(
            decode(&b, &opts),
            Err(Error::NulInString {
                field: "client identifier"
            })
        );
    }

    #[test]
    fn connack() {
        let opts = DecodeOptions::default();
        assert_eq!(
            decode(&[0x20, 2, 1, 0], &opts).unwrap(),
            Some((
                Packet::ConnAck(ConnAck::new(true, ConnectReturnCode::Accepted)),
                4
            ))
        );
        assert_eq!(
            decode(&[0x20, 2, 0, 5], &opts).unwrap().unwrap().0,
            Packet::ConnAck(ConnAck::new(false, ConnectReturnCode::NotAuthorized))
        );
        assert!(matches!(
            decode(&[0x20, 2, 2, 0], &opts),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[0x20, 3, 0, 0, 0], &opts),
            Err(Error::Malformed { .. })
        ));
    }

    const V5: DecodeOptions = DecodeOptions {
        protocol: Protocol::V5,
        max_packet_size: 1 << 20,
    };

    /// MQTT 5 §3.1.2.12's variable header example (protocol "MQTT", version 5, flags 0xCE, keep alive 10,
    /// properties: Session Expiry Interval 10), then a payload with a will carrying a Will Delay Interval.
    #[test]
    fn spec_connect_v5() {
        let mut props = PropertiesBuf::new();
        props.push(Property::SessionExpiryInterval(10)).unwrap();
        let mut will_props = PropertiesBuf::new();
        will_props.push(Property::WillDelayInterval(5)).unwrap();
        let c = Connect {
            protocol: Protocol::V5,
            keep_alive: 10,
            client_id: "c",
            clean_session: true,
            will: Some(LastWill {
                topic: "w",
                message: b"x",
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: will_props.properties(),
            }),
            username: Some("u"),
            password: Some(b"p"),
            properties: props.properties(),
        };
        let mut out = Vec::new();
        Packet::Connect(c).encode(Protocol::V5, &mut out).unwrap();
        #[rustfmt::skip]
        let expect = [
            0x10, 37,
            0, 4, b'M', b'Q', b'T', b'T', 5, 0xce, 0, 10,
            5, 0x11, 0, 0, 0, 10,
            0, 1, b'c',
            5, 0x18, 0, 0, 0, 5,
            0, 1, b'w', 0, 1, b'x', 0, 1, b'u', 0, 1, b'p',
        ];
        assert_eq!(out, expect);
        // CONNECT is read by its own protocol level, whatever the connection's.
        for opts in [V5, DecodeOptions::default()] {
            assert_eq!(
                decode(&out, &opts).unwrap(),
                Some((Packet::Connect(c), out.len()))
            );
        }
        // MQTT 5 allows a password without a user name.
        let c = Connect {
            username: None,
            will: None,
            ..c
        };
        out.clear();
        Packet::Connect(c).encode(Protocol::V5, &mut out).unwrap();
        assert_eq!(out[9], 0x42);
        assert_eq!(decode(&out, &V5).unwrap().unwrap().0, Packet::Connect(c));
    }

    #[test]
    fn connect_v5_errors() {
        // A will property in CONNECT's own properties.
        let b = [
            0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10, 5, 0x18, 0, 0, 0, 1, 0, 0,
        ];
        assert_eq!(
            decode(&b, &V5),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Packet(PacketType::Connect),
                property: PropertyId::WillDelayInterval
            })
        );
        // A CONNECT property in the will's.
        let b = [
            0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 10, 0, 0, 0, 3, 0x21, 0, 1, 0, 1,
            b'w', 0, 0,
        ];
        assert_eq!(
            decode(&b, &V5),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Will,
                property: PropertyId::ReceiveMaximum
            })
        );
        // Authentication Data without Authentication Method.
        let b = [
            0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10, 4, 0x16, 0, 1, b'x', 0, 0,
        ];
        assert!(matches!(decode(&b, &V5), Err(Error::Malformed { .. })));
        // Properties cannot go into an MQTT 3.1.1 CONNECT.
        let mut props = PropertiesBuf::new();
        props.push(Property::ReceiveMaximum(5)).unwrap();
        let c = Connect {
            protocol: Protocol::V311,
            keep_alive: 0,
            client_id: "c",
            clean_session: true,
            will: None,
            username: None,
            password: None,
            properties: props.properties(),
        };
        let mut out = Vec::new();
        assert_eq!(
            Packet::Connect(c).encode(Protocol::V311, &mut out),
            Err(Error::NeedsMqtt5 {
                packet: PacketType::Connect,
                what: "properties"
            })
        );
        assert!(out.is_empty());
    }

    /// A CONNACK as mosquitto 2.0 sends it to an MQTT 5 client: Success, Topic Alias Maximum 10, Receive
    /// Maximum 20, Maximum QoS... then the MQTT 3.1.1 terms of refusals.
    #[test]
    fn connack_v5() {
        let b = [0x20, 9, 0, 0, 6, 0x22, 0, 10, 0x21, 0, 20];
        let (p, n) = decode(&b, &V5).unwrap().unwrap();
        assert_eq!(n, b.len());
        let Packet::ConnAck(c) = p else {
            panic!("{p:?}")
        };
        assert_eq!(c.reason, ReasonCode::Success);
        assert_eq!(c.code, ConnectReturnCode::Accepted);
        assert_eq!(c.properties.topic_alias_maximum(), Some(10));
        assert_eq!(c.properties.receive_maximum(), Some(20));
        assert_eq!(c.properties.maximum_qos(), None);
        let mut out = Vec::new();
        p.encode(Protocol::V5, &mut out).unwrap();
        assert_eq!(out, b);
        // Refusals: the five MQTT 3.1.1 knows map to its codes, others are Other(value).
        for (reason, code) in [
            (
                ReasonCode::BadUserNameOrPassword,
                ConnectReturnCode::BadUsernameOrPassword,
            ),
            (ReasonCode::NotAuthorized, ConnectReturnCode::NotAuthorized),
            (
                ReasonCode::ClientIdentifierNotValid,
                ConnectReturnCode::IdentifierRejected,
            ),
            (
                ReasonCode::ServerUnavailable,
                ConnectReturnCode::ServerUnavailable,
            ),
            (
                ReasonCode::UnsupportedProtocolVersion,
                ConnectReturnCode::UnacceptableProtocolVersion,
            ),
            (ReasonCode::QuotaExceeded, ConnectReturnCode::Other(0x97)),
        ] {
            let b = [0x20, 3, 0, reason.to_u8(), 0];
            let (p, _) = decode(&b, &V5).unwrap().unwrap();
            assert_eq!(
                p,
                Packet::ConnAck(ConnAck::v5(false, reason, Properties::EMPTY))
            );
            let Packet::ConnAck(c) = p else {
                unreachable!()
            };
            assert_eq!(c.code, code);
            assert_eq!(
                ConnAck::new(false, code).reason == reason,
                code != ConnectReturnCode::Other(0x97)
            );
        }
        // Session present with a refusal; a reason code CONNACK cannot carry; a 3.1.1 refusal under MQTT 5
        // (what a 3.1.1-only broker answers); properties missing; a property CONNACK may not carry.
        assert!(matches!(
            decode(&[0x20, 3, 1, 0x87, 0], &V5),
            Err(Error::Malformed { .. })
        ));
        assert_eq!(
            decode(&[0x20, 3, 0, 0x10, 0], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: 0x10
            })
        );
        let e = decode(&[0x20, 2, 0, 1], &V5).unwrap_err();
        assert_eq!(
            e,
            Error::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: 1
            }
        );
        assert!(e.to_string().contains("use MQTT 3.1.1"), "{e}");
        assert!(matches!(
            decode(&[0x20, 2, 0, 0], &V5),
            Err(Error::Malformed { .. })
        ));
        assert_eq!(
            decode(&[0x20, 6, 0, 0, 3, 0x23, 0, 1], &V5),
            Err(Error::PropertyNotAllowed {
                scope: PropertyScope::Packet(PacketType::ConnAck),
                property: PropertyId::TopicAlias
            })
        );
    }
}
