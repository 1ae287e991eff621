//! MQTT 5 vectors from an independent implementation: the codec against Debian's mosquitto 2.0.11.
//!
//! - `mosquitto_pub -V 5 -D …` connects to a listener in the test, which plays the broker with the codec:
//!   what mosquitto_pub encodes (CONNECT and will properties, PUBLISH properties, DISCONNECT) is decoded here,
//!   and what the codec encodes (CONNACK, PUBACK with a reason) must satisfy libmosquitto.
//! - `mosquitto_sub -V 5 -F …` the same way, the other direction: SUBSCRIBE options and properties decoded
//!   here; PUBLISH properties encoded here come out of mosquitto_sub's format string.
//! - A real mosquitto broker, spoken to in raw codec packets: CONNACK properties, subscription options
//!   (no local) and identifiers, and topic aliases, as the broker acts on them.
//!
//! Loopback only; each child process is killed if the test fails.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qmqtt::codec::{
    decode, encode_publish_v5, parse_fixed_header, Ack, ConnAck, Connect, DecodeOptions,
    Disconnect, Filters, Packet, Properties, PropertiesBuf, Property, Protocol, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
};

const V5: DecodeOptions = DecodeOptions {
    protocol: Protocol::V5,
    max_packet_size: 1 << 20,
};

/// One end of an MQTT 5 connection, reading whole packets.
struct Peer {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn new(sock: TcpStream) -> Peer {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Peer {
            sock,
            buf: Vec::new(),
        }
    }
    /// The bytes of the next whole packet (decode them with `dec`); `None` if the peer closed.
    fn next(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(h) = parse_fixed_header(&self.buf, &V5).unwrap() {
                if self.buf.len() >= h.packet_len() {
                    return Some(self.buf.drain(..h.packet_len()).collect());
                }
            }
            assert!(Instant::now() < deadline, "no packet in {within:?}");
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    fn packet(&mut self) -> Vec<u8> {
        self.next(Duration::from_secs(10))
            .expect("the peer closed the connection")
    }
    fn send(&mut self, p: Packet<'_>) {
        let mut out = Vec::new();
        p.encode(Protocol::V5, &mut out).unwrap();
        self.sock.write_all(&out).unwrap();
    }
}

fn dec(b: &[u8]) -> Packet<'_> {
    let (p, n) = decode(b, &V5)
        .unwrap_or_else(|e| panic!("{e}: {b:02x?}"))
        .unwrap();
    assert_eq!(n, b.len());
    p
}

/// A child process killed on drop (a failing test leaves nothing behind).
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    /// Exit status and stdout once it exits (within 10 s).
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the client did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_string(&mut out).unwrap();
        }
        (status.success(), out)
    }
}

fn spawn(prog: &str, args: &[&str]) -> Proc {
    Proc(
        Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{prog} (apt-get install mosquitto-clients): {e}")),
    )
}

fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    (l, port)
}

fn props(list: &[Property<'_>]) -> PropertiesBuf {
    let mut b = PropertiesBuf::new();
    for p in list {
        b.push(*p).unwrap();
    }
    b
}

#[test]
fn mosquitto_pub_v5_packets_decode() {
    let (l, port) = listen();
    #[rustfmt::skip]
    let child = spawn("mosquitto_pub", &[
        "-V", "5", "-h", "127.0.0.1", "-p", &port, "-i", "cap-pub", "-k", "30", "-u", "u", "-P", "pw",
        "-q", "1", "-t", "sensors/t1", "-m", "21.5",
        "--will-topic", "w/t", "--will-payload", "gone", "--will-qos", "1", "--will-retain",
        "-D", "connect", "session-expiry-interval", "3600",
        "-D", "connect", "receive-maximum", "7",
        "-D", "connect", "maximum-packet-size", "4096",
        "-D", "connect", "topic-alias-maximum", "5",
        "-D", "connect", "request-problem-information", "0",
        "-D", "connect", "request-response-information", "1",
        "-D", "connect", "user-property", "k", "v",
        "-D", "will", "will-delay-interval", "9",
        "-D", "will", "message-expiry-interval", "100",
        "-D", "will", "content-type", "text/x",
        "-D", "will", "user-property", "wk", "wv",
        "-D", "publish", "message-expiry-interval", "60",
        "-D", "publish", "content-type", "text/plain",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "response-topic", "r/t",
        "-D", "publish", "correlation-data", "abc",
        "-D", "publish", "user-property", "unit", "C",
        "-D", "publish", "user-property", "unit", "F",
        "-D", "publish", "topic-alias", "2",
        "-D", "disconnect", "session-expiry-interval", "0",
        "-D", "disconnect", "user-property", "bye", "now",
    ]);
    let (sock, _) = l.accept().unwrap();
    let mut peer = Peer::new(sock);

    let b = peer.packet();
    let Packet::Connect(c) = dec(&b) else {
        panic!("expected CONNECT: {b:02x?}")
    };
    assert_eq!(c.protocol, Protocol::V5);
    assert_eq!(
        (c.client_id, c.keep_alive, c.clean_session),
        ("cap-pub", 30, true)
    );
    assert_eq!((c.username, c.password), (Some("u"), Some(&b"pw"[..])));
    let p = c.properties;
    assert_eq!(p.session_expiry_interval(), Some(3600));
    assert_eq!(p.receive_maximum(), Some(7));
    assert_eq!(p.maximum_packet_size(), Some(4096));
    assert_eq!(p.topic_alias_maximum(), Some(5));
    assert_eq!(p.request_problem_information(), Some(false));
    assert_eq!(p.request_response_information(), Some(true));
    assert_eq!(p.user_properties().collect::<Vec<_>>(), [("k", "v")]);
    let w = c.will.expect("will");
    assert_eq!(
        (w.topic, w.message, w.qos, w.retain),
        ("w/t", &b"gone"[..], QoS::AtLeastOnce, true)
    );
    assert_eq!(w.properties.will_delay_interval(), Some(9));
    assert_eq!(w.properties.message_expiry_interval(), Some(100));
    assert_eq!(w.properties.content_type(), Some("text/x"));
    assert_eq!(
        w.properties.user_properties().collect::<Vec<_>>(),
        [("wk", "wv")]
    );
    // Re-encoded by the codec: the same bytes as mosquitto's.
    let mut again = Vec::new();
    Packet::Connect(c).encode(Protocol::V5, &mut again).unwrap();
    assert_eq!(again, b);

    let ack_props = props(&[
        Property::TopicAliasMaximum(4),
        Property::ReceiveMaximum(3),
        Property::ReasonString("welcome"),
        Property::UserProperty("srv", "1"),
    ]);
    peer.send(Packet::ConnAck(ConnAck::v5(
        false,
        ReasonCode::Success,
        ack_props.properties(),
    )));

    let b = peer.packet();
    let Packet::Publish(m) = dec(&b) else {
        panic!("expected PUBLISH: {b:02x?}")
    };
    assert_eq!(
        (m.topic, m.payload, m.qos, m.retain),
        ("sensors/t1", &b"21.5"[..], QoS::AtLeastOnce, false)
    );
    let p = m.properties;
    assert_eq!(p.message_expiry_interval(), Some(60));
    assert_eq!(p.content_type(), Some("text/plain"));
    assert_eq!(p.payload_format_indicator(), Some(true));
    assert_eq!(p.response_topic(), Some("r/t"));
    assert_eq!(p.correlation_data(), Some(&b"abc"[..]));
    assert_eq!(p.topic_alias(), Some(2));
    assert_eq!(
        p.user_properties().collect::<Vec<_>>(),
        [("unit", "C"), ("unit", "F")]
    );
    let mut again = Vec::new();
    Packet::Publish(m).encode(Protocol::V5, &mut again).unwrap();
    assert_eq!(again, b);

    // Refused, with a reason: mosquitto_pub takes 0x10 as delivered.
    let why = props(&[Property::ReasonString("nobody listens")]);
    peer.send(Packet::PubAck(Ack {
        pkid: m.pkid,
        reason: ReasonCode::NoMatchingSubscribers,
        properties: why.properties(),
    }));

    let b = peer.packet();
    let Packet::Disconnect(d) = dec(&b) else {
        panic!("expected DISCONNECT: {b:02x?}")
    };
    assert_eq!(d.reason, ReasonCode::NormalDisconnection);
    assert_eq!(d.properties.session_expiry_interval(), Some(0));
    assert_eq!(
        d.properties.user_properties().collect::<Vec<_>>(),
        [("bye", "now")]
    );
    let (ok, _) = child.finish();
    assert!(ok, "mosquitto_pub failed");
}

#[test]
fn mosquitto_sub_v5_reads_codec_packets() {
    let (l, port) = listen();
    #[rustfmt::skip]
    let child = spawn("mosquitto_sub", &[
        "-V", "5", "-h", "127.0.0.1", "-p", &port, "-i", "cap-sub", "-q", "1", "-t", "a/#", "-C", "2",
        "-D", "connect", "topic-alias-maximum", "10",
        "-D", "subscribe", "user-property", "s", "t",
        "-D", "subscribe", "subscription-identifier", "42",
        "-F", "%t|%p|%q|%r|%A|%C|%E|%F|%R|%D|%P|%S",
    ]);
    let (sock, _) = l.accept().unwrap();
    let mut peer = Peer::new(sock);

    let b = peer.packet();
    let Packet::Connect(c) = dec(&b) else {
        panic!("expected CONNECT: {b:02x?}")
    };
    assert_eq!(c.properties.topic_alias_maximum(), Some(10));
    peer.send(Packet::ConnAck(ConnAck::v5(
        false,
        ReasonCode::Success,
        Properties::EMPTY,
    )));

    let b = peer.packet();
    let Packet::Subscribe(s) = dec(&b) else {
        panic!("expected SUBSCRIBE: {b:02x?}")
    };
    assert_eq!(
        s.filters.iter_options().collect::<Vec<_>>(),
        [("a/#", SubscriptionOptions::new(QoS::AtLeastOnce))]
    );
    assert_eq!(
        s.properties.subscription_identifiers().collect::<Vec<_>>(),
        [42]
    );
    assert_eq!(
        s.properties.user_properties().collect::<Vec<_>>(),
        [("s", "t")]
    );
    peer.send(Packet::SubAck(SubAck {
        pkid: s.pkid,
        return_codes: &[ReasonCode::GrantedQoS1.to_u8()],
        properties: Properties::EMPTY,
    }));

    // QoS 1, setting topic alias 1, with every PUBLISH property mosquitto_sub can print.
    let p1 = props(&[
        Property::ContentType("text/plain"),
        Property::MessageExpiryInterval(600),
        Property::PayloadFormatIndicator(true),
        Property::ResponseTopic("reply/here"),
        Property::CorrelationData(b"id-7"),
        Property::UserProperty("unit", "C"),
        Property::SubscriptionIdentifier(42),
    ]);
    let mut out = Vec::new();
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b",
        pkid: 1,
        payload: b"hello",
        properties: p1.properties(),
    };
    encode_publish_v5(&mut out, &publish, Some(1)).unwrap();
    // QoS 0, retained, alias 1 mapped to another topic. (libmosquitto does not resolve an incoming alias
    // without its topic; the broker test covers that.)
    let p2 = props(&[Property::UserProperty("n", "2")]);
    let again = Publish {
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "a/c",
        pkid: 0,
        payload: b"again",
        properties: p2.properties(),
        ..publish
    };
    encode_publish_v5(&mut out, &again, Some(1)).unwrap();
    peer.sock.write_all(&out).unwrap();

    let b = peer.packet();
    assert_eq!(dec(&b), Packet::PubAck(Ack::new(1)));
    let b = peer.packet();
    assert_eq!(dec(&b), Packet::Disconnect(Disconnect::NORMAL));
    let (ok, stdout) = child.finish();
    assert!(ok, "mosquitto_sub failed: {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    // topic|payload|qos|retain|alias|content type|expiry|format|response topic|correlation|user|sub id
    assert_eq!(
        lines,
        [
            "a/b|hello|1|0|1|text/plain|600|1|reply/here|id-7|unit:C|42",
            "a/c|again|0|1|1||||||n:2|"
        ]
    );
}

/// Raw codec packets against the real broker: what it says in CONNACK, and that it acts on what the codec
/// encodes (no local, subscription identifiers, topic aliases, user properties).
#[test]
fn broker_acts_on_v5_packets() {
    let broker = common::Broker::start();
    let mut peer = Peer::new(TcpStream::connect(("127.0.0.1", broker.tcp_port)).unwrap());
    let cp = props(&[
        Property::SessionExpiryInterval(60),
        Property::ReceiveMaximum(10),
        Property::TopicAliasMaximum(5),
        Property::UserProperty("gw", "1"),
    ]);
    peer.send(Packet::Connect(Connect {
        protocol: Protocol::V5,
        keep_alive: 30,
        client_id: "codec-v5",
        clean_session: true,
        will: None,
        username: None,
        password: None,
        properties: cp.properties(),
    }));
    let b = peer.packet();
    let Packet::ConnAck(c) = dec(&b) else {
        panic!("expected CONNACK: {b:02x?}")
    };
    assert_eq!(c.reason, ReasonCode::Success, "{c:?}");
    assert!(!c.session_present);
    // mosquitto 2.0's default max_topic_alias is 10.
    assert_eq!(c.properties.topic_alias_maximum(), Some(10), "{c:?}");

    let sub = |peer: &mut Peer, pkid, filter, no_local, id: Option<u32>| {
        let list = [(
            filter,
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
        )];
        let p = props(
            &id.map(Property::SubscriptionIdentifier)
                .into_iter()
                .collect::<Vec<_>>(),
        );
        peer.send(Packet::Subscribe(Subscribe {
            pkid,
            filters: Filters::with_options(&list),
            properties: p.properties(),
        }));
        let b = peer.packet();
        let Packet::SubAck(a) = dec(&b) else {
            panic!("expected SUBACK: {b:02x?}")
        };
        assert_eq!(a.pkid, pkid);
        assert_eq!(a.reasons().collect::<Vec<_>>(), [ReasonCode::GrantedQoS1]);
    };
    sub(&mut peer, 1, "nl/#", true, None);
    sub(&mut peer, 2, "all/#", false, Some(7));

    // No local: our own message on nl/ does not come back (it would arrive before its PUBACK).
    let mut out = Vec::new();
    let nl = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "nl/x",
        pkid: 3,
        payload: b"mine",
        properties: Properties::EMPTY,
    };
    encode_publish_v5(&mut out, &nl, None).unwrap();
    peer.sock.write_all(&out).unwrap();
    assert_eq!(dec(&peer.packet()), Packet::PubAck(Ack::new(3)));

    // all/x with topic alias 2 and a user property, then the alias alone.
    let up = props(&[Property::UserProperty("unit", "C")]);
    for (pkid, topic) in [(4, "all/x"), (5, "")] {
        out.clear();
        let p = Publish {
            pkid,
            topic,
            payload: b"21.5",
            properties: up.properties(),
            ..nl
        };
        encode_publish_v5(&mut out, &p, Some(2)).unwrap();
        peer.sock.write_all(&out).unwrap();
        let mut got_ack = false;
        let mut got_msg = false;
        while !(got_ack && got_msg) {
            let b = peer.packet();
            match dec(&b) {
                Packet::PubAck(a) => {
                    assert_eq!(a, Ack::new(pkid), "{}", broker.log());
                    got_ack = true;
                }
                Packet::Publish(m) => {
                    assert!(!got_msg, "one copy");
                    // mosquitto forwards with the full topic (it assigns no alias of its own here).
                    assert_eq!(m.topic, "all/x");
                    assert_eq!(m.payload, b"21.5");
                    assert_eq!(
                        m.properties.subscription_identifiers().collect::<Vec<_>>(),
                        [7]
                    );
                    assert_eq!(
                        m.properties.user_properties().collect::<Vec<_>>(),
                        [("unit", "C")]
                    );
                    peer.send(Packet::PubAck(Ack::new(m.pkid)));
                    got_msg = true;
                }
                p => panic!("unexpected {p:?}"),
            }
        }
    }

    // An alias beyond the broker's maximum: the broker says why it disconnects.
    out.clear();
    encode_publish_v5(&mut out, &Publish { pkid: 6, ..nl }, Some(11)).unwrap();
    peer.sock.write_all(&out).unwrap();
    let b = peer.packet();
    let Packet::Disconnect(d) = dec(&b) else {
        panic!("expected DISCONNECT: {b:02x?}")
    };
    assert_eq!(d.reason, ReasonCode::TopicAliasInvalid, "{d:?}");
    assert_eq!(peer.next(Duration::from_secs(5)), None);
}
