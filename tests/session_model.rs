//! Model-based property test of the session: random interleavings of publishes, broker responses in random
//! order, broker-initiated QoS 0/1/2 messages (with duplicates), timer ticks, transport drops and reconnects
//! with a random session-present flag. A simple broker model answers from what the session sends.
//!
//! Asserted throughout: no panic; never more QoS 1/2 messages in flight than the window; packet ids unique
//! among messages in flight; `Delivered` only for a message the broker acknowledged, and at most once; an
//! incoming QoS 2 message delivered at most once (exactly once when it reached PUBREC). At the end the
//! connection is brought back and the broker acknowledges everything: every token is then delivered exactly
//! once.
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use qmqtt::codec::{self, decode, DecodeOptions, Packet, Protocol, QoS};
use qmqtt::session::{Event, Session, SessionConfig};

#[derive(Debug, Clone)]
enum Cmd {
    Publish(QoS),
    /// Broker sends one of its pending responses (index modulo the count).
    Respond(usize),
    /// Broker sends a fresh message to the client.
    Incoming(QoS),
    /// Broker resends one of its unacknowledged QoS 2 messages (DUP).
    IncomingDup(usize),
    /// Subscribe to filter `f/<n % 4>`.
    Subscribe(u8),
    /// Broker reads what the client sent so far.
    Read,
    Tick(u8),
    Drop,
    Reconnect(bool),
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let qos = prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ];
    prop_oneof![
        6 => qos.clone().prop_map(Cmd::Publish),
        8 => any::<usize>().prop_map(Cmd::Respond),
        2 => qos.prop_map(Cmd::Incoming),
        1 => any::<usize>().prop_map(Cmd::IncomingDup),
        6 => Just(Cmd::Read),
        1 => any::<u8>().prop_map(Cmd::Subscribe),
        1 => any::<u8>().prop_map(Cmd::Tick),
        1 => Just(Cmd::Drop),
        1 => any::<bool>().prop_map(Cmd::Reconnect),
    ]
}

/// The broker's state of one client-to-broker response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    PubAck(u16),
    PubRec(u16),
    /// With the token the broker accepted on PUBREL (None: it had forgotten the PUBLISH).
    PubComp(u16, Option<u64>),
    PingResp,
    SubAck(u16),
}

/// A broker-to-client QoS 2 message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InState {
    /// PUBLISH sent, waiting for PUBREC.
    Sent,
    /// PUBREC received (client has it), PUBREL to send.
    Released,
}

struct World {
    s: Session,
    t0: Instant,
    now: f64,
    window: usize,
    connected: bool,
    next_token: u64,
    // Outgoing (client → broker) bookkeeping.
    published: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
    /// In-flight token → its packet id (as last seen on the wire).
    inflight_ids: BTreeMap<u64, u16>,
    owner: HashMap<u16, u64>,
    responses: Vec<Answer>,
    // Incoming (broker → client).
    next_content: u64,
    in_pkid: u16,
    in_q2: BTreeMap<u16, (u64, InState)>,
    in_delivered: BTreeMap<u64, usize>,
    in_must: BTreeSet<u64>,
    /// PUBRELs the broker owes, sent at the next step (keeps `pump` non-reentrant).
    rel_queue: Vec<u16>,
    qos_of: HashMap<u64, QoS>,
    /// Bytes sent by the client, not yet read by the broker (lost on a drop).
    wire: Vec<u8>,
    /// QoS 2 messages the broker has received (PUBREC sent), awaiting PUBREL: packet id → token.
    broker_q2: HashMap<u16, u64>,
    /// Packet ids of SUBSCRIBEs seen and not yet answered.
    sub_ids: BTreeSet<u16>,
}

impl World {
    fn new(window: u16) -> World {
        let cfg = SessionConfig {
            keep_alive: Duration::from_secs(30),
            response_timeout: Duration::from_secs(10),
            clean_session: false,
            max_inflight: window,
            ..common::session::config("model", Protocol::V311)
        };
        World {
            s: Session::new(cfg),
            t0: Instant::now(),
            now: 0.0,
            window: window as usize,
            connected: false,
            next_token: 1,
            published: BTreeSet::new(),
            acked: BTreeSet::new(),
            delivered: BTreeSet::new(),
            inflight_ids: BTreeMap::new(),
            owner: HashMap::new(),
            responses: Vec::new(),
            next_content: 1,
            in_pkid: 0,
            in_q2: BTreeMap::new(),
            in_delivered: BTreeMap::new(),
            in_must: BTreeSet::new(),
            rel_queue: Vec::new(),
            qos_of: HashMap::new(),
            wire: Vec::new(),
            broker_q2: HashMap::new(),
            sub_ids: BTreeSet::new(),
        }
    }
    fn t(&self) -> Instant {
        self.t0 + Duration::from_secs_f64(self.now)
    }

    /// Hand bytes to the session; on a session error the driver drops the transport.
    fn feed(&mut self, p: Packet<'_>) {
        let mut b = Vec::new();
        p.encode(Protocol::V311, &mut b).unwrap();
        let t = self.t();
        if self.s.handle_read(&b, t).is_err() {
            self.drop_transport();
        }
        self.pump();
    }

    fn drop_transport(&mut self) {
        self.s.handle_disconnected();
        self.connected = false;
        self.responses.clear();
        self.rel_queue.clear();
        self.wire.clear();
        // Unanswered SUBSCRIBEs are resent with the same ids after the reconnect.
        self.sub_ids.clear();
    }

    /// Move the session's output to the broker model and its events to the bookkeeping.
    fn pump(&mut self) {
        loop {
            let mut out = Vec::new();
            self.s.poll_transmit(&mut out);
            if self.connected {
                self.wire.extend_from_slice(&out);
            }
            let mut any = false;
            while let Some(e) = self.s.poll_event() {
                any = true;
                match e {
                    Event::Connected { .. } => {}
                    Event::Delivered { token, .. } => {
                        assert!(
                            self.acked.contains(&token),
                            "Delivered {token} before the broker acknowledged it"
                        );
                        assert!(self.delivered.insert(token), "Delivered {token} twice");
                        if let Some(id) = self.inflight_ids.remove(&token) {
                            self.owner.remove(&id);
                        }
                    }
                    Event::Message {
                        topic,
                        payload,
                        qos,
                        ..
                    } => {
                        assert_eq!(topic, "in");
                        let c = u64::from_be_bytes(payload.try_into().unwrap());
                        let n = self.in_delivered.entry(c).or_default();
                        *n += 1;
                        if qos == QoS::ExactlyOnce {
                            assert_eq!(*n, 1, "incoming QoS 2 message {c} delivered twice");
                        }
                    }
                    Event::Subscribed { filter, granted } => {
                        assert!(filter.starts_with("f/"));
                        assert_eq!(granted, Some(QoS::AtLeastOnce));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if out.is_empty() && !any {
                break;
            }
        }
        assert!(
            self.s.inflight() <= self.window,
            "in flight {} > window {}",
            self.s.inflight(),
            self.window
        );
        assert_eq!(self.s.inflight() + self.s.inflight_free(), self.window);
    }

    /// The broker reads everything on the wire.
    fn broker_read(&mut self) {
        let wire = std::mem::take(&mut self.wire);
        let mut b = &wire[..];
        while !b.is_empty() {
            let (p, n) = decode(b, &DecodeOptions::default())
                .unwrap()
                .expect("session sends whole packets");
            b = &b[n..];
            self.broker_receives(p);
        }
    }

    fn broker_receives(&mut self, p: Packet<'_>) {
        match p {
            Packet::Connect(c) => assert_eq!(c.client_id, "model"),
            Packet::Publish(p) => {
                let token = u64::from_be_bytes(p.payload.try_into().unwrap());
                assert!(self.published.contains(&token));
                if p.qos == QoS::AtMostOnce {
                    return;
                }
                assert!(
                    !self.delivered.contains(&token),
                    "token {token} resent after Delivered"
                );
                // Unique among in-flight messages.
                if let Some(&other) = self.owner.get(&p.pkid) {
                    assert_eq!(
                        other, token,
                        "packet id {} used by {other} and {token} at once",
                        p.pkid
                    );
                }
                if let Some(old) = self.inflight_ids.insert(token, p.pkid) {
                    if old != p.pkid {
                        self.owner.remove(&old);
                    }
                }
                self.owner.insert(p.pkid, token);
                assert!(
                    !self.sub_ids.contains(&p.pkid),
                    "packet id {} used by a PUBLISH and a SUBSCRIBE",
                    p.pkid
                );
                if p.qos == QoS::AtLeastOnce {
                    self.responses.push(Answer::PubAck(p.pkid));
                } else {
                    self.broker_q2.insert(p.pkid, token);
                    self.responses.push(Answer::PubRec(p.pkid));
                }
            }
            Packet::PubRel(r) => {
                // Method B: the broker takes ownership of a QoS 2 message on PUBREL, if it still has it.
                let accepted = self.broker_q2.remove(&r.pkid);
                if let Some(t) = accepted {
                    self.acked.insert(t);
                }
                self.responses.push(Answer::PubComp(r.pkid, accepted));
            }
            Packet::PingReq => self.responses.push(Answer::PingResp),
            Packet::PubAck(_) => {}
            Packet::Subscribe(sub) => {
                assert!(
                    !self.owner.contains_key(&sub.pkid),
                    "packet id {} used by a PUBLISH and a SUBSCRIBE",
                    sub.pkid
                );
                assert!(
                    self.sub_ids.insert(sub.pkid),
                    "packet id {} used by two SUBSCRIBEs",
                    sub.pkid
                );
                self.responses.push(Answer::SubAck(sub.pkid));
            }
            Packet::PubRec(r) => {
                if let Some(e) = self.in_q2.get_mut(&r.pkid) {
                    e.1 = InState::Released;
                    self.in_must.insert(e.0);
                }
                // Broker answers with PUBREL at once.
                self.pending_pubrel(r.pkid);
            }
            Packet::PubComp(c) => {
                if let Some((_, InState::Released)) = self.in_q2.get(&c.pkid) {
                    self.in_q2.remove(&c.pkid);
                }
            }
            Packet::Disconnect(_) => {}
            other => panic!("client sent {other:?}"),
        }
    }

    fn pending_pubrel(&mut self, pkid: u16) {
        if self.connected {
            // Deliver the PUBREL through the normal path after this pump round.
            self.rel_queue.push(pkid);
        }
    }
}

fn run(window: u16, cmds: Vec<Cmd>) {
    let mut w = World::new(window);
    for c in cmds {
        step(&mut w, c);
    }
    // Quiesce: reconnect (keeping the session and not) and let the broker answer everything.
    for sp in [false, true] {
        w.drop_transport();
        connect(&mut w, sp);
        for _ in 0..10_000 {
            if w.responses.is_empty() && w.rel_queue.is_empty() && w.wire.is_empty() {
                break;
            }
            step(&mut w, Cmd::Read);
            step(&mut w, Cmd::Respond(0));
        }
    }
    let expected: BTreeSet<u64> = w
        .published
        .iter()
        .copied()
        .filter(|t| w.qos_of[t] != QoS::AtMostOnce)
        .collect();
    assert_eq!(
        w.delivered, expected,
        "every QoS 1/2 token delivered exactly once"
    );
    assert_eq!(w.s.inflight(), 0);
    for c in &w.in_must {
        assert_eq!(
            w.in_delivered.get(c),
            Some(&1),
            "incoming QoS 2 {c} that reached PUBREC delivered once"
        );
    }
}

fn connect(w: &mut World, session_present: bool) {
    if w.connected {
        return;
    }
    let t = w.t();
    w.s.handle_connected(t);
    w.connected = true;
    if !session_present {
        // The broker forgot its half of the QoS 2 flows.
        w.in_q2.clear();
        w.broker_q2.clear();
    }
    w.pump();
    w.broker_read();
    w.feed(Packet::ConnAck(codec::ConnAck::new(
        session_present,
        codec::ConnectReturnCode::Accepted,
    )));
    if session_present {
        // Broker resends its unfinished QoS 2 messages / PUBRELs.
        let pending: Vec<(u16, (u64, InState))> = w.in_q2.iter().map(|(k, v)| (*k, *v)).collect();
        for (pkid, (c, st)) in pending {
            match st {
                InState::Sent => {
                    let payload = c.to_be_bytes();
                    w.feed(Packet::Publish(codec::Publish {
                        dup: true,
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        topic: "in",
                        pkid,
                        payload: &payload,
                        properties: codec::Properties::EMPTY,
                    }))
                }
                InState::Released => w.feed(Packet::PubRel(codec::PubRel::new(pkid))),
            }
        }
    }
}

fn step(w: &mut World, c: Cmd) {
    // Owed PUBRELs go out first.
    while let Some(pkid) = w.rel_queue.pop() {
        if w.connected {
            w.feed(Packet::PubRel(codec::PubRel::new(pkid)));
        }
    }
    match c {
        Cmd::Publish(qos) => {
            let token = w.next_token;
            let can = w.s.can_publish(qos);
            let t = w.t();
            let payload = token.to_be_bytes();
            let r = w.s.publish(token, "out", &payload, qos, false, t);
            assert_eq!(
                r.is_ok(),
                can,
                "publish result {r:?} disagrees with can_publish"
            );
            if r.is_ok() {
                w.next_token += 1;
                w.published.insert(token);
                w.qos_of.insert(token, qos);
            }
            w.pump();
        }
        Cmd::Respond(i) => {
            if !w.connected || w.responses.is_empty() {
                return;
            }
            let r = w.responses.remove(i % w.responses.len());
            match r {
                Answer::PubAck(id) => {
                    w.acked.insert(w.owner[&id]);
                    w.feed(Packet::PubAck(codec::PubAck::new(id)));
                }
                Answer::PubRec(id) => w.feed(Packet::PubRec(codec::PubRec::new(id))),
                Answer::PubComp(id, accepted) => {
                    let _ = accepted;
                    w.feed(Packet::PubComp(codec::PubComp::new(id)));
                }
                Answer::PingResp => w.feed(Packet::PingResp),
                Answer::SubAck(id) => {
                    w.sub_ids.remove(&id);
                    w.feed(Packet::SubAck(codec::SubAck {
                        pkid: id,
                        return_codes: &[1],
                        properties: codec::Properties::EMPTY,
                    }));
                }
            }
        }
        Cmd::Incoming(qos) => {
            if !w.connected {
                return;
            }
            let c = w.next_content;
            w.next_content += 1;
            let pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                // A broker id not in use by its unfinished QoS 2 messages.
                loop {
                    w.in_pkid = w.in_pkid.wrapping_add(1).max(1);
                    if !w.in_q2.contains_key(&w.in_pkid) {
                        break w.in_pkid;
                    }
                }
            };
            if qos == QoS::ExactlyOnce {
                w.in_q2.insert(pkid, (c, InState::Sent));
            }
            let payload = c.to_be_bytes();
            w.feed(Packet::Publish(codec::Publish {
                dup: false,
                qos,
                retain: false,
                topic: "in",
                pkid,
                payload: &payload,
                properties: codec::Properties::EMPTY,
            }));
        }
        Cmd::IncomingDup(i) => {
            if !w.connected {
                return;
            }
            let sent: Vec<(u16, u64)> = w
                .in_q2
                .iter()
                .filter(|(_, v)| v.1 == InState::Sent)
                .map(|(k, v)| (*k, v.0))
                .collect();
            if sent.is_empty() {
                return;
            }
            let (pkid, c) = sent[i % sent.len()];
            let payload = c.to_be_bytes();
            w.feed(Packet::Publish(codec::Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "in",
                pkid,
                payload: &payload,
                properties: codec::Properties::EMPTY,
            }));
        }
        Cmd::Tick(secs) => {
            w.now += secs as f64 / 4.0;
            let t = w.t();
            if w.s.handle_timeout(t).is_err() {
                w.drop_transport();
            }
            w.pump();
        }
        Cmd::Subscribe(n) => {
            let t = w.t();
            let r = w.s.subscribe(&format!("f/{}", n % 4), QoS::AtLeastOnce, t);
            assert_eq!(r.is_ok(), w.s.is_connected(), "{r:?}");
            w.pump();
        }
        Cmd::Read => {
            if w.connected {
                w.broker_read();
            }
        }
        Cmd::Drop => w.drop_transport(),
        Cmd::Reconnect(sp) => connect(w, sp),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn session_against_model(window in 1u16..6, cmds in prop::collection::vec(cmd(), 0..200)) {
        run(window, cmds);
    }
}

#[test]
fn model_smoke() {
    use Cmd::*;
    run(
        2,
        vec![
            Reconnect(false),
            Publish(QoS::AtLeastOnce),
            Publish(QoS::ExactlyOnce),
            Publish(QoS::ExactlyOnce),
            Respond(1),
            Incoming(QoS::ExactlyOnce),
            IncomingDup(0),
            Drop,
            Reconnect(true),
            Respond(0),
            Respond(0),
            Publish(QoS::AtLeastOnce),
        ],
    );
}
