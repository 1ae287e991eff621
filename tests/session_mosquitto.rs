//! The sans-I/O session against a real mosquitto (the shared fixture, 127.0.0.1 only), driven by a minimal
//! blocking loop over `std::net::TcpStream` — the smallest possible driver, so what is tested is the session:
//! CONNECT/CONNACK with both protocol levels, refusal, QoS 0/1/2 both ways through the broker, the window,
//! a persistent session receiving what was queued while it was away, keep-alive, and the ping timeout when
//! the broker stops answering.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use qmqtt::codec::{ConnectReturnCode, Protocol, QoS};
use qmqtt::error::Timeout;
use qmqtt::session::{Event, Session, SessionConfig, State};
use qmqtt::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
enum E {
    Connected(bool),
    Msg(String, Vec<u8>, QoS),
    Delivered(u64),
    Subscribed(String, Option<QoS>),
}

fn cfg(id: &str) -> SessionConfig {
    SessionConfig {
        max_inflight: 20,
        max_packet_size: 1 << 16,
        ..common::session::config(id, Protocol::V311)
    }
}

struct Driver {
    s: Session,
    sock: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// The transport closed under us (EOF or reset).
    closed: bool,
}

impl Driver {
    fn connect(port: u16, cfg: SessionConfig) -> Driver {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let mut d = Driver {
            s: Session::new(cfg),
            sock,
            out: Vec::new(),
            buf: vec![0; 65536],
            closed: false,
        };
        d.s.handle_connected(Instant::now());
        d
    }
    /// A new transport for the same session.
    fn reconnect(&mut self, port: u16) {
        self.s.handle_disconnected();
        self.sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        self.sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        self.sock.set_nodelay(true).unwrap();
        self.closed = false;
        self.s.handle_connected(Instant::now());
    }
    fn flush(&mut self) {
        self.out.clear();
        self.s.poll_transmit(&mut self.out);
        if !self.out.is_empty() && !self.closed && self.sock.write_all(&self.out).is_err() {
            self.closed = true;
        }
    }
    /// One turn of the loop: send, read what is there, fire timers. Returns the events.
    fn turn(&mut self) -> Result<Vec<E>, Error> {
        self.flush();
        let now = Instant::now();
        match self.sock.read(&mut self.buf) {
            _ if self.closed => {}
            Ok(0) => self.closed = true,
            Ok(n) => self.s.handle_read(&self.buf[..n], now)?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => self.closed = true,
        }
        self.s.handle_timeout(Instant::now())?;
        self.flush();
        let mut v = Vec::new();
        while let Some(e) = self.s.poll_event() {
            v.push(match e {
                Event::Connected { session_present } => E::Connected(session_present),
                Event::Message {
                    topic,
                    payload,
                    qos,
                    ..
                } => E::Msg(topic.into(), payload.into(), qos),
                Event::Delivered { token, .. } => E::Delivered(token),
                Event::Subscribed { filter, granted } => E::Subscribed(filter.into(), granted),
                Event::Unsubscribed { filter } => panic!("unexpected Unsubscribed {filter}"),
                Event::Failed { token, cause, .. } => panic!("unexpected Failed {token}: {cause}"),
            });
        }
        Ok(v)
    }
    /// Turn until `done(all events so far)` or the deadline.
    fn until(&mut self, secs: u64, mut done: impl FnMut(&[E]) -> bool) -> Vec<E> {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut all = Vec::new();
        while !done(&all) {
            assert!(Instant::now() < end, "timed out; events so far: {all:?}");
            all.extend(self.turn().unwrap());
        }
        all
    }
    fn connected(port: u16, cfg: SessionConfig) -> (Driver, bool) {
        let mut d = Driver::connect(port, cfg);
        let ev = d.until(5, |e| !e.is_empty());
        let E::Connected(sp) = ev[0] else {
            panic!("{ev:?}")
        };
        (d, sp)
    }
}

#[test]
fn qos_0_1_2_round_trip_through_mosquitto() {
    let b = common::Broker::start();
    let (mut d, sp) = Driver::connected(b.tcp_port, cfg("qmqtt-roundtrip"));
    assert!(!sp);
    d.s.subscribe("qm/rt/#", QoS::ExactlyOnce, Instant::now())
        .unwrap();
    d.until(5, |e| {
        e.contains(&E::Subscribed("qm/rt/#".into(), Some(QoS::ExactlyOnce)))
    });
    let n = 30u64;
    let mut token = 0;
    let mut events = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..n {
            while !d.s.can_publish(qos) {
                events.extend(d.turn().unwrap());
            }
            token += 1;
            let payload = format!("{}-{i}", qos as u8);
            d.s.publish(
                token,
                &format!("qm/rt/{}", qos as u8),
                payload.as_bytes(),
                qos,
                false,
                Instant::now(),
            )
            .unwrap();
        }
    }
    let want_delivered = 2 * n as usize;
    let want_msgs = 3 * n as usize;
    let ev = d.until(10, |e| {
        let all = events.iter().chain(e);
        let (mut del, mut msg) = (0, 0);
        for x in all {
            match x {
                E::Delivered(_) => del += 1,
                E::Msg(..) => msg += 1,
                _ => {}
            }
        }
        del >= want_delivered && msg >= want_msgs
    });
    events.extend(ev);
    // Every QoS 1/2 token delivered exactly once; QoS 0 tokens never.
    let mut delivered: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            if let E::Delivered(t) = e {
                Some(*t)
            } else {
                None
            }
        })
        .collect();
    delivered.sort();
    assert_eq!(delivered, (n + 1..=3 * n).collect::<Vec<_>>());
    // Messages come back with the publish QoS (subscription QoS 2 does not downgrade), each once.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let got: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                E::Msg(t, p, q) if *q == qos => {
                    assert_eq!(t, &format!("qm/rt/{}", qos as u8));
                    Some(String::from_utf8(p.clone()).unwrap())
                }
                _ => None,
            })
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("{}-{i}", qos as u8)).collect();
        assert_eq!(got, want, "QoS {qos:?} messages in order, once each");
    }
    assert_eq!(d.s.inflight(), 0);
    d.s.disconnect();
    d.flush();
}

#[test]
fn mqtt31_connects() {
    let b = common::Broker::start();
    let mut c = cfg("qmqtt-v31");
    c.protocol = Protocol::V31;
    let (d, sp) = Driver::connected(b.tcp_port, c);
    assert!(!sp);
    assert!(d.s.is_connected());
}

#[test]
fn bad_password_is_refused_with_a_message_that_names_the_fix() {
    let b = common::Broker::start();
    let mut c = cfg("qmqtt-badpw");
    c.username = Some(common::USER.into());
    c.password = Some(b"wrong".to_vec());
    let mut d = Driver::connect(b.auth_port, c);
    let end = Instant::now() + Duration::from_secs(5);
    let e = loop {
        assert!(Instant::now() < end);
        match d.turn() {
            Ok(ev) => assert!(ev.is_empty(), "{ev:?}"),
            Err(e) => break e,
        }
    };
    let Error::Refused { code, .. } = e else {
        panic!("{e}")
    };
    assert!(
        matches!(
            code,
            ConnectReturnCode::BadUsernameOrPassword | ConnectReturnCode::NotAuthorized
        ),
        "{code:?}"
    );
    let m = e.to_string();
    assert!(m.starts_with("the broker refused the connection: "), "{m}");
    assert!(m.contains("check"), "{m}");
    // The right password is accepted.
    let mut c = cfg("qmqtt-goodpw");
    c.username = Some(common::USER.into());
    c.password = Some(common::PASSWORD.as_bytes().to_vec());
    let (d, _) = Driver::connected(b.auth_port, c);
    assert!(d.s.is_connected());
}

#[test]
fn small_window_many_messages() {
    let b = common::Broker::start();
    let mut c = cfg("qmqtt-window");
    c.max_inflight = 3;
    let (mut d, _) = Driver::connected(b.tcp_port, c);
    let mut delivered = 0;
    for token in 1..=300u64 {
        while !d.s.can_publish(QoS::AtLeastOnce) {
            delivered += d
                .turn()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, E::Delivered(_)))
                .count();
        }
        assert!(d.s.inflight() < 3);
        let qos = if token % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        d.s.publish(token, "qm/window", b"x", qos, false, Instant::now())
            .unwrap();
        assert!(d.s.inflight() <= 3);
    }
    d.until(10, |e| {
        delivered + e.iter().filter(|e| matches!(e, E::Delivered(_))).count() == 300
    });
    assert_eq!(d.s.inflight(), 0);
}

#[test]
fn persistent_session_gets_what_was_queued_while_away() {
    let b = common::Broker::start();
    let mut c = cfg("qmqtt-persist");
    c.clean_session = false;
    let (mut d, _) = Driver::connected(b.tcp_port, c.clone());
    d.s.subscribe("qm/p/#", QoS::AtLeastOnce, Instant::now())
        .unwrap();
    d.until(5, |e| {
        e.contains(&E::Subscribed("qm/p/#".into(), Some(QoS::AtLeastOnce)))
    });
    d.s.disconnect();
    d.flush();
    drop(d);
    common::mosquitto_pub(
        "127.0.0.1",
        b.tcp_port,
        &["-t", "qm/p/a", "-m", "while-away", "-q", "1"],
    );
    let mut d = Driver::connect(b.tcp_port, c);
    let ev = d.until(5, |e| e.iter().any(|x| matches!(x, E::Msg(..))));
    assert_eq!(ev[0], E::Connected(true), "{ev:?}");
    assert!(
        ev.contains(&E::Msg(
            "qm/p/a".into(),
            b"while-away".to_vec(),
            QoS::AtLeastOnce
        )),
        "{ev:?}"
    );
}

#[test]
fn keepalive_pings_and_frozen_broker_times_out() {
    let b = common::Broker::start();
    let mut c = cfg("qmqtt-ping");
    c.keep_alive = Duration::from_secs(1);
    c.response_timeout = Duration::from_secs(1);
    let (mut d, _) = Driver::connected(b.tcp_port, c);
    // Several keep-alive periods with nothing else: PINGRESPs keep the connection up.
    let end = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < end {
        d.turn().unwrap();
    }
    assert!(d.s.is_connected());
    b.freeze();
    let start = Instant::now();
    let e = loop {
        if let Err(e) = d.turn() {
            break e;
        }
        assert!(
            start.elapsed() < common::slow(Duration::from_secs(10)),
            "no ping timeout"
        );
    };
    b.thaw();
    assert_eq!(e, Error::Timeout(Timeout::PingResp));
    // Keep-alive (≤ 1 s to the next ping) + response timeout (1 s).
    assert!(
        start.elapsed() <= common::slow(Duration::from_millis(2500)),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn link_cuts_mid_flight_lose_nothing_and_qos2_stays_exactly_once() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "qm/cut/#", 2, &["-v"]);
    let proxy = common::proxy::Proxy::start(b.tcp_port);
    let mut c = cfg("qmqtt-cut");
    c.clean_session = false;
    c.max_inflight = 10;
    let (mut d, _) = Driver::connected(proxy.port, c);
    let n = 240u64;
    let mut events = Vec::new();
    let mut reconnects = 0;
    let mut turn = |d: &mut Driver, events: &mut Vec<E>| {
        events.extend(d.turn().unwrap());
        if d.closed {
            d.reconnect(proxy.port);
            reconnects += 1;
        }
    };
    for token in 1..=n {
        while !d.s.can_publish(QoS::AtLeastOnce) {
            turn(&mut d, &mut events);
        }
        let qos = if token % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let payload = format!("{token}");
        d.s.publish(
            token,
            &format!("qm/cut/{}", qos as u8),
            payload.as_bytes(),
            qos,
            false,
            Instant::now(),
        )
        .unwrap();
        if token % 60 == 0 {
            // Cut the link with messages in flight (just written, not yet acknowledged).
            assert!(d.s.inflight() > 0);
            d.flush();
            proxy.cut();
        }
    }
    let end = Instant::now() + Duration::from_secs(20);
    while events
        .iter()
        .filter(|e| matches!(e, E::Delivered(_)))
        .count()
        < n as usize
    {
        assert!(
            Instant::now() < end,
            "not all delivered: {}",
            d.s.inflight()
        );
        turn(&mut d, &mut events);
    }
    assert!(
        reconnects >= 4,
        "the link was cut 4 times: {reconnects} reconnects"
    );
    assert!(events
        .iter()
        .filter(|e| matches!(e, E::Connected(_)))
        .all(|e| *e == E::Connected(true)));
    // The session: every token delivered exactly once.
    let mut delivered: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            if let E::Delivered(t) = e {
                Some(*t)
            } else {
                None
            }
        })
        .collect();
    delivered.sort();
    assert_eq!(delivered, (1..=n).collect::<Vec<_>>());
    // The subscriber: every message arrived; QoS 2 ones exactly once (the broker saw DUP / PUBREL resends).
    sub.wait_for(n as usize, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let lines = sub.take();
    for token in 1..=n {
        let qos = if token % 2 == 0 { 2 } else { 1 };
        let line = format!("qm/cut/{qos} {token}");
        let count = lines.iter().filter(|l| **l == line).count();
        if qos == 2 {
            assert_eq!(count, 1, "{line}");
        } else {
            assert!(count >= 1, "{line}");
        }
    }
}

#[test]
fn broker_restart_that_loses_the_session_resubscribes_and_resends() {
    let mut b = common::Broker::start();
    let mut c = cfg("qmqtt-lost");
    c.clean_session = false;
    let (mut d, _) = Driver::connected(b.tcp_port, c);
    d.s.subscribe("qm/rs/#", QoS::AtLeastOnce, Instant::now())
        .unwrap();
    d.until(5, |e| {
        e.contains(&E::Subscribed("qm/rs/#".into(), Some(QoS::AtLeastOnce)))
    });
    // Messages in flight when the broker dies (no persistence: it forgets the session).
    b.freeze();
    for token in 1..=6u64 {
        let qos = if token % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        d.s.publish(token, "qm/rs/out", b"x", qos, false, Instant::now())
            .unwrap();
    }
    d.flush();
    assert_eq!(d.s.inflight(), 6);
    b.kill();
    b.restart();
    let end = Instant::now() + Duration::from_secs(10);
    while !d.closed {
        assert!(Instant::now() < end);
        d.turn().unwrap();
    }
    d.reconnect(b.tcp_port);
    let ev = d.until(10, |e| {
        e.iter().filter(|x| matches!(x, E::Delivered(_))).count() == 6
            && e.iter().any(|x| matches!(x, E::Subscribed(..)))
    });
    assert_eq!(ev[0], E::Connected(false), "{ev:?}");
    // The subscription was replayed: a message published now reaches us.
    common::mosquitto_pub(
        "127.0.0.1",
        b.tcp_port,
        &["-t", "qm/rs/in", "-m", "after", "-q", "1"],
    );
    d.until(5, |e| {
        e.contains(&E::Msg(
            "qm/rs/in".into(),
            b"after".to_vec(),
            QoS::AtLeastOnce,
        ))
    });
}

#[test]
fn oversize_incoming_message_is_acknowledged_discarded_and_counted() {
    // MQTT 3.1.1: a PUBLISH over max_packet_size is read past and acknowledged (a broker would resend it for
    // ever otherwise); the connection stays up and the next message arrives. (Other oversize packets stay
    // protocol errors naming max_packet_size: see session_flows.)
    let b = common::Broker::start();
    let mut c = cfg("qmqtt-oversize");
    c.max_packet_size = 1024;
    let (mut d, _) = Driver::connected(b.tcp_port, c);
    d.s.subscribe("qm/big", QoS::AtLeastOnce, Instant::now())
        .unwrap();
    d.until(5, |e| !e.is_empty());
    for (msg, qos) in [
        ("x".repeat(2000), "1"),
        ("y".repeat(5000), "2"),
        ("small".to_string(), "1"),
    ] {
        common::mosquitto_pub(
            "127.0.0.1",
            b.tcp_port,
            &["-t", "qm/big", "-q", qos, "-m", &msg],
        );
    }
    let ev = d.until(5, |e| !e.is_empty());
    assert_eq!(
        ev,
        [E::Msg("qm/big".into(), b"small".to_vec(), QoS::AtLeastOnce)]
    );
    assert_eq!(d.s.oversize_dropped(), 2);
    assert_eq!(d.s.state(), State::Connected);
}
