//! `publish` and `publish_batch` allocate nothing on the caller's thread (a counting global allocator
//! watches this thread only), and neither does draining events with `poll_events` once warm.
mod common;

use std::time::Duration;

use common::client::{cfg, connect, Seen};
use qmqtt::QoS;

#[global_allocator]
static A: common::alloc::Counting = common::alloc::Counting;

use common::alloc::thread_allocs as allocs;

#[test]
fn publishing_and_draining_allocate_nothing_on_the_callers_thread() {
    let b = common::Broker::start();
    let c = connect(cfg(&b.tcp_uri(), "noalloc"));
    c.subscribe("na/#", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, Duration::from_secs(10), |s| !s.subscribed.is_empty()));
    let payload = [b'p'; 64];
    let mut toks = Vec::with_capacity(1000);
    let msgs = [("na/batch", &payload[..]); 100];
    // Warm up: the event scratch buffer grows once.
    let mut delivered = 0u64;
    let mut received = 0u64;
    let mut drain = |c: &qmqtt::Client| {
        c.poll_events(10_000, &mut |e| match e {
            qmqtt::Event::Delivered { .. } => delivered += 1,
            qmqtt::Event::Message { .. } => received += 1,
            _ => {}
        })
    };
    for _ in 0..3000 {
        c.publish("na/x", &payload, QoS::AtLeastOnce, false)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    drain(&c);
    let a0 = allocs();
    for i in 0..10_000 {
        c.publish("na/x", &payload, QoS::AtLeastOnce, false)
            .unwrap();
        if i % 1000 == 0 {
            toks.clear();
            c.publish_batch(msgs.iter().copied(), QoS::AtMostOnce, false, &mut toks)
                .unwrap();
        }
        if i % 100 == 0 {
            drain(&c);
        }
    }
    let a1 = allocs();
    assert_eq!(a1 - a0, 0, "allocations on the publishing thread");
    // The counter does count.
    let v: Vec<u8> = Vec::with_capacity(10);
    assert!(allocs() > a1);
    drop(v);
    std::thread::sleep(Duration::from_millis(200));
    assert!(delivered > 0 && received > 0);
}

/// The same under MQTT 5, with properties on every message and topic aliases on the connection.
#[test]
fn mqtt5_publishing_with_properties_and_draining_allocate_nothing() {
    use qmqtt::codec::{PropertiesBuf, Property, Protocol};
    let b = common::Broker::start();
    let mut k = cfg(&b.tcp_uri(), "noalloc5");
    k.protocol = Protocol::V5;
    let c = connect(k);
    c.subscribe("na5/#", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, Duration::from_secs(10), |s| !s.subscribed.is_empty()));
    let mut props = PropertiesBuf::new();
    props
        .push(Property::MessageExpiryInterval(60))
        .unwrap()
        .push(Property::UserProperty("unit", "C"))
        .unwrap();
    let p = props.properties();
    let payload = [b'p'; 64];
    let msgs = [("na5/batch", &payload[..]); 100];
    let mut toks = Vec::with_capacity(1000);
    let (mut delivered, mut with_props) = (0u64, 0u64);
    let mut drain = |c: &qmqtt::Client| {
        c.poll_events(10_000, &mut |e| match e {
            qmqtt::Event::Delivered { .. } => delivered += 1,
            qmqtt::Event::Message { properties, .. } => {
                with_props += properties.message_expiry_interval().is_some() as u64
            }
            _ => {}
        })
    };
    for _ in 0..3000 {
        c.publish_with("na5/x", &payload, QoS::AtLeastOnce, false, p)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    drain(&c);
    let a0 = allocs();
    for i in 0..10_000 {
        c.publish_with("na5/x", &payload, QoS::AtLeastOnce, false, p)
            .unwrap();
        if i % 1000 == 0 {
            toks.clear();
            c.publish_batch_with(msgs.iter().copied(), QoS::AtMostOnce, false, p, &mut toks)
                .unwrap();
        }
        if i % 100 == 0 {
            drain(&c);
        }
    }
    assert_eq!(allocs() - a0, 0, "allocations on the publishing thread");
    std::thread::sleep(Duration::from_millis(300));
    drain(&c);
    assert!(delivered > 0 && with_props > 0);
    assert!(c.stats().topic_aliased > 0 || c.stats().server.unwrap().topic_alias_maximum == 0);
}
