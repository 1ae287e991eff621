//! MQTT 5 end to end against a real mosquitto 2.0 (the shared fixture, 127.0.0.1 only), with mosquitto_sub
//! and mosquitto_pub as independent peers: properties both ways (plain and TLS), subscription options and
//! identifiers, session expiry, the broker's DISCONNECT and PUBACK refusals reaching the owner, and tight
//! limits the broker enforces — Receive Maximum 2, Topic Alias Maximum 2, Maximum Packet Size 256, Server
//! Keep Alive 10 — kept by the client (a raw client breaking each is disconnected, so the test would see
//! it), the client's own limits kept by the broker towards it, and the bytes topic aliases save on the wire.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::client::{connect, Seen};
use qmqtt::client::{Client, Config};
use qmqtt::codec::{
    self, decode, DecodeOptions, Packet, PropertiesBuf, Property, Protocol, QoS, ReasonCode,
    RetainHandling, SubscriptionOptions,
};
use qmqtt::session::{Event as SEvent, Session, SessionConfig};

const PUBLISH: codec::PropertyScope = codec::PropertyScope::Packet(codec::PacketType::Publish);

fn cfg5(uri: &str, id: &str) -> Config {
    let mut c = common::client::cfg(uri, id);
    c.protocol = Protocol::V5;
    c
}

fn strict() -> common::Broker {
    common::Broker::start_with(common::BrokerOptions {
        mqtt5_limits: true,
        ..Default::default()
    })
}

/// `mosquitto_sub -V 5` printing one line per message with `format`; ready once subscribed.
fn mosquitto_sub(port: u16, topic: &str, count: usize, format: &str, extra: &[&str]) -> Child {
    let mut c = Command::new("mosquitto_sub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-V",
        "5",
        "-q",
        "1",
    ])
    .args([
        "-t",
        topic,
        "-C",
        &count.to_string(),
        "-W",
        "20",
        "-F",
        format,
    ])
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = c
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    // mosquitto_sub has no "subscribed" signal on stdout: give it time to subscribe.
    std::thread::sleep(Duration::from_millis(400));
    child
}

fn output(c: Child) -> String {
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn props(list: &[Property<'_>]) -> PropertiesBuf {
    let mut b = PropertiesBuf::new();
    for p in list {
        b.push(*p).unwrap();
    }
    b
}

#[test]
fn properties_round_trip_with_mosquitto_sub_and_pub_plain_and_tls() {
    let b = common::Broker::start();
    for tls in [false, true] {
        let mut c = if tls {
            let mut c = cfg5(&b.tls_uri(), "v5-props-tls");
            c.tls.ca_file = Some(b.certs.ca.clone());
            c
        } else {
            cfg5(&b.tcp_uri(), "v5-props")
        };
        c.max_inflight = 10;
        let c = connect(c);
        let sub = mosquitto_sub(b.tcp_port, "v5/p/#", 1, "%t|%p|%C|%R|%D|%E|%F|%P", &[]);
        let p = props(&[
            Property::ContentType("text/plain"),
            Property::ResponseTopic("v5/reply"),
            Property::CorrelationData(b"req-42"),
            Property::MessageExpiryInterval(300),
            Property::PayloadFormatIndicator(true),
            Property::UserProperty("unit", "C"),
            Property::UserProperty("sensor", "t1"),
        ]);
        c.publish_with(
            "v5/p/temp",
            b"21.5",
            QoS::AtLeastOnce,
            false,
            p.properties(),
        )
        .unwrap();
        let mut seen = Seen::default();
        seen.settle(&c, Duration::from_secs(20), 1);
        assert!(seen.failed.is_empty(), "{seen:?}");
        let line = output(sub);
        let (fixed, users) = line
            .trim_end()
            .split_at(line.trim_end().rfind('|').unwrap());
        assert!(
            fixed.starts_with("v5/p/temp|21.5|text/plain|v5/reply|req-42|"),
            "tls {tls}: {line}"
        );
        // The broker counts the expiry down (0 or 1 s may have passed).
        let expiry: u32 = fixed.split('|').nth(5).unwrap().parse().unwrap();
        assert!((299..=300).contains(&expiry), "{line}");
        assert!(fixed.ends_with("|1"), "{line}");
        assert!(
            users.contains("unit:C") && users.contains("sensor:t1"),
            "{line}"
        );
    }
    // mosquitto_pub -D … towards our subscriber: the properties arrive, with our Subscription Identifier.
    let c = connect(cfg5(&b.tcp_uri(), "v5-props-sub"));
    c.subscribe_with(
        "v5/in/#",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        Some(77),
    )
    .unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, Duration::from_secs(5), |s| !s.subscribed.is_empty()));
    common::mosquitto_pub(
        "127.0.0.1",
        b.tcp_port,
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            "v5/in/x",
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "site",
            "north",
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
            "-D",
            "publish",
            "correlation-data",
            "abc",
            "-D",
            "publish",
            "response-topic",
            "v5/back",
        ],
    );
    assert!(seen.until(&c, Duration::from_secs(5), |s| !s.msgs.is_empty()));
    let raw = &seen.msg_props[0];
    let got = codec::Properties::parse(raw, PUBLISH).unwrap();
    assert_eq!(got.content_type(), Some("application/json"));
    assert_eq!(got.response_topic(), Some("v5/back"));
    assert_eq!(got.correlation_data(), Some(&b"abc"[..]));
    assert!(matches!(got.message_expiry_interval(), Some(59..=60)));
    assert_eq!(
        got.user_properties().collect::<Vec<_>>(),
        [("site", "north")]
    );
    assert_eq!(got.subscription_identifiers().collect::<Vec<_>>(), [77]);
}

#[test]
fn strict_broker_limits_are_kept_and_the_broker_would_catch_a_client_that_did_not() {
    let b = strict();
    let mut c = cfg5(&b.tcp_uri(), "v5-strict");
    c.max_inflight = 100;
    c.keep_alive = Duration::from_secs(60);
    let c = connect(c);
    let srv = c.stats().server.expect("CONNACK seen");
    assert_eq!(srv.receive_maximum, 2, "{srv:?}");
    assert_eq!(srv.topic_alias_maximum, 2, "{srv:?}");
    assert_eq!(srv.maximum_packet_size, Some(256), "{srv:?}");
    assert_eq!(srv.server_keep_alive, Some(10), "{srv:?}");
    let sub = mosquitto_sub(b.tcp_port, "tele/#", 400, "%t %p", &[]);
    // Four 30-byte topics over two aliases (evictions), QoS 1 and 2, far more than 2 in flight wanted.
    let topics: Vec<String> = (0..4)
        .map(|i| format!("tele/site-0001/gateway-000{i}/t1"))
        .collect();
    assert!(topics.iter().all(|t| t.len() == 30));
    let mut want = Vec::new();
    for i in 0..400 {
        let t = &topics[(i / 3) % 4];
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let payload = format!("{i:016}");
        c.publish(t, payload.as_bytes(), qos, false).unwrap();
        want.push(format!("{t} {payload}"));
    }
    // Larger than the broker's Maximum Packet Size: failed with the reason, the connection stays.
    let big = c
        .publish("tele/big", &[b'x'; 300], QoS::AtLeastOnce, false)
        .unwrap();
    let mut seen = Seen::default();
    seen.settle(&c, Duration::from_secs(20), 401);
    assert_eq!(seen.failed.len(), 1, "{:?}", seen.failed);
    assert_eq!(seen.failed[0].0, big);
    assert!(
        seen.failed[0].1.contains("Maximum Packet Size"),
        "{:?}",
        seen.failed
    );
    assert!(
        seen.lost.is_empty(),
        "the broker disconnected us: {:?}",
        seen.lost
    );
    let mut got: Vec<String> = output(sub).lines().map(str::to_string).collect();
    // Each QoS keeps its order (the broker forwards a QoS 2 message at PUBREL, so the two interleave).
    for odd in [0, 1] {
        let of = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|l| l.ends_with(|c: char| c.to_digit(10).is_some_and(|d| d % 2 == odd)))
                .cloned()
                .collect()
        };
        assert!(of(&got) == of(&want), "QoS {} order differs", odd + 1);
    }
    got.sort();
    want.sort();
    assert!(
        got == want,
        "every message once: {} of {}",
        got.len(),
        want.len()
    );
    let st = c.stats();
    // Groups of three on one topic: one sets the alias, two use it.
    assert!(st.topic_aliased >= 260, "{st:?}");
    assert_eq!(st.topic_alias_bytes_saved, 30 * st.topic_aliased);
    assert_eq!(st.reconnects, 0);
    assert!(st.inflight <= 2);

    // The broker enforces each limit: a raw client breaking it is disconnected.
    let mut r = Raw::connect(b.tcp_port, "v5-rude");
    r.publish("a", 1, b"x", &[Property::TopicAlias(3)]);
    assert_eq!(
        r.disconnect_reason(),
        Some(ReasonCode::TopicAliasInvalid),
        "alias 3 > Topic Alias Maximum 2"
    );
    let mut r = Raw::connect(b.tcp_port, "v5-rude2");
    r.publish("a", 1, &[b'x'; 300], &[]);
    assert!(r.closed(), "a 300-byte PUBLISH > Maximum Packet Size 256");
    let mut r = Raw::connect(b.tcp_port, "v5-rude3");
    for id in 1..=6 {
        r.publish_qos("a", QoS::ExactlyOnce, id, b"x", &[]);
    }
    // Six QoS 2 flows open (no PUBREL) beyond Receive Maximum 2: mosquitto refuses some (Quota exceeded).
    let acks = r.acks();
    assert!(
        acks.iter().any(|(_, rc)| *rc == ReasonCode::QuotaExceeded),
        "{acks:?}"
    );
}

/// Bytes on the wire for a telemetry stream — 1,000 QoS 1 messages, 16-byte payloads, ten 30-byte topics in
/// turn — with topic aliases (mosquitto's default Topic Alias Maximum, 10) and without: `Stats::bytes_out`
/// counted from the CONNACK to the last PUBACK, every message checked at a mosquitto_sub. Deterministic
/// (packet sizes, no timing); `--nocapture` prints the figures README quotes.
#[test]
fn topic_aliases_save_bytes_on_the_wire_for_telemetry() {
    const N: u64 = 1000;
    let b = common::Broker::start();
    let topics: Vec<String> = (0..10)
        .map(|i| format!("tele/site-0001/gateway-{i:04}/t1"))
        .collect();
    assert!(topics.iter().all(|t| t.len() == 30));
    let mut per_msg = Vec::new();
    for aliases in [0u16, 16] {
        let mut c = cfg5(&b.tcp_uri(), &format!("v5-bytes-{aliases}"));
        c.mqtt5.topic_aliases = aliases;
        c.keep_alive = Duration::from_secs(600);
        let c = connect(c);
        let srv = c.stats().server.expect("CONNACK seen");
        assert!(srv.topic_alias_maximum >= 10, "{srv:?}");
        let sub = mosquitto_sub(b.tcp_port, "tele/#", N as usize, "%t %p", &[]);
        let before = c.stats().bytes_out;
        let mut want = Vec::new();
        for i in 0..N as usize {
            let t = &topics[i % topics.len()];
            let payload = format!("{i:016}");
            c.publish(t, payload.as_bytes(), QoS::AtLeastOnce, false)
                .unwrap();
            want.push(format!("{t} {payload}"));
        }
        let mut seen = Seen::default();
        seen.settle(&c, Duration::from_secs(20), N as usize);
        assert!(seen.failed.is_empty() && seen.lost.is_empty(), "{seen:?}");
        let st = c.stats();
        assert_eq!(st.reconnects, 0);
        let bytes = st.bytes_out - before;
        let mut got: Vec<String> = output(sub).lines().map(str::to_string).collect();
        got.sort();
        want.sort();
        assert!(got == want, "every message once: {} of {}", got.len(), N);
        // A PUBLISH: fixed header 2, topic 2 + 30, packet id 2, properties 1 (+ 3 for a Topic Alias), payload 16.
        if aliases == 0 {
            assert_eq!(st.topic_aliased, 0);
            assert_eq!(bytes, N * 53, "{st:?}");
        } else {
            // The first message on each topic sets its alias (topic and alias: 56 bytes), the rest send the
            // alias alone (an empty topic: 26 bytes).
            assert_eq!(st.topic_aliased, N - 10, "{st:?}");
            assert_eq!(st.topic_alias_bytes_saved, 30 * (N - 10));
            assert_eq!(bytes, 10 * 56 + (N - 10) * 26, "{st:?}");
        }
        println!(
            "topic aliases {}: {bytes} bytes out for {N} messages, {:.1} bytes/message; {} aliased, {} topic \
             bytes saved",
            if aliases == 0 { "off" } else { "on" },
            bytes as f64 / N as f64,
            st.topic_aliased,
            st.topic_alias_bytes_saved
        );
        per_msg.push(bytes as f64 / N as f64);
    }
    let saved = per_msg[0] - per_msg[1];
    println!("topic aliases save {saved:.1} bytes/message");
    assert!(saved >= 25.0, "{per_msg:?}");
}

#[test]
fn server_keep_alive_is_followed() {
    let b = strict();
    let mut c = cfg5(&b.tcp_uri(), "v5-keepalive");
    c.keep_alive = Duration::from_secs(600);
    let c = connect(c);
    assert_eq!(c.stats().server.unwrap().server_keep_alive, Some(10));
    // Idle past 1.5 × 10 s: mosquitto drops a client that does not ping every 10 s.
    std::thread::sleep(Duration::from_secs(17));
    let st = c.stats();
    assert!(st.connected && st.reconnects == 0, "{st:?}");
}

#[test]
fn the_clients_receive_maximum_and_packet_size_are_kept_by_the_broker() {
    let b = common::Broker::start();
    // Receive Maximum 2: mosquitto sends no third QoS 1 message before a PUBACK.
    let mut s = SessionConfig {
        max_packet_size: 128,
        ..common::session::config("v5-rm", Protocol::V5)
    };
    s.mqtt5.receive_maximum = 2;
    let mut d = Driver::connect(b.tcp_port, s);
    d.turns(10, |e| !e.is_empty());
    d.s.subscribe("rm/#", QoS::AtLeastOnce, Instant::now())
        .unwrap();
    d.flush();
    d.turns(10, |e| e.iter().any(|x| x.starts_with("sub")));
    for i in 0..6 {
        pub_(b.tcp_port, "rm/a", &format!("m{i}"), 1);
    }
    // Larger than our Maximum Packet Size: mosquitto does not send it (and keeps the connection).
    pub_(b.tcp_port, "rm/a", &"x".repeat(200), 1);
    // Read without sending our acknowledgements: only two arrive.
    let got = d.read_only(Duration::from_secs(2));
    assert_eq!(got, ["m0", "m1"]);
    // Acknowledge as they come: the rest follows, without the oversized one.
    let mut all = got;
    let t = Instant::now() + Duration::from_secs(10);
    while all.len() < 6 && Instant::now() < t {
        d.flush();
        all.extend(d.read_only(Duration::from_millis(200)));
    }
    assert_eq!(all, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert!(!d.closed);
}

#[test]
fn subscription_options_with_a_real_broker() {
    let b = common::Broker::start();
    let c = connect(cfg5(&b.tcp_uri(), "v5-opts"));
    // Retained message for the retain-handling cases.
    pub_retained(b.tcp_port, "opt/r", "kept");
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    let dont_send = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    let as_published = SubscriptionOptions {
        retain_as_published: true,
        ..SubscriptionOptions::new(QoS::AtLeastOnce)
    };
    c.subscribe_with("opt/nl", no_local, None).unwrap();
    c.subscribe_with("opt/r", dont_send, None).unwrap();
    c.subscribe_with("opt/rap", as_published, Some(5)).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, Duration::from_secs(5), |s| s.subscribed.len() == 3));
    assert!(seen.subscribed.iter().all(|(_, g)| g.is_some()), "{seen:?}");
    // Our own message on a no-local subscription does not come back; another client's does.
    c.publish("opt/nl", b"mine", QoS::AtLeastOnce, false)
        .unwrap();
    pub_(b.tcp_port, "opt/nl", "theirs", 1);
    // Retain as published: the retain flag stays set on forwarded messages.
    pub_retained(b.tcp_port, "opt/rap", "flagged");
    assert!(seen.until(&c, Duration::from_secs(5), |s| s.msgs.len() >= 2));
    std::thread::sleep(Duration::from_millis(300));
    c.poll_events(100, &mut |e| seen.take(e));
    let msgs: Vec<(String, String, bool)> = seen
        .msgs
        .iter()
        .map(|(t, p, _, r)| (t.clone(), String::from_utf8_lossy(p).into(), *r))
        .collect();
    assert_eq!(
        msgs,
        [
            ("opt/nl".into(), "theirs".into(), false),
            ("opt/rap".into(), "flagged".into(), true)
        ],
        "no 'mine', no retained 'kept' (DoNotSend)"
    );
    clear_retained(b.tcp_port, "opt/r");
    clear_retained(b.tcp_port, "opt/rap");
}

#[test]
fn session_expiry_resumes_a_session_and_zero_expiry_does_not() {
    let b = common::Broker::start();
    for (expiry, want_present) in [(60u32, true), (0, false)] {
        let id = format!("v5-expiry-{expiry}");
        let mut k = cfg5(&b.tcp_uri(), &id);
        k.clean_session = false;
        k.mqtt5.session_expiry = expiry;
        let mut c = connect(k.clone());
        c.subscribe("exp/#", QoS::AtLeastOnce).unwrap();
        let mut seen = Seen::default();
        assert!(seen.until(&c, Duration::from_secs(5), |s| !s.subscribed.is_empty()));
        c.disconnect(Duration::from_secs(1));
        pub_(b.tcp_port, "exp/x", &format!("while away {expiry}"), 1);
        let c = connect(k);
        let mut seen = Seen::default();
        let got = seen.until(&c, Duration::from_secs(3), |s| !s.msgs.is_empty());
        let present = c.stats().server.unwrap().session_present;
        assert_eq!(present, want_present, "expiry {expiry}");
        assert_eq!(got, want_present, "expiry {expiry}: {seen:?}");
    }
}

#[test]
fn the_brokers_disconnect_and_refusals_reach_the_owner() {
    let acl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(acl.path(), "topic readwrite ok/#\n").unwrap();
    let b = common::Broker::start_with(common::BrokerOptions {
        tcp_extra: format!("acl_file {}\n", acl.path().display()),
        ..Default::default()
    });
    // PUBACK Not authorized for a topic the ACL denies: failed, not retried; allowed ones delivered.
    let c = connect(cfg5(&b.tcp_uri(), "v5-acl"));
    let denied = c.publish("no/x", b"1", QoS::AtLeastOnce, false).unwrap();
    let ok = c.publish("ok/x", b"2", QoS::AtLeastOnce, false).unwrap();
    let mut seen = Seen::default();
    seen.settle(&c, Duration::from_secs(20), 2);
    assert_eq!(seen.failed.len(), 1, "{seen:?}");
    assert_eq!(seen.failed[0].0, denied);
    assert!(
        seen.failed[0].1.contains("Not authorized (0x87)"),
        "{seen:?}"
    );
    assert_eq!(seen.delivered.iter().map(|d| d.0).collect::<Vec<_>>(), [ok]);
    assert_eq!(c.stats().failed, 1);
    let t = Instant::now();
    while c.stats().inflight > 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.stats().inflight, 0, "the refused message left the window");
    // An empty client id gets one from the broker.
    let c = connect(cfg5(&b.tcp_uri(), ""));
    let id = c.stats().server.unwrap().assigned_client_identifier;
    assert!(id.is_some_and(|i| !i.is_empty()));
    // (mosquitto 2.0.11 closes a session taken over, or at shutdown, without a DISCONNECT; the broker's
    // DISCONNECT reaching the owner is in tests/session_v5.rs, mosquitto's own in the strict test.)
}

#[test]
fn a_broker_of_mqtt311_only_is_named_as_such() {
    let port = common::fake::start(common::fake::Fake::Connack(1));
    let mut k = cfg5(&format!("tcp://127.0.0.1:{port}"), "v5-old");
    k.reconnect = false;
    let c = Client::connect(k).unwrap();
    let e = c.wait_connected(Duration::from_secs(5)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the broker speaks only MQTT 3.1.1"),
        "{e}"
    );
}

// ---- helpers: publishing with mosquitto_pub, a raw client, a minimal session driver ----

fn pub_(port: u16, topic: &str, msg: &str, qos: u8) {
    common::mosquitto_pub(
        "127.0.0.1",
        port,
        &["-V", "5", "-q", &qos.to_string(), "-t", topic, "-m", msg],
    );
}

fn pub_retained(port: u16, topic: &str, msg: &str) {
    common::mosquitto_pub(
        "127.0.0.1",
        port,
        &["-V", "5", "-r", "-q", "1", "-t", topic, "-m", msg],
    );
}

fn clear_retained(port: u16, topic: &str) {
    common::mosquitto_pub("127.0.0.1", port, &["-r", "-n", "-t", topic]);
}

/// A client writing packets with the codec, to break the rules on purpose.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(port: u16, id: &str) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut b = Vec::new();
        Packet::Connect(codec::Connect {
            protocol: Protocol::V5,
            keep_alive: 10,
            client_id: id,
            clean_session: true,
            will: None,
            username: None,
            password: None,
            properties: codec::Properties::EMPTY,
        })
        .encode(Protocol::V5, &mut b)
        .unwrap();
        s.write_all(&b).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(buf[0], 0x20, "CONNACK: {:?}", &buf[..n]);
        Raw { s }
    }
    fn publish(&mut self, topic: &str, pkid: u16, payload: &[u8], p: &[Property<'_>]) {
        self.publish_qos(topic, QoS::AtLeastOnce, pkid, payload, p)
    }
    fn publish_qos(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        p: &[Property<'_>],
    ) {
        let pr = props(p);
        let mut b = Vec::new();
        Packet::Publish(codec::Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            pkid,
            payload,
            properties: pr.properties(),
        })
        .encode(Protocol::V5, &mut b)
        .unwrap();
        let _ = self.s.write_all(&b);
    }
    /// Everything the broker sends until it closes the connection or goes quiet for the read timeout.
    fn read_all(&mut self) -> (Vec<u8>, bool) {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
                Err(_) => return (got, false),
            }
        }
    }
    fn packets(b: &[u8]) -> Vec<Packet<'_>> {
        let o = DecodeOptions {
            protocol: Protocol::V5,
            max_packet_size: 1 << 20,
        };
        let mut v = Vec::new();
        let mut b = b;
        while let Ok(Some((p, n))) = decode(b, &o) {
            v.push(p);
            b = &b[n..];
        }
        v
    }
    /// The reason code of the broker's DISCONNECT, if it sent one.
    fn disconnect_reason(&mut self) -> Option<ReasonCode> {
        let (b, _) = self.read_all();
        Self::packets(&b).into_iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        })
    }
    /// The broker closed the connection.
    fn closed(&mut self) -> bool {
        self.read_all().1
    }
    /// The PUBACKs and PUBRECs received: packet id and reason code.
    fn acks(&mut self) -> Vec<(u16, ReasonCode)> {
        let (b, _) = self.read_all();
        Self::packets(&b)
            .into_iter()
            .filter_map(|p| match p {
                Packet::PubAck(a) | Packet::PubRec(a) => Some((a.pkid, a.reason)),
                _ => None,
            })
            .collect()
    }
}

/// The session over a blocking socket, its output sent only by `flush`.
struct Driver {
    s: Session,
    sock: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Driver {
    fn connect(port: u16, cfg: SessionConfig) -> Driver {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut d = Driver {
            s: Session::new(cfg),
            sock,
            buf: vec![0; 65536],
            closed: false,
        };
        d.s.handle_connected(Instant::now());
        d.flush();
        d
    }
    fn flush(&mut self) {
        let mut out = Vec::new();
        self.s.poll_transmit(&mut out);
        if !out.is_empty() && self.sock.write_all(&out).is_err() {
            self.closed = true;
        }
    }
    /// Read and feed for `d`; the messages' payloads (nothing is sent).
    fn read_only(&mut self, d: Duration) -> Vec<String> {
        let end = Instant::now() + d;
        let mut got = Vec::new();
        while Instant::now() < end {
            match self.sock.read(&mut self.buf) {
                Ok(0) => self.closed = true,
                Ok(n) => self.s.handle_read(&self.buf[..n], Instant::now()).unwrap(),
                Err(_) => {}
            }
            while let Some(e) = self.s.poll_event() {
                if let SEvent::Message { payload, .. } = e {
                    got.push(String::from_utf8_lossy(payload).into_owned());
                }
            }
        }
        got
    }
    /// Read, feed and flush until `done(events)` (events as words), for at most `secs`.
    fn turns(&mut self, secs: u64, done: impl Fn(&[String]) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut ev = Vec::new();
        while !done(&ev) {
            assert!(Instant::now() < end, "{ev:?}");
            if let Ok(n) = self.sock.read(&mut self.buf) {
                self.s.handle_read(&self.buf[..n], Instant::now()).unwrap();
            }
            while let Some(e) = self.s.poll_event() {
                ev.push(match e {
                    SEvent::Connected { .. } => "connected".to_string(),
                    SEvent::Subscribed { .. } => "sub".to_string(),
                    o => format!("{o:?}"),
                });
            }
            self.flush();
        }
    }
}
