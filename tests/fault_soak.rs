//! The soak: a long run of random link faults under a steady QoS 1 load over TLS, with this process's
//! resident memory and open fds sampled every second (its own test binary, so that nothing else runs in the
//! process it measures). 20 s in `tests/run`; `QMQTT_FAULT_LONG=1`: 30 minutes.
mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/scenario.rs"]
mod scenario;

use std::time::{Duration, Instant};

use qmqtt::QoS;
use scenario::{scenario, Spec};

/// The soak: QoS 1 at 1,000 messages/s over TLS while a fault starts every 1-3 s — a cut, then a refusal,
/// then at random a cut, a stall longer than the keep-alive, a trickle (2 KB/s), or refused connections —
/// each lasting up to 3 s. Resident
/// memory and open fds are sampled every second and stay flat: fds peak no higher in the second half than
/// in the first (+2: a reconnect's sockets overlapping the fault proxy's); RSS peaks in the second half
/// within 2 MiB of the first half's beyond what the test's own per-message records add (this process
/// also holds the counting subscriber and the publisher's log: 40 bytes a message, 48 allowed).
#[test]
fn fault_soak_tls_qos1() {
    let dur = fault::pick(Duration::from_secs(20), Duration::from_secs(1800));
    let mut next = Duration::from_secs(1);
    let mut active: Option<(u64, Duration)> = None;
    let mut kinds = [0usize; 4];
    let mut samples: Vec<(Duration, u64, usize, u64)> = Vec::new();
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
            mqtt5: false,
        },
        |el, ctl, log| {
            if samples
                .last()
                .is_none_or(|s| el >= s.0 + Duration::from_secs(1))
            {
                samples.push((el, fault::rss_kib(), fds(), log.published()));
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
                // The first two faults are a cut and a refusal, which always drop the connection (a stall or
                // a trickle may not, if short): so even a short run has the two losses it asserts.
                let kind = match ctl.starts.len() {
                    0 => 0,
                    1 => 3,
                    _ => ctl.rand_ms(0, 3).as_millis() as u64,
                };
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
    eprintln!(
        "samples (s, RSS KiB, fds): {:?}",
        samples
            .iter()
            .map(|s| (s.0.as_secs(), s.1, s.2))
            .collect::<Vec<_>>()
    );
    let half = samples.len() / 2;
    let peak = |s: &[(Duration, u64, usize, u64)]| {
        (
            s.iter().map(|x| x.1).max().unwrap_or(0),
            s.iter().map(|x| x.2).max().unwrap_or(0),
        )
    };
    let (rss1, fd1) = peak(&samples[..half]);
    let (rss2, fd2) = peak(&samples[half..]);
    let n2 = samples.last().map_or(0, |x| x.3) - samples[half].3;
    // This process's own per-message records: the publisher's log (send time 16 B, delivered count 4 B)
    // and the subscriber's (count 4 B, first arrival 16 B): 40 B a message, 48 allowed.
    let bookkeeping = n2 * 48 / 1024;
    fault::report(
        "fault_soak_tls_qos1",
        &format!(
            "soak {dur:?}: faults cut/stall/trickle/refuse {kinds:?}; {} samples, anon RSS peak {rss1} -> \
             {rss2} KiB ({n2} messages in the second half: {bookkeeping} KiB of the test's own), fds peak \
             {fd1} -> {fd2}",
            samples.len()
        ),
    );
    assert!(samples.len() >= 10, "{} samples", samples.len());
    assert!(
        rss2 <= rss1 + 2048 + bookkeeping,
        "RSS grew: first half peak {rss1} KiB, second {rss2} KiB (the test's own {bookkeeping} KiB)"
    );
    assert!(
        fd2 <= fd1 + 2,
        "fds grew: first half peak {fd1}, second {fd2}"
    );
}
