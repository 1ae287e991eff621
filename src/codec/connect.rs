//! CONNECT (client → broker) and CONNACK (broker → client).
use super::primitives::{
    check_out_binary, check_out_str, check_topic, write_binary, write_header, write_u16, Reader,
};
use super::{ConnectReturnCode, Error, PacketType, Protocol, QoS};

/// The last will carried in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastWill<'a> {
    pub topic: &'a str,
    pub message: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
}

/// CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// MQTT 3.1 (`MQIsdp`, 3) or 3.1.1 (`MQTT`, 4).
    pub protocol: Protocol,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    pub client_id: &'a str,
    pub clean_session: bool,
    pub will: Option<LastWill<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
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
        let keep_alive = r.u16("keep alive")?;
        let client_id = r.string("client identifier")?;
        let will_qos = (flags >> 3) & 3;
        let will = if flags & F_WILL != 0 {
            let qos = QoS::from_u8(will_qos).ok_or(Error::InvalidQoS)?;
            let topic = r.string("will topic")?;
            check_topic(topic)?;
            let message = r.binary("will message")?;
            Some(LastWill {
                topic,
                message,
                qos,
                retain: flags & F_WILL_RETAIN != 0,
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
        if flags & F_PASSWORD != 0 && flags & F_USERNAME == 0 {
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
        })
    }

    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        check_out_str(self.client_id, "client identifier")?;
        let (name, level) = self.protocol.name_and_level();
        let mut len = 2 + name.len() + 1 + 1 + 2 + 2 + self.client_id.len();
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
            if self.username.is_none() {
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
        write_binary(out, self.client_id.as_bytes());
        if let Some(w) = &self.will {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

impl ConnAck {
    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, Error> {
        let flags = r.u8("acknowledge flags")?;
        if flags & 0xfe != 0 {
            return Err(Error::Malformed {
                packet: PacketType::ConnAck,
                what: "reserved acknowledge flags (bits 7-1) are set",
            });
        }
        let code = ConnectReturnCode::from_u8(r.u8("return code")?);
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            code,
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(&[0x20, 2, self.session_present as u8, self.code.to_u8()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Packet};
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
            }),
            username: Some("u"),
            password: Some(b"p"),
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
        // Level 5 is refused as unsupported, not misread.
        let b = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10, 0, 0];
        assert_eq!(
            decode(&b, &opts),
            Err(Error::UnsupportedProtocol { level: 5 })
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
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    code: ConnectReturnCode::Accepted
                }),
                4
            ))
        );
        assert_eq!(
            decode(&[0x20, 2, 0, 5], &opts).unwrap().unwrap().0,
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized
            })
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
}
