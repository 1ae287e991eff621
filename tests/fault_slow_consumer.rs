//! A slow consumer on the receive side: 100 000 messages flood a subscribed client (from `mosquitto_pub`, a
//! separate process, so this process's memory is the client's alone) while its owner does not call
//! `poll_events`. The client stops reading once its event queue is full (TCP pushes back on the broker,
//! which queues), so resident memory stays within the receive side's bounds and nothing is dropped; once
//! drained, every message arrives in order and the client still works: it publishes, gets
//! acknowledgements and receives again. More floods (4, or 20 with `QMQTT_FAULT_LONG=1`) stay within the
//! same bound: no creep.
mod common;
#[path = "common/fault.rs"]
mod fault;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Event};
use qmqtt::transport::MAX_READ_PER_CALL;
use qmqtt::QoS;

const EVENTQ: usize = 1 << 20;

/// Files of `n` lines of 100 bytes ("<seq> ....") in runs of 10 000, written before anything is measured so
/// that this process holds none of it.
fn flood_files(dir: &std::path::Path, n: usize) -> Vec<std::path::PathBuf> {
    (0..n.div_ceil(10_000))
        .map(|chunk| {
            let mut lines = String::with_capacity(10_000 * 101);
            for i in chunk * 10_000..((chunk + 1) * 10_000).min(n) {
                lines.push_str(&format!("{i:08} {}\n", ".".repeat(91)));
            }
            let p = dir.join(format!("flood.{chunk}"));
            std::fs::write(&p, lines).unwrap();
            p
        })
        .collect()
}

/// Publish every line of `files` at QoS 1 to `topic` with mosquitto_pub, one connection per file:
/// mosquitto 2.0.11 drops a `mosquitto_pub -l -q 1` connection after ~34 000 fast messages ("disconnected
/// due to out of memory") while mosquitto_pub still exits 0.
fn flood(port: u16, topic: &str, files: &[std::path::PathBuf]) -> Duration {
    let t0 = Instant::now();
    for f in files {
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
            .args(["-q", "1", "-l", "-i", "flooder"])
            .stdin(std::fs::File::open(f).unwrap())
            .stdout(Stdio::null())
            .status()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        assert!(st.success(), "mosquitto_pub failed");
    }
    t0.elapsed()
}

/// Drain every waiting event; returns (messages, first sequence numbers seen in order).
fn drain(c: &Client) -> (u64, Vec<u64>) {
    let mut msgs = 0;
    let mut seqs = Vec::new();
    while c.poll_events(10_000, &mut |e| {
        if let Event::Message { payload, .. } = e {
            msgs += 1;
            if let Some(s) = std::str::from_utf8(&payload[..8.min(payload.len())])
                .ok()
                .and_then(|s| s.parse().ok())
            {
                seqs.push(s);
            }
        }
    }) > 0
    {}
    (msgs, seqs)
}

/// One flood while nobody polls: the client must pause reading (TCP pushes back on the broker) rather than
/// grow or drop; then draining delivers every message, in order. Returns (anon RSS while paused, after).
fn flood_then_drain(
    c: &Client,
    port: u16,
    topic: &str,
    files: &[std::path::PathBuf],
    n: u64,
) -> (u64, u64) {
    let received0 = c.stats().received;
    flood(port, topic, files);
    let until = Instant::now() + Duration::from_secs(60);
    while !c.stats().rx_paused_now {
        assert!(Instant::now() < until, "never paused: {:?}", c.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let paused = fault::rss_kib();
    let st = c.stats();
    assert!(
        st.connected,
        "the flood must not cost the connection: {st:?}"
    );
    assert_eq!(st.dropped_incoming, 0, "nothing dropped: {st:?}");
    assert!(
        st.received - received0 < n,
        "a 1 MiB event queue cannot have taken all {n} messages: {st:?}"
    );
    let mut seqs = Vec::with_capacity(n as usize);
    let until = Instant::now() + Duration::from_secs(120);
    while (seqs.len() as u64) < n {
        assert!(
            Instant::now() < until,
            "{} of {n} after draining: {:?}",
            seqs.len(),
            c.stats()
        );
        fault::readable(c.event_fd(), 20);
        seqs.extend(drain(c).1);
    }
    assert!(
        seqs.iter().copied().eq(0..n),
        "every message once, in order ({} received)",
        seqs.len()
    );
    assert_eq!(c.stats().dropped_incoming, 0);
    (paused, fault::rss_kib())
}

#[test]
fn fault_slow_consumer_flood_keeps_memory_bounded() {
    let name = "fault_slow_consumer_flood_keeps_memory_bounded";
    let b = common::Broker::start();
    let n = fault::pick(100_000, 1_000_000);
    let files = flood_files(b.dir.path(), n);
    let mut k = fault::cfg(&b.tcp_uri(), "slow-consumer");
    k.event_queue_bytes = EVENTQ;
    k.keep_alive = Duration::from_secs(5);
    let c = Client::connect(k).unwrap();
    c.wait_connected(Duration::from_secs(10)).unwrap();
    c.subscribe("flood/#", QoS::AtLeastOnce).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let mut subscribed = false;
    while !subscribed {
        assert!(Instant::now() < until, "no SUBACK");
        fault::readable(c.event_fd(), 20);
        c.poll_events(100, &mut |e| {
            if let Event::Subscribed { .. } = e {
                subscribed = true
            }
        });
    }
    drain(&c);
    let rss0 = fault::rss_kib();

    let t0 = Instant::now();
    let first = flood_then_drain(&c, b.tcp_port, "flood/a", &files, n as u64);
    let took = t0.elapsed();

    // Still works: a round trip through the broker, acknowledged.
    let tok = c
        .publish("flood/echo", b"00000000 after", QoS::AtLeastOnce, false)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        assert!(
            Instant::now() < until,
            "after the flood: acked {acked}, echoed {echoed}"
        );
        fault::readable(c.event_fd(), 20);
        c.poll_events(100, &mut |e| match e {
            Event::Delivered { token, .. } if token == tok => acked = true,
            Event::Message {
                topic: "flood/echo",
                ..
            } => echoed = true,
            _ => {}
        });
    }

    // More floods: memory does not creep.
    let floods = fault::pick(4, 20);
    let mut rss = vec![first];
    for _ in 1..floods {
        rss.push(flood_then_drain(
            &c, b.tcp_port, "flood/b", &files, n as u64,
        ));
    }
    let st = c.stats();
    assert_eq!(st.reconnects, 0, "{st:?}");
    let peak = rss.iter().map(|x| x.0.max(x.1)).max().unwrap();
    let last = rss.last().unwrap().1;
    fault::report(
        name,
        &format!(
            "{floods} floods of {n} QoS 1 msgs of 100 B at a client whose owner did not poll, event queue \
             1 MiB: reading paused {} times (TCP back-pressure on the broker), 0 dropped, every message \
             delivered in order once drained (first flood + drain {:.1} s), connection kept; anon RSS before \
             {rss0} KiB, peak {peak} KiB (+{} KiB for {:.0} MB received), after flood {floods} {last} KiB \
             (anonymous memory; VmRSS now {} KiB)",
            st.rx_paused,
            took.as_secs_f64(),
            peak - rss0,
            (floods * n * 110) as f64 / 1e6,
            fault::vmrss_kib()
        ),
    );
    eprintln!("RSS (flooded, drained) per flood: {rss:?}");
    // What the receive side may hold, from its named bounds: the event queue (plus its control reserve of
    // 2·max_inflight·24 B + 64 KiB), the drain's scratch copy (at most the event queue again), the I/O
    // thread's read buffer and the session's receive buffer (each at most one read, MAX_READ_PER_CALL +
    // a 16 KiB chunk) — 4.2 MiB, reached exactly with MALLOC_MMAP_THRESHOLD_=131072 — plus 3 MiB of
    // allocator slack (by default glibc keeps freed buffers of a growing Vec in its
    // heaps once its mmap threshold has risen). Everything that arrived (tens of MB) is far beyond; a leak
    // of 8 bytes or more per message (400 000 of them) would show.
    let read = MAX_READ_PER_CALL as u64 + (16 << 10);
    let bound = (2 * EVENTQ as u64 + (64 << 10) + 2 * 100 * 24 + 2 * read + (3 << 20)) / 1024;
    assert!(
        peak <= rss0 + bound,
        "RSS grew {} KiB, more than the receive side's bounds allow ({bound} KiB): {rss:?}",
        peak - rss0
    );
}
