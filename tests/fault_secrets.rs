//! Secrets stay secret: with every `log` record captured (trace level, rustls included), a wrong password,
//! a right one, and a series of bad private-key files (a key that does not match the certificate, a
//! corrupted PEM, a certificate where the key should be, an unsupported key type) plus a good mutual-TLS
//! connection must never put the password or any piece of the key material into log output, error
//! messages (`ClientError`, `ConnectionLost` causes, `Stats::last_error`) or stats.
mod common;
#[path = "common/fault.rs"]
mod fault;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Config, Event};
use qmqtt::QoS;

/// Every log record, formatted with its target.
struct Capture(Mutex<String>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.push_str(&format!("{} {}: {}\n", r.level(), r.target(), r.args()));
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static C: OnceLock<&'static Capture> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(String::new()))));
        log::set_logger(c).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        c
    })
}

/// Everything a user could see from a client: the connect error, events, stats, last_error.
fn observe(k: Config, wait: Duration) -> String {
    let mut out = String::new();
    let c = match Client::connect(k) {
        Ok(c) => c,
        Err(e) => return format!("connect error: {e} / {e:?}\n"),
    };
    if let Err(e) = c.wait_connected(Duration::from_secs(5)) {
        out.push_str(&format!("wait_connected: {e} / {e:?}\n"));
    }
    let until = Instant::now() + wait;
    while Instant::now() < until {
        fault::readable(c.event_fd(), 20);
        c.poll_events(100, &mut |e| {
            if let Event::ConnectionLost { cause } = &e {
                out.push_str(&format!("lost: {cause}\n"));
            }
            out.push_str(&format!("{e:?}\n"));
        });
    }
    let st = c.stats();
    out.push_str(&format!("stats: {st:?}\nlast_error: {:?}\n", st.last_error));
    out
}

/// The base64 body lines of a PEM key file, and renderings (hex, Rust's `{:?}`) of its secret bytes: the
/// private scalar of an EC key (PKCS#8/SEC1: `02 01 01 04 20` then 32 bytes; the rest of the file — the
/// algorithm and the public point — is public and also appears in certificates), or the middle of any other
/// key.
fn secret_pieces(pem: &str) -> Vec<String> {
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    let mut v: Vec<String> = body.iter().map(|l| l.to_string()).collect();
    let der = b64(&body.concat());
    let secret: &[u8] = match der.windows(5).position(|w| w == [2, 1, 1, 4, 32]) {
        Some(i) if der.len() >= i + 5 + 32 => &der[i + 5..i + 5 + 32],
        _ => &der[der.len() / 3..der.len() / 3 * 2],
    };
    for w in secret.chunks_exact(16) {
        v.push(w.iter().map(|b| format!("{b:02x}")).collect());
        v.push(format!("{:?}", w).trim_matches(['[', ']']).to_string());
    }
    v
}

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what}: secret {s:?} appears in:\n{}",
            text.lines()
                .filter(|l| l.contains(s.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn fault_secrets_never_in_logs_errors_or_stats() {
    let name = "fault_secrets_never_in_logs_errors_or_stats";
    let cap = capture();
    let b = common::Broker::start();
    let wrong = "Wr0ng-pa55word-7f3a9c";
    let mut secrets = vec![wrong.to_string(), common::PASSWORD.to_string()];

    // A wrong password: refused, retried a few times.
    let mut k = fault::cfg(&b.auth_uri(), "secret-wrong");
    k.username = Some(common::USER.into());
    k.password = Some(wrong.as_bytes().to_vec());
    k.backoff_min = Duration::from_millis(100);
    k.backoff_max = Duration::from_millis(200);
    let mut seen = observe(k, Duration::from_secs(1));
    assert!(seen.matches("Reconnecting").count() >= 2, "retried: {seen}");
    // mosquitto 2 answers a wrong password with "not authorized" (CONNACK 5), older ones with 4.
    let refused = |t: &str| t.contains("not authorized") || t.contains("bad user name or password");
    assert!(refused(&seen), "the refusal is explained: {seen}");
    // The right password: connects and works.
    let mut k = fault::cfg(&b.auth_uri(), "secret-right");
    k.username = Some(common::USER.into());
    k.password = Some(common::PASSWORD.as_bytes().to_vec());
    let c = Client::connect(k).unwrap();
    c.wait_connected(Duration::from_secs(5)).unwrap();
    c.publish("s/x", b"hello", QoS::AtLeastOnce, false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    seen.push_str(&format!("{:?}\n", c.stats()));
    drop(c);

    // Bad key files for mutual TLS.
    let certs = &b.certs;
    let key = std::fs::read_to_string(&certs.client_key).unwrap();
    let other_key = std::fs::read_to_string(&certs.bad_keys[0]).unwrap();
    let pieces = secret_pieces(&key);
    // The checker can see what it looks for: PEM lines and the private scalar in hex and as `{:?}`.
    assert!(
        pieces.len() >= 6 && pieces.iter().all(|p| p.len() >= 16),
        "{pieces:?}"
    );
    assert!(key.contains(&pieces[0]));
    secrets.extend(pieces);
    secrets.extend(secret_pieces(&other_key));
    let dir = b.dir.path();
    let corrupt = {
        // Damage one base64 line in the middle: the PEM no longer decodes to a key.
        let mut lines: Vec<String> = key.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        lines[mid] = lines[mid]
            .chars()
            .rev()
            .collect::<String>()
            .replace('A', "*");
        lines.join("\n")
    };
    let unsupported = key
        .replace("BEGIN PRIVATE KEY", "BEGIN ENCRYPTED PRIVATE KEY")
        .replace("END PRIVATE KEY", "END ENCRYPTED PRIVATE KEY");
    let files = [
        ("mismatched.key", other_key.clone()),
        ("corrupt.key", corrupt.clone()),
        (
            "cert-as-key.key",
            std::fs::read_to_string(&certs.client_cert).unwrap(),
        ),
        ("encrypted.key", unsupported),
    ];
    secrets.extend(
        corrupt
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string),
    );
    let mut key_errors = Vec::new();
    for (fname, content) in &files {
        let p = dir.join(fname);
        std::fs::write(&p, content).unwrap();
        let mut k = fault::cfg(&b.mtls_uri(), &format!("secret-{fname}"));
        k.tls.ca_file = Some(certs.ca.clone());
        k.tls.cert_file = Some(certs.client_cert.clone());
        k.tls.key_file = Some(p);
        k.reconnect = false;
        let o = observe(k, Duration::from_millis(500));
        key_errors.push(format!("{fname}: {}", o.lines().next().unwrap_or("")));
        seen.push_str(&o);
    }
    // The good key: a working mutual-TLS connection, with rustls logging at trace level.
    let mut k = fault::cfg(&b.mtls_uri(), "secret-good-key");
    k.tls.ca_file = Some(certs.ca.clone());
    k.tls.cert_file = Some(certs.client_cert.clone());
    k.tls.key_file = Some(certs.client_key.clone());
    let c = Client::connect(k).unwrap();
    c.wait_connected(Duration::from_secs(5))
        .expect("mutual TLS with the good key");
    c.publish("s/x", b"hello", QoS::AtLeastOnce, false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    seen.push_str(&format!("{:?}\n", c.stats()));
    drop(c);

    let logs = cap.0.lock().unwrap().clone();
    let records = logs.lines().count();
    fault::report(
        name,
        &format!(
            "wrong password (refused, retried), right password, 4 bad key files, good mutual TLS; {} \
             secret strings checked against {records} log records (trace, rustls included), errors, events \
             and stats: none found; every bad key refused with a message naming the file",
            secrets.len(),
        ),
    );
    eprintln!("key errors:\n{}", key_errors.join("\n"));
    eprintln!("--- what the user saw ---\n{seen}");
    assert!(records > 10, "the logger captured nothing: {logs}");
    assert!(refused(&logs), "the refusal is logged");
    assert_clean("log output", &logs, &secrets);
    assert_clean("errors, events and stats", &seen, &secrets);
    // Each bad key was refused with a message that names the key file.
    for e in &key_errors {
        assert!(
            e.contains(".key"),
            "the error should name the key file: {e}"
        );
    }
}

/// `{:?}` of a configuration is what ends up in a log line or a panic message sooner or later: it must not
/// show the password, in text or as bytes.
#[test]
fn fault_secrets_config_debug_redacts_the_password() {
    let pw = "Wr0ng-pa55word-7f3a9c";
    let mut k = Config::new("tcp://127.0.0.1:1883", "dbg");
    k.username = Some("u".into());
    k.password = Some(pw.as_bytes().to_vec());
    let bytes = format!("{:?}", pw.as_bytes());
    let inner = bytes.trim_matches(['[', ']']);
    let s = qmqtt::session::SessionConfig {
        username: Some("u".into()),
        password: Some(pw.as_bytes().to_vec()),
        max_packet_size: 1 << 20,
        ..common::session::config("dbg", qmqtt::codec::Protocol::V311)
    };
    for text in [format!("{k:?}"), format!("{s:?}")] {
        assert!(
            !text.contains(pw) && !text.contains(inner),
            "the password shows in {text}"
        );
    }
}

/// A password written into a broker URI (`scheme://user:password@host`, which the library refuses and the
/// CLI's `-L` accepts) never shows: not in the configuration error, its `Debug`, the `Config`'s `Debug`, the
/// log, nor in what `qmqtt` prints for a bad `-L`.
#[test]
fn fault_secrets_uri_passwords_are_redacted() {
    let cap = capture();
    let pw = "hunter2";
    let mut seen = String::new();
    for uri in [
        "tcp://gw1:hunter2@localhost:99999",
        "tcp://gw1:hunter2@localhost:1883",
        "ssl://gw1:hunter2@localhost",
        "ws://gw1:hunter2@localhost/mqtt",
        "ftp://gw1:hunter2@localhost:1",
        "gw1:hunter2@localhost:1883",
        "tcp://gw1:hunter2@[::1",
        "tcp://gw1:hunter2@local_host:1",
    ] {
        let k = Config::new(uri, "uri-secret");
        seen.push_str(&format!("{k:?}\n"));
        match Client::connect(k) {
            Ok(_) => panic!("{uri} accepted"),
            Err(e) => {
                assert!(e.to_string().contains("gw1:***@"), "{uri}: {e}");
                seen.push_str(&format!("{e} / {e:?}\n"));
            }
        }
    }
    for args in [
        &[
            "pub",
            "-L",
            "tcp://gw1:hunter2@localhost:99999",
            "-t",
            "t",
            "-m",
            "x",
        ][..],
        &[
            "pub",
            "-L",
            "ftp://gw1:hunter2@localhost:1",
            "-t",
            "t",
            "-m",
            "x",
        ],
        &["sub", "-L", "mqtt://gw1:hunter2@[::1:1/t"],
        &["check", "-L", "mqtts://gw1:hunter2@localhost:x"],
        // Accepted, and the connection fails: the password is in nothing printed either.
        &["check", "-d", "-L", "mqtt://gw1:hunter2@127.0.0.1:1"],
        &[
            "pub",
            "-d",
            "-L",
            "mqtt://gw1:hunter2@127.0.0.1:1/t",
            "-m",
            "x",
        ],
    ] {
        let out = common::qmqtt_run(args, b"", Duration::from_secs(20));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(
            args[1] == "-d" || text.contains("gw1:***@"),
            "{args:?}: {text}"
        );
        seen.push_str(&text);
    }
    let logs = cap.0.lock().unwrap().clone();
    eprintln!("{seen}");
    assert_clean("errors and Debug", &seen, &[pw.to_string()]);
    assert_clean("log output", &logs, &[pw.to_string()]);
}
