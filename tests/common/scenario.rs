//! The scenario shared by the link-fault tests (tests/fault_link.rs, tests/fault_soak.rs): a `Client`
//! publishing numbered messages through the fault proxy to a real mosquitto under a fault schedule, an
//! independent subscriber counting, and the common assertions (0 lost, every token acknowledged once,
//! recovery after each fault).
//!
//! Include with `#[path = "common/scenario.rs"] mod scenario;` next to `mod common;` and the fault module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::proxy::Proxy;
use crate::fault::{self, Counter, Load, PubLog};
use qmqtt::client::Client;
use qmqtt::QoS;

/// What a fault schedule can touch and record.
pub struct Ctl<'a> {
    pub p: &'a Proxy,
    /// When each fault ended (for recovery times).
    pub ends: Vec<Instant>,
    /// When each fault started.
    pub starts: Vec<Instant>,
    rng: u64,
}

impl Ctl<'_> {
    pub fn rand_ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(lo + self.rng % (hi - lo + 1))
    }
}

pub struct Spec<'a> {
    pub name: &'a str,
    pub what: String,
    pub qos: QoS,
    pub duration: Duration,
    pub keep_alive: Duration,
    /// The fault must have dropped the publisher's connection at least this often.
    pub min_losses: usize,
    /// The publisher speaks TLS (through the proxy to the broker's TLS listener).
    pub tls: bool,
    /// Messages per second (default: 500, or 1000 in the long mode).
    pub rate: Option<u32>,
    /// The publisher speaks MQTT 5: its session outlives each cut by its Session Expiry Interval (not
    /// Clean Session), and repeated topics go as topic aliases, set up again on every connection.
    pub mqtt5: bool,
}

fn qname(q: QoS) -> &'static str {
    match q {
        QoS::AtMostOnce => "QoS 0",
        QoS::AtLeastOnce => "QoS 1",
        QoS::ExactlyOnce => "QoS 2",
    }
}

/// Run `spec` with `fault` called about every millisecond from the publishing thread; assert and report.
pub fn scenario(spec: Spec<'_>, mut fault: impl FnMut(Duration, &mut Ctl<'_>, &PubLog)) {
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
    if spec.mqtt5 {
        k.protocol = qmqtt::codec::Protocol::V5;
        k.mqtt5.session_expiry = 600;
    }
    let window = k.max_inflight as u64;
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
    if spec.mqtt5 {
        // Every message went with an alias but each connection's first and the resends after a cut (they
        // carry their topic: an alias never outlives its connection, and one used on a connection that
        // had not set it up would be a protocol error, dropping the connection — counted above).
        assert!(
            st.topic_aliased + (st.reconnects + 1) * (1 + window) >= n,
            "topic aliases not used: {st:?}"
        );
    }
}
