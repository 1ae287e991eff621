//! The headline test: `qmqtt pub -l -q 1` feeds 20,000 numbered lines to the TLS listener of a persistent
//! mosquitto that is restarted once in the middle; an independent mosquitto_sub must receive every number.
//!
//! Why nothing can be lost on the subscriber's side: mosquitto_sub runs with QoS 1, a fixed client id and
//! `-c` (persistent session). It reconnects by itself (libmosquitto's loop) after the restart; the broker
//! is stopped cleanly (SIGTERM) with `persistence true`, so its session, subscription and every queued or
//! unacknowledged QoS 1 message are saved and delivered once the subscriber is back. Messages the publisher
//! sent but did not see acknowledged are resent by our engine; at worst that yields duplicates, which
//! QoS 1 allows — the test counts and reports them, and requires all 20,000 distinct numbers.
//!
//! A second test runs a stream through the fault proxy and cuts the network three times (refusing
//! connections for a while once) instead of restarting the broker.
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{Broker, BrokerOptions, Sub};

/// The feeding pace of the restart tests: 100 lines per 10 ms.
const MS10: Duration = Duration::from_millis(10);

/// `qmqtt pub -l -q 1` to localhost:`port` with the test CA, fed `n` numbered lines at a steady pace
/// (100 lines, then a `pause`) by a thread. Returns the child, the feeding thread and the thread
/// collecting stderr.
fn start_publisher(
    b: &Broker,
    port: u16,
    n: usize,
    pause: Duration,
    id: &str,
    extra: &[&str],
) -> (Child, JoinHandle<()>, JoinHandle<String>) {
    let (port, ca) = (port.to_string(), b.certs.ca.to_str().unwrap());
    let mut args = vec!["pub", "-h", "localhost", "-p", &port, "--cafile", ca];
    args.extend(["-t", "restart/n", "-q", "1", "-l", "-i", id, "-k", "5"]);
    args.extend(["--drain-timeout", "60"]);
    args.extend(extra);
    let mut child = common::qmqtt_spawn(args, Stdio::piped(), Stdio::null());
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let writer = std::thread::spawn(move || {
        let mut chunk = String::new();
        for start in (0..n).step_by(100) {
            chunk.clear();
            for i in start..(start + 100).min(n) {
                chunk.push_str(&i.to_string());
                chunk.push('\n');
            }
            stdin.write_all(chunk.as_bytes()).unwrap();
            std::thread::sleep(pause);
        }
        // Dropping stdin is the end of input.
    });
    (child, writer, err_reader)
}

/// Wait for the publisher to exit (it does once everything is acknowledged): its summary line and the
/// reconnect count in it, and all it wrote on stderr.
fn finish_publisher(
    mut child: Child,
    err_reader: JoinHandle<String>,
    b: &Broker,
) -> (String, u64, String) {
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
        .unwrap_or_else(|| panic!("no summary: {err}"))
        .to_string();
    let reconnects: u64 = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("reconnects="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reconnects= in {summary}"));
    (summary, reconnects, err)
}

/// What the subscriber got of 0..n.
struct Tally {
    distinct: usize,
    duplicates: u32,
    missing: Vec<usize>,
    strays: Vec<String>,
}

/// Collect numbers from `sub` until all of 0..n arrived or a minute passed.
fn collect(sub: &Sub, n: usize) -> Tally {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts: HashMap<usize, u32> = HashMap::new();
    let mut strays = Vec::new();
    loop {
        for l in sub.take() {
            match l.parse::<usize>() {
                Ok(k) if k < n => *counts.entry(k).or_default() += 1,
                _ => strays.push(l),
            }
        }
        if counts.len() == n || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Tally {
        distinct: counts.len(),
        duplicates: counts.values().map(|c| c - 1).sum(),
        missing: (0..n).filter(|k| !counts.contains_key(k)).collect(),
        strays,
    }
}

fn assert_complete(t: &Tally, b: &Broker) {
    assert!(t.strays.is_empty(), "unexpected lines: {:?}", t.strays);
    assert!(
        t.missing.is_empty(),
        "{} numbers never arrived, e.g. {:?}\n{}",
        t.missing.len(),
        &t.missing[..t.missing.len().min(20)],
        b.log()
    );
}

#[test]
fn pub_lines_survive_a_broker_restart() {
    const N: usize = 20_000;
    let mut b = Broker::start_with(BrokerOptions {
        persistence: true,
        ..BrokerOptions::default()
    });
    let sub = Sub::start(&b, "restart/#", 1, &["-c"]);
    let (child, writer, err_reader) =
        start_publisher(&b, b.tls_port, N, MS10, "qmqtt-restart-pub", &[]);

    // Restart once the subscriber has seen a good part but not all of the stream.
    let before = sub.wait_for(N / 4, Duration::from_secs(30));
    assert!(
        before >= N / 4,
        "only {before} messages before the restart: {}",
        b.log()
    );
    b.restart();
    let restarted_at = Instant::now();
    writer.join().unwrap();

    let (summary, reconnects, _) = finish_publisher(child, err_reader, &b);
    assert!(
        summary.starts_with(&format!("sent={N} acked={N} dropped=0 ")),
        "{summary}"
    );
    assert!(reconnects >= 1, "the restart went unnoticed: {summary}");

    let t = collect(&sub, N);
    eprintln!(
        "restart test: {before} seen before the restart, {} distinct of {N}, {} duplicates, {} missing; \
         publisher: {summary} (done {:.1} s after the restart)",
        t.distinct,
        t.duplicates,
        t.missing.len(),
        restarted_at.elapsed().as_secs_f64()
    );
    assert_complete(&t, &b);
}

#[test]
fn pub_lines_survive_network_cuts() {
    const M: usize = 10_000;
    let b = Broker::start();
    let sub = Sub::start(&b, "restart/#", 1, &[]);
    let proxy = Proxy::start(b.tls_port);
    // 100 lines per 120 ms: 12 s of input, longer than the cuts, the 1.5 s refusal and the reconnect
    // backoff below take (even loaded: the refusal alone can push the backoff to a few seconds).
    let pause = Duration::from_millis(120);
    let (child, writer, err_reader) =
        start_publisher(&b, proxy.port, M, pause, "qmqtt-cut-pub", &["-d"]);
    // Three cuts spread over the stream; at the second, connections are also refused for 1.5 s.
    for (k, at) in [M / 5, 2 * M / 5, M / 2].into_iter().enumerate() {
        let seen = sub.wait_for(at, Duration::from_secs(30));
        assert!(seen >= at, "stuck at {seen} before cut {k}: {}", b.log());
        // Otherwise the publisher may be done before the cut, and the cut proves nothing.
        assert!(
            !writer.is_finished(),
            "the input ended before cut {k}: too slow a machine?"
        );
        if k == 1 {
            proxy.refuse(true);
            proxy.cut();
            std::thread::sleep(Duration::from_millis(1500));
            proxy.refuse(false);
        } else {
            proxy.cut();
        }
    }
    writer.join().unwrap();
    let (summary, reconnects, log) = finish_publisher(child, err_reader, &b);
    let log: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    assert!(
        summary.starts_with(&format!("sent={M} acked={M} dropped=0 ")),
        "{summary}"
    );
    assert!(
        reconnects >= 3,
        "three cuts, {reconnects} reconnects: {summary}\n{}",
        log.join("\n")
    );
    let t = collect(&sub, M);
    eprintln!(
        "cut test: {} distinct of {M}, {} duplicates, {} missing; publisher: {summary}; the proxy \
         accepted {} connections",
        t.distinct,
        t.duplicates,
        t.missing.len(),
        proxy.accepted()
    );
    assert_complete(&t, &b);
}

/// `qmqtt sub` as the subscriber: it must ride out the restart itself (reconnect, resume its persistent
/// session `-c -i`, acknowledge what the broker kept for it) and print every number.
#[test]
fn qmqtt_sub_survives_a_broker_restart() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    const K: usize = 10_000;
    let mut b = Broker::start_with(BrokerOptions {
        persistence: true,
        ..BrokerOptions::default()
    });
    let (port, ca) = (b.tls_port.to_string(), b.certs.ca.to_str().unwrap());
    let mut sub = common::qmqtt_spawn(
        ["sub", "-h", "localhost", "-p", &port, "--cafile", ca]
            .into_iter()
            .chain([
                "-t",
                "restart/#",
                "-q",
                "1",
                "-c",
                "-i",
                "qsub-restart",
                "-d",
            ]),
        Stdio::inherit(),
        Stdio::piped(),
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    let out = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            l2.lock().unwrap().push(l);
        }
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = log.clone();
    let err = sub.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines() {
            let Ok(l) = l else { break };
            if l.contains("subscribed to '") {
                let _ = ready_tx.send(());
            }
            log2.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("qmqtt sub subscribed");

    let (child, writer, err_reader) =
        start_publisher(&b, b.tls_port, K, MS10, "qmqtt-restart-pub2", &[]);
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        lines.lock().unwrap().len()
    };
    let before = wait_for(K / 3);
    assert!(before >= K / 3, "only {before} before the restart");
    b.restart();
    writer.join().unwrap();
    let (summary, _, _) = finish_publisher(child, err_reader, &b);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts: HashMap<usize, u32> = HashMap::new();
    let mut strays = Vec::new();
    loop {
        for l in std::mem::take(&mut *lines.lock().unwrap()) {
            match l.parse::<usize>() {
                Ok(k) if k < K => *counts.entry(k).or_default() += 1,
                _ => strays.push(l),
            }
        }
        if counts.len() == K || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    let missing: Vec<usize> = (0..K).filter(|k| !counts.contains_key(k)).collect();
    eprintln!(
        "qmqtt sub restart test: {before} before the restart, {} distinct of {K}, {duplicates} \
         duplicates, {} missing; publisher: {summary}",
        counts.len(),
        missing.len()
    );
    assert!(strays.is_empty(), "unexpected lines: {strays:?}");
    assert!(
        missing.is_empty(),
        "{} numbers never reached qmqtt sub, e.g. {:?}\nsub log:\n{}\nbroker log:\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        log.lock().unwrap(),
        b.log()
    );
}
