//! The sans-I/O session under MQTT 5, against a scripted broker (the codec encodes its packets and decodes
//! what the session sends): CONNECT's properties, what CONNACK negotiates (Receive Maximum, Maximum Packet
//! Size, Maximum QoS, Retain Available, Topic Alias Maximum, Server Keep Alive, Assigned Client Identifier),
//! topic aliases both ways, reason codes both ways (PUBACK/PUBREC refusals, the broker's DISCONNECT, ours),
//! refusals, subscription options and identifiers, and the receive maximum this client sets.
mod common;

use std::time::{Duration, Instant};

use qmqtt::codec::{
    self, decode, Ack, ConnAck, DecodeOptions, Disconnect, Packet, PacketType, Properties,
    PropertiesBuf, Property, Protocol, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};
use qmqtt::error::{DeliveryError, Violation};
use qmqtt::session::{Event, Mqtt5Config, Session, SessionConfig, SessionError, Will};
use qmqtt::Error;

const V5: DecodeOptions = DecodeOptions {
    protocol: Protocol::V5,
    max_packet_size: 1 << 20,
};

fn cfg() -> SessionConfig {
    common::session::config("v5", Protocol::V5)
}

/// A packet the session sent, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum P {
    Connect {
        id: String,
        props: Vec<u8>,
        will_props: Option<Vec<u8>>,
    },
    Publish {
        dup: bool,
        qos: QoS,
        topic: String,
        pkid: u16,
        payload: Vec<u8>,
        props: Vec<u8>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(u16, Vec<(String, SubscriptionOptions)>, Vec<u8>),
    PingReq,
    Disconnect(ReasonCode),
}

fn owned(p: Packet<'_>) -> P {
    match p {
        Packet::Connect(c) => P::Connect {
            id: c.client_id.into(),
            props: c.properties.as_bytes().into(),
            will_props: c.will.map(|w| w.properties.as_bytes().into()),
        },
        Packet::Publish(p) => P::Publish {
            dup: p.dup,
            qos: p.qos,
            topic: p.topic.into(),
            pkid: p.pkid,
            payload: p.payload.into(),
            props: p.properties.as_bytes().into(),
        },
        Packet::PubAck(a) => P::PubAck(a.pkid),
        Packet::PubRec(a) => P::PubRec(a.pkid),
        Packet::PubRel(a) => P::PubRel(a.pkid),
        Packet::PubComp(a) => P::PubComp(a.pkid),
        Packet::Subscribe(s) => P::Subscribe(
            s.pkid,
            s.filters
                .iter_options()
                .map(|(f, o)| (f.to_owned(), o))
                .collect(),
            s.properties.as_bytes().into(),
        ),
        Packet::PingReq => P::PingReq,
        Packet::Disconnect(d) => P::Disconnect(d.reason),
        other => panic!("a client never sends {other:?}"),
    }
}

fn props(list: &[Property<'_>]) -> PropertiesBuf {
    let mut b = PropertiesBuf::new();
    for p in list {
        b.push(*p).unwrap();
    }
    b
}

struct H {
    s: Session,
    t0: Instant,
}

impl H {
    fn new(cfg: SessionConfig) -> H {
        H {
            s: Session::new(cfg),
            t0: Instant::now(),
        }
    }
    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }
    fn sent(&mut self) -> Vec<P> {
        let mut out = Vec::new();
        self.s.poll_transmit(&mut out);
        let mut v = Vec::new();
        let mut b = &out[..];
        while !b.is_empty() {
            let (p, n) = decode(b, &V5).unwrap().expect("whole packets only");
            v.push(owned(p));
            b = &b[n..];
        }
        v
    }
    /// The bytes the session wants to send.
    fn wire(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.s.poll_transmit(&mut out);
        out
    }
    fn feed(&mut self, p: Packet<'_>, t: f64) -> Result<(), Error> {
        let mut b = Vec::new();
        p.encode(Protocol::V5, &mut b).unwrap();
        self.s.handle_read(&b, self.at(t))
    }
    fn events(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(e) = self.s.poll_event() {
            v.push(match e {
                Event::Message {
                    topic,
                    payload,
                    properties,
                    ..
                } => format!(
                    "msg {topic} {} {:?}",
                    String::from_utf8_lossy(payload),
                    properties.iter().collect::<Vec<_>>()
                ),
                other => format!("{other:?}"),
            });
        }
        v
    }
    /// Connect with a CONNACK carrying `props`; returns what the session sent after it.
    fn connect(&mut self, t: f64, present: bool, props: &PropertiesBuf) -> Vec<P> {
        self.s.handle_connected(self.at(t));
        let sent = self.sent();
        assert!(matches!(sent[..], [P::Connect { .. }]), "{sent:?}");
        self.feed(
            Packet::ConnAck(ConnAck::v5(
                present,
                ReasonCode::Success,
                props.properties(),
            )),
            t,
        )
        .unwrap();
        assert_eq!(
            self.events(),
            [format!("Connected {{ session_present: {present} }}")]
        );
        self.sent()
    }
    fn publish(&mut self, token: u64, topic: &str, qos: QoS) -> Result<(), SessionError> {
        self.s.publish(token, topic, b"p", qos, false, self.at(1.0))
    }
}

fn pkid(p: &P) -> u16 {
    match p {
        P::Publish { pkid, .. } => *pkid,
        other => panic!("{other:?}"),
    }
}

#[test]
fn connect_carries_the_mqtt5_settings() {
    let mut c = cfg();
    c.clean_session = false;
    c.max_packet_size = 2048;
    c.mqtt5 = Mqtt5Config {
        session_expiry: 3600,
        receive_maximum: 5,
        topic_alias_maximum: 7,
        topic_aliases: 16,
        user_properties: vec![("site".into(), "north".into())],
        request_response_information: true,
    };
    c.will = Some(Will {
        topic: "gw/status".into(),
        payload: b"gone".to_vec(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: props(&[Property::WillDelayInterval(30)]),
    });
    let mut h = H::new(c);
    h.s.handle_connected(h.at(0.0));
    let sent = h.sent();
    let want = props(&[
        Property::SessionExpiryInterval(3600),
        Property::ReceiveMaximum(5),
        Property::MaximumPacketSize(2048),
        Property::TopicAliasMaximum(7),
        Property::RequestResponseInformation(true),
        Property::UserProperty("site", "north"),
    ]);
    assert_eq!(
        sent,
        [P::Connect {
            id: "v5".into(),
            props: want.properties().as_bytes().into(),
            will_props: Some(vec![0x18, 0, 0, 0, 30]),
        }]
    );
    // The defaults send only the Maximum Packet Size.
    let mut h = H::new(cfg());
    h.s.handle_connected(h.at(0.0));
    let P::Connect { props: p, .. } = &h.sent()[0] else {
        unreachable!()
    };
    assert_eq!(p, &[0x27, 0, 0, 0x10, 0]);
}

#[test]
fn receive_maximum_of_the_broker_bounds_what_is_in_flight() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &props(&[Property::ReceiveMaximum(2)]));
    assert_eq!(h.s.server().receive_maximum, 2);
    assert_eq!(h.s.inflight_free(), 2);
    h.publish(1, "t", QoS::AtLeastOnce).unwrap();
    h.publish(2, "t", QoS::ExactlyOnce).unwrap();
    assert!(!h.s.can_publish(QoS::AtLeastOnce));
    assert!(h.s.can_publish(QoS::AtMostOnce));
    assert_eq!(
        h.publish(3, "t", QoS::AtLeastOnce),
        Err(SessionError::NotReady(
            "the in-flight window is full (max_inflight QoS 1/2 messages unacknowledged): wait for \
             Delivered events or raise max_inflight"
        ))
    );
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    // PUBREC does not free a place (the QoS 2 flow is still open); PUBACK does.
    h.feed(Packet::PubRec(Ack::new(pkid(&sent[1]))), 1.0)
        .unwrap();
    assert!(!h.s.can_publish(QoS::AtLeastOnce));
    h.feed(Packet::PubAck(Ack::new(pkid(&sent[0]))), 1.0)
        .unwrap();
    assert!(h.s.can_publish(QoS::AtLeastOnce));
}

#[test]
fn a_reconnect_under_a_lower_receive_maximum_resends_in_order_as_room_comes() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &PropertiesBuf::new());
    for t in 1..=4 {
        h.publish(t, &format!("t/{t}"), QoS::AtLeastOnce).unwrap();
    }
    assert_eq!(h.sent().len(), 4);
    h.s.handle_disconnected();
    // The broker kept the session but now allows one message in flight.
    let resent = h.connect(2.0, true, &props(&[Property::ReceiveMaximum(1)]));
    let topics = |v: &[P]| {
        v.iter()
            .map(|p| match p {
                P::Publish { topic, dup, .. } => {
                    format!("{topic}{}", if *dup { "+dup" } else { "" })
                }
                o => format!("{o:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(topics(&resent), ["t/1+dup"]);
    let mut order = vec![];
    let mut next = resent;
    for _ in 0..4 {
        let id = pkid(&next[0]);
        order.extend(topics(&next));
        h.feed(Packet::PubAck(Ack::new(id)), 3.0).unwrap();
        next = h.sent();
    }
    assert_eq!(order, ["t/1+dup", "t/2+dup", "t/3+dup", "t/4+dup"]);
    assert!(next.is_empty());
    assert_eq!(h.s.inflight(), 0);
    let delivered: Vec<String> = h.events();
    assert_eq!(delivered.len(), 4, "{delivered:?}");
}

#[test]
fn the_brokers_limits_fail_a_message_with_its_reason() {
    let mut h = H::new(cfg());
    h.connect(
        0.0,
        false,
        &props(&[
            Property::MaximumPacketSize(64),
            Property::MaximumQoS(QoS::AtLeastOnce),
            Property::RetainAvailable(false),
        ]),
    );
    let big = [b'x'; 100];
    let e =
        h.s.publish(1, "t", &big, QoS::AtLeastOnce, false, h.at(1.0))
            .unwrap_err();
    assert_eq!(
        e,
        SessionError::Failed(DeliveryError::TooLarge { size: 108, max: 64 })
    );
    assert!(e.to_string().contains("Maximum Packet Size"), "{e}");
    // Exactly at the limit is fine (topic "t", id, no properties: 8 bytes of header).
    h.s.publish(2, "t", &big[..56], QoS::AtLeastOnce, false, h.at(1.0))
        .unwrap();
    assert_eq!(
        h.publish(3, "t", QoS::ExactlyOnce),
        Err(SessionError::Failed(DeliveryError::QoSNotSupported {
            qos: QoS::ExactlyOnce,
            max: QoS::AtLeastOnce
        }))
    );
    assert_eq!(
        h.s.publish(4, "t", b"", QoS::AtMostOnce, true, h.at(1.0)),
        Err(SessionError::Failed(DeliveryError::RetainNotSupported))
    );
    // Nothing was sent for the failed ones, and no slot is taken.
    assert_eq!(h.sent().len(), 1);
    assert_eq!(h.s.inflight(), 1);
    // Properties a client may not send.
    let sub_id = props(&[Property::SubscriptionIdentifier(3)]);
    assert!(matches!(
        h.s.publish_with(
            5,
            "t",
            b"",
            QoS::AtMostOnce,
            false,
            sub_id.properties(),
            h.at(1.0)
        ),
        Err(SessionError::Failed(DeliveryError::Invalid(
            codec::Error::PropertyNotAllowed { .. }
        )))
    ));
}

#[test]
fn refusals_in_puback_and_pubrec_fail_the_message_and_free_its_slot() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &PropertiesBuf::new());
    h.publish(1, "a", QoS::AtLeastOnce).unwrap();
    h.publish(2, "b", QoS::ExactlyOnce).unwrap();
    h.publish(3, "c", QoS::AtLeastOnce).unwrap();
    let sent = h.sent();
    let why = props(&[Property::ReasonString("no write access")]);
    h.feed(
        Packet::PubAck(Ack {
            pkid: pkid(&sent[0]),
            reason: ReasonCode::NotAuthorized,
            properties: why.properties(),
        }),
        1.0,
    )
    .unwrap();
    h.feed(
        Packet::PubRec(Ack {
            pkid: pkid(&sent[1]),
            reason: ReasonCode::QuotaExceeded,
            properties: Properties::EMPTY,
        }),
        1.0,
    )
    .unwrap();
    // A success reason code other than 0 is a delivery.
    h.feed(
        Packet::PubAck(Ack {
            pkid: pkid(&sent[2]),
            reason: ReasonCode::NoMatchingSubscribers,
            properties: Properties::EMPTY,
        }),
        1.0,
    )
    .unwrap();
    let mut got = Vec::new();
    while let Some(e) = h.s.poll_event() {
        match e {
            Event::Failed { token, qos, cause } => got.push(format!("{token} {qos:?} {cause}")),
            Event::Delivered { token, .. } => got.push(format!("{token} delivered")),
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(
        got,
        [
            "1 AtLeastOnce the broker refused the message: Not authorized (0x87); the broker says: no write \
             access (check the broker's access rules for this topic)",
            "2 ExactlyOnce the broker refused the message: Quota exceeded (0x97) (the broker's quota is used \
             up: send less, or later)",
            "3 delivered"
        ]
    );
    assert_eq!(h.s.inflight(), 0);
    // No PUBREL for the refused QoS 2 message; nothing is resent after a reconnect.
    assert!(h.sent().is_empty());
    h.s.handle_disconnected();
    assert!(h.connect(2.0, true, &PropertiesBuf::new()).is_empty());
}

#[test]
fn topic_aliases_replace_repeated_topics_least_recently_used_first() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &props(&[Property::TopicAliasMaximum(2)]));
    let long = "sensors/site-17/gateway-04/temp"; // 31 bytes
    let short = |h: &mut H, t: u64, topic: &str, qos| {
        h.s.publish(t, topic, b"21.5", qos, false, h.at(1.0))
            .unwrap();
        let v = h.sent();
        let P::Publish {
            topic, props, pkid, ..
        } = &v[0]
        else {
            unreachable!()
        };
        if *pkid != 0 {
            h.feed(Packet::PubAck(Ack::new(*pkid)), 1.0).unwrap();
        }
        h.events();
        (topic.clone(), props.clone())
    };
    assert_eq!(
        short(&mut h, 1, long, QoS::AtMostOnce),
        (long.to_string(), vec![0x23, 0, 1])
    );
    assert_eq!(
        short(&mut h, 2, long, QoS::AtLeastOnce),
        (String::new(), vec![0x23, 0, 1])
    );
    assert_eq!(
        short(&mut h, 3, "b", QoS::AtMostOnce),
        ("b".into(), vec![0x23, 0, 2])
    );
    assert_eq!(
        short(&mut h, 4, long, QoS::AtMostOnce),
        ("".into(), vec![0x23, 0, 1])
    );
    // A third topic takes the least recently used alias ("b"'s).
    assert_eq!(
        short(&mut h, 5, "c", QoS::ExactlyOnce),
        ("c".into(), vec![0x23, 0, 2])
    );
    assert_eq!(
        short(&mut h, 6, "b", QoS::AtMostOnce),
        ("b".into(), vec![0x23, 0, 1])
    );
    assert_eq!(h.s.alias_stats(), (2, 2 * long.len() as u64));
    // A new connection starts without aliases: the topic goes out again, with its alias.
    h.s.handle_disconnected();
    h.connect(2.0, false, &props(&[Property::TopicAliasMaximum(2)]));
    assert_eq!(
        short(&mut h, 7, "b", QoS::AtMostOnce),
        ("b".into(), vec![0x23, 0, 1])
    );
    // No alias maximum from the broker: no aliases.
    h.s.handle_disconnected();
    h.connect(3.0, false, &PropertiesBuf::new());
    assert_eq!(short(&mut h, 8, "b", QoS::AtMostOnce), ("b".into(), vec![]));
}

#[test]
fn a_resend_after_reconnect_carries_the_topic_not_an_old_alias() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &props(&[Property::TopicAliasMaximum(4)]));
    h.publish(1, "x/y", QoS::AtLeastOnce).unwrap();
    h.publish(2, "x/y", QoS::AtLeastOnce).unwrap();
    let sent = h.sent();
    assert!(matches!(&sent[1], P::Publish { topic, .. } if topic.is_empty()));
    h.s.handle_disconnected();
    let resent = h.connect(1.0, true, &props(&[Property::TopicAliasMaximum(4)]));
    for p in &resent {
        let P::Publish {
            topic, props, dup, ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(
            (topic.as_str(), props.as_slice(), *dup),
            ("x/y", &[][..], true)
        );
    }
    assert_eq!(resent.len(), 2);
}

#[test]
fn aliases_can_be_turned_off() {
    let mut c = cfg();
    c.mqtt5.topic_aliases = 0;
    let mut h = H::new(c);
    h.connect(0.0, false, &props(&[Property::TopicAliasMaximum(10)]));
    for t in 1..=3 {
        h.publish(t, "same/topic", QoS::AtMostOnce).unwrap();
    }
    for p in h.sent() {
        assert!(
            matches!(&p, P::Publish { topic, props, .. } if topic == "same/topic" && props.is_empty())
        );
    }
}

#[test]
fn incoming_aliases_are_resolved_and_bad_ones_refused_with_a_reason() {
    let mut c = cfg();
    c.mqtt5.topic_alias_maximum = 2;
    let mut h = H::new(c);
    h.connect(0.0, false, &PropertiesBuf::new());
    let alias = |a| props(&[Property::TopicAlias(a)]);
    let msg = |topic: &'static str, props: &PropertiesBuf, payload: &'static [u8]| {
        let mut b = Vec::new();
        Packet::Publish(codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            pkid: 0,
            payload,
            properties: props.properties(),
        })
        .encode(Protocol::V5, &mut b)
        .unwrap();
        b
    };
    let a1 = alias(1);
    // Set alias 1, use it twice in the same read, set it to another topic, use it again.
    let mut wire = msg("a/long/topic", &a1, b"1");
    wire.extend(msg("", &a1, b"2"));
    wire.extend(msg("", &a1, b"3"));
    wire.extend(msg("b", &a1, b"4"));
    wire.extend(msg("", &a1, b"5"));
    h.s.handle_read(&wire, h.at(1.0)).unwrap();
    let ev = h.events();
    let topics: Vec<&str> = ev.iter().map(|e| e.split(' ').nth(1).unwrap()).collect();
    assert_eq!(
        topics,
        ["a/long/topic", "a/long/topic", "a/long/topic", "b", "b"]
    );
    // An alias beyond the maximum this client sent: Topic Alias invalid, in a DISCONNECT.
    let e =
        h.s.handle_read(&msg("c", &alias(3), b"x"), h.at(1.0))
            .unwrap_err();
    assert_eq!(
        e,
        Error::Protocol(Violation::TopicAliasInvalid { alias: 3, max: 2 })
    );
    assert_eq!(h.sent(), [P::Disconnect(ReasonCode::TopicAliasInvalid)]);
    // An alias never set: a protocol error.
    h.s.handle_disconnected();
    h.connect(2.0, false, &PropertiesBuf::new());
    let e =
        h.s.handle_read(&msg("", &alias(2), b"x"), h.at(2.0))
            .unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::UnknownTopicAlias(2)));
    assert_eq!(h.sent(), [P::Disconnect(ReasonCode::ProtocolError)]);
    assert!(e.to_string().contains("never set"), "{e}");
}

#[test]
fn received_properties_reach_the_owner() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &PropertiesBuf::new());
    let p = props(&[
        Property::MessageExpiryInterval(60),
        Property::ContentType("text/plain"),
        Property::ResponseTopic("reply/here"),
        Property::CorrelationData(b"\x01\x02"),
        Property::UserProperty("unit", "C"),
        Property::SubscriptionIdentifier(7),
    ]);
    h.feed(
        Packet::Publish(codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t",
            pkid: 9,
            payload: b"21.5",
            properties: p.properties(),
        }),
        1.0,
    )
    .unwrap();
    match h.s.poll_event() {
        Some(Event::Message {
            topic, properties, ..
        }) => {
            assert_eq!(topic, "t");
            assert_eq!(properties, p.properties());
            assert_eq!(
                properties.subscription_identifiers().collect::<Vec<_>>(),
                [7]
            );
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(h.sent(), [P::PubAck(9)]);
}

#[test]
fn our_receive_maximum_is_enforced_on_qos2() {
    let mut c = cfg();
    c.mqtt5.receive_maximum = 2;
    let mut h = H::new(c);
    h.connect(0.0, false, &PropertiesBuf::new());
    let q2 = |id| {
        Packet::Publish(codec::Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "t",
            pkid: id,
            payload: b"x",
            properties: Properties::EMPTY,
        })
    };
    h.feed(q2(1), 1.0).unwrap();
    h.feed(q2(2), 1.0).unwrap();
    // A duplicate of one unreleased is fine; PUBREL frees a place.
    h.feed(q2(2), 1.0).unwrap();
    h.feed(Packet::PubRel(Ack::new(1)), 1.0).unwrap();
    h.feed(q2(3), 1.0).unwrap();
    let e = h.feed(q2(4), 1.0).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::ReceiveMaximumExceeded(2)));
    assert_eq!(
        h.sent().last(),
        Some(&P::Disconnect(ReasonCode::ReceiveMaximumExceeded))
    );
}

#[test]
fn the_brokers_disconnect_reaches_the_owner_with_its_reason() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &PropertiesBuf::new());
    let p = props(&[
        Property::ReasonString("moving to a new cluster"),
        Property::ServerReference("mqtt2.example:8883"),
    ]);
    let e = h
        .feed(
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::ServerMoved,
                properties: p.properties(),
            }),
            1.0,
        )
        .unwrap_err();
    assert_eq!(
        e,
        Error::Disconnected {
            reason_code: ReasonCode::ServerMoved,
            reason: Some("moving to a new cluster".into()),
            server_reference: Some("mqtt2.example:8883".into()),
        }
    );
    assert_eq!(
        e.to_string(),
        "the broker closed the connection: Server moved (0x9D); the broker says: moving to a new cluster; \
         it points to mqtt2.example:8883 (connect to the server it points to)"
    );
    let e = h
        .feed(
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::SessionTakenOver,
                properties: Properties::EMPTY,
            }),
            1.0,
        )
        .err();
    // Already failed: the rest of the stream is not read.
    assert_eq!(e, None);
}

#[test]
fn refusals_carry_the_reason_code_and_string_and_a_311_broker_is_named() {
    let mut h = H::new(cfg());
    h.s.handle_connected(h.at(0.0));
    h.sent();
    let p = props(&[Property::ReasonString("client banned until 12:00")]);
    let e = h
        .feed(
            Packet::ConnAck(ConnAck::v5(false, ReasonCode::Banned, p.properties())),
            0.1,
        )
        .unwrap_err();
    let Error::Refused {
        reason_code,
        reason,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*reason_code, Some(ReasonCode::Banned));
    assert_eq!(reason.as_deref(), Some("client banned until 12:00"));
    assert!(e.to_string().contains("Banned (0x8A)"), "{e}");
    // What a broker of MQTT 3.1.1 only answers: 20 02 00 01.
    let mut h = H::new(cfg());
    h.s.handle_connected(h.at(0.0));
    h.sent();
    let e = h.s.handle_read(&[0x20, 2, 0, 1], h.at(0.1)).unwrap_err();
    assert!(matches!(e, Error::Mqtt311Only { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("the broker speaks only MQTT 3.1.1"),
        "{e}"
    );
    assert!(e.to_string().contains("MQTTVersion 4"), "{e}");
}

#[test]
fn server_keep_alive_and_assigned_client_id_are_used() {
    let mut c = cfg();
    c.client_id = String::new();
    let mut h = H::new(c);
    h.connect(
        0.0,
        false,
        &props(&[
            Property::ServerKeepAlive(10),
            Property::AssignedClientIdentifier("auto-7f3a"),
        ]),
    );
    assert_eq!(
        h.s.server().assigned_client_identifier.as_deref(),
        Some("auto-7f3a")
    );
    h.s.handle_timeout(h.at(9.0)).unwrap();
    assert!(h.sent().is_empty());
    h.s.handle_timeout(h.at(10.0)).unwrap();
    assert_eq!(h.sent(), [P::PingReq]);
    // The next CONNECT uses the assigned id (to resume the session the broker keeps for it).
    h.s.handle_disconnected();
    h.s.handle_connected(h.at(20.0));
    assert!(matches!(&h.sent()[0], P::Connect { id, .. } if id == "auto-7f3a"));
}

#[test]
fn subscription_options_and_identifiers_are_sent_and_replayed() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &PropertiesBuf::new());
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    h.s.subscribe_with("cmd/#", opts, Some(42), h.at(1.0))
        .unwrap();
    let sent = h.sent();
    let want_props = vec![0x0B, 42];
    assert_eq!(
        sent,
        [P::Subscribe(
            1,
            vec![("cmd/#".into(), opts)],
            want_props.clone()
        )]
    );
    h.s.handle_disconnected();
    // The broker lost the session: the subscription is made again, with its options and identifier.
    let again = h.connect(2.0, false, &PropertiesBuf::new());
    assert!(matches!(&again[..], [P::Subscribe(_, f, p)] if f[0].1 == opts && *p == want_props));
    // What the broker says it does not support is refused before sending.
    h.s.handle_disconnected();
    h.connect(
        3.0,
        true,
        &props(&[
            Property::SharedSubscriptionAvailable(false),
            Property::SubscriptionIdentifierAvailable(false),
            Property::WildcardSubscriptionAvailable(false),
        ]),
    );
    for (f, id, needle) in [
        ("$share/g/t", None, "shared subscriptions"),
        ("a/+", None, "wildcards"),
        ("a", Some(1), "subscription identifiers"),
    ] {
        let e =
            h.s.subscribe_with(f, SubscriptionOptions::new(QoS::AtMostOnce), id, h.at(3.0))
                .unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    // No local on a shared subscription is a protocol error MQTT 5 forbids.
    let mut h = H::new(cfg());
    h.connect(0.0, false, &PropertiesBuf::new());
    assert!(h
        .s
        .subscribe_with("$share/g/t", opts, None, h.at(1.0))
        .is_err());
    h.s.subscribe("$share/g/t", QoS::AtLeastOnce, h.at(1.0))
        .unwrap();
}

#[test]
fn properties_go_out_with_the_message() {
    let mut h = H::new(cfg());
    h.connect(0.0, false, &props(&[Property::TopicAliasMaximum(1)]));
    let p = props(&[
        Property::MessageExpiryInterval(30),
        Property::UserProperty("unit", "C"),
    ]);
    for t in 1..=2 {
        h.s.publish_with(
            t,
            "s/t",
            b"1",
            QoS::AtLeastOnce,
            false,
            p.properties(),
            h.at(1.0),
        )
        .unwrap();
    }
    let sent = h.sent();
    let mut want_first = vec![0x23, 0, 1];
    want_first.extend_from_slice(p.properties().as_bytes());
    assert!(
        matches!(&sent[0], P::Publish { topic, props, .. } if topic == "s/t" && *props == want_first),
        "{sent:?}"
    );
    assert!(
        matches!(&sent[1], P::Publish { topic, props, .. } if topic.is_empty() && *props == want_first),
        "{sent:?}"
    );
}

#[test]
fn mqtt311_bytes_are_unchanged() {
    // The same traffic under MQTT 3.1.1 as before MQTT 5 existed: CONNECT, PUBLISH QoS 0/1, PUBACK.
    let mut c = cfg();
    c.protocol = Protocol::V311;
    let mut h = H::new(c);
    h.s.handle_connected(h.at(0.0));
    assert_eq!(
        h.wire(),
        [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'v', b'5']
    );
    h.s.handle_read(&[0x20, 2, 0, 0], h.at(0.1)).unwrap();
    h.events();
    h.s.publish(1, "a/b", b"hi", QoS::AtLeastOnce, false, h.at(1.0))
        .unwrap();
    h.s.publish(2, "a/b", b"hi", QoS::AtMostOnce, false, h.at(1.0))
        .unwrap();
    assert_eq!(
        h.wire(),
        [
            0x32, 9, 0, 3, b'a', b'/', b'b', 0, 1, b'h', b'i', 0x30, 7, 0, 3, b'a', b'/', b'b',
            b'h', b'i'
        ]
    );
    h.s.handle_read(&[0x40, 2, 0, 1], h.at(1.0)).unwrap();
    h.s.disconnect();
    assert_eq!(h.wire(), [0xe0, 0]);
    let _ = PacketType::Connect;
}
