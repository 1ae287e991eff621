//! The headline test: `qmqtt pub -l -q 1` feeds 20,000 numbered lines to the TLS listener of a persistent
//! mosquitto that is restarted once in the middle; an independent mosquitto_sub must receive every number.
//!
//! Why nothing can be lost on the subscriber's side: mosquitto_sub runs with QoS 1, a fixed client id and
//! `-c` (persistent session). It reconnects by itself (libmosquitto's loop) after the restart; the broker
//! is stopped cleanly (SIGTERM) with `persistence true`, so its session, subscription and every queued or
//! unacknowledged QoS 1 message are saved and delivered once the subscriber is back. Messages the publisher
//! sent but did not see acknowledged are resent by our engine; at worst that yields duplicates, which
//! QoS 1 allows — the test counts and reports them, and requires all 20,000 distinct numbers.
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions, Sub};

const N: usize = 20_000;

#[test]
fn pub_lines_survive_a_broker_restart() {
    let mut b = Broker::start_with(BrokerOptions {
        persistence: true,
        ..BrokerOptions::default()
    });
    let sub = Sub::start(&b, "restart/#", 1, &["-c"]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_qmqtt"))
        .args([
            "pub",
            "-h",
            "localhost",
            "-p",
            &b.tls_port.to_string(),
            "--cafile",
        ])
        .arg(&b.certs.ca)
        .args([
            "-t",
            "restart/n",
            "-q",
            "1",
            "-l",
            "-i",
            "qmqtt-restart-pub",
            "--drain-timeout",
            "60",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Feed at a steady pace (about 2 s in all) so that the restart falls in the middle of the stream.
    let writer = std::thread::spawn(move || {
        let mut chunk = String::new();
        for start in (0..N).step_by(100) {
            chunk.clear();
            for i in start..(start + 100).min(N) {
                chunk.push_str(&i.to_string());
                chunk.push('\n');
            }
            stdin.write_all(chunk.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        // Dropping stdin is the end of input.
    });

    // Restart once the subscriber has seen a good part but not all of the stream.
    let seen = sub.wait_for(N / 4, Duration::from_secs(30));
    assert!(
        seen >= N / 4,
        "only {seen} messages before the restart: {}",
        b.log()
    );
    let before = seen;
    b.restart();
    let restarted_at = Instant::now();
    writer.join().unwrap();

    // The publisher exits once every line is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qmqtt pub did not finish: {}", b.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = err_reader.join().unwrap();
    assert!(status.success(), "qmqtt pub failed ({status}): {err}");
    let summary = err
        .lines()
        .find(|l| l.starts_with("sent="))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(
        summary.starts_with(&format!("sent={N} acked={N} dropped=0 ")),
        "{summary}"
    );
    let reconnects: u64 = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("reconnects="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reconnects= in {summary}"));
    assert!(reconnects >= 1, "the restart went unnoticed: {summary}");

    // Every number reaches the independent subscriber.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts: HashMap<usize, u32> = HashMap::new();
    let mut strays = Vec::new();
    loop {
        for l in sub.take() {
            match l.parse::<usize>() {
                Ok(n) if n < N => *counts.entry(n).or_default() += 1,
                _ => strays.push(l),
            }
        }
        if counts.len() == N || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    let missing: Vec<usize> = (0..N).filter(|n| !counts.contains_key(n)).collect();
    eprintln!(
        "restart test: {before} seen before the restart, {} distinct of {N}, {duplicates} duplicates, \
         {} missing, publisher: {summary} ({:.1} s after the restart)",
        counts.len(),
        missing.len(),
        restarted_at.elapsed().as_secs_f64()
    );
    assert!(strays.is_empty(), "unexpected lines: {strays:?}");
    assert!(
        missing.is_empty(),
        "{} numbers never arrived, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        b.log()
    );
}
