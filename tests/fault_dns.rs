//! A name lookup that never answers must not hold the client: the connect timeout covers it (the loss says
//! the host did not resolve) and `disconnect` returns while the lookup is still waiting. The same for the
//! name of an HTTP proxy (then the only name the client looks up).
//!
//! The host is this test binary re-executed by `unshare -rmn` (user, mount and network namespaces of its
//! own), with /etc/resolv.conf bind-mounted to name 127.0.0.1 as the DNS server and to keep glibc waiting
//! 30 s for an answer. There the child holds a UDP socket on port 53 that reads the queries and never
//! answers. Needs unprivileged user namespaces (and `ip`, `unshare`).
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Config, Event};
use qmqtt::transport::proxy::ProxyError;
use qmqtt::Error;

const ENV: &str = "QMQTT_DNS_CHILD";

/// The host inside the namespaces (only when the test below starts it).
#[test]
fn dns_child_host() {
    if std::env::var(ENV).is_err() {
        return;
    }
    let dns = UdpSocket::bind("127.0.0.1:53").expect("bind the silent DNS server");
    let queries = Arc::new(AtomicU64::new(0));
    let q = queries.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 1500];
        while dns.recv(&mut b).is_ok() {
            q.fetch_add(1, Ordering::Relaxed);
        }
    });
    let lost = hang("tcp://broker.qmqtt-dns-test.example:1883", None);
    assert!(
        matches!(lost, Error::Dns { cause: Some(_), .. }),
        "{lost:?}"
    );
    assert!(queries.load(Ordering::Relaxed) > 0, "no DNS query was sent");
    println!("lost: {lost}");
    // Through an HTTP proxy only the proxy's name is looked up (the proxy resolves the broker's).
    let lost = hang(
        "tcp://127.0.0.1:1883",
        Some("http://proxy.qmqtt-dns-test.example:3128"),
    );
    assert!(
        matches!(lost, Error::Proxy(ProxyError::Dns { cause: Some(_), .. })),
        "{lost:?}"
    );
    println!("lost via proxy: {lost}");
}

/// Connect to `uri` (through `proxy`) while the lookup hangs: the loss reported; `disconnect` returns.
fn hang(uri: &str, proxy: Option<&str>) -> Error {
    let mut k = Config::new(uri, "dns-host");
    k.http_proxy = proxy.map(String::from);
    k.connect_timeout = Duration::from_secs(1);
    k.backoff_min = Duration::from_secs(5);
    k.backoff_max = Duration::from_secs(5);
    let mut c = Client::connect(k).unwrap();
    // glibc waits 30 s for the silent server; the client's connect timeout is 1 s.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut lost = None;
    while lost.is_none() && Instant::now() < give_up {
        c.poll_events(100, &mut |e| {
            if let Event::ConnectionLost { cause } = e {
                lost = Some(cause.clone());
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let lost = lost.expect("no loss reported while the name lookup hung");
    c.disconnect(Duration::ZERO);
    println!("disconnected {uri}");
    lost
}

#[test]
fn a_name_lookup_that_never_answers_holds_neither_the_timeout_nor_disconnect() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    // As root, no user namespace is needed (and none can be made inside a chroot); otherwise map us to root.
    // SAFETY: geteuid has no preconditions.
    let flags = if unsafe { libc::geteuid() } == 0 {
        "-mn"
    } else {
        "-rmn"
    };
    let out = Command::new("unshare")
        .args([
            flags,
            "sh",
            "-c",
            "ip link set lo up && mount --bind \"$0\" /etc/resolv.conf && \
             exec \"$1\" --exact dns_child_host --nocapture --test-threads=1",
        ])
        .arg(&conf)
        .arg(&exe)
        .env(ENV, "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains(
            "lost: cannot resolve the broker host 'broker.qmqtt-dns-test.example': no answer within \
             the connect timeout (1s)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("disconnected tcp://broker.qmqtt-dns-test.example:1883"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "lost via proxy: cannot resolve the HTTP proxy proxy.qmqtt-dns-test.example:3128 (httpProxy/httpsProxy (--proxy)): \
             no answer within the connect timeout (1s)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("disconnected tcp://127.0.0.1:1883"),
        "{stdout}"
    );
}
