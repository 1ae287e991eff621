//! Link faults under a steady load: a `Client` publishes numbered messages through the fault proxy to a real
//! mosquitto while the proxy cuts the link every 1–2 s, stalls it for longer than the keep-alive, trickles
//! it, half-closes it, or refuses connections for a while. An independent subscriber (a second `Client`
//! directly on the broker, persistent session, a 64 MiB event queue it drains all the time) counts distinct
//! sequence numbers.
//!
//! Asserted for each: every message arrives (0 lost), every token is acknowledged exactly once to the owner,
//! the subscriber itself dropped nothing, the fault really broke the connection (where it should), and new
//! data flows again after the fault ends. QoS 2 variants also assert exactly once at the subscriber (the
//! broker keeps both sessions throughout). Duplicates (QoS 1) and recovery times are printed and written to
//! `target/reliability/<test>.txt`.
//!
//! `QMQTT_FAULT_LONG=1` runs minutes of faults instead of seconds. The scenario is tests/common/scenario.rs;
//! the soak, tests/fault_soak.rs.
mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/scenario.rs"]
mod scenario;

use std::time::{Duration, Instant};

use qmqtt::QoS;
use scenario::{scenario, Spec};

fn cut_every_1_to_2_s(name: &str, qos: QoS, tls: bool) {
    cuts(name, qos, tls, false)
}

fn cuts(name: &str, qos: QoS, tls: bool, mqtt5: bool) {
    let dur = fault::pick(Duration::from_secs(9), Duration::from_secs(120));
    let mut next = Duration::from_secs(1);
    let mut cuts = 0usize;
    scenario(
        Spec {
            name,
            what: format!(
                "link cut every 1-2 s{}{}",
                if tls { " (TLS)" } else { "" },
                if mqtt5 { " (MQTT 5)" } else { "" }
            ),
            qos,
            duration: dur,
            keep_alive: Duration::from_secs(2),
            min_losses: 3,
            tls,
            rate: None,
            mqtt5,
        },
        |el, ctl, _| {
            if el >= next && el + Duration::from_millis(500) < dur {
                ctl.p.cut();
                let now = Instant::now();
                ctl.starts.push(now);
                ctl.ends.push(now);
                cuts += 1;
                next = el + ctl.rand_ms(1000, 2000);
            }
        },
    );
    assert!(cuts >= 4);
}

/// MQTT 5: the session resumed through its expiry interval after every cut, topic aliases set up again on
/// every connection.
#[test]
fn fault_cut_mqtt5_qos1() {
    cuts("fault_cut_mqtt5_qos1", QoS::AtLeastOnce, false, true);
}

#[test]
fn fault_cut_mqtt5_tls_qos2() {
    cuts("fault_cut_mqtt5_tls_qos2", QoS::ExactlyOnce, true, true);
}

#[test]
fn fault_cut_qos1() {
    cut_every_1_to_2_s("fault_cut_qos1", QoS::AtLeastOnce, false);
}

/// The same over TLS: cuts land in the middle of TLS records; every reconnect is a new handshake.
#[test]
fn fault_cut_tls_qos1() {
    cut_every_1_to_2_s("fault_cut_tls_qos1", QoS::AtLeastOnce, true);
}

#[test]
fn fault_cut_qos2() {
    cut_every_1_to_2_s("fault_cut_qos2", QoS::ExactlyOnce, false);
}

/// The link stalls (bytes held, connections open and silent) for longer than the keep-alive: the client
/// must notice through the missing PINGRESP, drop the link and reconnect once the stall is over. Bytes the
/// client wrote into the stalled (abandoned) connections are delivered late to the broker when the stall
/// ends, as TCP would.
fn stall(name: &str, qos: QoS) {
    let len = fault::pick(Duration::from_secs(5), Duration::from_secs(60));
    let start = Duration::from_millis(1500);
    let dur = start + len + Duration::from_secs(4);
    let mut state = 0;
    let mut detected: Option<Duration> = None;
    let mut cause = String::new();
    let mut stall_at = None;
    scenario(
        Spec {
            name,
            what: format!("link stalled {len:?} with keep-alive 1 s"),
            qos,
            duration: dur,
            keep_alive: Duration::from_secs(1),
            min_losses: 1,
            tls: false,
            rate: None,
            mqtt5: false,
        },
        |el, ctl, log| {
            if state == 0 && el >= start {
                ctl.p.stall(true);
                let now = Instant::now();
                stall_at = Some(now);
                ctl.starts.push(now);
                state = 1;
            } else if state == 1 {
                if detected.is_none() {
                    if let Some((t, why)) = log.lost.first() {
                        detected = Some(t.duration_since(stall_at.unwrap()));
                        cause = why.clone();
                    }
                }
                if el >= start + len {
                    ctl.p.stall(false);
                    ctl.ends.push(Instant::now());
                    state = 2;
                }
            }
        },
    );
    let d = detected.expect("the stall was not detected while it lasted");
    eprintln!("{name}: stall detected after {d:?}");
    // Keep-alive 1 s + PINGRESP wait 1 s, plus the time to fill the window when the link stalls while
    // publishing, plus scheduling slack on a busy machine.
    assert!(
        d < common::slow(Duration::from_millis(4500)),
        "detected only after {d:?}"
    );
    assert!(
        cause.contains("PINGRESP"),
        "detected by the ping timeout: {cause}"
    );
}

#[test]
fn fault_stall_qos1() {
    stall("fault_stall_qos1", QoS::AtLeastOnce);
}

#[test]
fn fault_stall_qos2() {
    stall("fault_stall_qos2", QoS::ExactlyOnce);
}

/// A slow link: 2000 bytes/s each way while 500 messages/s (~20 KB/s) are published. Nothing is lost and
/// the backlog drains once the link is fast again.
fn trickle(name: &str, qos: QoS) {
    let len = fault::pick(Duration::from_secs(5), Duration::from_secs(60));
    let start = Duration::from_secs(1);
    let dur = start + len + Duration::from_secs(2);
    let mut state = 0;
    scenario(
        Spec {
            name,
            what: format!("link trickling 2000 B/s for {len:?}"),
            qos,
            duration: dur,
            keep_alive: Duration::from_secs(2),
            min_losses: 0,
            tls: false,
            rate: None,
            mqtt5: false,
        },
        |el, ctl, _| {
            if state == 0 && el >= start {
                ctl.p.trickle(Some(2000));
                ctl.starts.push(Instant::now());
                state = 1;
            } else if state == 1 && el >= start + len {
                ctl.p.trickle(None);
                ctl.ends.push(Instant::now());
                state = 2;
            }
        },
    );
}

#[test]
fn fault_trickle_qos1() {
    trickle("fault_trickle_qos1", QoS::AtLeastOnce);
}

#[test]
fn fault_trickle_qos2() {
    trickle("fault_trickle_qos2", QoS::ExactlyOnce);
}

/// The broker-to-client direction is shut down (the client reads EOF while its writes still go through),
/// every 2 s.
fn half_close(name: &str, qos: QoS) {
    let dur = fault::pick(Duration::from_secs(9), Duration::from_secs(120));
    let mut next = Duration::from_secs(1);
    scenario(
        Spec {
            name,
            what: "half-close (broker->client EOF) every 2 s".into(),
            qos,
            duration: dur,
            keep_alive: Duration::from_secs(2),
            min_losses: 3,
            tls: false,
            rate: None,
            mqtt5: false,
        },
        |el, ctl, _| {
            if el >= next && el + Duration::from_millis(500) < dur {
                ctl.p.half_close();
                let now = Instant::now();
                ctl.starts.push(now);
                ctl.ends.push(now);
                next = el + Duration::from_secs(2);
            }
        },
    );
}

#[test]
fn fault_half_close_qos1() {
    half_close("fault_half_close_qos1", QoS::AtLeastOnce);
}

#[test]
fn fault_half_close_qos2() {
    half_close("fault_half_close_qos2", QoS::ExactlyOnce);
}

/// The broker's port refuses connections (the link is cut and every reconnect gets ECONNREFUSED) for 5 s
/// (60 s long): messages wait in the queue, the client retries with backoff, and everything goes out when
/// the port opens again.
fn refuse(name: &str, qos: QoS) {
    let len = fault::pick(Duration::from_secs(5), Duration::from_secs(60));
    let start = Duration::from_secs(1);
    let dur = start + len + Duration::from_secs(3);
    let mut state = 0;
    let mut reconnecting_during = 0;
    scenario(
        Spec {
            name,
            what: format!("port refusing for {len:?}"),
            qos,
            duration: dur,
            keep_alive: Duration::from_secs(2),
            min_losses: 1,
            tls: false,
            rate: None,
            mqtt5: false,
        },
        |el, ctl, log| {
            if state == 0 && el >= start {
                ctl.p.refuse(true);
                ctl.p.cut();
                ctl.starts.push(Instant::now());
                state = 1;
            } else if state == 1 && el >= start + len {
                reconnecting_during = log.reconnecting.len();
                ctl.p.refuse(false);
                ctl.ends.push(Instant::now());
                state = 2;
            }
        },
    );
    // Backoff 100 ms .. 1 s: a handful of attempts per second at most, not a hot loop.
    let max = (len.as_secs() as usize + 1) * 10;
    eprintln!("{name}: {reconnecting_during} reconnect attempts while refused");
    assert!(
        (2..=max).contains(&reconnecting_during),
        "{reconnecting_during} attempts in {len:?}"
    );
}

#[test]
fn fault_refuse_qos1() {
    refuse("fault_refuse_qos1", QoS::AtLeastOnce);
}

#[test]
fn fault_refuse_qos2() {
    refuse("fault_refuse_qos2", QoS::ExactlyOnce);
}
