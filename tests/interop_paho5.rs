//! MQTT 5 interop with an independent client: the Eclipse paho C engine through the `paho-mqtt` crate
//! (`MQTTVersion 5`), both sides on a real mosquitto (plain TCP, 127.0.0.1).
//!
//! - paho receives what our engine publishes at QoS 0, 1 and 2 with every PUBLISH property a client sets
//!   (content type, response topic, binary correlation data, message expiry, payload format, user
//!   properties in order), and a message without properties arrives without any;
//! - our engine receives the same properties from paho, with its own subscription identifier added;
//! - our topic aliases (a stream over four 30-byte topics) reach paho as full topics, every message once and
//!   in order, and paho's aliased publishes reach us as full topics;
//! - the broker's refusal of our publish (PUBACK Not authorized, from an ACL) reaches our owner with its
//!   reason code, and paho, subscribed to everything, sees only the allowed message.
// paho-mqtt is a dev-dependency on x86_64 only (Cargo.toml): it does not cross-build for ARM.
#![cfg(target_arch = "x86_64")]
mod common;

use std::time::{Duration, Instant};

use common::client::{connect, Seen};
use common::Broker;
use paho_mqtt::PropertyCode as Pc;
use qmqtt::client::Config;
use qmqtt::codec::{self, PropertiesBuf, Property, Protocol, QoS, SubscriptionOptions};

const PUBLISH: codec::PropertyScope = codec::PropertyScope::Packet(codec::PacketType::Publish);
const CORRELATION: &[u8] = &[0, 0xff, 0x80, b'4', b'2'];

fn cfg5(b: &Broker, id: &str) -> Config {
    let mut c = common::client::cfg(&b.tcp_uri(), id);
    c.protocol = Protocol::V5;
    c
}

/// A paho client speaking MQTT 5 only, connected with a clean start.
fn paho5(b: &Broker, id: &str) -> paho_mqtt::Client {
    let create = paho_mqtt::CreateOptionsBuilder::new()
        .server_uri(format!("tcp://127.0.0.1:{}", b.tcp_port))
        .client_id(id)
        .mqtt_version(paho_mqtt::MQTT_VERSION_5)
        .finalize();
    let mut cli = paho_mqtt::Client::new(create).expect("paho client");
    cli.set_timeout(Duration::from_secs(10));
    cli
}

fn paho5_connect(cli: &paho_mqtt::Client) -> paho_mqtt::ServerResponse {
    let opts = paho_mqtt::ConnectOptionsBuilder::new_v5()
        .clean_start(true)
        .keep_alive_interval(Duration::from_secs(30))
        .finalize();
    let rsp = cli.connect(opts).expect("paho connects with MQTT 5");
    let v = rsp.connect_response().expect("CONNACK").mqtt_version;
    assert_eq!(v, paho_mqtt::MQTT_VERSION_5, "paho negotiated MQTT {v}");
    rsp
}

/// paho's messages until `n` arrived (or 20 s), then whatever comes within 300 ms more (a duplicate).
fn paho_take(
    rx: &paho_mqtt::Receiver<Option<paho_mqtt::Message>>,
    n: usize,
) -> Vec<paho_mqtt::Message> {
    let mut got = Vec::new();
    let deadline = Instant::now() + common::slow(Duration::from_secs(20));
    while got.len() < n && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("paho lost its connection"),
            Err(_) => {}
        }
    }
    while let Ok(Some(m)) = rx.recv_timeout(Duration::from_millis(300)) {
        got.push(m);
    }
    got
}

fn paho_users(p: &paho_mqtt::Properties) -> Vec<(String, String)> {
    p.user_iter().collect()
}

#[test]
fn paho_v5_receives_the_properties_our_engine_publishes() {
    let b = Broker::start();
    let paho = paho5(&b, "paho5-sub");
    let rx = paho.start_consuming();
    paho5_connect(&paho);
    paho.subscribe("p5/ours/#", 2).expect("paho subscribes");

    let mut c = connect(cfg5(&b, "qmqtt5-pub"));
    let mut p = PropertiesBuf::new();
    for prop in [
        Property::PayloadFormatIndicator(true),
        Property::MessageExpiryInterval(300),
        Property::ContentType("text/plain; charset=utf-8"),
        Property::ResponseTopic("p5/reply/42"),
        Property::CorrelationData(CORRELATION),
        Property::UserProperty("unit", "C"),
        Property::UserProperty("sensor", "t1"),
        Property::UserProperty("unit", "K"),
    ] {
        p.push(prop).unwrap();
    }
    for q in 0..3u8 {
        let topic = format!("p5/ours/q{q}");
        let qos = QoS::from_u8(q).unwrap();
        c.publish_with(&topic, b"21.5", qos, false, p.properties())
            .unwrap();
    }
    // The same message without properties.
    c.publish("p5/ours/bare", b"bare", QoS::AtLeastOnce, false)
        .unwrap();
    let mut seen = Seen::default();
    seen.settle(&c, common::slow(Duration::from_secs(20)), 3);
    assert!(seen.failed.is_empty(), "{seen:?}");

    let got = paho_take(&rx, 4);
    assert_eq!(got.len(), 4, "each message once: {got:?}");
    let (bare, props): (Vec<_>, Vec<_>) = got.iter().partition(|m| m.topic() == "p5/ours/bare");
    assert_eq!(bare.len(), 1);
    assert_eq!(bare[0].payload(), b"bare");
    assert!(
        bare[0].properties().is_empty(),
        "no properties sent, none received: {:?}",
        bare[0].properties()
    );
    let mut qos_seen: Vec<i32> = props.iter().map(|m| m.qos() as i32).collect();
    qos_seen.sort();
    assert_eq!(qos_seen, [0, 1, 2]);
    for m in props {
        assert_eq!(m.topic(), format!("p5/ours/q{}", m.qos() as i32));
        assert_eq!(m.payload(), b"21.5");
        let pp = m.properties();
        assert_eq!(pp.get_int(Pc::PayloadFormatIndicator), Some(1), "{pp:?}");
        assert_eq!(
            pp.get_string(Pc::ContentType).as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            pp.get_string(Pc::ResponseTopic).as_deref(),
            Some("p5/reply/42")
        );
        assert_eq!(
            pp.get_binary(Pc::CorrelationData).as_deref(),
            Some(CORRELATION)
        );
        // The broker counts the expiry down (0 or 1 s may have passed).
        let expiry = pp.get_int(Pc::MessageExpiryInterval);
        assert!(matches!(expiry, Some(299..=300)), "expiry {expiry:?}");
        // User properties keep their order, a repeated key included (MQTT 5, 3.3.2.3.7).
        assert_eq!(
            paho_users(pp),
            [("unit", "C"), ("sensor", "t1"), ("unit", "K")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
    c.disconnect(Duration::from_secs(2));
    let _ = paho.disconnect(None);
}

#[test]
fn our_engine_receives_the_properties_paho_v5_publishes() {
    let b = Broker::start();
    let mut c = connect(cfg5(&b, "qmqtt5-sub"));
    c.subscribe_with(
        "p5/paho/#",
        SubscriptionOptions::new(QoS::ExactlyOnce),
        Some(9),
    )
    .unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, Duration::from_secs(10), |s| !s.subscribed.is_empty()));
    assert_eq!(
        seen.subscribed,
        [("p5/paho/#".to_string(), Some(QoS::ExactlyOnce))]
    );

    let paho = paho5(&b, "paho5-pub");
    paho5_connect(&paho);
    for q in 0..3 {
        let mut props = paho_mqtt::Properties::new();
        props.push_int(Pc::PayloadFormatIndicator, 1).unwrap();
        props.push_int(Pc::MessageExpiryInterval, 600).unwrap();
        props
            .push_string(Pc::ContentType, "application/json")
            .unwrap();
        props.push_string(Pc::ResponseTopic, "p5/answer").unwrap();
        props.push_binary(Pc::CorrelationData, CORRELATION).unwrap();
        props
            .push_string_pair(Pc::UserProperty, "site", "north")
            .unwrap();
        props
            .push_string_pair(Pc::UserProperty, "qos", &q.to_string())
            .unwrap();
        let m = paho_mqtt::MessageBuilder::new()
            .topic(format!("p5/paho/q{q}"))
            .payload(format!("{{\"q\":{q}}}"))
            .qos(q)
            .properties(props)
            .finalize();
        paho.publish(m).expect("paho publishes");
    }
    paho.publish(paho_mqtt::Message::new("p5/paho/bare", "bare", 1))
        .expect("paho publishes");

    assert!(
        seen.until(&c, common::slow(Duration::from_secs(20)), |s| s.msgs.len()
            >= 4)
    );
    // Anything late would be a duplicate.
    seen.until(&c, Duration::from_millis(300), |_| false);
    assert_eq!(seen.msgs.len(), 4, "each message once: {:?}", seen.msgs);
    for ((topic, payload, qos, retain), raw) in seen.msgs.iter().zip(&seen.msg_props) {
        assert!(!retain);
        let p = codec::Properties::parse(raw, PUBLISH).unwrap();
        // Our subscription's identifier comes with every message.
        assert_eq!(p.subscription_identifiers().collect::<Vec<_>>(), [9]);
        if topic == "p5/paho/bare" {
            assert_eq!(payload, b"bare");
            assert_eq!(p.iter().count(), 1, "only the subscription identifier");
            continue;
        }
        let q = *qos as u8;
        assert_eq!(topic, &format!("p5/paho/q{q}"));
        assert_eq!(payload, format!("{{\"q\":{q}}}").as_bytes());
        assert_eq!(p.payload_format_indicator(), Some(true));
        assert!(matches!(p.message_expiry_interval(), Some(599..=600)));
        assert_eq!(p.content_type(), Some("application/json"));
        assert_eq!(p.response_topic(), Some("p5/answer"));
        assert_eq!(p.correlation_data(), Some(CORRELATION));
        let q = q.to_string();
        assert_eq!(
            p.user_properties().collect::<Vec<_>>(),
            [("site", "north"), ("qos", q.as_str())]
        );
    }
    let mut qs: Vec<u8> = seen.msgs.iter().map(|m| m.2 as u8).collect();
    qs.sort();
    assert_eq!(qs, [0, 1, 1, 2]);
    let _ = paho.disconnect(None);
    c.disconnect(Duration::from_secs(2));
}

/// Our aliases towards mosquitto (its default Topic Alias Maximum, 10) for four 30-byte topics: paho gets
/// full topics, each message once, in order; and paho's own aliased publishes reach us with their topic.
#[test]
fn topic_aliases_both_ways_arrive_as_full_topics() {
    const N: usize = 300;
    let b = Broker::start();
    let topics: Vec<String> = (0..4)
        .map(|i| format!("tele/site-0001/gateway-{i:04}/t1"))
        .collect();
    assert!(topics.iter().all(|t| t.len() == 30));

    let paho = paho5(&b, "paho5-alias-sub");
    let rx = paho.start_consuming();
    paho5_connect(&paho);
    paho.subscribe("tele/#", 1).expect("paho subscribes");

    let mut cfg = cfg5(&b, "qmqtt5-alias");
    cfg.mqtt5.topic_aliases = 16;
    cfg.max_inflight = 50;
    let mut c = connect(cfg);
    let srv = c.stats().server.expect("CONNACK seen");
    assert!(srv.topic_alias_maximum >= 4, "{srv:?}");
    let mut want = Vec::with_capacity(N);
    for i in 0..N {
        let t = &topics[i % 4];
        let payload = format!("{i:016}");
        c.publish(t, payload.as_bytes(), QoS::AtLeastOnce, false)
            .unwrap();
        want.push((t.clone(), payload));
    }
    let mut seen = Seen::default();
    seen.settle(&c, common::slow(Duration::from_secs(20)), N);
    assert!(seen.failed.is_empty() && seen.lost.is_empty(), "{seen:?}");
    let st = c.stats();
    // The first message on each topic sets its alias, every other one sends the alias alone.
    assert_eq!(st.topic_aliased, (N - 4) as u64, "{st:?}");
    assert_eq!(st.topic_alias_bytes_saved, 30 * st.topic_aliased);

    let got: Vec<(String, String)> = paho_take(&rx, N)
        .iter()
        .map(|m| (m.topic().to_string(), m.payload_str().into_owned()))
        .collect();
    assert_eq!(got.len(), N, "each message once");
    assert!(
        got == want,
        "paho received every message in order, topics in full"
    );

    // paho → us: paho sets alias 1 with the topic, then publishes with the alias alone (an empty topic).
    let mut seen = Seen::default();
    c.subscribe("alias/#", QoS::AtLeastOnce).unwrap();
    assert!(seen.until(&c, Duration::from_secs(10), |s| !s.subscribed.is_empty()));
    let publ = paho5(&b, "paho5-alias-pub");
    let rsp = paho5_connect(&publ);
    let max = rsp.properties().get_int(Pc::TopicAliasMaximum);
    assert!(max.is_some_and(|m| m >= 1), "{max:?}");
    for i in 0..10 {
        let mut alias = paho_mqtt::Properties::new();
        alias.push_int(Pc::TopicAlias, 1).unwrap();
        let mut m = paho_mqtt::MessageBuilder::new()
            .payload(format!("a{i}"))
            .qos(1)
            .properties(alias);
        if i == 0 {
            m = m.topic("alias/from/paho/with-a-long-topic-name");
        }
        publ.publish(m.finalize()).expect("paho publishes");
    }
    assert!(
        seen.until(&c, common::slow(Duration::from_secs(20)), |s| s.msgs.len()
            >= 10)
    );
    seen.until(&c, Duration::from_millis(300), |_| false);
    let got: Vec<(String, String)> = seen
        .msgs
        .iter()
        .map(|m| (m.0.clone(), String::from_utf8_lossy(&m.1).into_owned()))
        .collect();
    let want: Vec<(String, String)> = (0..10)
        .map(|i| {
            (
                "alias/from/paho/with-a-long-topic-name".to_string(),
                format!("a{i}"),
            )
        })
        .collect();
    assert_eq!(got, want);
    let _ = publ.disconnect(None);
    let _ = paho.disconnect(None);
    c.disconnect(Duration::from_secs(2));
}

/// mosquitto's ACL refuses our QoS 1 publish: PUBACK Not authorized reaches our owner as a failed delivery
/// with that reason, and paho (subscribed to everything it may read) gets only the allowed message.
#[test]
fn a_refusal_reaches_us_with_its_reason_and_paho_sees_only_the_allowed() {
    let acl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(acl.path(), "topic readwrite ok/#\ntopic read no/#\n").unwrap();
    let b = Broker::start_with(common::BrokerOptions {
        tcp_extra: format!("acl_file {}\n", acl.path().display()),
        ..Default::default()
    });
    let paho = paho5(&b, "paho5-acl-sub");
    let rx = paho.start_consuming();
    paho5_connect(&paho);
    paho.subscribe_many(&["ok/#", "no/#"], &[1, 1])
        .expect("paho subscribes");

    let mut c = connect(cfg5(&b, "qmqtt5-acl"));
    let denied = c
        .publish("no/x", b"denied", QoS::AtLeastOnce, false)
        .unwrap();
    let ok = c
        .publish("ok/x", b"allowed", QoS::AtLeastOnce, false)
        .unwrap();
    let mut seen = Seen::default();
    seen.settle(&c, common::slow(Duration::from_secs(20)), 2);
    assert_eq!(seen.failed.len(), 1, "{seen:?}");
    assert_eq!(seen.failed[0].0, denied);
    assert!(
        seen.failed[0].1.contains("Not authorized (0x87)"),
        "{seen:?}"
    );
    assert_eq!(seen.delivered.iter().map(|d| d.0).collect::<Vec<_>>(), [ok]);
    assert!(seen.lost.is_empty(), "{seen:?}");

    let got: Vec<(String, Vec<u8>)> = paho_take(&rx, 1)
        .iter()
        .map(|m| (m.topic().to_string(), m.payload().to_vec()))
        .collect();
    assert_eq!(got, [("ok/x".to_string(), b"allowed".to_vec())]);
    let _ = paho.disconnect(None);
    c.disconnect(Duration::from_secs(2));
}
