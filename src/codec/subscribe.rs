//! SUBSCRIBE, SUBACK and UNSUBSCRIBE.
//!
//! Their payloads are lists. A decoded list keeps the validated wire bytes and iterates over them (no
//! allocation); a list to encode is a caller's slice. [`Filters`] and [`TopicList`] hide which one they hold
//! and compare by content.
//!
//! MQTT 5 adds properties to all three, [`SubscriptionOptions`] beyond the QoS to each SUBSCRIBE filter, and
//! reason codes to SUBACK (whose values 0, 1, 2 and 0x80 mean what MQTT 3.1.1's return codes do). Shared
//! subscriptions (`$share/{group}/{filter}`) are checked in MQTT 5 (in MQTT 3.1.1 `$share` is a topic level
//! like any other).
use std::fmt;

use super::ack::{check_reason_list, read_reason_list, reason_list};
use super::primitives::{
    check_filter, check_out_str, write_binary, write_header, write_u16, Reader,
};
use super::properties::{Properties, PropertyScope};
use super::{Error, PacketType, QoS, ReasonCode};

/// What a retained message does when a subscription is made (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe (MQTT 3.1.1's behaviour).
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist yet.
    SendAtSubscribeIfNew = 1,
    /// Do not send them.
    DoNotSend = 2,
}

/// The options byte of a SUBSCRIBE filter. MQTT 3.1.1 has the QoS only (the rest at their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS of the messages the broker sends on this subscription.
    pub qos: QoS,
    /// MQTT 5: do not send back messages this connection published itself (not on shared subscriptions).
    pub no_local: bool,
    /// MQTT 5: keep the retain flag of forwarded messages as published.
    pub retain_as_published: bool,
    /// MQTT 5.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// The QoS, every other option at its default (the MQTT 3.1.1 subscription).
    pub const fn new(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
    /// Whether it has only what MQTT 3.1.1 can say.
    pub fn is_v311(&self) -> bool {
        *self == Self::new(self.qos)
    }
    pub fn to_u8(self) -> u8 {
        self.qos as u8
            | (self.no_local as u8) << 2
            | (self.retain_as_published as u8) << 3
            | (self.retain_handling as u8) << 4
    }
    /// Read an options byte: in MQTT 3.1.1 only the QoS bits may be set.
    fn from_u8(b: u8, v5: bool) -> Result<Self, Error> {
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if b & reserved != 0 {
            return Err(Error::Malformed {
                packet: PacketType::Subscribe,
                what: if v5 {
                    "reserved bits 6-7 of the subscription options are set"
                } else {
                    "reserved bits of requested QoS are set"
                },
            });
        }
        let qos = QoS::from_u8(b & 3).ok_or(Error::InvalidQoS)?;
        let retain_handling = match (b >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => {
                return Err(Error::Malformed {
                    packet: PacketType::Subscribe,
                    what: "retain handling 3 is reserved",
                })
            }
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: b & 4 != 0,
            retain_as_published: b & 8 != 0,
            retain_handling,
        })
    }
}

impl From<QoS> for SubscriptionOptions {
    fn from(qos: QoS) -> Self {
        SubscriptionOptions::new(qos)
    }
}

/// A SUBACK return code of MQTT 3.1.1 (MQTT 5's are [`SubAck::reasons`]).
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

#[derive(Clone, Copy)]
enum FilterRepr<'a> {
    /// Validated wire bytes.
    Wire(&'a [u8]),
    Qos(&'a [(&'a str, QoS)]),
    Options(&'a [(&'a str, SubscriptionOptions)]),
}

/// The (filter, options) list of a SUBSCRIBE.
#[derive(Clone, Copy)]
pub struct Filters<'a>(FilterRepr<'a>);

impl<'a> Filters<'a> {
    pub fn new(list: &'a [(&'a str, QoS)]) -> Self {
        Filters(FilterRepr::Qos(list))
    }
    /// Filters with MQTT 5 subscription options.
    pub fn with_options(list: &'a [(&'a str, SubscriptionOptions)]) -> Self {
        Filters(FilterRepr::Options(list))
    }
    /// Each filter with its requested QoS.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, QoS)> + 'a {
        self.iter_options().map(|(f, o)| (f, o.qos))
    }
    /// Each filter with its subscription options.
    pub fn iter_options(&self) -> impl Iterator<Item = (&'a str, SubscriptionOptions)> + 'a {
        let (mut wire, mut qos, mut opts) = (&[][..], &[][..], &[][..]);
        match self.0 {
            FilterRepr::Wire(w) => wire = w,
            FilterRepr::Qos(l) => qos = l,
            FilterRepr::Options(l) => opts = l,
        }
        qos.iter()
            .map(|&(f, q)| (f, SubscriptionOptions::new(q)))
            .chain(opts.iter().copied())
            .chain(
                WireIter {
                    buf: wire,
                    with_options: true,
                }
                .map(|(f, o)| {
                    // Validated wire bytes: the options byte is valid for MQTT 5 at least.
                    (
                        f,
                        SubscriptionOptions::from_u8(o, true)
                            .unwrap_or(SubscriptionOptions::new(QoS::AtMostOnce)),
                    )
                }),
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
                with_options: false,
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
    with_options: bool,
}

impl<'a> Iterator for WireIter<'a> {
    type Item = (&'a str, u8);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        let s = std::str::from_utf8(self.buf.get(2..2 + len)?).ok()?;
        let mut used = 2 + len;
        let o = if self.with_options {
            used += 1;
            *self.buf.get(2 + len)?
        } else {
            0
        };
        self.buf = &self.buf[used..];
        Some((s, o))
    }
}

impl PartialEq for Filters<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.iter_options().eq(o.iter_options())
    }
}
impl Eq for Filters<'_> {}
impl fmt::Debug for Filters<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter_options()).finish()
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

/// A filter in MQTT 5: a shared subscription `$share/{group}/{filter}` needs a group name without `/`, `+`,
/// `#` and a filter; `no_local` is a protocol error on one [MQTT-3.8.3-4].
fn check_v5_filter(f: &str, no_local: bool, packet: PacketType) -> Result<(), Error> {
    let Some(rest) = f.strip_prefix("$share/") else {
        return Ok(());
    };
    let bad = |what| Err(Error::Malformed { packet, what });
    match rest.split_once('/') {
        Some((group, filter)) if !group.is_empty() && !filter.is_empty() => {
            if group.contains(['+', '#']) {
                return bad("a shared subscription's group name contains a wildcard");
            }
        }
        _ => return bad("a shared subscription needs $share/{group}/{filter}"),
    }
    if no_local {
        return bad("no local on a shared subscription [MQTT-3.8.3-4]");
    }
    Ok(())
}

const SUBSCRIBE: PropertyScope = PropertyScope::Packet(PacketType::Subscribe);

/// SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub pkid: u16,
    pub filters: Filters<'a>,
    /// MQTT 5 (a Subscription Identifier, User Properties); empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

impl<'a> Subscribe<'a> {
    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        let properties = if v5 {
            Properties::read(r, SUBSCRIBE)?
        } else {
            Properties::EMPTY
        };
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
            let o = SubscriptionOptions::from_u8(v.u8("subscription options")?, v5)?;
            if v5 {
                check_v5_filter(f, o.no_local, PacketType::Subscribe)?;
            }
        }
        Ok(Subscribe {
            pkid,
            filters: Filters(FilterRepr::Wire(wire)),
            properties,
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::Subscribe,
            });
        }
        let mut len = 2;
        let mut n = 0;
        for (f, o) in self.filters.iter_options() {
            check_out_str(f, "topic filter")?;
            check_filter(f)?;
            if v5 {
                check_v5_filter(f, o.no_local, PacketType::Subscribe)?;
            } else if !o.is_v311() {
                return Err(Error::NeedsMqtt5 {
                    packet: PacketType::Subscribe,
                    what: "subscription options other than the QoS",
                });
            }
            len += 2 + f.len() + 1;
            n += 1;
        }
        if n == 0 {
            return Err(Error::Malformed {
                packet: PacketType::Subscribe,
                what: "no topic filter (at least one is required)",
            });
        }
        len += props_len(self.properties, SUBSCRIBE, v5)?;
        write_header(out, 0x82, len)?;
        write_u16(out, self.pkid);
        if v5 {
            self.properties.write(out);
        }
        for (f, o) in self.filters.iter_options() {
            write_binary(out, f.as_bytes());
            out.push(o.to_u8());
        }
        Ok(())
    }
}

/// Bytes the properties take in `scope`'s packet (checked), or the MQTT 3.1.1 refusal of any.
fn props_len(p: Properties<'_>, scope: PropertyScope, v5: bool) -> Result<usize, Error> {
    if v5 {
        p.check(scope)?;
        Ok(p.encoded_len())
    } else if p.is_empty() {
        Ok(0)
    } else {
        Err(Error::NeedsMqtt5 {
            packet: scope.packet(),
            what: "properties",
        })
    }
}

/// SUBACK: one return code per filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub pkid: u16,
    /// Raw return codes: MQTT 3.1.1's (each valid for [`SubscribeReturnCode::from_u8`]) or MQTT 5's reason
    /// codes (each valid for [`ReasonCode::from_u8`] in SUBACK).
    pub return_codes: &'a [u8],
    /// MQTT 5; empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

const SUBACK: PropertyScope = PropertyScope::Packet(PacketType::SubAck);

impl<'a> SubAck<'a> {
    /// The codes in MQTT 3.1.1's terms (any MQTT 5 refusal is `Failure`).
    pub fn codes(&self) -> impl Iterator<Item = SubscribeReturnCode> + 'a {
        self.return_codes
            .iter()
            .map(|&c| SubscribeReturnCode::from_u8(c).unwrap_or(SubscribeReturnCode::Failure))
    }
    /// The codes as MQTT 5 reason codes (MQTT 3.1.1's 0x80 is `UnspecifiedError`).
    pub fn reasons(&self) -> impl Iterator<Item = ReasonCode> + 'a {
        reason_list(PacketType::SubAck, self.return_codes)
    }
    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        if v5 {
            let properties = Properties::read(r, SUBACK)?;
            let return_codes = read_reason_list(r, PacketType::SubAck)?;
            return Ok(SubAck {
                pkid,
                return_codes,
                properties,
            });
        }
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
        Ok(SubAck {
            pkid,
            return_codes,
            properties: Properties::EMPTY,
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::SubAck,
            });
        }
        if v5 {
            check_reason_list(PacketType::SubAck, self.return_codes)?;
            let len = 2 + props_len(self.properties, SUBACK, v5)? + self.return_codes.len();
            write_header(out, 0x90, len)?;
            write_u16(out, self.pkid);
            self.properties.write(out);
            out.extend_from_slice(self.return_codes);
            return Ok(());
        }
        props_len(self.properties, SUBACK, v5)?;
        if self.return_codes.is_empty()
            || self
                .return_codes
                .iter()
                .any(|&c| SubscribeReturnCode::from_u8(c).is_none())
        {
            if check_reason_list(PacketType::SubAck, self.return_codes).is_ok() {
                return Err(Error::NeedsMqtt5 {
                    packet: PacketType::SubAck,
                    what: "reason codes other than 0, 1, 2 and 0x80",
                });
            }
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

const UNSUBSCRIBE: PropertyScope = PropertyScope::Packet(PacketType::Unsubscribe);

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub pkid: u16,
    pub filters: TopicList<'a>,
    /// MQTT 5 (User Properties); empty in MQTT 3.1.1.
    pub properties: Properties<'a>,
}

impl<'a> Unsubscribe<'a> {
    pub(super) fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, Error> {
        let pkid = r.pkid()?;
        let properties = if v5 {
            Properties::read(r, UNSUBSCRIBE)?
        } else {
            Properties::EMPTY
        };
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
            if v5 {
                check_v5_filter(f, false, PacketType::Unsubscribe)?;
            }
        }
        Ok(Unsubscribe {
            pkid,
            filters: TopicList(Repr::Wire(wire)),
            properties,
        })
    }
    pub(super) fn write(&self, out: &mut Vec<u8>, v5: bool) -> Result<(), Error> {
        if self.pkid == 0 {
            return Err(Error::ZeroPacketId {
                packet: PacketType::Unsubscribe,
            });
        }
        let mut len = 2;
        for f in self.filters.iter() {
            check_out_str(f, "topic filter")?;
            check_filter(f)?;
            if v5 {
                check_v5_filter(f, false, PacketType::Unsubscribe)?;
            }
            len += 2 + f.len();
        }
        if len == 2 {
            return Err(Error::Malformed {
                packet: PacketType::Unsubscribe,
                what: "no topic filter (at least one is required)",
            });
        }
        len += props_len(self.properties, UNSUBSCRIBE, v5)?;
        write_header(out, 0xa2, len)?;
        write_u16(out, self.pkid);
        if v5 {
            self.properties.write(out);
        }
        for f in self.filters.iter() {
            write_binary(out, f.as_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, DecodeOptions, Packet, Protocol, ReasonCode};
    use super::*;

    #[test]
    fn spec_subscribe() {
        // MQTT 3.1.1 §3.8.3 example payload: "a/b" QoS 1, "c/d" QoS 2; packet id 10.
        let list = [("a/b", QoS::AtLeastOnce), ("c/d", QoS::ExactlyOnce)];
        let s = Subscribe {
            pkid: 10,
            filters: Filters::new(&list),
            properties: Properties::EMPTY,
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
            properties: Properties::EMPTY,
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

    const V5: DecodeOptions = DecodeOptions {
        protocol: Protocol::V5,
        max_packet_size: 1 << 20,
    };

    #[test]
    fn subscribe_v5() {
        // Packet id 10, Subscription Identifier 7, "a/b" with QoS 2 + no local + retain as published + retain
        // handling 2 (0x2E), "$share/g/c" with QoS 1 (0x01).
        let b = [
            0x82, 24, 0, 10, 2, 0x0B, 7, 0, 3, b'a', b'/', b'b', 0x2E, 0, 10, b'$', b's', b'h',
            b'a', b'r', b'e', b'/', b'g', b'/', b'c', 0x01,
        ];
        let opts = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        assert_eq!(opts.to_u8(), 0x2E);
        let list = [("a/b", opts), ("$share/g/c", QoS::AtLeastOnce.into())];
        let mut props = super::super::PropertiesBuf::new();
        props
            .push(super::super::Property::SubscriptionIdentifier(7))
            .unwrap();
        let s = Subscribe {
            pkid: 10,
            filters: Filters::with_options(&list),
            properties: props.properties(),
        };
        let mut out = Vec::new();
        Packet::Subscribe(s).encode(Protocol::V5, &mut out).unwrap();
        assert_eq!(out[..], b[..]);
        let (p, _) = decode(&b, &V5).unwrap().unwrap();
        assert_eq!(p, Packet::Subscribe(s));
        if let Packet::Subscribe(d) = p {
            assert_eq!(d.filters.iter_options().collect::<Vec<_>>(), list);
            assert_eq!(
                d.filters.iter().collect::<Vec<_>>(),
                [("a/b", QoS::ExactlyOnce), ("$share/g/c", QoS::AtLeastOnce)]
            );
        }
        // MQTT 3.1.1 cannot say these options.
        assert!(matches!(
            Packet::Subscribe(Subscribe {
                properties: Properties::EMPTY,
                ..s
            })
            .encode(Protocol::V311, &mut out),
            Err(Error::NeedsMqtt5 { .. })
        ));
    }

    #[test]
    fn subscribe_v5_errors() {
        let sub = |f: &[u8], o: u8| {
            let mut b = vec![
                0x82,
                (2 + 1 + 2 + f.len() + 1) as u8,
                0,
                1,
                0,
                0,
                f.len() as u8,
            ];
            b.extend_from_slice(f);
            b.push(o);
            decode(&b, &V5).map(|_| ())
        };
        assert_eq!(sub(b"a", 0x2E), Ok(()));
        // Reserved bits, retain handling 3, QoS 3.
        assert!(matches!(sub(b"a", 0x40), Err(Error::Malformed { .. })));
        assert!(matches!(sub(b"a", 0x30), Err(Error::Malformed { .. })));
        assert_eq!(sub(b"a", 0x03), Err(Error::InvalidQoS));
        // Shared subscriptions: no local forbidden; a group and a filter needed; no wildcard in the group.
        assert_eq!(sub(b"$share/g/a", 0x01), Ok(()));
        assert!(matches!(
            sub(b"$share/g/a", 0x04),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            sub(b"$share/g", 0x00),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            sub(b"$share//a", 0x00),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            sub(b"$share/+/a", 0x00),
            Err(Error::Malformed { .. })
        ));
        // In MQTT 3.1.1 "$share" is an ordinary level, and option bits beyond the QoS are reserved.
        let b = [0x82, 10, 0, 1, 0, 5, b'$', b's', b'h', b'a', b'r', 0x04];
        assert!(matches!(
            decode(&b, &DecodeOptions::default()),
            Err(Error::Malformed { .. })
        ));
        // A property SUBSCRIBE may not carry, and a second Subscription Identifier.
        let b = [0x82, 10, 0, 1, 3, 0x23, 0, 1, 0, 1, b'a', 0];
        assert!(matches!(
            decode(&b, &V5),
            Err(Error::PropertyNotAllowed { .. })
        ));
        let b = [0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0];
        assert!(matches!(
            decode(&b, &V5),
            Err(Error::DuplicateProperty { .. })
        ));
    }

    #[test]
    fn suback_unsubscribe_v5() {
        // SUBACK: Granted QoS 1, Not authorized, Shared Subscriptions not supported; Reason String "no".
        let b = [0x90, 11, 0, 5, 5, 0x1F, 0, 2, b'n', b'o', 0x01, 0x87, 0x9E];
        let (p, _) = decode(&b, &V5).unwrap().unwrap();
        let Packet::SubAck(s) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            s.reasons().collect::<Vec<_>>(),
            [
                ReasonCode::GrantedQoS1,
                ReasonCode::NotAuthorized,
                ReasonCode::SharedSubscriptionsNotSupported
            ]
        );
        assert_eq!(
            s.codes().collect::<Vec<_>>(),
            [
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Failure,
                SubscribeReturnCode::Failure
            ]
        );
        assert_eq!(s.properties.reason_string(), Some("no"));
        let mut out = Vec::new();
        p.encode(Protocol::V5, &mut out).unwrap();
        assert_eq!(out, b);
        assert_eq!(
            decode(&[0x90, 4, 0, 5, 0, 0x11], &V5),
            Err(Error::InvalidReasonCode {
                packet: PacketType::SubAck,
                code: 0x11
            })
        );
        assert!(matches!(
            p.encode(Protocol::V311, &mut out),
            Err(Error::NeedsMqtt5 { .. })
        ));
        // UNSUBSCRIBE with a User Property.
        let b = [0xa2, 12, 0, 3, 6, 0x26, 0, 0, 0, 1, b'v', 0, 1, b'#'];
        let (p, _) = decode(&b, &V5).unwrap().unwrap();
        let Packet::Unsubscribe(u) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            u.properties.user_properties().collect::<Vec<_>>(),
            [("", "v")]
        );
        assert_eq!(u.filters.iter().collect::<Vec<_>>(), ["#"]);
        out.clear();
        p.encode(Protocol::V5, &mut out).unwrap();
        assert_eq!(out, b);
    }
}
