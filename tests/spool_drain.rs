//! The driver's contract, simulated without a network: spill the oldest in-memory messages into the spool
//! while "disconnected", then drain with the DrainScheduler and AckTracker on a virtual clock, the way the
//! client's I/O thread is meant to. Checks the order rules and the drain rate.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use qmqtt::spool::{AckTracker, Msg, Spool, SpoolConfig, SyncPolicy};
use qmqtt::QoS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Spool,
    Live,
}

/// Publish `n_total` messages (numbered 1..), 5 per tick; the link is down for the first `down` ticks.
/// Returns the message numbers in the order they reached the "broker", with their source.
fn run(
    drain_rate: Option<u32>,
    down: u32,
    ticks: u32,
) -> (Vec<(u64, Src, u32)>, Spool, tempfile::TempDir) {
    let td = tempfile::tempdir().unwrap();
    let mut cfg = SpoolConfig::new(td.path());
    cfg.sync = SyncPolicy::Never;
    cfg.drain_rate = drain_rate;
    let mut sp = Spool::open(cfg).unwrap();
    let mut sched = sp.drain_scheduler();
    let mut tracker = AckTracker::new(16);
    let mut mem: VecDeque<(u64, String)> = VecDeque::new(); // the in-memory queue (bound: 20)
    let mut inflight: Vec<u64> = Vec::new(); // spool seqs awaiting PUBACK
    let mut delivered = Vec::new();
    let mut next_msg = 1u64;
    let window = 10usize;
    let t0 = Instant::now();
    for tick in 0..ticks {
        let now = t0 + Duration::from_millis(10 * tick as u64);
        // Producer: 5 messages per tick (500 msg/s).
        for _ in 0..5 {
            mem.push_back((next_msg, format!("m/{next_msg}")));
            next_msg += 1;
        }
        let connected = tick >= down;
        // Spill: over the high-water mark and not sending -> the oldest go to the spool.
        if mem.len() > 15 && !connected {
            let k = mem.len() - 5;
            let batch: Vec<_> = mem.iter().take(k).cloned().collect();
            sp.append_batch(batch.iter().map(|(n, t)| Msg {
                topic: t,
                payload: &[],
                qos: QoS::AtLeastOnce,
                retain: false,
                tag: *n,
            }))
            .unwrap();
            mem.drain(..k);
        }
        if connected {
            // Acks for last tick's spooled sends.
            for s in inflight.drain(..) {
                if let Some(a) = tracker.complete(s) {
                    sp.ack(a).unwrap();
                }
            }
            let plan = sched.plan(now, window, sp.unread(), mem.len());
            let got = sp
                .read_batch(plan.from_spool, 1 << 20, |r| {
                    delivered.push((r.tag, Src::Spool, tick));
                    tracker.sent(r.seq);
                    inflight.push(r.seq);
                })
                .unwrap();
            sched.refund(plan.from_spool - got);
            for _ in 0..plan.from_live {
                let (n, _) = mem.pop_front().unwrap();
                delivered.push((n, Src::Live, tick));
            }
        }
        sp.flush(now).unwrap();
    }
    (delivered, sp, td)
}

#[test]
fn strict_order_without_drain_rate() {
    let (d, mut sp, _td) = run(None, 100, 400);
    let nums: Vec<u64> = d.iter().map(|x| x.0).collect();
    assert_eq!(
        nums,
        (1..=nums.len() as u64).collect::<Vec<_>>(),
        "publish order kept exactly"
    );
    assert!(d.iter().any(|x| x.1 == Src::Spool) && d.iter().any(|x| x.1 == Src::Live));
    // All spooled ones left before any live one.
    let first_live = d.iter().position(|x| x.1 == Src::Live).unwrap();
    assert!(d[first_live..].iter().all(|x| x.1 == Src::Live));
    assert_eq!(sp.stats().spooled_msgs, 0);
}

#[test]
fn drain_rate_limits_the_backlog_and_live_flows() {
    // 1 s down at 500 msg/s: ~490 spooled. Drain at 100 msg/s over the next 6 s.
    let (d, mut sp, _td) = run(Some(100), 100, 700);
    let spooled: Vec<u64> = d
        .iter()
        .filter(|x| x.1 == Src::Spool)
        .map(|x| x.0)
        .collect();
    let live: Vec<u64> = d.iter().filter(|x| x.1 == Src::Live).map(|x| x.0).collect();
    assert!(
        spooled.windows(2).all(|w| w[1] == w[0] + 1),
        "backlog in order"
    );
    assert!(live.windows(2).all(|w| w[1] == w[0] + 1), "live in order");
    assert!(
        spooled.last() < live.first(),
        "every spooled message is older than every live one"
    );
    // At 100/s with a burst of 100: at most 200 in the first second after reconnecting, and the ~490
    // messages of backlog need about 4 s.
    let first_second = d.iter().filter(|x| x.1 == Src::Spool && x.2 < 200).count();
    assert!((150..=201).contains(&first_second), "{first_second}");
    let last_tick = d
        .iter()
        .filter(|x| x.1 == Src::Spool)
        .map(|x| x.2)
        .max()
        .unwrap();
    assert!(
        (100 + 350..100 + 450).contains(&last_tick),
        "backlog drained at tick {last_tick}"
    );
    assert_eq!(sp.stats().spooled_msgs, 0, "backlog drained within the run");
    // Live messages were sent while the backlog drained (not only after it).
    let first_live = d.iter().position(|x| x.1 == Src::Live).unwrap();
    let last_spool = d.iter().rposition(|x| x.1 == Src::Spool).unwrap();
    assert!(
        first_live < last_spool,
        "live data interleaved with the backlog"
    );
}

#[test]
fn spool_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Spool>();
}
