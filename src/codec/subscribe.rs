//! SUBSCRIBE, SUBACK and UNSUBSCRIBE.
//!
//! Their payloads are lists. A decoded list keeps the validated wire bytes and iterates over them (no
//! allocation); a list to encode is a caller's slice. [`Filters`] and [`TopicList`] hide which one they hold
//! and compare by content.
use std::fmt;

use super::primitives::{
    check_filter, check_out_str, write_binary, write_header, write_u16, Reader,
};
use super::{Error, PacketType, QoS};

/// A SUBACK return code (MQTT 5 adds reason codes here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeReturnCode {
    /// Subscribed with this maximum QoS.
    Success(QoS),
    /// 0x80: the broker refused the subscription.
    Failure,
}

impl SubscribeReturnCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x80 => Some(SubscribeReturnCode::Failure),
            v => QoS::from_u8(v).map(SubscribeReturnCode::Success),
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            SubscribeReturnCode::Success(q) => q as u8,
            SubscribeReturnCode::Failure => 0x80,
        }
    }
}

#[derive(Clone, Copy)]
enum Repr<'a, T: 'a> {
    /// Validated wire bytes.
    Wire(&'a [u8]),
    List(&'a [T]),
}

/// The (filter, requested QoS) list of a SUBSCRIBE.
#[derive(Clone, Copy)]
pub struct Filters<'a>(Repr<'a, (&'a str, QoS)>);

impl<'a> Filters<'a> {
    pub fn new(list: &'a [(&'a str, QoS)]) -> Self {
        Filters(Repr::List(list))
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, QoS)> + 'a {
        let (wire, list): (&'a [u8], &'a [(&'a str, QoS)]) = match self.0 {
            Repr::Wire(w) => (w, &[]),
            Repr::List(l) => (&[], l),
        };
        list.iter().copied().chain(
            WireIter {
                buf: wire,
                with_qos: true,
            }
            .map(|(f, q)| (f, q.unwrap_or(QoS::AtMostOnce))),
        )
    }
    pub fn len(&self) -> usize {
        self.iter().count()
    }
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// The filter list of an UNSUBSCRIBE.
#[derive(Clone, Copy)]
pub struct TopicList<'a>(Repr<'a, &'a str>);

impl<'a> TopicList<'a> {
    pub fn new(list: &'a [&'a str]) -> Self {
        TopicList(Repr::List(list))
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let (wire, list): (&'a [u8], &'a [&'a str]) = match self.0 {
            Repr::Wire(w) => (w, &[]),
            Repr::List(l) => (&[], l),
        };
        list.iter().copied().chain(
            WireIter {
                buf: wire,
                with_qos: false,
            }
            .map(|(f, _)| f),
        )
    }
    pub fn len(&self) -> usize {
        self.iter().count()
    }
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Iterates already-validated wire entries (so it cannot fail).
struct WireIter<'a> {
    buf: &'a [u8],
    with_qos: bool,
}

impl<'a> Iterator for WireIter<'a> {
    type Item = (&'a str, Option<QoS>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        let s = std::str::from_utf8(self.buf.get(2..2 + len)?).ok()?;
        let mut used = 2 + len;
        let q = if self.with_qos {
            used += 1;
            QoS::from_u8(*self.buf.get(2 + len)?)
        } else {
            None
        };
        self.buf = &self.buf[used..];
        Some((s, q))
    }
}

impl PartialEq for Filters<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.iter().eq(o.iter())
    }
}
impl Eq for Filters<'_> {}
impl fmt::Debug for Filters<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
impl PartialEq for TopicList<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.iter().eq(o.iter())
    }
}
impl Eq for TopicList<'_> {}
impl fmt::Debug for TopicList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub pkid: u16,
    pub filters: Filters<'a>,
}

impl<'a> Subscribe<'a> {
    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        let wire = r.rest();
        let mut v = Reader::new(wire, PacketType::Subscribe);
        if v.is_empty() {
            return Err(Error::Malformed {
                packet: PacketType::Subscribe,
                what: "no topic filter (at least one is required)",
            });
        }
        while !v.is_empty() {
            let f = v.string("topic filter")?;
            check_filter(f)?;
            let q = v.u8("requested QoS")?;
            if q & 0xfc != 0 {
                return Err(Error::Malformed {
                    packet: PacketType::Subscribe,
                    what: "reserved bits of requested QoS are set",
                });
            }
            QoS::from_u8(q).ok_or(Error::InvalidQoS)?;
        }
        Ok(Subscribe {
            pkid,
            filters: Filters(Repr::Wire(wire)),
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::Subscribe,
            });
        }
        let mut len = 2;
        for (f, _) in self.filters.iter() {
            check_out_str(f, "topic filter")?;
            check_filter(f)?;
            len += 2 + f.len() + 1;
        }
        if len == 2 {
            return Err(Error::Malformed {
                packet: PacketType::Subscribe,
                what: "no topic filter (at least one is required)",
            });
        }
        write_header(out, 0x82, len)?;
        write_u16(out, self.pkid);
        for (f, q) in self.filters.iter() {
            write_binary(out, f.as_bytes());
            out.push(q as u8);
        }
        Ok(())
    }
}

/// SUBACK: one return code per filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub pkid: u16,
    /// Raw return codes (each valid for [`SubscribeReturnCode::from_u8`] once decoded).
    pub return_codes: &'a [u8],
}

impl<'a> SubAck<'a> {
    pub fn codes(&self) -> impl Iterator<Item = SubscribeReturnCode> + 'a {
        self.return_codes
            .iter()
            .map(|&c| SubscribeReturnCode::from_u8(c).unwrap_or(SubscribeReturnCode::Failure))
    }
    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        let return_codes = r.rest();
        if return_codes.is_empty() {
            return Err(Error::Malformed {
                packet: PacketType::SubAck,
                what: "no return code",
            });
        }
        if return_codes
            .iter()
            .any(|&c| SubscribeReturnCode::from_u8(c).is_none())
        {
            return Err(Error::Malformed {
                packet: PacketType::SubAck,
                what: "return code other than 0, 1, 2 or 0x80",
            });
        }
        Ok(SubAck { pkid, return_codes })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::SubAck,
            });
        }
        if self.return_codes.is_empty()
            || self
                .return_codes
                .iter()
                .any(|&c| SubscribeReturnCode::from_u8(c).is_none())
        {
            return Err(Error::Malformed {
                packet: PacketType::SubAck,
                what: "return codes must be 0, 1, 2 or 0x80, at least one",
            });
        }
        write_header(out, 0x90, 2 + self.return_codes.len())?;
        write_u16(out, self.pkid);
        out.extend_from_slice(self.return_codes);
        Ok(())
    }
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub pkid: u16,
    pub filters: TopicList<'a>,
}

impl<'a> Unsubscribe<'a> {
    pub(super) fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        let wire = r.rest();
        let mut v = Reader::new(wire, PacketType::Unsubscribe);
        if v.is_empty() {
            return Err(Error::Malformed {
                packet: PacketType::Unsubscribe,
                what: "no topic filter (at least one is required)",
            });
        }
        while !v.is_empty() {
            let f = v.string("topic filter")?;
            check_filter(f)?;
        }
        Ok(Unsubscribe {
            pkid,
            filters: TopicList(Repr::Wire(wire)),
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::Unsubscribe,
            });
        }
        let mut len = 2;
        for f in self.filters.iter() {
            check_out_str(f, "topic filter")?;
            check_filter(f)?;
            len += 2 + f.len();
        }
        if len == 2 {
            return Err(Error::Malformed {
                packet: PacketType::Unsubscribe,
                what: "no topic filter (at least one is required)",
            });
        }
        write_header(out, 0xa2, len)?;
        write_u16(out, self.pkid);
        for f in self.filters.iter() {
            write_binary(out, f.as_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Packet, Protocol};
    use super::*;

    #[test]
    fn spec_subscribe() {
        // MQTT 3.1.1 §3.8.3 example payload: "a/b" QoS 1, "c/d" QoS 2; packet id 10.
        let list = [("a/b", QoS::AtLeastOnce), ("c/d", QoS::ExactlyOnce)];
        let s = Subscribe {
            pkid: 10,
            filters: Filters::new(&list),
        };
        let mut out = Vec::new();
        Packet::Subscribe(s)
            .encode(Protocol::V311, &mut out)
            .unwrap();
        assert_eq!(
            out,
            [0x82, 14, 0, 10, 0, 3, b'a', b'/', b'b', 1, 0, 3, b'c', b'/', b'd', 2]
        );
        let (p, n) = decode(&out, &DecodeOptions::default()).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(p, Packet::Subscribe(s));
        if let Packet::Subscribe(d) = p {
            assert_eq!(d.filters.iter().collect::<Vec<_>>(), list);
            assert_eq!(d.filters.len(), 2);
        }
    }

    #[test]
    fn subscribe_errors() {
        let o = DecodeOptions::default();
        assert!(matches!(
            decode(&[0x82, 2, 0, 1], &o),
            Err(Error::Malformed { .. })
        ));
        assert_eq!(
            decode(&[0x82, 6, 0, 0, 0, 1, b'a', 0], &o),
            Err(Error::ZeroPacketId {
                packet: PacketType::Subscribe
            })
        );
        assert_eq!(
            decode(&[0x82, 6, 0, 1, 0, 1, b'a', 3], &o),
            Err(Error::InvalidQoS)
        );
        assert!(matches!(
            decode(&[0x82, 6, 0, 1, 0, 1, b'a', 0x41], &o),
            Err(Error::Malformed { .. })
        ));
        assert_eq!(
            decode(&[0x82, 7, 0, 1, 0, 2, b'a', b'#', 0], &o),
            Err(Error::InvalidFilter)
        );
        assert_eq!(
            decode(&[0x80, 6, 0, 1, 0, 1, b'a', 0], &o),
            Err(Error::ReservedFlags {
                packet: PacketType::Subscribe,
                flags: 0
            })
        );
    }

    #[test]
    fn suback_and_unsubscribe() {
        let o = DecodeOptions::default();
        let (p, _) = decode(&[0x90, 5, 0, 10, 0, 2, 0x80], &o).unwrap().unwrap();
        let Packet::SubAck(s) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            s.codes().collect::<Vec<_>>(),
            [
                SubscribeReturnCode::Success(QoS::AtMostOnce),
                SubscribeReturnCode::Success(QoS::ExactlyOnce),
                SubscribeReturnCode::Failure
            ]
        );
        assert!(matches!(
            decode(&[0x90, 3, 0, 10, 3], &o),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[0x90, 2, 0, 10], &o),
            Err(Error::Malformed { .. })
        ));
        let list = ["a/+", "#"];
        let u = Unsubscribe {
            pkid: 3,
            filters: TopicList::new(&list),
        };
        let mut out = Vec::new();
        Packet::Unsubscribe(u)
            .encode(Protocol::V311, &mut out)
            .unwrap();
        assert_eq!(out, [0xa2, 10, 0, 3, 0, 3, b'a', b'/', b'+', 0, 1, b'#']);
        assert_eq!(decode(&out, &o).unwrap().unwrap().0, Packet::Unsubscribe(u));
        assert!(matches!(
            decode(&[0xa2, 2, 0, 1], &o),
            Err(Error::Malformed { .. })
        ));
    }
}
