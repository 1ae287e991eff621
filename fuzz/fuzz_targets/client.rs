//! The whole client driver (I/O thread, session, queues) against a hostile broker on loopback that plays a
//! script: after the CONNECT it writes the script's chunks — valid packets, invalid ones, floods (a chunk
//! repeated up to 4096 times) — reading what the client sends between them, and never reads again when the
//! script says so. The owner publishes and subscribes meanwhile and drains events.
//!
//! Never a panic (libfuzzer-sys aborts on one in any thread), `disconnect` returns, and resident memory stays
//! bounded: the client's bounds here are 64 KiB each (event queue, packet size, unsent bytes), so a run may
//! grow anonymous RSS by one read (1 MiB) and buffers of those sizes, far below `LIMIT`.
//!
//! Input: byte 0 = flags (bit 0–1: QoS of the owner's publishes, bit 2: MQTT 5, bit 3: subscribe, bit 4:
//! stop reading after the script), then steps `[len: u8][repeat: u8][len bytes]` (repeat r writes the
//! chunk 16·r + 1 times).
#![no_main]
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use qmqtt::client::{Client, Config};
use qmqtt::codec::Protocol;
use qmqtt::QoS;

/// Anonymous RSS growth allowed per run, KiB.
const LIMIT: u64 = 32 << 10;

fn rss_anon_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Read what is there (briefly); false when the client is gone.
fn take(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16 << 10];
    !matches!(s.read(&mut b), Ok(0))
}

fn broker(l: TcpListener, script: Vec<(Vec<u8>, usize)>, deaf: bool) {
    let Ok((mut s, _)) = l.accept() else { return };
    let _ = s.set_read_timeout(Some(Duration::from_millis(2)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    take(&mut s); // the CONNECT
    for (chunk, times) in script {
        for _ in 0..times {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
        if !deaf && !take(&mut s) {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut script = Vec::new();
    while let [len, rep, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        script.push((tail[..n].to_vec(), 16 * (*rep as usize) + 1));
        rest = &tail[n..];
    }
    let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    let deaf = flags & 0x10 != 0;
    let rss0 = rss_anon_kib();
    let b = std::thread::spawn(move || broker(l, script, deaf));

    let mut k = Config::new(format!("tcp://127.0.0.1:{port}"), "fuzz");
    k.reconnect = false;
    k.connect_timeout = Duration::from_millis(500);
    k.keep_alive = Duration::from_secs(1);
    k.event_queue_bytes = 64 << 10;
    k.max_packet_size = 64 << 10;
    k.max_unsent_bytes = 64 << 10;
    k.queue_bytes = 64 << 10;
    k.batch_scheduling = false;
    if flags & 0x04 != 0 {
        k.protocol = Protocol::V5;
    }
    let Ok(mut c) = Client::connect(k) else {
        return;
    };
    let qos = match flags & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    if flags & 0x08 != 0 {
        let _ = c.subscribe("#", qos);
    }
    for i in 0..4u8 {
        let _ = c.publish("fuzz/t", &[i; 8], qos, false);
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until && !b.is_finished() {
        c.poll_events(usize::MAX, &mut |_| {});
        std::thread::sleep(Duration::from_millis(1));
    }
    c.poll_events(usize::MAX, &mut |_| {});
    let grown = rss_anon_kib().saturating_sub(rss0);
    c.disconnect(Duration::ZERO);
    drop(c);
    let _ = b.join();
    assert!(grown < LIMIT, "anonymous RSS grew {grown} KiB in one run");
});
