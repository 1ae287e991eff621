//! SIGPIPE: the library must never raise it, whatever the host's disposition. Rust binaries ignore SIGPIPE
//! at start-up; q (or any C host loading the library) may not, and then a write to a connection the broker
//! has closed kills the whole process with signal 13.
//!
//! The host here is this test binary re-executed with SIGPIPE reset to SIG_DFL. It connects through the
//! fault proxy to a real mosquitto (plain TCP and TLS), subscribes, and stops draining its events while the
//! parent floods it, so that its I/O thread stops reading (receive backpressure) and does not see the
//! broker's FIN. The proxy then closes the connection; the child keeps publishing. The first write after the
//! FIN draws a RST (the socket's error becomes EPIPE), the next write returns EPIPE — and without
//! MSG_NOSIGNAL raises SIGPIPE. The child must survive, see the connection lost and connect again.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::Broker;
use qmqtt::client::{Client, Config, Event};
use qmqtt::QoS;

const ENV: &str = "QMQTT_SIGPIPE_CHILD";
const TOPIC: &str = "sigpipe/flood";

fn line(stdin: &mut impl BufRead) -> String {
    let mut s = String::new();
    stdin.read_line(&mut s).unwrap();
    s.trim().to_string()
}

/// The host: SIGPIPE at SIG_DFL. Env: `QMQTT_SIGPIPE_CHILD=<uri>`, `QMQTT_SIGPIPE_CA=<ca file>` for TLS.
#[test]
fn sigpipe_child_host() {
    let Ok(uri) = std::env::var(ENV) else {
        return; // only as the child of the tests below
    };
    // SAFETY: restoring the default disposition of one signal, before any thread of ours writes a socket.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut cfg = Config::new(uri, "sigpipe-host");
    if let Ok(ca) = std::env::var("QMQTT_SIGPIPE_CA") {
        cfg.tls.ca_file = Some(ca.into());
    }
    cfg.keep_alive = Duration::from_secs(1);
    cfg.event_queue_bytes = 1024; // two messages of the flood
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(200);
    let c = Client::connect(cfg).unwrap();
    c.wait_connected(Duration::from_secs(10)).unwrap();
    c.subscribe(TOPIC, QoS::AtMostOnce).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut subscribed = false;
    while !subscribed {
        assert!(Instant::now() < deadline, "no SUBACK");
        c.poll_events(100, &mut |e| {
            subscribed |= matches!(e, Event::Subscribed { .. })
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut stdin = BufReader::new(std::io::stdin());
    println!("ready");
    // The parent floods; events are not drained from here on, so reading pauses.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.stats().rx_paused_now {
        assert!(Instant::now() < deadline, "reading never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("paused");
    assert_eq!(line(&mut stdin), "cut");
    // Writes on a connection whose far end is gone: QoS 0 publishes (and PINGREQs).
    for i in 0..100 {
        c.publish(
            "sigpipe/out",
            format!("{i}").as_bytes(),
            QoS::AtMostOnce,
            false,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("alive");
    // Drain: the loss must have been seen and the client connected again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lost = None;
    while c.stats().reconnects == 0 || lost.is_none() {
        assert!(Instant::now() < deadline, "no reconnect: {:?}", c.stats());
        c.poll_events(10_000, &mut |e| {
            if let Event::ConnectionLost { cause } = e {
                lost = Some(cause.to_string());
            }
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("lost {}", lost.unwrap());
    println!("reconnected");
}

fn run(tls: bool) {
    let broker = Broker::start();
    let upstream = if tls {
        broker.tls_port
    } else {
        broker.tcp_port
    };
    let proxy = Proxy::start(upstream);
    let uri = if tls {
        proxy.uri("ssl", "localhost")
    } else {
        proxy.uri("tcp", "127.0.0.1")
    };
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "sigpipe_child_host",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ENV, &uri)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if tls {
        cmd.env("QMQTT_SIGPIPE_CA", &broker.certs.ca);
    }
    let mut child = cmd.spawn().unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |what: &str| loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => {
                // The harness prints "test NAME ... " before the first line of output.
                let hit = l == what || l.ends_with(&format!(" {what}"));
                seen.push(l);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    };
    assert!(wait_for("ready"), "child not ready");
    // Flood: more than the child's event queue, little enough that the TCP window stays open for the FIN.
    let flooder = Client::connect(Config::new(broker.tcp_uri(), "sigpipe-flood")).unwrap();
    flooder.wait_connected(Duration::from_secs(10)).unwrap();
    for _ in 0..40 {
        flooder
            .publish(TOPIC, &[b'x'; 400], QoS::AtMostOnce, false)
            .unwrap();
    }
    assert!(wait_for("paused"), "child's reading never paused");
    std::thread::sleep(Duration::from_millis(200));
    proxy.cut();
    std::thread::sleep(Duration::from_millis(300));
    writeln!(to_child, "cut").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert_ne!(
        status.signal(),
        Some(libc::SIGPIPE),
        "the host was killed by SIGPIPE (tls: {tls}); its output: {seen:?}"
    );
    assert!(status.success(), "child failed: {status}; {seen:?}");
    assert!(seen.iter().any(|l| l.ends_with("reconnected")), "{seen:?}");
    eprintln!("sigpipe (tls: {tls}): {seen:?}");
}

#[test]
fn closed_plain_tcp_link_does_not_raise_sigpipe() {
    run(false);
}

#[test]
fn closed_tls_link_does_not_raise_sigpipe() {
    run(true);
}
