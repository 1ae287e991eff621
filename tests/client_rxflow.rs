//! Receive backpressure: an owner that stops draining events must not lose incoming QoS 1 messages. The
//! client stops reading the socket while its event queue is full (the broker queues the rest), keeps the
//! connection alive meanwhile (keep-alive 1 s, paused for several seconds), does not buffer the stream in its
//! own memory, and delivers every message exactly once and in order when the owner drains again.
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::client::{cfg, connect, Seen};
use qmqtt::client::{Config, Event, PublishError};
use qmqtt::QoS;

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// The tests measure this process's RSS: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn slow_owner_pauses_reading_keeps_the_connection_and_loses_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = common::Broker::start();
    let k = cfg(&b.tcp_uri(), "rxflow-sub");
    // 7 s: mosquitto 2.0 enforces keep-alive lazily; a client that stopped sending PINGREQ while paused
    // is dropped within that.
    slow_owner(&b, k, 100_000, 1 << 20, Duration::from_secs(7));
}

#[test]
fn slow_owner_over_tls() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = common::Broker::start();
    let mut k = cfg(&b.tls_uri(), "rxflow-tls");
    k.tls.ca_file = Some(b.certs.ca.clone());
    slow_owner(&b, k, 60_000, 256 << 10, Duration::from_secs(4));
}

/// Subscribe with `k` (keep-alive 1 s), stop polling while `n` QoS 1 messages of ~210 bytes are published
/// (far more than `event_queue_bytes`), stay away `away` in all, then drain and check everything.
fn slow_owner(
    b: &common::Broker,
    mut k: Config,
    n: usize,
    event_queue_bytes: usize,
    away: Duration,
) {
    let pad = "p".repeat(200);
    k.keep_alive = Duration::from_secs(1);
    k.event_queue_bytes = event_queue_bytes;
    let c = connect(k);
    c.subscribe("rx/flow", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, Duration::from_secs(10), |s| !s.subscribed.is_empty()));
    assert_eq!(seen.subscribed[0].1, Some(QoS::AtLeastOnce));
    let base = rss();

    // The owner is busy from here on: nobody polls while the messages are published to it.
    let stopped_polling = Instant::now();
    // (A Client, not mosquitto_pub -l: mosquitto 2.0.11 drops a fast `-l` publisher "out of memory" after
    // ~34,000 messages, subscriber or not.)
    let mut pk = cfg(&b.tcp_uri(), "rxflow-pub");
    pk.queue_bytes = 256 << 10;
    let publisher = connect(pk);
    for i in 0..n {
        let payload = format!("{i:06} {pad}");
        loop {
            match publisher.publish("rx/flow", payload.as_bytes(), QoS::AtLeastOnce, false) {
                Ok(_) => break,
                Err(PublishError::QueueFull) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("publish {i}: {e:?}"),
            }
        }
    }
    let t = Instant::now();
    while publisher.stats().acked < n as u64 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ps = publisher.stats();
    assert_eq!(
        ps.acked, n as u64,
        "the broker did not take every message: {ps:?}"
    );
    assert_eq!(
        ps.reconnects, 0,
        "a publisher reconnect could duplicate messages: {ps:?}"
    );
    // Stay away for several keep-alive intervals (response timeout 1 s) with the stream stuck behind us.
    if let Some(left) = away.checked_sub(stopped_polling.elapsed()) {
        std::thread::sleep(left);
    }
    let st = c.stats();
    let grown = rss().saturating_sub(base);
    eprintln!(
        "after {:?} without polling: {st:?}, RSS +{} KiB",
        stopped_polling.elapsed(),
        grown >> 10
    );
    assert!(
        st.connected,
        "the connection must survive a slow owner: {st:?}"
    );
    assert_eq!(st.reconnects, 0, "{st:?}");
    assert!(
        st.rx_paused >= 1 && st.rx_paused_now,
        "reading must be paused: {st:?}"
    );
    assert_eq!(st.dropped_incoming, 0, "{st:?}");
    assert!(
        (st.received as usize) < n,
        "the client must not have taken the whole stream into memory: {st:?}"
    );
    // The whole stream is ≈ n × 210 bytes; what the client may hold is its event queue, one transport
    // read (1 MiB) and one packet, plus the publisher's queue (256 KiB).
    let stream = n as u64 * 210;
    assert!(
        grown < (6 << 20).min(stream / 2),
        "RSS grew by {} KiB while paused (stream {} KiB): the stream must wait in the socket/broker, not \
         in the client",
        grown >> 10,
        stream >> 10
    );

    // Drain: every message exactly once, in order, and no connection event on the way.
    let mut next = 0usize;
    let mut other = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < n && Instant::now() < deadline {
        if !common::client::readable(c.event_fd(), 100) {
            continue;
        }
        c.poll_events(1000, &mut |e| match e {
            Event::Message {
                topic,
                payload,
                qos,
                ..
            } => {
                assert_eq!((topic, qos), ("rx/flow", QoS::AtLeastOnce));
                let k: usize = std::str::from_utf8(&payload[..6]).unwrap().parse().unwrap();
                assert_eq!(k, next, "out of order or duplicated");
                assert_eq!(&payload[7..], pad.as_bytes());
                next += 1;
            }
            e => other.push(format!("{e:?}")),
        });
    }
    // The last message may be handed over just before the I/O thread notes the end of its pause.
    let t = Instant::now();
    while c.stats().rx_paused_now && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = c.stats();
    if next != n {
        eprintln!("broker log:\n{}", b.log());
    }
    assert_eq!(next, n, "{} of {n} messages lost: {st:?}", n - next);
    assert!(other.is_empty(), "unexpected events: {other:?}");
    assert_eq!(st.received as usize, n, "{st:?}");
    assert_eq!(st.dropped_incoming, 0, "{st:?}");
    assert_eq!(st.reconnects, 0, "{st:?}");
    assert!(st.connected, "{st:?}");
    assert!(!st.rx_paused_now, "{st:?}");
    assert!(st.rx_paused_time >= Duration::from_secs(1), "{st:?}");
    // Nothing more is waiting (no duplicates after the last one).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.poll_events(1000, &mut |e| panic!("extra event {e:?}")), 0);
}
