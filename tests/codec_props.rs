//! Property tests of the codec: every packet type round-trips (encode → decode gives the same packet and
//! consumes exactly the bytes written; every proper prefix asks for more bytes), and arbitrary bytes never
//! panic the decoder.
use proptest::prelude::*;
use qmqtt::codec::{
    decode, encode_publish, ConnAck, Connect, ConnectReturnCode, DecodeOptions, Filters, LastWill,
    Packet, Protocol, PubAck, PubComp, PubRec, PubRel, Publish, QoS, SubAck, Subscribe, TopicList,
    UnsubAck, Unsubscribe,
};

/// An owned description of a packet, turned into a borrowed [`Packet`] for the test.
#[derive(Debug, Clone)]
enum Op {
    Connect {
        protocol: Protocol,
        keep_alive: u16,
        client_id: String,
        clean: bool,
        will: Option<(String, Vec<u8>, QoS, bool)>,
        user: Option<String>,
        pass: Option<Vec<u8>>,
    },
    ConnAck(bool, u8),
    Publish {
        dup: bool,
        qos: QoS,
        retain: bool,
        topic: String,
        pkid: u16,
        payload: Vec<u8>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(u16, Vec<(String, QoS)>),
    SubAck(u16, Vec<u8>),
    Unsubscribe(u16, Vec<String>),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
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

fn op() -> impl Strategy<Value = Op> {
    let connect = (
        prop_oneof![Just(Protocol::V31), Just(Protocol::V311)],
        any::<u16>(),
        text(),
        any::<bool>(),
        prop::option::of((topic(), bytes(20), qos(), any::<bool>())),
        prop::option::of((text(), prop::option::of(bytes(20)))),
    )
        .prop_map(
            |(protocol, keep_alive, client_id, clean, will, cred)| Op::Connect {
                protocol,
                keep_alive,
                client_id,
                clean,
                will,
                user: cred.as_ref().map(|c| c.0.clone()),
                pass: cred.and_then(|c| c.1),
            },
        );
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        pkid(),
        bytes(300),
    )
        .prop_map(|(dup, qos, retain, topic, pkid, payload)| {
            let (dup, pkid) = if qos == QoS::AtMostOnce {
                (false, 0)
            } else {
                (dup, pkid)
            };
            Op::Publish {
                dup,
                qos,
                retain,
                topic,
                pkid,
                payload,
            }
        });
    prop_oneof![
        connect,
        (any::<bool>(), any::<u8>()).prop_map(|(s, c)| Op::ConnAck(s, c)),
        publish,
        pkid().prop_map(Op::PubAck),
        pkid().prop_map(Op::PubRec),
        pkid().prop_map(Op::PubRel),
        pkid().prop_map(Op::PubComp),
        (pkid(), prop::collection::vec((filter(), qos()), 1..5))
            .prop_map(|(p, f)| Op::Subscribe(p, f)),
        (
            pkid(),
            prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..6)
        )
            .prop_map(|(p, c)| Op::SubAck(p, c)),
        (pkid(), prop::collection::vec(filter(), 1..5)).prop_map(|(p, f)| Op::Unsubscribe(p, f)),
        pkid().prop_map(Op::UnsubAck),
        Just(Op::PingReq),
        Just(Op::PingResp),
        Just(Op::Disconnect),
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
        } => f(Packet::Connect(Connect {
            protocol: *protocol,
            keep_alive: *keep_alive,
            client_id,
            clean_session: *clean,
            will: will.as_ref().map(|(t, m, q, r)| LastWill {
                topic: t,
                message: m,
                qos: *q,
                retain: *r,
            }),
            username: user.as_deref(),
            password: pass.as_deref(),
        })),
        Op::ConnAck(s, c) => f(Packet::ConnAck(ConnAck {
            session_present: *s,
            code: ConnectReturnCode::from_u8(*c),
        })),
        Op::Publish {
            dup,
            qos,
            retain,
            topic,
            pkid,
            payload,
        } => f(Packet::Publish(Publish {
            dup: *dup,
            qos: *qos,
            retain: *retain,
            topic,
            pkid: *pkid,
            payload,
        })),
        Op::PubAck(p) => f(Packet::PubAck(PubAck { pkid: *p })),
        Op::PubRec(p) => f(Packet::PubRec(PubRec { pkid: *p })),
        Op::PubRel(p) => f(Packet::PubRel(PubRel { pkid: *p })),
        Op::PubComp(p) => f(Packet::PubComp(PubComp { pkid: *p })),
        Op::Subscribe(p, list) => {
            let l: Vec<(&str, QoS)> = list.iter().map(|(s, q)| (s.as_str(), *q)).collect();
            f(Packet::Subscribe(Subscribe {
                pkid: *p,
                filters: Filters::new(&l),
            }))
        }
        Op::SubAck(p, c) => f(Packet::SubAck(SubAck {
            pkid: *p,
            return_codes: c,
        })),
        Op::Unsubscribe(p, list) => {
            let l: Vec<&str> = list.iter().map(String::as_str).collect();
            f(Packet::Unsubscribe(Unsubscribe {
                pkid: *p,
                filters: TopicList::new(&l),
            }))
        }
        Op::UnsubAck(p) => f(Packet::UnsubAck(UnsubAck { pkid: *p })),
        Op::PingReq => f(Packet::PingReq),
        Op::PingResp => f(Packet::PingResp),
        Op::Disconnect => f(Packet::Disconnect),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(op in op()) {
        with_packet(&op, |p| {
            let mut out = vec![0xAA]; // encode appends
            let n = p.encode(Protocol::V311, &mut out).unwrap();
            prop_assert_eq!(n, out.len() - 1);
            let bytes = &out[1..];
            let opts = DecodeOptions::default();
            let (d, len) = decode(bytes, &opts).unwrap().expect("complete");
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(d, p);
            // Re-encoding the decoded packet gives the same bytes.
            let mut again = Vec::new();
            d.encode(Protocol::V311, &mut again).unwrap();
            prop_assert_eq!(&again[..], bytes);
            // Every proper prefix: need more bytes, never an error.
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut], &opts), Ok(None));
            }
            // Followed by another packet: only the first is consumed.
            let mut two = bytes.to_vec();
            two.extend_from_slice(&[0xc0, 0]);
            prop_assert_eq!(decode(&two, &opts).unwrap().map(|(_, n)| n), Some(bytes.len()));
            // A size limit just below the packet refuses it from the header alone.
            let tight = DecodeOptions { max_packet_size: bytes.len() - 1, ..opts };
            let header_only = &bytes[..bytes.len().min(5)];
            let is_too_large = matches!(decode(header_only, &tight), Err(qmqtt::codec::Error::PacketTooLarge { .. }));
            prop_assert!(is_too_large);
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
        Packet::Publish(Publish { dup, qos, retain, topic: &topic, pkid, payload: &payload })
            .encode(Protocol::V311, &mut slow)
            .unwrap();
        prop_assert_eq!(fast, slow);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(600), max in 0usize..700) {
        let opts = DecodeOptions { protocol: Protocol::V311, max_packet_size: max };
        let mut b = &data[..];
        while let Ok(Some((p, n))) = decode(b, &opts) {
            prop_assert!(n > 0 && n <= b.len());
            // Whatever decodes re-encodes (decoded packets are valid).
            let mut out = Vec::new();
            p.encode(Protocol::V311, &mut out).unwrap();
            b = &b[n..];
        }
    }

    /// Random bodies behind every valid first byte: exercises each packet's body parser.
    #[test]
    fn arbitrary_bodies_never_panic(kind in 1u8..15, flags in 0u8..16, body in bytes(80)) {
        let mut pkt = vec![(kind << 4) | flags, body.len() as u8];
        pkt.extend_from_slice(&body);
        match decode(&pkt, &DecodeOptions::default()) {
            Ok(Some((p, n))) => {
                prop_assert_eq!(n, pkt.len());
                let mut out = Vec::new();
                p.encode(Protocol::V311, &mut out).unwrap();
                prop_assert_eq!(out, pkt);
            }
            Ok(None) => prop_assert!(false, "a whole packet was given"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
