//! The session fed arbitrary byte streams as the broker's side of the connection, in arbitrary chunks,
//! interleaved with publishes, subscriptions, timer ticks and reconnects. Never panics; the window and the
//! event/transmit plumbing stay consistent.
//!
//! Input: byte 0 picks window and size limit, byte 1 the protocol (odd: MQTT 5, topic aliases on, a
//! small receive maximum of our own); then a sequence of records `op, len, bytes[len]`:
//! op % 8 == 0..=3 feed `bytes` to handle_read, 4 publish (QoS from len), 5 subscribe, 6 tick,
//! 7 reconnect (session present from len). The stream starts with the session connected (CONNACK fed) unless
//! byte 0 is odd.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qmqtt::codec::{Protocol, QoS};
use qmqtt::session::{Event, Mqtt5Config, Session, SessionConfig};

fn drain(s: &mut Session, out: &mut Vec<u8>, window: usize) {
    out.clear();
    s.poll_transmit(out);
    while let Some(e) = s.poll_event() {
        if let Event::Message { topic, .. } = e {
            assert!(!topic.is_empty());
        }
    }
    assert!(s.inflight() <= window);
    assert_eq!(s.inflight() + s.inflight_free(), window);
}

fuzz_target!(|data: &[u8]| {
    let [cfg_byte, proto_byte, ref rest @ ..] = *data else {
        return;
    };
    let mut rest = rest;
    let v5 = proto_byte & 1 == 1;
    // An empty CONNACK (session present from `sp`) in the connection's protocol.
    let connack = |sp: u8| -> &'static [u8] {
        match (v5, sp) {
            (false, 0) => &[0x20, 2, 0, 0],
            (false, _) => &[0x20, 2, 1, 0],
            (true, 0) => &[0x20, 3, 0, 0, 0],
            (true, _) => &[0x20, 3, 1, 0, 0],
        }
    };
    let window = (cfg_byte >> 4) as u16 + 1;
    let cfg = SessionConfig {
        client_id: "fuzz".into(),
        protocol: if v5 { Protocol::V5 } else { Protocol::V311 },
        keep_alive: Duration::from_secs(10),
        response_timeout: Duration::from_secs(5),
        clean_session: false,
        username: None,
        password: None,
        will: None,
        max_inflight: window,
        max_packet_size: 16 + (cfg_byte as usize & 0x0e) * 64,
        mqtt5: Mqtt5Config {
            receive_maximum: (proto_byte >> 4) as u16 + 1,
            topic_alias_maximum: (proto_byte >> 1) as u16 & 7,
            topic_aliases: (proto_byte >> 1) as u16 & 7,
            ..Mqtt5Config::default()
        },
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = Session::new(cfg);
    let mut out = Vec::new();
    let mut token = 0u64;
    s.handle_connected(now);
    if cfg_byte & 1 == 0 {
        let _ = s.handle_read(connack(0), now);
    }
    drain(&mut s, &mut out, window as usize);
    while rest.len() >= 2 {
        let (op, len) = (rest[0], rest[1] as usize);
        let n = len.min(rest.len() - 2);
        let bytes = &rest[2..2 + n];
        rest = &rest[2 + n..];
        match op % 8 {
            0..=3 => {
                if s.handle_read(bytes, now).is_err() {
                    s.handle_disconnected();
                }
            }
            4 => {
                let qos = QoS::from_u8(len as u8 % 3).unwrap_or(QoS::AtMostOnce);
                let can = s.can_publish(qos);
                token += 1;
                let r = s.publish(token, "t/x", bytes, qos, false, now);
                // MQTT 5 may refuse more (the broker's maximum packet size, QoS, retain).
                if v5 {
                    assert!(can || r.is_err(), "{r:?}");
                } else {
                    assert_eq!(r.is_ok(), can, "{r:?}");
                }
            }
            5 => {
                let _ = s.subscribe(
                    std::str::from_utf8(bytes).unwrap_or("a/#"),
                    QoS::AtLeastOnce,
                    now,
                );
            }
            6 => {
                now += Duration::from_millis(len as u64 * 100);
                if s.handle_timeout(now).is_err() {
                    s.handle_disconnected();
                }
            }
            _ => {
                s.handle_disconnected();
                s.handle_connected(now);
                let _ = s.handle_read(connack(len as u8 & 1), now);
            }
        }
        drain(&mut s, &mut out, window as usize);
    }
});
