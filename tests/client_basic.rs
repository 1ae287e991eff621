//! The Rust client against a real mosquitto over plain TCP: publish at every QoS, subscribe, retained
//! messages, credentials, keep-alive, the event descriptor, config validation and a clean disconnect.
mod common;

use std::time::{Duration, Instant};

use common::client::{cfg, connect, readable, Seen};
use qmqtt::client::{Client, ClientError, Event, PublishError};
use qmqtt::codec::ConnectReturnCode;
use qmqtt::{Error, QoS};

const T: Duration = Duration::from_secs(10);

#[test]
fn publish_qos_0_1_2_reaches_mosquitto_sub() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "pub/#", 2, &["-v"]);
    let c = connect(cfg(&b.tcp_uri(), "pub012"));
    assert!(c.is_connected());
    let t0 = c.publish("pub/a", b"zero", QoS::AtMostOnce, false).unwrap();
    let t1 = c.publish("pub/b", b"one", QoS::AtLeastOnce, false).unwrap();
    let t2 = c.publish("pub/c", b"two", QoS::ExactlyOnce, false).unwrap();
    assert_eq!((t0, t1, t2), (1, 2, 3), "tokens start at 1 and increase");
    assert_eq!(sub.wait_for(3, T), 3, "broker log: {}", b.log());
    let mut lines = sub.take();
    lines.sort();
    assert_eq!(lines, ["pub/a zero", "pub/b one", "pub/c two"]);
    let mut seen = Seen::default();
    assert!(seen.until(&c, T, |s| s.delivered.len() >= 2));
    seen.delivered.sort();
    // QoS 0 reports nothing by default (the q layer never calls msgsent for QoS 0).
    assert_eq!(
        seen.delivered,
        [(2, QoS::AtLeastOnce), (3, QoS::ExactlyOnce)]
    );
    let st = c.stats();
    assert_eq!((st.sent, st.acked, st.queued, st.inflight), (3, 2, 0, 0));
    assert!(st.bytes_out > 0 && st.bytes_in > 0 && st.connected);
}

#[test]
fn qos0_delivery_events_when_asked() {
    let b = common::Broker::start();
    let mut k = cfg(&b.tcp_uri(), "q0ev");
    k.qos0_delivery_events = true;
    let c = connect(k);
    let t = c.publish("q0/x", b"p", QoS::AtMostOnce, false).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, T, |s| !s.delivered.is_empty()));
    assert_eq!(seen.delivered, [(t, QoS::AtMostOnce)]);
}

#[test]
fn subscribe_receives_qos_0_1_2_through_the_event_fd() {
    let b = common::Broker::start();
    let c = connect(cfg(&b.tcp_uri(), "subber"));
    c.subscribe("in/#", QoS::ExactlyOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, T, |s| !s.subscribed.is_empty()));
    assert_eq!(
        seen.subscribed,
        [("in/#".to_string(), Some(QoS::ExactlyOnce))]
    );
    assert!(
        !readable(c.event_fd(), 0),
        "drained: fd must not be readable"
    );
    for q in 0..3 {
        common::mosquitto_pub(
            "127.0.0.1",
            b.tcp_port,
            &[
                "-t",
                &format!("in/q{q}"),
                "-m",
                &format!("m{q}"),
                "-q",
                &q.to_string(),
            ],
        );
    }
    // Level-triggered: readable while events wait, until drained.
    let deadline = Instant::now() + T;
    while c.pending_events() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(readable(c.event_fd(), 0));
    assert_eq!(c.poll_events(1, &mut |e| seen.take(e)), 1);
    assert!(readable(c.event_fd(), 0), "two events still wait");
    assert_eq!(c.poll_events(100, &mut |e| seen.take(e)), 2);
    assert!(!readable(c.event_fd(), 0), "all drained");
    let got: Vec<_> = seen
        .msgs
        .iter()
        .map(|(t, p, q, r)| (t.as_str(), String::from_utf8_lossy(p).to_string(), *q, *r))
        .collect();
    assert_eq!(
        got,
        [
            ("in/q0", "m0".to_string(), QoS::AtMostOnce, false),
            ("in/q1", "m1".to_string(), QoS::AtLeastOnce, false),
            ("in/q2", "m2".to_string(), QoS::ExactlyOnce, false),
        ]
    );
    assert_eq!(c.stats().received, 3);
    c.unsubscribe("in/#").unwrap();
    assert!(seen.until(&c, T, |s| !s.unsubscribed.is_empty()));
}

#[test]
fn retained_message_reaches_a_later_subscriber() {
    let b = common::Broker::start();
    let p = connect(cfg(&b.tcp_uri(), "retpub"));
    p.publish("ret/state", b"on", QoS::AtLeastOnce, true)
        .unwrap();
    let mut ps = Seen::default();
    assert!(ps.until(&p, T, |s| !s.delivered.is_empty()));
    let s = connect(cfg(&b.tcp_uri(), "retsub"));
    s.subscribe("ret/#", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&s, T, |s| !s.msgs.is_empty()));
    assert_eq!(
        seen.msgs[0],
        (
            "ret/state".to_string(),
            b"on".to_vec(),
            QoS::AtLeastOnce,
            true
        )
    );
}

#[test]
fn username_password_and_wrong_password() {
    let b = common::Broker::start();
    let mut k = cfg(&b.auth_uri(), "authok");
    k.username = Some(common::USER.into());
    k.password = Some(common::PASSWORD.as_bytes().to_vec());
    let c = connect(k);
    assert!(c.is_connected());

    let mut k = cfg(&b.auth_uri(), "authbad");
    k.username = Some(common::USER.into());
    k.password = Some(b"wrong".to_vec());
    let bad = Client::connect(k).unwrap();
    match bad.wait_connected(T) {
        Err(ClientError::Connect(Error::Refused { code, .. })) => assert!(
            matches!(
                code,
                ConnectReturnCode::BadUsernameOrPassword | ConnectReturnCode::NotAuthorized
            ),
            "the credentials are wrong: {code:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!bad.is_connected());
    assert!(bad.stats().last_error.is_some());
    // It keeps trying (with backoff) and reports it.
    let mut seen = Seen::default();
    assert!(seen.until(&bad, T, |s| !s.reconnecting.is_empty()));
    assert!(!seen.lost.is_empty());
}

#[test]
fn nothing_listening_is_a_clear_connect_error() {
    let port = common::free_port();
    let mut k = cfg(&format!("tcp://127.0.0.1:{port}"), "nobody");
    k.reconnect = false;
    let c = Client::connect(k).unwrap();
    match c.wait_connected(T) {
        Err(ClientError::Connect(Error::Tcp { attempts, .. })) => assert_eq!(
            attempts[0].cause.kind(),
            std::io::ErrorKind::ConnectionRefused
        ),
        other => panic!("expected a connect error, got {other:?}"),
    }
    // Not reconnecting: publishes are refused.
    let deadline = Instant::now() + T;
    loop {
        match c.publish("x", b"y", QoS::AtMostOnce, false) {
            Err(PublishError::NotConnected) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            r => panic!("publish after a final failure: {r:?}"),
        }
    }
}

#[test]
fn connect_timeout_when_the_broker_does_not_answer() {
    let b = common::Broker::start();
    b.freeze();
    let mut k = cfg(&b.tcp_uri(), "frozen");
    k.connect_timeout = Duration::from_millis(500);
    let t0 = Instant::now();
    let c = Client::connect(k).unwrap();
    match c.wait_connected(T) {
        Err(ClientError::Connect(Error::Timeout(_))) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t0.elapsed() < common::slow(Duration::from_secs(3)));
    let t1 = Instant::now();
    drop(c);
    assert!(
        t1.elapsed() < common::slow(Duration::from_secs(1)),
        "drop must not hang on a frozen broker"
    );
    b.thaw();
}

#[test]
fn keep_alive_pings_keep_an_idle_connection() {
    let b = common::Broker::start();
    let mut k = cfg(&b.tcp_uri(), "pinger");
    k.keep_alive = Duration::from_secs(1);
    let c = connect(k);
    let before = c.stats();
    std::thread::sleep(Duration::from_millis(3500));
    let after = c.stats();
    assert!(after.connected);
    // PINGREQ and PINGRESP are 2 bytes each; at least 2 pings in 3.5 s of a 1 s keep-alive.
    assert!(
        after.bytes_out >= before.bytes_out + 4,
        "no PINGREQ sent: {before:?} → {after:?}"
    );
    assert!(
        after.bytes_in >= before.bytes_in + 4,
        "no PINGRESP received"
    );
    let mut seen = Seen::default();
    seen.until(&c, Duration::from_millis(10), |_| false);
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
}

#[test]
fn invalid_topics_and_publish_after_disconnect() {
    let b = common::Broker::start();
    let mut c = connect(cfg(&b.tcp_uri(), "topics"));
    for t in ["", "a/+", "a/#", "nul\0"] {
        assert_eq!(
            c.publish(t, b"x", QoS::AtMostOnce, false),
            Err(PublishError::TopicInvalid),
            "{t:?}"
        );
    }
    assert!(matches!(
        c.subscribe("a/#/b", QoS::AtMostOnce),
        Err(ClientError::Config(_))
    ));
    c.disconnect(Duration::from_secs(1));
    assert!(!c.is_connected());
    assert_eq!(
        c.publish("a", b"x", QoS::AtMostOnce, false),
        Err(PublishError::NotConnected)
    );
    assert_eq!(
        c.subscribe("a", QoS::AtMostOnce),
        Err(ClientError::NotConnected)
    );
    c.disconnect(Duration::from_secs(1)); // twice is fine
}

#[test]
fn disconnect_drains_queued_qos1_messages_first() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "drain/#", 1, &[]);
    let mut c = connect(cfg(&b.tcp_uri(), "drainer"));
    let payload = [7u8; 100];
    for _ in 0..2000 {
        c.publish("drain/x", &payload, QoS::AtLeastOnce, false)
            .unwrap();
    }
    c.disconnect(T);
    let st = c.stats();
    assert_eq!((st.acked, st.queued, st.inflight), (2000, 0, 0), "{st:?}");
    assert_eq!(sub.wait_for(2000, T), 2000);
}

#[test]
fn config_errors_name_the_option() {
    use qmqtt::session::Will;
    let b = "tcp://127.0.0.1:1883";
    let check = |f: &dyn Fn(&mut qmqtt::client::Config), word: &str| {
        let mut k = cfg(b, "cfg");
        f(&mut k);
        match Client::connect(k) {
            Err(ClientError::Config(m)) => {
                assert!(m.to_string().contains(word), "{m:?} should name {word}")
            }
            Err(e) => panic!("expected a config error naming {word}, got {e:?}"),
            Ok(_) => panic!("expected a config error naming {word}"),
        }
    };
    check(&|k| k.max_inflight = 0, "maxInflightMessages");
    check(&|k| k.queue_messages = 0, "queue_messages");
    check(&|k| k.queue_bytes = 0, "queue_bytes");
    check(&|k| k.event_queue_bytes = 0, "event_queue_bytes");
    check(&|k| k.uri = "gopher://x".into(), "uri");
    check(&|k| k.uri = "nonsense".into(), "uri");
    check(&|k| k.client_id = "x".repeat(70000), "client id");
    check(
        &|k| {
            k.client_id = String::new();
            k.clean_session = false
        },
        "client id",
    );
    check(
        &|k| {
            k.will = Some(Will {
                topic: "w/#".into(),
                payload: vec![],
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            })
        },
        "will topic",
    );
    check(&|k| k.password = Some(b"pw".to_vec()), "password");
    check(
        &|k| {
            k.uri = "ssl://localhost:8883".into();
            k.tls.ca_file = Some("/nonexistent/ca.pem".into());
        },
        "tls",
    );
}

#[test]
fn events_are_seen_in_order_with_poll_events_max() {
    let b = common::Broker::start();
    let c = connect(cfg(&b.tcp_uri(), "order"));
    let mut toks = Vec::new();
    let msgs: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("ord/{i}"), vec![i as u8; 10]))
        .collect();
    c.publish_batch(
        msgs.iter().map(|(t, p)| (t.as_str(), p.as_slice())),
        QoS::AtLeastOnce,
        false,
        &mut toks,
    )
    .unwrap();
    assert_eq!(toks, (1..=50).collect::<Vec<u64>>());
    let mut seen = Seen::default();
    assert!(seen.until(&c, T, |s| s.delivered.len() == 50));
    let got: Vec<u64> = seen.delivered.iter().map(|d| d.0).collect();
    assert_eq!(got, toks, "QoS 1 acks arrive in order");
    let mut n = 0;
    c.poll_events(10, &mut |e| {
        if let Event::Delivered { .. } = e {
            n += 1
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn an_idle_connection_does_not_spin() {
    let b = common::Broker::start();
    let c = connect(cfg(&b.tcp_uri(), "idle"));
    std::thread::sleep(Duration::from_millis(200));
    let w0 = c.stats().wakeups;
    std::thread::sleep(Duration::from_secs(2));
    let w1 = c.stats().wakeups;
    assert!(
        w1 - w0 <= 2,
        "the I/O thread woke {} times in 2 s idle",
        w1 - w0
    );
}

#[test]
fn client_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Client>();
}

#[test]
fn a_batch_goes_out_in_few_socket_writes() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "batch/#", 0, &[]);
    let c = connect(cfg(&b.tcp_uri(), "batcher"));
    let w0 = c.stats().socket_writes;
    let payload = [b'x'; 64];
    let msgs = vec![("batch/t", &payload[..]); 10_000];
    let mut toks = Vec::new();
    c.publish_batch(msgs, QoS::AtMostOnce, false, &mut toks)
        .unwrap();
    assert_eq!(sub.wait_for(10_000, T), 10_000);
    let st = c.stats();
    let writes = st.socket_writes - w0;
    eprintln!("10000 QoS 0 messages in {writes} socket writes");
    assert_eq!(st.sent, 10_000);
    assert!(
        writes <= 100,
        "{writes} writes for 10000 messages: no batching"
    );
}

#[test]
fn event_fd_is_level_triggered_under_load() {
    let b = common::Broker::start();
    let s = connect(cfg(&b.tcp_uri(), "fd-sub"));
    s.subscribe("load/#", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&s, T, |x| !x.subscribed.is_empty()));
    let p = connect(cfg(&b.tcp_uri(), "fd-pub"));
    let n = 5000;
    let publisher = std::thread::spawn(move || {
        for i in 0..n {
            p.publish("load/x", format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
                .unwrap();
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        p
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = 0;
    let mut batch = 1;
    while got < n && Instant::now() < deadline {
        // Only this thread drains: events waiting ⇒ the fd must be readable, and vice versa (checked by
        // `poll_events` returning something whenever poll(2) said readable).
        if s.pending_events() > 0 {
            assert!(
                readable(s.event_fd(), 0),
                "events wait but the fd is not readable"
            );
        }
        if readable(s.event_fd(), 10) {
            let k = s.poll_events(batch, &mut |e| {
                if let Event::Message { .. } = e {
                    got += 1
                }
            });
            assert!(k > 0, "fd readable with nothing to poll");
            batch = batch % 7 + 1;
        }
    }
    assert_eq!(got, n);
    assert!(!readable(s.event_fd(), 0));
    drop(publisher.join().unwrap());
}

#[test]
fn incoming_messages_beyond_the_event_budget_wait_for_the_owner() {
    let b = common::Broker::start();
    let mut k = cfg(&b.tcp_uri(), "smallev");
    k.event_queue_bytes = 1024;
    let s = connect(k);
    s.subscribe("ev/#", QoS::AtMostOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&s, T, |x| !x.subscribed.is_empty()));
    let p = connect(cfg(&b.tcp_uri(), "smallev-pub"));
    let payload = [b'e'; 100];
    for i in 0..100u8 {
        let mut m = payload;
        m[0] = i;
        p.publish("ev/x", &m, QoS::AtMostOnce, false).unwrap();
    }
    // Nobody drains: 1024 bytes hold 8 records of 24 + 4 + 100 bytes; the rest waits unread (even QoS 0).
    let deadline = Instant::now() + T;
    while !s.stats().rx_paused_now && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let st = s.stats();
    assert!(st.rx_paused_now && st.rx_paused >= 1, "{st:?}");
    assert_eq!(st.received, 8, "{st:?}");
    assert_eq!(st.dropped_incoming, 0, "{st:?}");
    let mut seen = Seen::default();
    assert!(
        seen.until(&s, T, |x| x.msgs.len() == 100),
        "{:?}",
        s.stats()
    );
    let firsts: Vec<u8> = seen.msgs.iter().map(|m| m.1[0]).collect();
    assert_eq!(firsts, (0..100).collect::<Vec<u8>>(), "all, in order");
    // The last message may be handed over just before the I/O thread notes the end of its pause.
    let deadline = Instant::now() + T;
    while s.stats().rx_paused_now && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = s.stats();
    assert!(!st.rx_paused_now && st.dropped_incoming == 0, "{st:?}");

    // A message that can never fit (its record is larger than event_queue_bytes) is the one thing dropped
    // and counted; the stream goes on.
    p.publish("ev/big", &[b'b'; 2000], QoS::AtLeastOnce, false)
        .unwrap();
    p.publish("ev/after", b"a", QoS::AtLeastOnce, false)
        .unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&s, T, |x| !x.msgs.is_empty()), "{:?}", s.stats());
    assert_eq!(seen.msgs[0].0, "ev/after");
    assert_eq!(s.stats().dropped_incoming, 1);
}

#[test]
fn one_message_in_flight_like_kx_reliable() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "rel/#", 1, &[]);
    let mut k = cfg(&b.tcp_uri(), "reliable1");
    k.max_inflight = 1;
    let c = connect(k);
    for i in 0..500 {
        c.publish("rel/x", format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .unwrap();
    }
    assert!(c.stats().inflight <= 1);
    assert_eq!(sub.wait_for(500, T), 500);
    let lines = sub.take();
    let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    assert_eq!(lines, want, "in order");
}

#[test]
fn a_large_message_goes_through() {
    let b = common::Broker::start();
    let s = connect(cfg(&b.tcp_uri(), "big-sub"));
    s.subscribe("big/#", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&s, T, |x| !x.subscribed.is_empty()));
    let p = connect(cfg(&b.tcp_uri(), "big-pub"));
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    p.publish("big/x", &payload, QoS::AtLeastOnce, false)
        .unwrap();
    assert!(seen.until(&s, T, |x| !x.msgs.is_empty()));
    assert_eq!(seen.msgs[0].1, payload);
    // Larger than the whole publish queue: refused at once.
    let mut k = cfg(&b.tcp_uri(), "tiny-q");
    k.queue_bytes = 4096;
    let t = connect(k);
    assert_eq!(
        t.publish("big/y", &payload, QoS::AtLeastOnce, false),
        Err(PublishError::TooLarge)
    );
}

#[test]
fn linger_collects_a_paced_stream_without_waking_per_burst() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "lg/#", 0, &[]);
    let run = |linger: Duration, id: &str| -> (u64, u64, usize, Duration) {
        let mut k = cfg(&b.tcp_uri(), id);
        k.linger = linger;
        let c = connect(k);
        let w0 = c.stats().wakeups;
        let t0 = Instant::now();
        let mut n = 0;
        let mut spent = Duration::ZERO;
        while t0.elapsed() < Duration::from_millis(300) {
            for _ in 0..4 {
                let p0 = Instant::now();
                c.publish("lg/x", b"reading", QoS::AtMostOnce, false)
                    .unwrap();
                spent += p0.elapsed();
                n += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let st = c.stats();
        (st.wakeups - w0, st.socket_writes, n, spent / n as u32)
    };
    let (w_now, writes_now, n1, p_now) = run(Duration::ZERO, "lg-zero");
    let (w_linger, writes_linger, n2, p_linger) = run(Duration::from_millis(5), "lg-5ms");
    eprintln!(
        "paced stream: linger 0: {w_now} wake-ups, {writes_now} writes for {n1}, {p_now:?} per publish; \
         linger 5 ms: {w_linger} wake-ups, {writes_linger} writes for {n2}, {p_linger:?} per publish"
    );
    assert!(
        w_linger <= 100,
        "linger 5 ms over 300 ms: {w_linger} wake-ups"
    );
    assert!(w_now >= 2 * w_linger, "{w_now} vs {w_linger}");
    assert_eq!(sub.wait_for(n1 + n2, T), n1 + n2, "every message arrives");
}

#[test]
fn ack_interval_collects_acknowledgements_and_stops_when_they_stop() {
    // A broker acknowledging each QoS 1 message in a segment of its own, 100 µs apart: a thread woken by every
    // arrival wakes about once per message; collecting every 5 ms takes dozens per wake-up.
    let (n, limit) = (2000u64, 1500u64);
    let port = common::fake::start(common::fake::Fake::PacedAcks {
        gap: Duration::from_micros(100),
        limit: limit as u32,
    });
    let mut k = cfg(&format!("mqtt://127.0.0.1:{port}"), "ack-int");
    k.max_inflight = 100;
    k.ack_interval = Duration::from_millis(5);
    k.reconnect = false;
    let mut c = connect(k);
    let w0 = c.stats().wakeups;
    for _ in 0..n {
        c.publish("ai/x", &[b'a'; 64], QoS::AtLeastOnce, false)
            .unwrap();
    }
    let deadline = Instant::now() + common::slow(T);
    while c.stats().acked < limit {
        assert!(Instant::now() < deadline, "{:?}", c.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    let w = c.stats().wakeups - w0;
    eprintln!("{w} wake-ups for {limit} acknowledgements");
    assert!(
        w * 10 <= limit,
        "{w} wake-ups for {limit} acknowledgements: not collected"
    );
    // The acknowledgements stop (500 messages wait for them): the thread goes back to waiting for the
    // socket, no wake-up every interval.
    std::thread::sleep(Duration::from_millis(100));
    let w1 = c.stats().wakeups;
    std::thread::sleep(Duration::from_millis(500));
    let idle = c.stats().wakeups - w1;
    assert!(
        idle <= 10,
        "{idle} wake-ups in 500 ms without acknowledgements"
    );
    let st = c.stats();
    assert!(st.inflight > 0 && st.queued > 0, "messages wait: {st:?}");
    c.disconnect(Duration::ZERO);
}

#[test]
fn the_io_thread_is_named_and_batch_scheduled() {
    let b = common::Broker::start();
    let _c = connect(cfg(&b.tcp_uri(), "sched"));
    let mut found = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let e = e.unwrap();
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "qmqtt-io" {
            let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: plain query of a thread's policy.
            let pol = unsafe { libc::sched_getscheduler(tid) };
            if pol >= 0 {
                assert_eq!(pol, libc::SCHED_BATCH, "thread {tid}");
                found += 1;
            }
        }
    }
    assert!(found >= 1, "no qmqtt-io thread found");
}

#[test]
fn a_batch_is_queued_whole_or_not_at_all() {
    // Nobody listens: what is queued stays queued (the client keeps retrying), so the queue is the record.
    let mut k = cfg(
        &format!("tcp://127.0.0.1:{}", common::free_port()),
        "batch-all-or-none",
    );
    k.queue_messages = 3;
    let c = Client::connect(k).unwrap();
    let q1 = QoS::AtLeastOnce;
    assert_eq!(c.publish("b/1", b"x", q1, false), Ok(1));
    assert_eq!(c.publish("b/2", b"x", q1, false), Ok(2));
    let mut toks = vec![7];
    // Room for one more message: a batch of two is refused whole.
    let two = [("b/3", &b"x"[..]), ("b/4", &b"x"[..])];
    assert_eq!(
        c.publish_batch(two, q1, false, &mut toks),
        Err(PublishError::QueueFull)
    );
    // A wildcard in the middle: nothing before it is queued either.
    let bad = [("b/3", &b"x"[..]), ("b/+", &b"x"[..])];
    assert_eq!(
        c.publish_batch(bad, q1, false, &mut toks),
        Err(PublishError::TopicInvalid)
    );
    assert_eq!(toks, [7], "tokens of a refused batch");
    assert_eq!(c.stats().queued, 2);
    assert_eq!(c.stats().refused_full, 2);
    // The whole batch fits again once it is one message.
    c.publish_batch([("b/3", &b"x"[..])], q1, false, &mut toks)
        .unwrap();
    assert_eq!(toks, [7, 3]);
}
