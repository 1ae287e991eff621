//! A broker that stays dead (SIGKILLed, port closed) while the owner keeps publishing into a small queue
//! (256 KiB): the queue fills to its bound and the full policy applies — `Error` refuses with `QueueFull`
//! at once, `DropOldest` keeps the newest and counts the rest — resident memory stays flat while many
//! times the queue's size is published, no `publish` call blocks, and when the broker comes back the queue
//! drains by itself to an independent subscriber (persistent session on the restarted broker).
//!
//! The tests here measure this process's RSS, so they run one at a time (a lock).
#[path = "common/calls.rs"]
mod calls;
mod common;
#[path = "common/fault.rs"]
mod fault;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use calls::Calls;
use fault::{Counter, PubLog};
use qmqtt::client::{Client, FullPolicy, PublishError};
use qmqtt::QoS;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const QUEUE: usize = 256 << 10;

/// `publish` of message `seq`, through the call counter.
fn publish(tm: &mut Calls, c: &Client, seq: u64, payload: &mut [u8]) -> Result<u64, PublishError> {
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    tm.call(|| c.publish("dead/x", payload, QoS::AtLeastOnce, false))
}

struct Dead {
    b: common::Broker,
    sub: Counter,
    c: Client,
    log: PubLog,
    killed_at: Instant,
}

fn setup(name: &str, policy: FullPolicy) -> Dead {
    let mut b = common::Broker::start_with(common::BrokerOptions {
        persistence: true,
        ..Default::default()
    });
    let sub = Counter::start(
        &b.tcp_uri(),
        &format!("sub-{name}"),
        "dead/#",
        QoS::AtLeastOnce,
    );
    let mut k = fault::cfg(&b.tcp_uri(), &format!("pub-{name}"));
    k.queue_bytes = QUEUE;
    k.queue_messages = 1_000_000;
    k.full_policy = policy;
    k.clean_session = false;
    let c = Client::connect(k).unwrap();
    c.wait_connected(Duration::from_secs(10)).unwrap();
    // The subscriber's session reaches the broker's disk before the crash (autosave every second,
    // checked on whole seconds: up to 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    b.kill();
    let mut log = PubLog::default();
    let killed_at = Instant::now();
    while log.lost.is_empty() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "death not noticed"
        );
        fault::readable(c.event_fd(), 10);
        log.drain(&c);
    }
    Dead {
        b,
        sub,
        c,
        log,
        killed_at,
    }
}

/// How long the broker stays dead while the owner keeps publishing.
fn dead_for() -> Duration {
    fault::pick(Duration::from_secs(4), Duration::from_secs(120))
}

#[test]
fn fault_dead_broker_queue_full_error_policy() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = "fault_dead_broker_queue_full_error_policy";
    let mut d = setup(name, FullPolicy::Error);
    let mut payload = [b'e'; 64];
    let mut tm = Calls::default();
    let woke = d.c.stats().wakeups;
    let rss0 = fault::rss_kib();
    // Fill to the bound.
    let mut accepted = 0u64;
    loop {
        match publish(&mut tm, &d.c, accepted, &mut payload) {
            Ok(t) => {
                assert_eq!(t, accepted + 1);
                accepted += 1;
            }
            Err(PublishError::QueueFull) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            accepted < 100_000,
            "a 256 KiB queue took {accepted} messages"
        );
    }
    let st = d.c.stats();
    assert!(st.queued_bytes <= QUEUE as u64, "{st:?}");
    assert_eq!(st.queued, accepted);
    let rss1 = fault::rss_kib();
    // Keep trying for as long as the broker is dead: tens of queue sizes' worth, every call refused fast.
    let mut refused = 1u64;
    let until = d.killed_at + dead_for();
    let mut attempted_bytes = 0usize;
    while Instant::now() < until || attempted_bytes < 40 * QUEUE {
        for _ in 0..500 {
            match publish(&mut tm, &d.c, accepted, &mut payload) {
                Err(PublishError::QueueFull) => refused += 1,
                r => panic!("a full queue must refuse: {r:?}"),
            }
            attempted_bytes += payload.len() + 6;
        }
        d.log.drain(&d.c);
        std::thread::sleep(Duration::from_millis(2));
    }
    let rss2 = fault::rss_kib();
    let st = d.c.stats();
    let woke = st.wakeups - woke;
    assert_eq!(st.refused_full, refused, "{st:?}");
    assert!(!st.connected);
    let attempts = d.log.reconnecting.len();
    // The broker comes back: the queue drains by itself.
    d.b.restart();
    let back = Instant::now();
    let delivered = d.sub.wait_distinct(accepted, Duration::from_secs(30));
    let recovery = d
        .sub
        .first_arrival(0)
        .map(|a| a.saturating_duration_since(back));
    let missing = d.sub.missing(accepted);
    let (extra, _) = d.sub.dups();
    fault::report(
        name,
        &format!(
            "broker dead {:?}, queue 256 KiB, policy Error: {accepted} msgs accepted, then {refused} \
             publishes refused (QueueFull; {:.1} MiB attempted); publish max {:?} (max when not preempted \
             {:?}, {} calls blocked, {} over 1 ms, of {}); anon RSS {} -> {} -> {} KiB; {attempts} reconnect \
             attempts while dead; after restart: lost {}, duplicates {extra}, first delivery after {}",
            back.duration_since(d.killed_at),
            attempted_bytes as f64 / (1 << 20) as f64,
            tm.max,
            tm.max_running,
            tm.blocked,
            tm.over_1ms,
            tm.calls,
            rss0,
            rss1,
            rss2,
            missing.len(),
            fault::ms(recovery),
        ),
    );
    assert!(
        delivered,
        "after the restart {} of {accepted} arrived; {:?}",
        d.sub.distinct(),
        d.c.stats()
    );
    assert!(missing.is_empty());
    assert!(
        rss2 <= rss1 + 1024,
        "RSS grew {} KiB while publishing into a full queue",
        rss2 - rss1
    );
    assert!(
        rss1 <= rss0 + 2048,
        "filling a 256 KiB queue took {} KiB",
        rss1 - rss0
    );
    tm.assert_rarely_blocked("publish into a full queue", woke);
    // Backoff (100 ms .. 1 s) while dead, not a hot loop.
    let secs = back.duration_since(d.killed_at).as_secs_f64();
    assert!(
        attempts >= 2 && (attempts as f64) <= secs * 10.0 + 2.0,
        "{attempts} attempts in {secs:.1} s"
    );
    let mut seen = PubLog::default();
    let until = Instant::now() + Duration::from_secs(10);
    while seen.delivered_n < accepted && Instant::now() < until {
        fault::readable(d.c.event_fd(), 20);
        seen.drain(&d.c);
    }
    assert_eq!(
        seen.delivered_n, accepted,
        "every accepted message acknowledged"
    );
}

#[test]
fn fault_dead_broker_queue_full_drop_oldest() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = "fault_dead_broker_queue_full_drop_oldest";
    let mut d = setup(name, FullPolicy::DropOldest);
    let mut payload = [b'o'; 64];
    let mut tm = Calls::default();
    let woke = d.c.stats().wakeups;
    let rss0 = fault::rss_kib();
    let mut seq = 0u64;
    let mut rss1 = None;
    let until = d.killed_at + dead_for();
    // Every call succeeds; the oldest queued messages make room. Publish for as long as the broker is dead,
    // at least 40 times the queue's size.
    while Instant::now() < until || seq * 70 < 40 * QUEUE as u64 {
        for _ in 0..500 {
            let t = publish(&mut tm, &d.c, seq, &mut payload).expect("DropOldest accepts");
            assert_eq!(t, seq + 1);
            seq += 1;
        }
        if rss1.is_none() && d.c.stats().dropped_oldest > 0 {
            rss1 = Some(fault::rss_kib()); // the queue is full once
        }
        d.log.drain(&d.c);
        std::thread::sleep(Duration::from_millis(2));
    }
    let rss1 = rss1.expect("the queue never filled");
    let rss2 = fault::rss_kib();
    let st = d.c.stats();
    let woke = st.wakeups - woke;
    let kept = seq - st.dropped_oldest;
    assert_eq!(st.queued, kept, "{st:?}");
    assert!(st.queued_bytes <= QUEUE as u64, "{st:?}");
    d.b.restart();
    let back = Instant::now();
    // The newest `kept` arrive, nothing older.
    let first_kept = seq - kept;
    let until = Instant::now() + Duration::from_secs(30);
    while d.sub.distinct() < kept && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200)); // anything extra would show now
    let s = d.sub.st.lock().unwrap();
    let got: Vec<u64> = (0..s.counts.len() as u64)
        .filter(|&q| s.counts[q as usize] > 0)
        .collect();
    let recovery = s
        .first
        .get(first_kept as usize)
        .copied()
        .flatten()
        .map(|a| a.saturating_duration_since(back));
    drop(s);
    fault::report(
        name,
        &format!(
            "broker dead {:?}, queue 256 KiB, policy DropOldest: {seq} msgs published ({:.1} MiB), {} \
             dropped (counted), {kept} kept; publish max {:?} (max when not preempted {:?}, {} calls \
             blocked, {} over 1 ms); anon RSS {} -> {} -> {} KiB; after restart {} arrived (expected the newest \
             {kept}), first after {}",
            back.duration_since(d.killed_at),
            (seq * 70) as f64 / (1 << 20) as f64,
            st.dropped_oldest,
            tm.max,
            tm.max_running,
            tm.blocked,
            tm.over_1ms,
            rss0,
            rss1,
            rss2,
            got.len(),
            fault::ms(recovery),
        ),
    );
    assert_eq!(
        got.len() as u64,
        kept,
        "the kept messages arrive, nothing else; first {:?}",
        got.first()
    );
    assert_eq!(
        got.first().copied(),
        Some(first_kept),
        "the newest were kept"
    );
    assert_eq!(got.last().copied(), Some(seq - 1));
    assert!(
        rss2 <= rss1 + 1024,
        "RSS grew {} KiB while dropping",
        rss2 - rss1
    );
    tm.assert_rarely_blocked("publish into a full queue", woke);
    assert_eq!(d.sub.dropped(), 0);
}
