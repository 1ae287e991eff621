//! Broker crashes under a steady load: mosquitto is SIGKILLed twice in the middle of a numbered QoS 1
//! stream and restarted after a while (persistence on, and off), and restarted cleanly in a QoS 2 stream.
//! The publisher is a `Client` with a persistent session; an independent `Client` subscriber on the same
//! broker counts distinct sequence numbers.
//!
//! What can be asserted, exactly:
//! - A message the broker has not acknowledged when it dies is still qmqtt's: it must arrive (it is resent
//!   after the reconnect, or it was already on its way). A message the dead broker had acknowledged
//!   (PUBACK) but not yet passed on is the broker's: mosquitto saves its state every `autosave_interval`
//!   (1 s here), so a SIGKILL can lose what it acknowledged since — counted and printed as "lost by the
//!   broker", not asserted.
//! - Without persistence the subscriber's session dies with the broker too: its client subscribes again
//!   by itself. MQTT delivers a message only to the subscriptions that exist when the broker gets it, so
//!   the publisher reaches the broker through a proxy that refuses from the crash until the subscriber's
//!   new SUBACK: then every message the publisher sends is sent while the subscriber is subscribed, and
//!   the same rule holds: all but what the dead broker had acknowledged must arrive.
//! - A clean restart (SIGTERM: state saved) keeps both sessions: QoS 2 arrives exactly once.
mod common;
#[path = "common/fault.rs"]
mod fault;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use fault::{Counter, Load, PubLog};
use qmqtt::client::Client;
use qmqtt::QoS;

struct Kill {
    at: Duration,
    dead_for: Duration,
}

/// What happened around the broker crashes.
struct Crashes {
    /// Messages acknowledged (Delivered) by each broker instance before it died, by sequence number.
    acked_before_kill: Vec<bool>,
    /// Restart instants (fault ends).
    ends: Vec<Instant>,
    kills: usize,
    /// The publisher's gate (persistence off), kept open until the end of the test.
    gate: Option<Proxy>,
}

fn crash_run(
    name: &str,
    qos: QoS,
    persistence: bool,
    kills: &[Kill],
    sigkill: bool,
) -> (PubLog, Counter, Client, Crashes, common::Broker, Instant) {
    let mut b = common::Broker::start_with(common::BrokerOptions {
        persistence,
        // QoS 2: the broker's packet log, to tell its duplicates from ours (see `qos2_slips`).
        extra: if qos == QoS::ExactlyOnce {
            "log_type all\n".into()
        } else {
            String::new()
        },
        ..Default::default()
    });
    let topic = format!("fault/{name}");
    let sub = Counter::start(&b.tcp_uri(), &format!("sub-{name}"), &topic, qos);
    // Without persistence the subscriber must subscribe again before anything reaches the new broker
    // (MQTT delivers only to existing subscriptions): the publisher goes through a proxy whose port
    // refuses from the crash until the subscriber's new SUBACK.
    let gate = (!persistence).then(|| Proxy::start(b.tcp_port));
    let uri = gate
        .as_ref()
        .map_or_else(|| b.tcp_uri(), |p| p.uri("tcp", "127.0.0.1"));
    let mut k = fault::cfg(&uri, &format!("pub-{name}"));
    k.clean_session = false;
    k.queue_bytes = 64 << 20;
    k.queue_messages = 1_000_000;
    let c = Client::connect(k).unwrap();
    c.wait_connected(Duration::from_secs(10)).unwrap();
    // Both sessions reach mosquitto's disk before the first crash (autosave every second, checked on
    // whole seconds: up to 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    let last = kills.last().unwrap();
    let dur = last.at + last.dead_for + Duration::from_secs(3);
    let load = Load::new(&topic, qos, fault::pick(500, 1000), dur);
    let mut log = PubLog::default();
    let mut cr = Crashes {
        acked_before_kill: Vec::new(),
        ends: Vec::new(),
        kills: 0,
        gate: None,
    };
    let mut i = 0;
    let mut dead = false;
    let t0 = Instant::now();
    load.run(&c, &mut log, |el, log| {
        let Some(kl) = kills.get(i) else { return };
        if !dead && el >= kl.at {
            let losses = log.lost.len();
            if let Some(p) = &gate {
                p.refuse(true);
            }
            if sigkill {
                b.kill();
            } else {
                b.stop();
            }
            cr.kills += 1;
            // Every acknowledgement from the dead broker precedes the ConnectionLost event.
            let until = Instant::now() + Duration::from_secs(5);
            while log.lost.len() == losses && Instant::now() < until {
                fault::readable(c.event_fd(), 10);
                log.drain(&c);
            }
            assert!(
                log.lost.len() > losses,
                "the client did not notice the broker dying"
            );
            cr.acked_before_kill
                .resize(log.delivered.len().max(cr.acked_before_kill.len()), false);
            for (q, &d) in log.delivered.iter().enumerate() {
                if d > 0 {
                    cr.acked_before_kill[q] = true;
                }
            }
            dead = true;
        } else if dead && el >= kl.at + kl.dead_for {
            b.restart();
            cr.ends.push(Instant::now());
            if let Some(p) = &gate {
                let until = Instant::now() + Duration::from_secs(10);
                while sub.st.lock().unwrap().subscribed.len() < i + 2 {
                    assert!(
                        Instant::now() < until,
                        "the subscriber did not subscribe again"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                p.refuse(false);
            }
            dead = false;
            i += 1;
        }
    });
    cr.gate = gate;
    (log, sub, c, cr, b, t0)
}

/// Split the missing numbers into (qmqtt's: not acknowledged before a crash, broker's: acknowledged).
fn classify(missing: &[u64], cr: &Crashes) -> (Vec<u64>, Vec<u64>) {
    missing.iter().partition(|&&q| {
        !cr.acked_before_kill
            .get(q as usize)
            .copied()
            .unwrap_or(false)
    })
}

fn kills() -> Vec<Kill> {
    let dead = fault::pick(Duration::from_millis(1500), Duration::from_secs(30));
    vec![
        Kill {
            at: Duration::from_secs(2),
            dead_for: dead,
        },
        Kill {
            at: Duration::from_secs(2) + dead + Duration::from_secs(3),
            dead_for: dead,
        },
    ]
}

#[test]
fn fault_broker_sigkill_persistent_qos1() {
    let name = "fault_broker_sigkill_persistent_qos1";
    let ks = kills();
    let (mut log, sub, c, cr, b, t0) = crash_run(name, QoS::AtLeastOnce, true, &ks, true);
    let settled = fault::settle(&c, &mut log, &sub, &HashSet::new(), Duration::from_secs(30));
    let n = log.published();
    let missing = sub.missing(n);
    let (ours, brokers) = classify(&missing, &cr);
    let (extra, dup_seqs) = sub.dups();
    let rec = fault::recoveries(&log, &sub, &cr.ends);
    let (rmax, rmean, never) = fault::summarize(&rec);
    let st = c.stats();
    let sess: Vec<bool> = sub
        .st
        .lock()
        .unwrap()
        .connected
        .iter()
        .map(|x| x.1)
        .collect();
    fault::report(
        name,
        &format!(
            "QoS 1 broker SIGKILLed {}x (dead {:?} each), persistence on: {n} msgs; lost {} (by qmqtt {}, \
             by the broker after its PUBACK {}), duplicates {extra} ({dup_seqs} numbers), reconnects {}, \
             recovery max {} mean {}, publish max {:?}, total {:.1} s",
            cr.kills,
            ks[0].dead_for,
            missing.len(),
            ours.len(),
            brokers.len(),
            st.reconnects,
            fault::ms(rmax),
            fault::ms(rmean),
            log.max_call,
            t0.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(cr.kills, 2);
    assert!(
        ours.is_empty(),
        "{} messages the broker never acknowledged were lost: {:?}; {st:?}\n{}",
        ours.len(),
        &ours[..ours.len().min(20)],
        b.log()
    );
    // The subscriber's session came back from disk (it was saved before the first crash).
    assert!(
        sess.iter().skip(1).all(|&p| p),
        "subscriber sessions present: {sess:?}"
    );
    assert_eq!(sub.dropped(), 0);
    assert_eq!(log.delivered_twice(), 0);
    assert!(settled || !brokers.is_empty(), "not settled: {st:?}");
    assert_eq!(
        log.delivered_n, n,
        "every message acknowledged in the end: {st:?}"
    );
    assert_eq!(never, 0, "no new data after a restart: {rec:?}");
    assert!(st.reconnects >= 2);
}

#[test]
fn fault_broker_sigkill_volatile_qos1() {
    let name = "fault_broker_sigkill_volatile_qos1";
    let ks = kills();
    let (mut log, sub, c, cr, b, t0) = crash_run(name, QoS::AtLeastOnce, false, &ks, true);
    let settled = fault::settle(&c, &mut log, &sub, &HashSet::new(), Duration::from_secs(30));
    let n = log.published();
    let missing = sub.missing(n);
    let sess: Vec<bool> = sub
        .st
        .lock()
        .unwrap()
        .connected
        .iter()
        .map(|x| x.1)
        .collect();
    let resubs = sub.st.lock().unwrap().subscribed.len() - 1;
    let (ours, brokers) = classify(&missing, &cr);
    let (extra, dup_seqs) = sub.dups();
    let rec = fault::recoveries(&log, &sub, &cr.ends);
    let (rmax, rmean, never) = fault::summarize(&rec);
    let st = c.stats();
    fault::report(
        name,
        &format!(
            "QoS 1 broker SIGKILLed {}x (dead {:?} each), persistence off, subscriber resubscribes: {n} msgs; \
             lost {} (by qmqtt {}, by the broker after its PUBACK {}), duplicates {extra} ({dup_seqs} \
             numbers), reconnects {}, recovery max {} mean {}, publish max {:?}, total {:.1} s",
            cr.kills,
            ks[0].dead_for,
            missing.len(),
            ours.len(),
            brokers.len(),
            st.reconnects,
            fault::ms(rmax),
            fault::ms(rmean),
            log.max_call,
            t0.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(cr.kills, 2);
    // Each restart lost the subscriber's session; its client subscribed again by itself.
    assert_eq!(resubs, 2, "re-subscriptions");
    assert!(
        sess.iter().skip(1).all(|&p| !p),
        "no session after a volatile restart: {sess:?}"
    );
    assert!(
        ours.is_empty(),
        "{} messages the broker never acknowledged were lost: {:?}; {st:?}\n{}",
        ours.len(),
        &ours[..ours.len().min(20)],
        b.log()
    );
    assert_eq!(sub.dropped(), 0);
    assert_eq!(log.delivered_twice(), 0);
    assert!(settled || !brokers.is_empty(), "not settled: {st:?}");
    assert_eq!(
        log.delivered_n, n,
        "every message acknowledged in the end: {st:?}"
    );
    assert_eq!(never, 0, "no new data after a restart: {rec:?}");
}

#[test]
fn fault_broker_clean_restart_persistent_qos2() {
    let name = "fault_broker_clean_restart_persistent_qos2";
    let ks = kills();
    let (mut log, sub, c, cr, b, t0) = crash_run(name, QoS::ExactlyOnce, true, &ks, false);
    let settled = fault::settle(&c, &mut log, &sub, &HashSet::new(), Duration::from_secs(30));
    let n = log.published();
    let missing = sub.missing(n);
    let (extra, dup_seqs) = sub.dups();
    let rec = fault::recoveries(&log, &sub, &cr.ends);
    let (rmax, rmean, never) = fault::summarize(&rec);
    let st = c.stats();
    let (broker_slips, pub_slips) =
        qos2_slips(&b.log(), &format!("sub-{name}"), &format!("pub-{name}"));
    fault::report(
        name,
        &format!(
            "QoS 2 broker stopped (SIGTERM) and restarted {}x (down {:?} each), persistence on: {n} msgs; \
             lost {}, duplicates {extra} ({dup_seqs} numbers; mosquitto re-sent PUBLISH for {broker_slips} \
             QoS 2 flows it had already released, qmqtt for {pub_slips}), reconnects {}, recovery max {} \
             mean {}, total {:.1} s",
            cr.kills,
            ks[0].dead_for,
            missing.len(),
            st.reconnects,
            fault::ms(rmax),
            fault::ms(rmean),
            t0.elapsed().as_secs_f64()
        ),
    );
    assert!(
        missing.is_empty(),
        "lost {:?}; {st:?}\n{}",
        &missing[..missing.len().min(20)],
        b.log()
    );
    // Exactly once, except where mosquitto itself breaks the QoS 2 flow: every extra copy must be
    // explained by a PUBLISH it re-sent for a flow it had already released (PUBREL sent), which the
    // subscriber, having completed that packet id, must take as a new message.
    assert_eq!(
        pub_slips, 0,
        "qmqtt re-sent PUBLISH for a QoS 2 flow the broker had released"
    );
    assert!(
        extra <= broker_slips,
        "QoS 2: {extra} duplicates, only {broker_slips} explained by the broker's re-sends"
    );
    assert!(settled);
    assert_eq!(sub.dropped(), 0);
    assert_eq!(log.delivered_twice(), 0);
    assert_eq!(never, 0);
}

/// From mosquitto's packet log (`log_type all`): (PUBLISH re-sent by the broker to `sub` with DUP for a
/// packet id it had already sent PUBREL for, and not reused since; PUBLISH re-sent by `publ` with DUP for
/// a packet id the broker had already received PUBREL for and not yet answered with PUBCOMP). Both break
/// MQTT 3.1.1 §4.3.3/§4.4 (after PUBREL only PUBREL may be re-sent); the receiver has completed that id and
/// must take the PUBLISH as a new message, so each can make a duplicate. Once the broker has sent PUBCOMP
/// the publisher may have freed the id and reused it: a new message on that id whose first send the
/// stopping broker never read comes again with DUP, rightly (with a window of 100, qmqtt reuses an id after
/// 655 uses of its slot, and the busiest slots get there within this test). A slip after a PUBCOMP the
/// publisher never received shows as a duplicate the broker's re-sends do not explain.
fn qos2_slips(log: &str, sub: &str, publ: &str) -> (u64, u64) {
    use std::collections::HashSet;
    fn mid_after<'a>(l: &'a str, pat: &str) -> Option<&'a str> {
        let i = l.find(pat)? + pat.len();
        let rest = &l[i..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }
    let (mut sub_rel, mut pub_rel) = (HashSet::new(), HashSet::new());
    let (mut broker, mut ours) = (0, 0);
    for l in log.lines() {
        if l.contains(&format!("Sending PUBREL to {sub} ")) {
            sub_rel.extend(mid_after(l, "(m").map(str::to_owned));
        } else if l.contains(&format!("Sending PUBLISH to {sub} ")) {
            if let Some(m) = mid_after(l, ", m") {
                if l.contains("(d1, q2,") && sub_rel.contains(m) {
                    broker += 1;
                }
                sub_rel.remove(m);
            }
        } else if l.contains(&format!("Received PUBREL from {publ} ")) {
            pub_rel.extend(mid_after(l, "(Mid: ").map(str::to_owned));
        } else if l.contains(&format!("Sending PUBCOMP to {publ} ")) {
            if let Some(m) = mid_after(l, "(m") {
                pub_rel.remove(m);
            }
        } else if l.contains(&format!("Received PUBLISH from {publ} ")) {
            if let Some(m) = mid_after(l, ", m") {
                if l.contains("(d1, q2,") && pub_rel.contains(m) {
                    ours += 1;
                }
                pub_rel.remove(m);
            }
        }
    }
    (broker, ours)
}

#[test]
fn qos2_slips_reads_mosquittos_packet_log() {
    let (s, p) = ("sub-x", "pub-x");
    let line = |t: &str| format!("1796617572: {t}\n");
    let publish = |d: u8, m: u16| {
        line(&format!(
            "Received PUBLISH from {p} (d{d}, q2, r0, m{m}, 't', ... (8 bytes))"
        ))
    };
    let pubrel = |m: u16| line(&format!("Received PUBREL from {p} (Mid: {m})"));
    let pubcomp = |m: u16| line(&format!("Sending PUBCOMP to {p} (m{m})"));
    // After PUBREL and before PUBCOMP, only PUBREL may come again.
    let slip = [publish(0, 7), pubrel(7), publish(1, 7)].concat();
    assert_eq!(qos2_slips(&slip, s, p), (0, 1));
    // After PUBCOMP the id is free: a new message on it may come with DUP (its first send was lost).
    let reuse = [publish(0, 7), pubrel(7), pubcomp(7), publish(1, 7)].concat();
    assert_eq!(qos2_slips(&reuse, s, p), (0, 0));
    // A PUBLISH re-sent with DUP before any PUBREL is the normal retry.
    assert_eq!(
        qos2_slips(&[publish(0, 9), publish(1, 9)].concat(), s, p),
        (0, 0)
    );
    // The broker's side: PUBLISH with DUP to the subscriber after its PUBREL for that id.
    let broker = format!(
        "{}{}",
        line(&format!("Sending PUBREL to {s} (m5)")),
        line(&format!(
            "Sending PUBLISH to {s} (d1, q2, r0, m5, 't', ... (8 bytes))"
        ))
    );
    assert_eq!(qos2_slips(&broker, s, p), (1, 0));
}
