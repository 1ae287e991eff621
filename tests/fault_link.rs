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
//! `QMQTT_FAULT_LONG=1` runs minutes of faults instead of seconds (the soak: 30 minutes).
mod common;
#[path = "common/fault.rs"]
mod fault;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use fault::{Counter, Load, PubLog};
use qmqtt::client::Client;
use qmqtt::QoS;

/// What a fault schedule can touch and record.
struct Ctl<'a> {
    p: &'a Proxy,
    /// When each fault ended (for recovery times).
    ends: Vec<Instant>,
    /// When each fault started.
    starts: Vec<Instant>,
    rng: u64,
}

impl Ctl<'_> {
    fn rand_ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(lo + self.rng % (hi - lo + 1))
    }
}

struct Spec<'a> {
    name: &'a str,
    what: String,
    qos: QoS,
    duration: Duration,
    keep_alive: Duration,
    /// The fault must have dropped the publisher's connection at least this often.
    min_losses: usize,
    /// The publisher speaks TLS (through the proxy to the broker's TLS listener).
    tls: bool,
    /// Messages per second (default: 500, or 1000 in the long mode).
    rate: Option<u32>,
}

fn qname(q: QoS) -> &'static str {
    match q {
        QoS::AtMostOnce => "QoS 0",
        QoS::AtLeastOnce => "QoS 1",
        QoS::ExactlyOnce => "QoS 2",
    }
}

/// Run `spec` with `fault` called about every millisecond from the publishing thread; assert and report.
fn scenario(spec: Spec<'_>, mut fault: impl FnMut(Duration, &mut Ctl<'_>, &PubLog)) {
    let b = common::Broker::start();
    let p = Proxy::start(if spec.tls { b.tls_port } else { b.tcp_port });
    let topic = format!("fault/{}", spec.name);
    let sub = Counter::start(
        &b.tcp_uri(),
        &format!("sub-{}", spec.name),
        &topic,
        spec.qos,
    );
    let uri = if spec.tls {
        p.uri("ssl", "localhost")
    } else {
        p.uri("tcp", "127.0.0.1")
    };
    let mut k = fault::cfg(&uri, &format!("pub-{}", spec.name));
    if spec.tls {
        k.tls.ca_file = Some(b.certs.ca.clone());
    }
    k.clean_session = false;
    k.keep_alive = spec.keep_alive;
    k.connect_timeout = Duration::from_secs(2);
    // Room for a minute of messages waiting out a long fault (QMQTT_FAULT_LONG).
    k.queue_bytes = 64 << 20;
    k.queue_messages = 1_000_000;
    let c = Client::connect(k).unwrap();
    c.wait_connected(Duration::from_secs(10)).unwrap();
    let rate = spec.rate.unwrap_or(fault::pick(500, 1000));
    let load = Load::new(&topic, spec.qos, rate, spec.duration);
    let mut log = PubLog::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64 | 1);
    let mut ctl = Ctl {
        p: &p,
        ends: Vec::new(),
        starts: Vec::new(),
        rng: seed ^ 0x9e37_79b9_7f4a_7c15,
    };
    let t0 = Instant::now();
    load.run(&c, &mut log, |el, log| fault(el, &mut ctl, log));
    // Whatever the schedule left on is over now.
    p.stall(false);
    p.trickle(None);
    p.refuse(false);
    let settled = fault::settle(&c, &mut log, &sub, &HashSet::new(), Duration::from_secs(60));
    let n = log.published();
    let missing = sub.missing(n);
    let (extra, dup_seqs) = sub.dups();
    let rec = fault::recoveries(&log, &sub, &ctl.ends);
    let (rmax, rmean, never) = fault::summarize(&rec);
    let st = c.stats();
    let line = format!(
        "{} {}: {} msgs at {rate}/s over {:?}; lost {}, duplicates {extra} ({dup_seqs} numbers), \
         connection losses {}, reconnects {}, recovery max {} mean {} ({} faults), publish max {:?}, \
         total {:.1} s",
        qname(spec.qos),
        spec.what,
        n,
        spec.duration,
        missing.len(),
        log.lost.len(),
        st.reconnects,
        fault::ms(rmax),
        fault::ms(rmean),
        ctl.ends.len(),
        log.max_call,
        t0.elapsed().as_secs_f64(),
    );
    fault::report(spec.name, &line);
    for (t, cause) in log.lost.iter().take(3) {
        eprintln!("  lost at +{:?}: {cause}", t.duration_since(t0));
    }
    assert!(
        missing.is_empty(),
        "{} of {n} never arrived (first {:?}); publisher {st:?}; acked {}",
        missing.len(),
        &missing[..missing.len().min(20)],
        log.delivered_n
    );
    assert!(
        settled,
        "not all acknowledged: {} of {n}; {st:?}",
        log.delivered_n
    );
    assert_eq!(log.delivered_n, n, "every token acknowledged");
    assert_eq!(log.delivered_twice(), 0, "a token reported delivered twice");
    assert_eq!(
        sub.dropped(),
        0,
        "the subscriber dropped messages: the test is invalid"
    );
    if spec.qos == QoS::ExactlyOnce {
        assert_eq!(
            extra, 0,
            "QoS 2 must arrive exactly once: {dup_seqs} numbers twice"
        );
    }
    assert!(
        log.lost.len() >= spec.min_losses,
        "the fault should have dropped the connection at least {} times: {:?}",
        spec.min_losses,
        log.lost
    );
    assert_eq!(never, 0, "no new data arrived after a fault ended: {rec:?}");
    assert!(
        rmax.unwrap_or_default() < common::slow(Duration::from_secs(15)),
        "slow recovery {rec:?}"
    );
    assert!(c.is_connected());
}

fn cut_every_1_to_2_s(name: &str, qos: QoS, tls: bool) {
    let dur = fault::pick(Duration::from_secs(9), Duration::from_secs(120));
    let mut next = Duration::from_secs(1);
    let mut cuts = 0usize;
    scenario(
        Spec {
            name,
            what: format!("link cut every 1-2 s{}", if tls { " (TLS)" } else { "" }),
            qos,
            duration: dur,
            keep_alive: Duration::from_secs(2),
            min_losses: 3,
            tls,
            rate: None,
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

/// The soak: QoS 1 at 1,000 messages/s over TLS while a random fault starts every 1-3 s — a cut, a stall
/// longer than the keep-alive, a trickle (2 KB/s), or refused connections — each lasting up to 3 s. Resident
/// memory and open fds are sampled every second: both stay flat (RSS: the second half's peak within the
/// first half's plus 2 MiB; fds: the second half's floor at most one over the first half's). 20 s here; `QMQTT_FAULT_LONG=1`: 30 minutes.
#[test]
fn fault_soak_tls_qos1() {
    let dur = fault::pick(Duration::from_secs(20), Duration::from_secs(1800));
    let mut next = Duration::from_secs(1);
    let mut active: Option<(u64, Duration)> = None;
    let mut kinds = [0usize; 4];
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    scenario(
        Spec {
            name: "fault_soak_tls_qos1",
            what: format!("soak: random cuts, stalls, trickles and refusals for {dur:?} (TLS)"),
            qos: QoS::AtLeastOnce,
            duration: dur,
            keep_alive: Duration::from_secs(1),
            min_losses: 2,
            tls: true,
            rate: Some(1000),
        },
        |el, ctl, _| {
            if samples
                .last()
                .is_none_or(|s| el >= s.0 + Duration::from_secs(1))
            {
                samples.push((el, fault::rss_kib(), fds()));
            }
            if let Some((kind, until)) = active {
                if el >= until {
                    match kind {
                        1 => ctl.p.stall(false),
                        2 => ctl.p.trickle(None),
                        3 => ctl.p.refuse(false),
                        _ => {}
                    }
                    ctl.ends.push(Instant::now());
                    active = None;
                    next = el + ctl.rand_ms(1000, 3000);
                }
            } else if el >= next && el + Duration::from_secs(4) < dur {
                let kind = ctl.rand_ms(0, 3).as_millis() as u64;
                ctl.starts.push(Instant::now());
                kinds[kind as usize] += 1;
                match kind {
                    0 => {
                        ctl.p.cut();
                        ctl.ends.push(Instant::now());
                        next = el + ctl.rand_ms(1000, 3000);
                        return;
                    }
                    1 => ctl.p.stall(true),
                    2 => ctl.p.trickle(Some(2000)),
                    _ => {
                        ctl.p.refuse(true);
                        ctl.p.cut();
                    }
                }
                active = Some((kind, el + ctl.rand_ms(500, 3000)));
            }
        },
    );
    let half = samples.len() / 2;
    // RSS: the peaks (a backlog comes and goes with each fault). fds: the lowest count of each half — the
    // fault proxy runs in this process and holds the sockets of connections being cut for a moment, but a
    // leak raises the floor.
    let peak_floor = |s: &[(Duration, u64, usize)]| {
        (
            s.iter().map(|x| x.1).max().unwrap_or(0),
            s.iter().map(|x| x.2).min().unwrap_or(0),
        )
    };
    let (rss1, fd1) = peak_floor(&samples[..half]);
    let (rss2, fd2) = peak_floor(&samples[half..]);
    fault::report(
        "fault_soak_tls_qos1",
        &format!(
            "soak {dur:?}: faults cut/stall/trickle/refuse {kinds:?}; {} samples, anon RSS peak {rss1} -> \
             {rss2} KiB, fds floor {fd1} -> {fd2}",
            samples.len()
        ),
    );
    assert!(samples.len() >= 10, "{} samples", samples.len());
    assert!(
        rss2 <= rss1 + 2048,
        "RSS grew: first half peak {rss1} KiB, second {rss2} KiB"
    );
    assert!(
        fd2 <= fd1 + 2,
        "fds grew: first half peak {fd1}, second {fd2}"
    );
}
