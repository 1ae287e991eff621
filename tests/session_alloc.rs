//! Hot paths do not allocate once warm: a counting global allocator (per thread) watches QoS 0/1/2
//! publishes with their acknowledgements, incoming QoS 0/1/2 messages, codec decode/encode and event polling.
mod common;

use std::time::Instant;

use qmqtt::codec::{self, decode, encode_publish, DecodeOptions, Packet, Protocol, QoS};
use qmqtt::session::{Event, Session};

#[global_allocator]
static A: common::alloc::Counting = common::alloc::Counting;

fn allocs() -> usize {
    common::alloc::thread_allocs() as usize
}

/// One round: publish QoS 0/1/2, let the broker acknowledge, receive QoS 0/1/2, poll everything.
fn round(
    s: &mut Session,
    now: Instant,
    token: &mut u64,
    wire: &mut Vec<u8>,
    broker: &mut Vec<u8>,
    payload: &[u8],
) {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        *token += 1;
        s.publish(*token, "sensors/gw1/temp", payload, qos, false, now)
            .unwrap();
    }
    wire.clear();
    s.poll_transmit(wire);
    // The broker's answers to what it read: PUBACK / PUBREC, then PUBCOMP after PUBREL.
    broker.clear();
    let mut b = &wire[..];
    while let Some((p, n)) = decode(b, &DecodeOptions::default()).unwrap() {
        if let Packet::Publish(p) = p {
            match p.qos {
                QoS::AtLeastOnce => {
                    codec::encode_ack(broker, codec::PacketType::PubAck, p.pkid).unwrap()
                }
                QoS::ExactlyOnce => {
                    codec::encode_ack(broker, codec::PacketType::PubRec, p.pkid).unwrap()
                }
                QoS::AtMostOnce => 0,
            };
        }
        b = &b[n..];
    }
    for (qos, id) in [
        (QoS::AtMostOnce, 0),
        (QoS::AtLeastOnce, 11),
        (QoS::ExactlyOnce, 12),
    ] {
        encode_publish(broker, "cmd/gw1", payload, qos, false, false, id).unwrap();
    }
    codec::encode_ack(broker, codec::PacketType::PubRel, 12).unwrap();
    s.handle_read(broker, now).unwrap();
    wire.clear();
    s.poll_transmit(wire);
    let mut rel = None;
    let mut b = &wire[..];
    while let Some((p, n)) = decode(b, &DecodeOptions::default()).unwrap() {
        if let Packet::PubRel(r) = p {
            rel = Some(r.pkid);
        }
        b = &b[n..];
    }
    let mut delivered = 0;
    let mut messages = 0;
    while let Some(e) = s.poll_event() {
        match e {
            Event::Delivered { .. } => delivered += 1,
            Event::Message { payload: p, .. } => {
                assert_eq!(p, payload);
                messages += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((delivered, messages), (1, 3));
    broker.clear();
    codec::encode_ack(broker, codec::PacketType::PubComp, rel.unwrap()).unwrap();
    s.handle_read(broker, now).unwrap();
    let mut delivered = 0;
    while let Some(e) = s.poll_event() {
        assert!(matches!(e, Event::Delivered { .. }));
        delivered += 1;
    }
    assert_eq!(delivered, 1);
    assert_eq!(s.inflight(), 0);
}

#[test]
fn warm_paths_do_not_allocate() {
    let cfg = common::session::config("alloc", Protocol::V311);
    let now = Instant::now();
    let mut s = Session::new(cfg);
    s.handle_connected(now);
    s.handle_read(&[0x20, 2, 0, 0], now).unwrap();
    while s.poll_event().is_some() {}
    let mut wire = Vec::with_capacity(8192);
    let mut broker = Vec::with_capacity(8192);
    let payload = [7u8; 200];
    let mut token = 0;
    // Warm up: slots, buffers and queues reach their working sizes.
    for _ in 0..50 {
        round(&mut s, now, &mut token, &mut wire, &mut broker, &payload);
    }
    // The counter sees allocations on this thread.
    let a = allocs();
    std::hint::black_box(Vec::<u8>::with_capacity(16));
    assert_eq!(allocs(), a + 1);
    let before = allocs();
    for _ in 0..1000 {
        round(&mut s, now, &mut token, &mut wire, &mut broker, &payload);
    }
    assert_eq!(
        allocs() - before,
        0,
        "allocations on the warm publish/receive path"
    );
}

/// The MQTT 5 round: publishes with properties under topic aliases, the broker's PUBACK/PUBREC/PUBCOMP,
/// incoming messages with properties under the broker's aliases.
#[test]
fn warm_mqtt5_paths_with_aliases_and_properties_do_not_allocate() {
    use qmqtt::codec::{PropertiesBuf, Property, Publish};
    let mut cfg = common::session::config("alloc5", Protocol::V5);
    cfg.mqtt5.topic_alias_maximum = 4;
    let v5 = DecodeOptions {
        protocol: Protocol::V5,
        max_packet_size: 1 << 20,
    };
    let now = Instant::now();
    let mut s = Session::new(cfg);
    s.handle_connected(now);
    // CONNACK: Topic Alias Maximum 4.
    s.handle_read(&[0x20, 6, 0, 0, 3, 0x22, 0, 4], now).unwrap();
    while s.poll_event().is_some() {}
    let mut out_props = PropertiesBuf::new();
    out_props
        .push(Property::MessageExpiryInterval(60))
        .unwrap()
        .push(Property::UserProperty("unit", "C"))
        .unwrap();
    let mut alias1 = PropertiesBuf::new();
    alias1
        .push(Property::TopicAlias(1))
        .unwrap()
        .push(Property::ContentType("text/plain"))
        .unwrap();
    let payload = [7u8; 200];
    let (mut wire, mut broker) = (Vec::with_capacity(8192), Vec::with_capacity(8192));
    let mut token = 0u64;
    let mut round = |s: &mut Session, first: bool| {
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            token += 1;
            let topic = ["sensors/gw1/temp", "sensors/gw1/hum", "sensors/gw1/co2"][i];
            s.publish_with(
                token,
                topic,
                &payload,
                qos,
                false,
                out_props.properties(),
                now,
            )
            .unwrap();
        }
        wire.clear();
        s.poll_transmit(&mut wire);
        broker.clear();
        let mut b = &wire[..];
        while let Some((p, n)) = decode(b, &v5).unwrap() {
            if let Packet::Publish(p) = p {
                let t = match p.qos {
                    QoS::AtLeastOnce => Some(codec::PacketType::PubAck),
                    QoS::ExactlyOnce => Some(codec::PacketType::PubRec),
                    QoS::AtMostOnce => None,
                };
                if let Some(t) = t {
                    codec::encode_ack(&mut broker, t, p.pkid).unwrap();
                }
            }
            b = &b[n..];
        }
        // Incoming: the first sets alias 1 (with its topic), the others use it alone.
        for (qos, id) in [
            (QoS::AtMostOnce, 0),
            (QoS::AtLeastOnce, 11),
            (QoS::ExactlyOnce, 12),
        ] {
            let p = Publish {
                dup: false,
                qos,
                retain: false,
                topic: if first && id == 0 { "cmd/gw1" } else { "" },
                pkid: id,
                payload: &payload,
                properties: alias1.properties(),
            };
            codec::encode_publish_v5(&mut broker, &p, None).unwrap();
        }
        codec::encode_ack(&mut broker, codec::PacketType::PubRel, 12).unwrap();
        s.handle_read(&broker, now).unwrap();
        wire.clear();
        s.poll_transmit(&mut wire);
        let mut rel = None;
        let mut b = &wire[..];
        while let Some((p, n)) = decode(b, &v5).unwrap() {
            if let Packet::PubRel(r) = p {
                rel = Some(r.pkid);
            }
            b = &b[n..];
        }
        let mut messages = 0;
        while let Some(e) = s.poll_event() {
            if let Event::Message {
                topic, properties, ..
            } = e
            {
                assert_eq!(topic, "cmd/gw1");
                assert_eq!(properties.content_type(), Some("text/plain"));
                messages += 1;
            }
        }
        assert_eq!(messages, 3);
        broker.clear();
        codec::encode_ack(&mut broker, codec::PacketType::PubComp, rel.unwrap()).unwrap();
        s.handle_read(&broker, now).unwrap();
        while s.poll_event().is_some() {}
        assert_eq!(s.inflight(), 0);
    };
    round(&mut s, true);
    for _ in 0..50 {
        round(&mut s, false);
    }
    let before = allocs();
    for _ in 0..1000 {
        round(&mut s, false);
    }
    assert_eq!(
        allocs() - before,
        0,
        "allocations on the warm MQTT 5 publish/receive path"
    );
    assert!(s.alias_stats().0 >= 3000, "{:?}", s.alias_stats());
}
