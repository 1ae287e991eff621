//! Property tests of the codec, for MQTT 3.1.1 and MQTT 5: every packet type round-trips (encode → decode
//! gives the same packet and consumes exactly the bytes written; every proper prefix asks for more bytes),
//! the PUBLISH fast paths match the general encoder, malformed MQTT 5 properties are refused with their typed
//! error, and arbitrary bytes never panic the decoder.
use proptest::prelude::*;
use qmqtt::codec::primitives::write_remaining_length;
use qmqtt::codec::{
    decode, encode_publish, encode_publish_header, encode_publish_v5, Ack, Auth, ConnAck, Connect,
    ConnectReturnCode, DecodeOptions, Disconnect, Error, Filters, LastWill, Packet, PacketType,
    Properties, PropertiesBuf, Property, PropertyId, PropertyScope, Protocol, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, TopicList, UnsubAck,
    Unsubscribe,
};

/// An owned description of a packet, turned into a borrowed [`Packet`] for the test. The MQTT 5 parts
/// (properties, reason codes, subscription options) are at their defaults in MQTT 3.1.1 packets.
#[derive(Debug, Clone)]
enum Op {
    Connect {
        protocol: Protocol,
        keep_alive: u16,
        client_id: String,
        clean: bool,
        will: Option<(String, Vec<u8>, QoS, bool, PropertiesBuf)>,
        user: Option<String>,
        pass: Option<Vec<u8>>,
        props: PropertiesBuf,
    },
    /// MQTT 3.1.1 return code byte.
    ConnAck(bool, u8),
    ConnAck5(bool, ReasonCode, PropertiesBuf),
    Publish {
        dup: bool,
        qos: QoS,
        retain: bool,
        topic: String,
        pkid: u16,
        payload: Vec<u8>,
        props: PropertiesBuf,
    },
    Ack(PacketType, u16, ReasonCode, PropertiesBuf),
    Subscribe(u16, Vec<(String, SubscriptionOptions)>, PropertiesBuf),
    SubAck(u16, Vec<u8>, PropertiesBuf),
    Unsubscribe(u16, Vec<String>, PropertiesBuf),
    UnsubAck(u16, Vec<u8>, PropertiesBuf),
    PingReq,
    PingResp,
    Disconnect(ReasonCode, PropertiesBuf),
    Auth(ReasonCode, PropertiesBuf),
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}
fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}
/// Any string MQTT allows (no U+0000).
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}
fn topic() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{1,16}"
}
fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![Just("+".to_owned()), "[^\u{0}+#/]{0,5}"], 1..4),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            if f.is_empty() {
                f.push('#');
            }
            f
        })
}
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// A valid property with identifier `id`, its value taken from the seeds.
fn make<'a>(id: PropertyId, n: u32, s: &'a str, v: &'a str, b: &'a [u8]) -> Property<'a> {
    use Property as P;
    use PropertyId as I;
    let flag = n & 1 == 1;
    let nz16 = (n % 65_535 + 1) as u16;
    match id {
        I::PayloadFormatIndicator => P::PayloadFormatIndicator(flag),
        I::MessageExpiryInterval => P::MessageExpiryInterval(n),
        I::ContentType => P::ContentType(s),
        I::ResponseTopic => P::ResponseTopic(s),
        I::CorrelationData => P::CorrelationData(b),
        I::SubscriptionIdentifier => P::SubscriptionIdentifier(n % 268_435_455 + 1),
        I::SessionExpiryInterval => P::SessionExpiryInterval(n),
        I::AssignedClientIdentifier => P::AssignedClientIdentifier(s),
        I::ServerKeepAlive => P::ServerKeepAlive(n as u16),
        I::AuthenticationMethod => P::AuthenticationMethod(s),
        I::AuthenticationData => P::AuthenticationData(b),
        I::RequestProblemInformation => P::RequestProblemInformation(flag),
        I::WillDelayInterval => P::WillDelayInterval(n),
        I::RequestResponseInformation => P::RequestResponseInformation(flag),
        I::ResponseInformation => P::ResponseInformation(s),
        I::ServerReference => P::ServerReference(s),
        I::ReasonString => P::ReasonString(v),
        I::ReceiveMaximum => P::ReceiveMaximum(nz16),
        I::TopicAliasMaximum => P::TopicAliasMaximum(n as u16),
        I::TopicAlias => P::TopicAlias(nz16),
        I::MaximumQoS => P::MaximumQoS(if flag {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }),
        I::RetainAvailable => P::RetainAvailable(flag),
        I::UserProperty => P::UserProperty(s, v),
        I::MaximumPacketSize => P::MaximumPacketSize(n.max(1)),
        I::WildcardSubscriptionAvailable => P::WildcardSubscriptionAvailable(flag),
        I::SubscriptionIdentifierAvailable => P::SubscriptionIdentifierAvailable(flag),
        I::SharedSubscriptionAvailable => P::SharedSubscriptionAvailable(flag),
    }
}

/// A valid property list for `scope`: allowed properties, repeated only where allowed, Authentication Data
/// only with a method.
fn props(scope: PropertyScope) -> impl Strategy<Value = PropertiesBuf> {
    let allowed: Vec<PropertyId> = PropertyId::ALL
        .iter()
        .copied()
        .filter(|id| id.is_allowed(scope))
        .collect();
    prop::collection::vec(
        (
            prop::sample::select(allowed),
            any::<u32>(),
            topic(),
            text(),
            bytes(12),
        ),
        0..5,
    )
    .prop_map(move |items| {
        let mut buf = PropertiesBuf::new();
        let mut seen = Vec::new();
        let has_method = items
            .iter()
            .any(|i| i.0 == PropertyId::AuthenticationMethod);
        for (id, n, s, v, b) in &items {
            if (seen.contains(id) && !id.is_repeatable(scope))
                || (*id == PropertyId::AuthenticationData && !has_method)
            {
                continue;
            }
            seen.push(*id);
            buf.push(make(*id, *n, s, v, b)).unwrap();
        }
        buf
    })
}

/// MQTT 5 properties, or none for MQTT 3.1.1.
fn props_for(v5: bool, packet: PacketType) -> BoxedStrategy<PropertiesBuf> {
    if v5 {
        props(PropertyScope::Packet(packet)).boxed()
    } else {
        Just(PropertiesBuf::new()).boxed()
    }
}

/// A reason code `packet` may carry.
fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = ReasonCode::ALL
        .iter()
        .copied()
        .filter(|c| c.is_valid_in(packet))
        .collect();
    prop::sample::select(codes)
}
fn reason_or_success(
    v5: bool,
    packet: PacketType,
    success: ReasonCode,
) -> BoxedStrategy<ReasonCode> {
    if v5 {
        reason(packet).boxed()
    } else {
        Just(success).boxed()
    }
}
fn reason_bytes(packet: PacketType) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(reason(packet).prop_map(ReasonCode::to_u8), 1..6)
}

fn sub_options(v5: bool) -> BoxedStrategy<SubscriptionOptions> {
    if !v5 {
        return qos().prop_map(SubscriptionOptions::new).boxed();
    }
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendAtSubscribeIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
        .boxed()
}

/// A filter, in MQTT 5 sometimes a shared subscription (then without no local).
fn sub_entry(v5: bool) -> impl Strategy<Value = (String, SubscriptionOptions)> {
    (filter(), sub_options(v5), any::<bool>()).prop_map(move |(f, mut o, share)| {
        if v5 && share {
            o.no_local = false;
            (format!("$share/g/{f}"), o)
        } else {
            (f, o)
        }
    })
}

/// A packet valid for `protocol` (MQTT 3.1 only differs in CONNECT).
fn op(protocol: Protocol) -> impl Strategy<Value = Op> {
    let v5 = protocol == Protocol::V5;
    let connect_protocols = if v5 {
        Just(Protocol::V5).boxed()
    } else {
        prop_oneof![Just(Protocol::V31), Just(Protocol::V311)].boxed()
    };
    let will_props = if v5 {
        props(PropertyScope::Will).boxed()
    } else {
        Just(PropertiesBuf::new()).boxed()
    };
    let connect = (
        connect_protocols,
        any::<u16>(),
        text(),
        any::<bool>(),
        prop::option::of((topic(), bytes(20), qos(), any::<bool>(), will_props)),
        prop::option::of(text()),
        prop::option::of(bytes(20)),
        props_for(v5, PacketType::Connect),
    )
        .prop_map(
            move |(protocol, keep_alive, client_id, clean, will, user, pass, props)| Op::Connect {
                protocol,
                keep_alive,
                client_id,
                clean,
                will,
                // Before MQTT 5 a password needs a user name.
                pass: if v5 || user.is_some() { pass } else { None },
                user,
                props,
            },
        );
    let connack = if v5 {
        (
            any::<bool>(),
            reason(PacketType::ConnAck),
            props(PropertyScope::Packet(PacketType::ConnAck)),
        )
            .prop_map(|(s, r, p)| Op::ConnAck5(s && !r.is_error(), r, p))
            .boxed()
    } else {
        (any::<bool>(), any::<u8>())
            .prop_map(|(s, c)| Op::ConnAck(s, c))
            .boxed()
    };
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        pkid(),
        bytes(300),
        props_for(v5, PacketType::Publish),
        any::<bool>(),
    )
        .prop_map(
            |(dup, qos, retain, topic, pkid, payload, props, drop_topic)| {
                let (dup, pkid) = if qos == QoS::AtMostOnce {
                    (false, 0)
                } else {
                    (dup, pkid)
                };
                // With a Topic Alias the topic may be left out.
                let aliased = props.properties().topic_alias().is_some();
                let topic = if aliased && drop_topic {
                    String::new()
                } else {
                    topic
                };
                Op::Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    pkid,
                    payload,
                    props,
                }
            },
        );
    let ack = prop_oneof![
        Just(PacketType::PubAck),
        Just(PacketType::PubRec),
        Just(PacketType::PubRel),
        Just(PacketType::PubComp)
    ]
    .prop_flat_map(move |t| {
        (
            Just(t),
            pkid(),
            reason_or_success(v5, t, ReasonCode::Success),
            props_for(v5, t),
        )
    })
    .prop_map(|(t, p, r, props)| Op::Ack(t, p, r, props));
    let suback_codes = if v5 {
        reason_bytes(PacketType::SubAck).boxed()
    } else {
        prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..6).boxed()
    };
    let unsuback_codes = if v5 {
        reason_bytes(PacketType::UnsubAck).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let auth = if v5 {
        (
            reason(PacketType::Auth),
            props(PropertyScope::Packet(PacketType::Auth)),
        )
            .prop_map(|(r, p)| Op::Auth(r, p))
            .boxed()
    } else {
        Just(Op::PingResp).boxed()
    };
    prop_oneof![
        connect,
        connack,
        publish,
        ack,
        (
            pkid(),
            prop::collection::vec(sub_entry(v5), 1..5),
            props_for(v5, PacketType::Subscribe)
        )
            .prop_map(|(p, f, props)| Op::Subscribe(p, f, props)),
        (pkid(), suback_codes, props_for(v5, PacketType::SubAck))
            .prop_map(|(p, c, props)| Op::SubAck(p, c, props)),
        (
            pkid(),
            prop::collection::vec(filter(), 1..5),
            props_for(v5, PacketType::Unsubscribe)
        )
            .prop_map(|(p, f, props)| Op::Unsubscribe(p, f, props)),
        (pkid(), unsuback_codes, props_for(v5, PacketType::UnsubAck))
            .prop_map(|(p, c, props)| Op::UnsubAck(p, c, props)),
        Just(Op::PingReq),
        Just(Op::PingResp),
        (
            reason_or_success(v5, PacketType::Disconnect, ReasonCode::NormalDisconnection),
            props_for(v5, PacketType::Disconnect)
        )
            .prop_map(|(r, p)| Op::Disconnect(r, p)),
        auth,
    ]
}

/// Build the borrowed packet and hand it to `f` (lists need a borrowed slice that lives long enough).
fn with_packet<R>(op: &Op, f: impl FnOnce(Packet<'_>) -> R) -> R {
    match op {
        Op::Connect {
            protocol,
            keep_alive,
            client_id,
            clean,
            will,
            user,
            pass,
            props,
        } => f(Packet::Connect(Connect {
            protocol: *protocol,
            keep_alive: *keep_alive,
            client_id,
            clean_session: *clean,
            will: will.as_ref().map(|(t, m, q, r, p)| LastWill {
                topic: t,
                message: m,
                qos: *q,
                retain: *r,
                properties: p.properties(),
            }),
            username: user.as_deref(),
            password: pass.as_deref(),
            properties: props.properties(),
        })),
        Op::ConnAck(s, c) => f(Packet::ConnAck(ConnAck::new(
            *s,
            ConnectReturnCode::from_u8(*c),
        ))),
        Op::ConnAck5(s, r, p) => f(Packet::ConnAck(ConnAck::v5(*s, *r, p.properties()))),
        Op::Publish {
            dup,
            qos,
            retain,
            topic,
            pkid,
            payload,
            props,
        } => f(Packet::Publish(Publish {
            dup: *dup,
            qos: *qos,
            retain: *retain,
            topic,
            pkid: *pkid,
            payload,
            properties: props.properties(),
        })),
        Op::Ack(t, pkid, reason, props) => {
            let a = Ack {
                pkid: *pkid,
                reason: *reason,
                properties: props.properties(),
            };
            f(match t {
                PacketType::PubAck => Packet::PubAck(a),
                PacketType::PubRec => Packet::PubRec(a),
                PacketType::PubRel => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            })
        }
        Op::Subscribe(p, list, props) => {
            let l: Vec<(&str, SubscriptionOptions)> =
                list.iter().map(|(s, o)| (s.as_str(), *o)).collect();
            f(Packet::Subscribe(Subscribe {
                pkid: *p,
                filters: Filters::with_options(&l),
                properties: props.properties(),
            }))
        }
        Op::SubAck(p, c, props) => f(Packet::SubAck(SubAck {
            pkid: *p,
            return_codes: c,
            properties: props.properties(),
        })),
        Op::Unsubscribe(p, list, props) => {
            let l: Vec<&str> = list.iter().map(String::as_str).collect();
            f(Packet::Unsubscribe(Unsubscribe {
                pkid: *p,
                filters: TopicList::new(&l),
                properties: props.properties(),
            }))
        }
        Op::UnsubAck(p, c, props) => f(Packet::UnsubAck(UnsubAck {
            pkid: *p,
            reason_codes: c,
            properties: props.properties(),
        })),
        Op::PingReq => f(Packet::PingReq),
        Op::PingResp => f(Packet::PingResp),
        Op::Disconnect(r, p) => f(Packet::Disconnect(Disconnect {
            reason: *r,
            properties: p.properties(),
        })),
        Op::Auth(r, p) => f(Packet::Auth(Auth {
            reason: *r,
            properties: p.properties(),
        })),
    }
}

fn opts(protocol: Protocol) -> DecodeOptions {
    DecodeOptions {
        protocol,
        ..DecodeOptions::default()
    }
}

fn round_trip(p: Packet<'_>, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut out = vec![0xAA]; // encode appends
    let n = p.encode(protocol, &mut out).unwrap();
    prop_assert_eq!(n, out.len() - 1);
    let bytes = &out[1..];
    let opts = opts(protocol);
    let (d, len) = decode(bytes, &opts).unwrap().expect("complete");
    prop_assert_eq!(len, bytes.len());
    prop_assert_eq!(d, p);
    // Re-encoding the decoded packet gives the same bytes.
    let mut again = Vec::new();
    d.encode(protocol, &mut again).unwrap();
    prop_assert_eq!(&again[..], bytes);
    // Every proper prefix: need more bytes, never an error.
    for cut in 0..bytes.len() {
        prop_assert_eq!(decode(&bytes[..cut], &opts), Ok(None));
    }
    // Followed by another packet: only the first is consumed.
    let mut two = bytes.to_vec();
    two.extend_from_slice(&[0xc0, 0]);
    prop_assert_eq!(
        decode(&two, &opts).unwrap().map(|(_, n)| n),
        Some(bytes.len())
    );
    // A size limit just below the packet refuses it from the header alone.
    let tight = DecodeOptions {
        max_packet_size: bytes.len() - 1,
        ..opts
    };
    let header_only = &bytes[..bytes.len().min(5)];
    let is_too_large = matches!(
        decode(header_only, &tight),
        Err(Error::PacketTooLarge { .. })
    );
    prop_assert!(is_too_large);
    Ok(())
}

/// Decode a stream under `opts`; whatever decodes re-encodes (decoded packets are valid), no panic.
fn decode_stream(mut b: &[u8], opts: &DecodeOptions) -> Result<(), TestCaseError> {
    while let Ok(Some((p, n))) = decode(b, opts) {
        prop_assert!(n > 0 && n <= b.len());
        let mut out = Vec::new();
        p.encode(opts.protocol, &mut out).unwrap();
        b = &b[n..];
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The word-at-a-time topic check agrees with the rule, byte by byte, at every length and position
    /// (strings drawn mostly from the bytes that matter: NUL, `+`, `#`, `/`, ASCII, multi-byte).
    #[test]
    fn topic_check_matches_the_rule(t in "[\\x00+#/a-z\u{e9}\u{20ac}]{0,40}|[a-z/]{60,70}") {
        let rule = !t.is_empty() && t.len() <= 65_535 && !t.contains(['\0', '+', '#']);
        prop_assert_eq!(qmqtt::codec::validate_topic(&t).is_ok(), rule);
        // The encoder's check is the same one.
        let mut out = Vec::new();
        let enc = encode_publish(&mut out, &t, b"p", QoS::AtMostOnce, false, false, 0);
        prop_assert_eq!(enc.is_ok(), rule);
    }

    /// A QoS 0 packet built from slices (the publish queue's records under MQTT 3.1.1) is the encoder's:
    /// the prefix and the topic are the header `encode_publish_header` writes, at every remaining-length
    /// width; a packet too long for MQTT is refused by both.
    #[test]
    fn qos0_prefix_is_the_encoders_header(
        t in "[a-z/\u{e9}]{1,20}",
        len in prop_oneof![0usize..300, 16_000usize..16_500, 2_097_000usize..2_097_300,
                           268_435_400usize..268_435_500],
        retain in any::<bool>(),
    ) {
        let mut hdr = Vec::new();
        let enc = encode_publish_header(&mut hdr, &t, len, QoS::AtMostOnce, retain, false, 0);
        match qmqtt::codec::publish_qos0_prefix(t.len(), len, retain) {
            Ok((pre, n)) => {
                prop_assert!(enc.is_ok());
                prop_assert_eq!(&hdr[..n], &pre[..n]);
                prop_assert_eq!(&hdr[n..], t.as_bytes());
            }
            Err(e) => prop_assert_eq!(enc, Err(e)),
        }
    }

    #[test]
    fn round_trip_v311(op in op(Protocol::V311)) {
        with_packet(&op, |p| round_trip(p, Protocol::V311))?;
    }

    #[test]
    fn round_trip_v5(op in op(Protocol::V5)) {
        with_packet(&op, |p| round_trip(p, Protocol::V5))?;
    }

    /// An MQTT 3.1.1 packet's MQTT 5 fields are at their defaults, so it encodes under MQTT 3.1.1; anything
    /// MQTT 5 adds is refused there, never silently dropped.
    #[test]
    fn v5_only_fields_are_refused_in_v311(op in op(Protocol::V5)) {
        with_packet(&op, |p| {
            let mut v5 = Vec::new();
            p.encode(Protocol::V5, &mut v5).unwrap();
            let mut v3 = Vec::new();
            match p.encode(Protocol::V311, &mut v3) {
                // Same packet, read back under MQTT 3.1.1 (a CONNACK in its MQTT 3.1.1 terms: `code`).
                Ok(_) => {
                    let (d, _) = decode(&v3, &opts(Protocol::V311)).unwrap().unwrap();
                    match (d, p) {
                        (Packet::ConnAck(d), Packet::ConnAck(p)) => {
                            prop_assert_eq!((d.session_present, d.code), (p.session_present, p.code));
                        }
                        _ => prop_assert_eq!(d, p),
                    }
                }
                Err(e) => {
                    let expected = matches!(e, Error::NeedsMqtt5 { .. } | Error::EmptyTopic);
                    prop_assert!(expected, "{:?}", e);
                    prop_assert!(v3.is_empty());
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn publish_fast_path_matches_packet_encoding(
        qos in qos(), retain in any::<bool>(), dup in any::<bool>(), topic in topic(), pkid in pkid(),
        payload in bytes(200),
    ) {
        let (dup, pkid) = if qos == QoS::AtMostOnce { (false, 0) } else { (dup, pkid) };
        let mut fast = Vec::new();
        encode_publish(&mut fast, &topic, &payload, qos, retain, dup, pkid).unwrap();
        let mut slow = Vec::new();
        let p = Publish { dup, qos, retain, topic: &topic, pkid, payload: &payload, properties: Properties::EMPTY };
        Packet::Publish(p).encode(Protocol::V311, &mut slow).unwrap();
        prop_assert_eq!(&fast, &slow);
        // MQTT 5 without properties: the MQTT 3.1.1 bytes plus an empty property length after the header.
        let mut v5 = Vec::new();
        encode_publish_v5(&mut v5, &p, None).unwrap();
        let (d, _) = decode(&v5, &opts(Protocol::V5)).unwrap().unwrap();
        prop_assert_eq!(d, Packet::Publish(p));
        // (The remaining length may take one byte more.)
        prop_assert!(matches!(v5.len() - fast.len(), 1 | 2));
    }

    /// The v5 fast path's separate alias is the same as a Topic Alias first in the properties.
    #[test]
    fn publish_v5_alias_fast_path(
        qos in qos(), topic in topic(), drop_topic in any::<bool>(), pkid in pkid(), alias in 1..=u16::MAX,
        payload in bytes(100), props in props(PropertyScope::Packet(PacketType::Publish)),
    ) {
        prop_assume!(props.properties().topic_alias().is_none());
        let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
        let topic = if drop_topic { "" } else { topic.as_str() };
        let p = Publish { dup: false, qos, retain: false, topic, pkid, payload: &payload, properties: props.properties() };
        let mut fast = Vec::new();
        let n = encode_publish_v5(&mut fast, &p, Some(alias)).unwrap();
        prop_assert_eq!(n, fast.len());
        let mut with = PropertiesBuf::new();
        with.push(Property::TopicAlias(alias)).unwrap();
        for q in props.properties() {
            with.push(q).unwrap();
        }
        let mut slow = Vec::new();
        Packet::Publish(Publish { properties: with.properties(), ..p }).encode(Protocol::V5, &mut slow).unwrap();
        prop_assert_eq!(&fast, &slow);
        // A second alias is a duplicate.
        let twice = Publish { properties: with.properties(), ..p };
        prop_assert_eq!(
            encode_publish_v5(&mut Vec::new(), &twice, Some(alias)),
            Err(Error::DuplicateProperty {
                scope: PropertyScope::Packet(PacketType::Publish),
                property: PropertyId::TopicAlias
            })
        );
    }

    /// A property repeated where the specification allows it once is refused by the decoder and the encoder,
    /// whatever else is in the list; a property the packet may not carry too.
    #[test]
    fn duplicate_and_misplaced_properties_are_refused(
        props in props(PropertyScope::Packet(PacketType::Publish)),
        extra in prop::sample::select(PropertyId::ALL.to_vec()),
        n in any::<u32>(), s in topic(), v in text(), b in bytes(8),
    ) {
        let scope = PropertyScope::Packet(PacketType::Publish);
        let mut list = PropertiesBuf::new();
        for q in props.properties() {
            list.push(q).unwrap();
        }
        list.push(make(extra, n, &s, &v, &b)).unwrap();
        let present = props.properties().get(extra).is_some();
        let expected = if !extra.is_allowed(scope) {
            Some(Error::PropertyNotAllowed { scope, property: extra })
        } else if present && !extra.is_repeatable(scope) {
            Some(Error::DuplicateProperty { scope, property: extra })
        } else {
            None
        };
        let p = Publish {
            dup: false, qos: QoS::AtMostOnce, retain: false, topic: "t", pkid: 0, payload: b"x",
            properties: list.properties(),
        };
        let mut out = Vec::new();
        let enc = Packet::Publish(p).encode(Protocol::V5, &mut out);
        prop_assert_eq!(enc.err(), expected);
        // The same bytes built by hand reach the decoder.
        let raw_props = list.properties().as_bytes();
        let mut body = vec![0, 1, b't'];
        write_remaining_length(&mut body, raw_props.len()).unwrap();
        body.extend_from_slice(raw_props);
        body.push(b'x');
        let mut raw = vec![0x30];
        write_remaining_length(&mut raw, body.len()).unwrap();
        raw.extend_from_slice(&body);
        let dec = decode(&raw, &opts(Protocol::V5));
        prop_assert_eq!(dec.err(), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(600), max in 0usize..700) {
        for protocol in [Protocol::V311, Protocol::V5] {
            decode_stream(&data, &DecodeOptions { protocol, max_packet_size: max })?;
        }
    }

    /// Random bodies behind every valid first byte: exercises each packet's body parser. MQTT 3.1.1 has one
    /// encoding per packet, so a decoded packet re-encodes to the input; MQTT 5 has short forms (e.g. PUBACK
    /// without Success), so there the re-encoding is the same packet, no longer than the input.
    #[test]
    fn arbitrary_bodies_never_panic(kind in 1u8..16, flags in 0u8..16, body in bytes(80)) {
        let mut pkt = vec![(kind << 4) | flags, body.len() as u8];
        pkt.extend_from_slice(&body);
        for protocol in [Protocol::V311, Protocol::V5] {
            let opts = opts(protocol);
            match decode(&pkt, &opts) {
                Ok(Some((p, n))) => {
                    prop_assert_eq!(n, pkt.len());
                    let mut out = Vec::new();
                    p.encode(protocol, &mut out).unwrap();
                    if protocol == Protocol::V5 {
                        prop_assert!(out.len() <= pkt.len());
                        prop_assert_eq!(decode(&out, &opts).unwrap().unwrap().0, p);
                    } else {
                        prop_assert_eq!(out, pkt.clone());
                    }
                }
                Ok(None) => prop_assert!(false, "a whole packet was given"),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
