//! `qmqtt pub` and `qmqtt sub` against real mosquitto and its own clients (mosquitto_pub / mosquitto_sub),
//! and against each other: plain TCP, TLS with --cafile, mutual TLS with --cert/--key, -u/-P, a wrong
//! password (a clear error and a non-zero exit), -W (exit 27), -C, -s, --repeat; and `qmqtt check`.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{mosquitto_pub, qmqtt_run, read_all, wait_timeout, Broker, BrokerOptions, Sub};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `qmqtt sub -d …` in the background: stdout lines collected; ready once it logged its SUBACK.
struct QSub {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Not read yet (see `start_unread`).
    out: Option<std::process::ChildStdout>,
    /// The threads reading stdout and stderr: joined by `wait`, so that what the process wrote before it
    /// exited is in `lines` and `stderr` when `wait` returns.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl QSub {
    fn start(args: &[&str]) -> QSub {
        let mut s = QSub::start_unread(args);
        s.start_reading();
        s
    }

    /// Take stdout into `lines` from now on.
    fn start_reading(&mut self) {
        let Some(out) = self.out.take() else { return };
        let l2 = self.lines.clone();
        self.readers.push(std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                match l {
                    Ok(l) => l2.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        }));
    }

    /// Started and subscribed, but nobody reads its stdout yet (a slow consumer) until `start_reading`.
    fn start_unread(args: &[&str]) -> QSub {
        let mut child = common::qmqtt_spawn(
            ["sub", "-d"].iter().chain(args),
            Stdio::null(),
            Stdio::piped(),
        );
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let ready = Arc::new(AtomicBool::new(false));
        let (e2, r2) = (stderr.clone(), ready.clone());
        let out = child.stdout.take();
        let err = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if l.contains("subscribed to '") {
                    r2.store(true, Ordering::SeqCst);
                }
                let mut e = e2.lock().unwrap();
                e.push_str(&l);
                e.push('\n');
            }
        });
        let mut s = QSub {
            child,
            lines,
            stderr,
            out,
            readers: vec![err_reader],
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready.load(Ordering::SeqCst) {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("qmqtt sub exited ({st}) before subscribing: {}", s.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "qmqtt sub did not subscribe: {}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait(&mut self, t: Duration) -> ExitStatus {
        let st = wait_timeout(&mut self.child, t, "qmqtt sub");
        // The pipes end with the process: the readers finish with everything it wrote.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        st
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for QSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port(p: u16) -> String {
    p.to_string()
}

/// The summary line of `qmqtt pub` as key → value.
fn summary(stderr: &str) -> std::collections::HashMap<String, String> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sent="))
        .unwrap_or_else(|| panic!("no summary line in: {stderr}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const T: Duration = Duration::from_secs(30);

#[test]
fn pub_lines_tcp_to_mosquitto_sub() {
    let b = Broker::start();
    let sub = Sub::start(&b, "cli/tcp/#", 1, &["-v"]);
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/tcp/x",
            "-q",
            "1",
            "-l",
            "--drain-timeout",
            "10",
        ],
        b"one\n\ntwo words\nthree",
        T,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let s = summary(&err);
    assert_eq!(s["sent"], "4", "{err}");
    assert_eq!(s["acked"], "4", "{err}");
    assert_eq!(s["dropped"], "0", "{err}");
    assert_eq!(sub.wait_for(4, Duration::from_secs(10)), 4);
    // mosquitto_sub -v prints "topic payload"; the empty line is an empty message ("(null)" to it).
    assert_eq!(
        sub.take(),
        vec![
            "cli/tcp/x one",
            "cli/tcp/x (null)",
            "cli/tcp/x two words",
            "cli/tcp/x three"
        ]
    );
}

#[test]
fn mosquitto_pub_to_qmqtt_sub_over_tls() {
    let b = Broker::start();
    let ca = b.certs.ca.to_str().unwrap().to_string();
    let mut s = QSub::start(&[
        "-h",
        "localhost",
        "-p",
        &port(b.tls_port),
        "--cafile",
        &ca,
        "-t",
        "cli/tls/#",
        "-q",
        "2",
        "-C",
        "3",
        "-v",
    ]);
    for q in 0..3 {
        mosquitto_pub(
            "localhost",
            b.tls_port,
            &[
                "--cafile",
                &ca,
                "-t",
                "cli/tls/m",
                "-q",
                &q.to_string(),
                "-m",
                &format!("msg qos{q}"),
            ],
        );
    }
    let st = s.wait(T);
    assert!(st.success(), "qmqtt sub: {st}: {}", s.stderr());
    assert_eq!(
        s.lines(),
        vec![
            "cli/tls/m msg qos0",
            "cli/tls/m msg qos1",
            "cli/tls/m msg qos2"
        ]
    );
}

#[test]
fn qmqtt_to_qmqtt_over_mutual_tls() {
    let b = Broker::start();
    let c = &b.certs;
    let (ca, cert, key) = (
        c.ca.to_str().unwrap(),
        c.client_cert.to_str().unwrap(),
        c.client_key.to_str().unwrap(),
    );
    let p = port(b.mtls_port);
    let mut s = QSub::start(&[
        "-L",
        &format!("mqtts://localhost:{p}/cli/mtls"),
        "--cafile",
        ca,
        "--cert",
        cert,
        "--key",
        key,
        "-q",
        "1",
        "-C",
        "2",
    ]);
    for m in ["first", "second"] {
        let o = qmqtt_run(
            &[
                "pub",
                "-h",
                "localhost",
                "-p",
                &p,
                "--cafile",
                ca,
                "--cert",
                cert,
                "--key",
                key,
                "-t",
                "cli/mtls",
                "-q",
                "1",
                "-m",
                m,
            ],
            b"",
            T,
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(summary(&text(&o.stderr))["acked"], "1");
    }
    assert!(s.wait(T).success(), "{}", s.stderr());
    assert_eq!(s.lines(), vec!["first", "second"]);

    // Without a client certificate the broker refuses: non-zero exit, advice names --cert.
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "localhost",
            "-p",
            &p,
            "--cafile",
            ca,
            "-t",
            "x",
            "-m",
            "x",
        ],
        b"",
        T,
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to ssl://localhost"), "{err}");
    assert!(err.contains("--cert"), "{err}");
}

#[test]
fn username_password_and_a_wrong_password() {
    let b = Broker::start();
    let p = port(b.auth_port);
    let mut s = QSub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-u",
        common::USER,
        "-P",
        common::PASSWORD,
        "-t",
        "cli/auth",
        "-C",
        "1",
    ]);
    // mosquitto_pub with the same credentials reaches qmqtt sub.
    mosquitto_pub(
        "127.0.0.1",
        &p,
        &[
            "-u",
            common::USER,
            "-P",
            common::PASSWORD,
            "-t",
            "cli/auth",
            "-q",
            "1",
            "-m",
            "authorised",
        ],
    );
    assert!(s.wait(T).success(), "{}", s.stderr());
    assert_eq!(s.lines(), vec!["authorised"]);

    // qmqtt pub with them reaches mosquitto_sub (on the plain listener of the same broker).
    let sub = Sub::start(&b, "cli/auth2", 1, &[]);
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-u",
            common::USER,
            "-P",
            common::PASSWORD,
            "-t",
            "cli/auth2",
            "-q",
            "2",
            "-m",
            "by qmqtt",
        ],
        b"",
        T,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(sub.wait_for(1, Duration::from_secs(10)), 1);
    assert_eq!(sub.take(), vec!["by qmqtt"]);

    // Wrong password, and none: a clear error naming -u/-P, exit 1, nothing published.
    for creds in [&["-u", common::USER, "-P", "wrong"][..], &[][..]] {
        for cmd in ["pub", "sub"] {
            let mut args = vec![cmd, "-h", "127.0.0.1", "-p", &p, "-t", "cli/auth"];
            args.extend_from_slice(creds);
            if cmd == "pub" {
                args.extend_from_slice(&["-m", "nope"]);
            }
            let started = Instant::now();
            let o = qmqtt_run(&args, b"", T);
            let err = text(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains("cannot connect to tcp://127.0.0.1"),
                "{args:?}: {err}"
            );
            assert!(err.contains("-u USER and -P PASS"), "{args:?}: {err}");
            assert!(
                started.elapsed() < common::slow(Duration::from_secs(10)),
                "a refused login should fail at once, took {:?}",
                started.elapsed()
            );
        }
    }
}

#[test]
fn sub_timeout_exits_27_and_count_exits_0() {
    let b = Broker::start();
    let started = Instant::now();
    let o = qmqtt_run(
        &[
            "sub",
            "-p",
            &port(b.tcp_port),
            "-h",
            "127.0.0.1",
            "-t",
            "cli/quiet",
            "-W",
            "1",
        ],
        b"",
        T,
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(27), "{}", text(&o.stderr));
    assert!(
        took >= Duration::from_secs(1) && took < common::slow(Duration::from_secs(8)),
        "{took:?}"
    );
    assert!(o.stdout.is_empty());

    // A retained message arrives on subscribe; -C 1 then ends the command with 0, -N keeps bytes exact.
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/retained",
            "-r",
            "-q",
            "1",
            "-s",
        ],
        b"two\nlines\n",
        T,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = qmqtt_run(
        &[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/retained",
            "-C",
            "1",
            "-N",
            "-W",
            "10",
        ],
        b"",
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(o.stdout, b"two\nlines\n");
}

#[test]
fn repeat_publishes_numbered_synthetic_messages() {
    let b = Broker::start();
    let sub = Sub::start(&b, "cli/bench", 1, &[]);
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/bench",
            "-q",
            "1",
            "--repeat",
            "2000",
            "--size",
            "64",
            "--drain-timeout",
            "20",
        ],
        b"",
        T,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let s = summary(&err);
    assert_eq!(
        (s["sent"].as_str(), s["acked"].as_str()),
        ("2000", "2000"),
        "{err}"
    );
    assert!(s.contains_key("rate"), "{err}");
    assert_eq!(sub.wait_for(2000, Duration::from_secs(20)), 2000);
    let lines = sub.take();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.len(), 64);
        assert!(l.starts_with(&format!("{i} x")), "message {i}: {l}");
    }
}

#[test]
fn pub_lines_never_drop_when_the_queue_is_full() {
    let b = Broker::start();
    let sub = Sub::start(&b, "cli/full", 1, &[]);
    let n = 5000;
    let input: String = (0..n)
        .map(|i| format!("line {i:05} {}\n", "p".repeat(100)))
        .collect();
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/full",
            "-q",
            "1",
            "-l",
            "--queue-bytes",
            "4096",
            "--max-inflight",
            "4",
            "--drain-timeout",
            "30",
        ],
        input.as_bytes(),
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let s = summary(&err);
    assert_eq!(s["sent"], n.to_string(), "{err}");
    assert_eq!(s["acked"], n.to_string(), "{err}");
    assert!(
        s.get("full_waits").is_some_and(|w| w != "0"),
        "a 4 KiB queue never filled: the test did not exercise waiting: {err}"
    );
    assert_eq!(sub.wait_for(n, Duration::from_secs(30)), n);
    let got = sub.take();
    let want: Vec<String> = input.lines().map(str::to_string).collect();
    assert_eq!(got, want, "lines lost, duplicated or reordered");
}

#[test]
fn check_reports_tls_and_connack() {
    let b = Broker::start();
    let ca = b.certs.ca.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["check"];
        a.extend_from_slice(args);
        let o = qmqtt_run(&a, b"", T);
        (o.status.code(), text(&o.stdout) + &text(&o.stderr))
    };
    let tls = format!("mqtts://localhost:{}", b.tls_port);
    let (code, out) = run(&["-L", &tls, "--cafile", ca]);
    assert_eq!(code, Some(0), "{out}");
    for w in [
        "TLS version: TLSv1.3",
        "cipher suite: TLS13_",
        "subject: CN=localhost",
        "issuer:  CN=qmqtt test CA",
        "days left",
        "DNS:localhost",
        "CONNACK accepted",
        "OK:",
    ] {
        assert!(out.contains(w), "expected '{w}' in:\n{out}");
    }
    // TLS 1.2 when asked for... by the broker? We only set the minimum; 1.3 still wins. ALPN not set.
    assert!(out.contains("ALPN: none"), "{out}");
    // The cipher order and why: this CPU's AES support (x86_64 machines have AES-NI and PCLMULQDQ).
    assert!(out.contains("cipher order offered: "), "{out}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        assert!(
            out.contains("cipher order offered: AES-GCM first: this CPU has AES-NI"),
            "{out}"
        );
    }

    // The wrong CA: unknown issuer, and the advice names --cafile.
    let (code, out) = run(&["-L", &tls, "--cafile", b.certs.other_ca.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAILED at"), "{out}");
    assert!(out.to_lowercase().contains("unknown issuer"), "{out}");
    assert!(out.contains("--cafile"), "{out}");

    // Mutual TLS without a client certificate: the advice names --cert; with it: OK.
    let mtls = format!("mqtts://localhost:{}", b.mtls_port);
    let (code, out) = run(&["-L", &mtls, "--cafile", ca]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--cert"), "{out}");
    let (code, out) = run(&[
        "-L",
        &mtls,
        "--cafile",
        ca,
        "--cert",
        b.certs.client_cert.to_str().unwrap(),
        "--key",
        b.certs.client_key.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");

    // Plain TCP: no TLS section, CONNACK; a wrong password: refused, advice names -u/-P.
    let (code, out) = run(&["-L", &format!("mqtt://127.0.0.1:{}", b.tcp_port)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("plain, no TLS") && out.contains("CONNACK accepted"),
        "{out}"
    );
    let auth = format!("mqtt://127.0.0.1:{}", b.auth_port);
    let (code, out) = run(&["-L", &auth, "-u", common::USER, "-P", "bad"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refused") && out.contains("-u USER and -P PASS"),
        "{out}"
    );
    let (code, out) = run(&["-L", &auth, "-u", common::USER, "-P", common::PASSWORD]);
    assert_eq!(code, Some(0), "{out}");

    // Nothing listening: says so and names -h/-p.
    let closed = common::free_port();
    let (code, out) = run(&["-h", "127.0.0.1", "-p", &closed.to_string()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("-p PORT"), "{out}");
}

#[test]
fn check_names_certificate_problems() {
    // A broker serving an expired certificate, then one for another host name.
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = common::Certs::generate(certs_dir.path());
    let cases = [
        (
            certs.expired_cert.clone(),
            certs.bad_keys[0].clone(),
            "expired",
        ),
        (
            certs.wronghost_cert.clone(),
            certs.bad_keys[2].clone(),
            "--insecure",
        ),
    ];
    for (cert, key, want) in cases {
        let b = Broker::start_with(BrokerOptions {
            tls_cert: Some((cert, key)),
            ..BrokerOptions::default()
        });
        // The broker generated its own CA; the bad certificates we pass are signed by ours, so trust ours.
        let o = qmqtt_run(
            &[
                "check",
                "-L",
                &format!("mqtts://localhost:{}", b.tls_port),
                "--cafile",
                certs.ca.to_str().unwrap(),
            ],
            b"",
            T,
        );
        let out = text(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(out.contains(want), "expected '{want}' in:\n{out}");
    }
}

#[test]
fn tls_flags_sni_insecure_version() {
    let b = Broker::start();
    let ca = b.certs.ca.to_str().unwrap();
    let p = port(b.tls_port);
    let check = |extra: &[&str]| {
        let mut a = vec!["check", "-h", "127.0.0.1", "-p", &p, "--cafile", ca];
        a.extend_from_slice(extra);
        let o = qmqtt_run(&a, b"", T);
        (o.status.code(), text(&o.stdout) + &text(&o.stderr))
    };
    // By IP (the certificate lists 127.0.0.1), with TLS 1.3 as the minimum.
    let (code, out) = check(&["--tls-version", "tlsv1.3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    // A server name the certificate does not list: refused, advice names --sni / --insecure …
    let (code, out) = check(&["--sni", "elsewhere.example"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--insecure") && out.contains("--sni"), "{out}");
    // … and --insecure (host name not checked; the CA still is) lets it through.
    let (code, out) = check(&["--sni", "elsewhere.example", "--insecure"]);
    assert_eq!(code, Some(0), "{out}");
    // --insecure does not turn off the CA check.
    let o = qmqtt_run(
        &[
            "check",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "--insecure",
            "--cafile",
            b.certs.other_ca.to_str().unwrap(),
        ],
        b"",
        T,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    // Credentials in the -L URL.
    let o = qmqtt_run(
        &[
            "check",
            "-L",
            &format!(
                "mqtt://{}:{}@127.0.0.1:{}",
                common::USER,
                common::PASSWORD,
                b.auth_port
            ),
        ],
        b"",
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
}

#[test]
fn sub_resumes_its_session_with_c() {
    let b = Broker::start();
    let p = port(b.tcp_port);
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "cli/session",
        "-q",
        "1",
        "-c",
        "-i",
        "qsub-fixed",
    ];
    // First run: subscribe with a persistent session, take one message, leave.
    let mut args = base.to_vec();
    args.extend_from_slice(&["-C", "1"]);
    let mut s = QSub::start(&args);
    mosquitto_pub(
        "127.0.0.1",
        &p,
        &["-t", "cli/session", "-q", "1", "-m", "live"],
    );
    assert!(s.wait(T).success(), "{}", s.stderr());
    assert_eq!(s.lines(), vec!["live"]);
    // While it is away, the broker queues for the session.
    for m in ["queued 1", "queued 2"] {
        mosquitto_pub("127.0.0.1", &p, &["-t", "cli/session", "-q", "1", "-m", m]);
    }
    let mut args = base.to_vec();
    args.extend_from_slice(&["-C", "2", "-W", "10"]);
    let o = qmqtt_run(
        &["sub"].iter().chain(&args).copied().collect::<Vec<_>>(),
        b"",
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "queued 1\nqueued 2\n");
}

#[test]
fn interrupt_stops_cleanly_with_a_summary() {
    let b = Broker::start();
    let sub = Sub::start(&b, "cli/int", 1, &[]);
    let mut child = common::qmqtt_spawn(
        [
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/int",
            "-q",
            "1",
            "-l",
        ],
        Stdio::piped(),
        Stdio::null(),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"a\nb\nc\n").unwrap();
    assert_eq!(sub.wait_for(3, Duration::from_secs(10)), 3);
    // Input still open: SIGINT ends it, everything is acknowledged already, exit 130 with the summary.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = wait_timeout(&mut child, T, "qmqtt pub after SIGINT");
    let err = text(&read_all(child.stderr.take().unwrap()));
    assert_eq!(st.code(), Some(130), "{err}");
    let s = summary(&err);
    assert_eq!(
        (s["sent"].as_str(), s["acked"].as_str()),
        ("3", "3"),
        "{err}"
    );
    drop(stdin);

    // A frozen broker never answers CONNECT: SIGINT still ends the wait for it at once.
    b.freeze();
    let mut child = common::qmqtt_spawn(
        [
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/int",
            "-m",
            "x",
        ],
        Stdio::inherit(),
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = wait_timeout(
        &mut child,
        Duration::from_secs(3),
        "qmqtt pub interrupted while connecting",
    );
    let err = text(&read_all(child.stderr.take().unwrap()));
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("interrupted while connecting"), "{err}");
    b.thaw();

    // qmqtt sub: SIGTERM is a clean exit 0.
    let mut s = QSub::start(&["-h", "127.0.0.1", "-p", &port(b.tcp_port), "-t", "cli/int"]);
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let st = s.wait(T);
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
}

#[test]
fn last_will_and_protocol_version() {
    let b = Broker::start();
    let p = port(b.tcp_port);
    let sub = Sub::start(&b, "cli/will/#", 1, &["-v"]);
    // A subscriber that dies without DISCONNECT: the broker publishes its will.
    let mut s = QSub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "cli/nothing",
        "--will-topic",
        "cli/will/gw1",
        "--will-payload",
        "gateway gone",
        "--will-qos",
        "1",
    ]);
    let _ = s.child.kill();
    let _ = s.child.wait();
    assert_eq!(
        sub.wait_for(1, Duration::from_secs(10)),
        1,
        "no will: {}",
        b.log()
    );
    assert_eq!(sub.take(), vec!["cli/will/gw1 gateway gone"]);

    // MQTT 3.1 (KX's MQTTVersion 3) works end to end; MQTT 5 is refused on the command line.
    let o = qmqtt_run(
        &[
            "check",
            "-V",
            "mqttv31",
            "-L",
            &format!("mqtt://127.0.0.1:{p}"),
        ],
        b"",
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("CONNACK accepted (MQTT 3.1,"),
        "{}",
        text(&o.stdout)
    );
    let o = qmqtt_run(
        &[
            "pub",
            "-V",
            "mqttv31",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "cli/will/v31",
            "-q",
            "1",
            "-m",
            "old",
        ],
        b"",
        T,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(sub.wait_for(1, Duration::from_secs(10)), 1);
    assert_eq!(sub.take(), vec!["cli/will/v31 old"]);
    // mosquitto logs the protocol level of each client: p1 is MQTT 3.1.
    assert!(b.log().contains("(p1, "), "{}", b.log());
    let o = qmqtt_run(&["pub", "-V", "mqttv6", "-t", "x", "-m", "x"], b"", T);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("unknown version 'mqttv6'"));
}

#[test]
fn check_with_tls12_cipher_suites() {
    // Offering only a TLS 1.2 suite makes the session TLS 1.2 (mosquitto allows 1.2 and 1.3).
    let b = Broker::start();
    let url = format!("mqtts://localhost:{}", b.tls_port);
    let ca = b.certs.ca.to_str().unwrap();
    let suite = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256";
    let o = qmqtt_run(
        &["check", "-L", &url, "--cafile", ca, "--ciphers", suite],
        b"",
        T,
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("TLS version: TLSv1.2"), "{out}");
    assert!(out.contains(&format!("cipher suite: {suite}")), "{out}");
    assert!(
        out.contains("cipher order offered: as enabledCipherSuites (--ciphers) gives them"),
        "{out}"
    );
    // A suite name rustls does not know: a configuration error that names it, before any connection.
    let o = qmqtt_run(
        &["check", "-L", &url, "--cafile", ca, "--ciphers", "RC4-MD5"],
        b"",
        T,
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAILED at TLS configuration") && out.contains("RC4-MD5"),
        "{out}"
    );
}

/// A slow reader must not cost a QoS 1 subscriber messages: while `qmqtt sub`'s stdout is blocked, the
/// engine's event queue fills; what arrives then must wait (backpressure on the socket), not be
/// acknowledged and dropped.
#[test]
fn slow_reader_loses_no_qos1_messages() {
    let b = Broker::start();
    let n = 100_000;
    let mut s = QSub::start_unread(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port(b.tcp_port),
        "-t",
        "cli/slow",
        "-q",
        "1",
    ]);
    // 100,000 × 100 bytes: far more than the pipe (64 KiB) and the event queue (4 MiB) hold.
    let o = qmqtt_run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(b.tcp_port),
            "-t",
            "cli/slow",
            "-q",
            "1",
            "--repeat",
            &n.to_string(),
            "--size",
            "99",
            "--drain-timeout",
            "60",
        ],
        b"",
        Duration::from_secs(90),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Only now read what the subscriber printed, until all arrived or nothing more comes for 5 s.
    s.start_reading();
    let mut last = (0, Instant::now());
    loop {
        let c = s.lines.lock().unwrap().len();
        if c >= n {
            break;
        }
        if c != last.0 {
            last = (c, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut seen = vec![false; n];
    for l in s.lines() {
        if let Some(k) = l.split(' ').next().and_then(|k| k.parse::<usize>().ok()) {
            seen[k % n] = true;
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {n} QoS 1 messages lost by a slow reader\n{}",
        s.stderr()
            .lines()
            .filter(|l| !l.contains(" DEBUG "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// MQTT 5 properties the way mosquitto_sub prints them with -F: expiry, content type, payload format,
/// response topic, correlation data, user properties, then topic and payload (probes end the line).
const FMT5: &str = "%E|%C|%F|%R|%D|%P|%t %p";

#[test]
fn mqtt5_pub_properties_under_the_brokers_limits() {
    // mosquitto with Receive Maximum 2, Topic Alias Maximum 2, Maximum Packet Size 256: a client that
    // breaks one is disconnected (the summary would show reconnects, the lines would be short).
    let b = Broker::start_with(BrokerOptions {
        mqtt5_limits: true,
        ..Default::default()
    });
    let sub = Sub::start(&b, "cli5/#", 1, &["-V", "5", "-F", FMT5]);
    let p = port(b.tcp_port);
    let topic = "cli5/site-0001/gateway-0001/t1";
    let input: String = (0..50).map(|i| format!("{i:04}\n")).collect();
    #[rustfmt::skip]
    let props = [
        "-D", "publish", "message-expiry-interval", "60",
        "-D", "publish", "content-type", "text/plain",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "response-topic", "cli5/reply",
        "-D", "publish", "correlation-data", "c1",
        "-D", "publish", "user-property", "unit", "C",
        "-D", "publish", "user-property", "id", "t1",
    ];
    let mut args = vec![
        "pub",
        "-V",
        "5",
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        topic,
        "-q",
        "1",
    ];
    args.extend(props);
    args.extend([
        "-D",
        "connect",
        "session-expiry-interval",
        "60",
        "-i",
        "cli5-pub",
        "-l",
    ]);
    let o = qmqtt_run(&args, input.as_bytes(), T);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let s = summary(&err);
    assert_eq!(
        (s["sent"].as_str(), s["acked"].as_str()),
        ("50", "50"),
        "{err}"
    );
    assert_eq!(s["reconnects"], "0", "{err}");
    assert_eq!(sub.wait_for(50, Duration::from_secs(10)), 50);
    for (i, line) in sub.take().iter().enumerate() {
        let (expiry, rest) = line.split_once('|').unwrap();
        assert!((1..=60).contains(&expiry.parse::<u32>().unwrap()), "{line}");
        assert_eq!(
            rest,
            format!("text/plain|1|cli5/reply|c1|unit:C id:t1|{topic} {i:04}")
        );
    }
    // Larger than the broker's Maximum Packet Size: not sent, named, counted; exit 1.
    let big = "x".repeat(300);
    let o = qmqtt_run(
        &[
            "pub",
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "cli5/big",
            "-q",
            "1",
            "-m",
            &big,
        ],
        b"",
        T,
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Maximum Packet Size"), "{err}");
    assert_eq!(summary(&err)["failed"], "1", "{err}");
    assert!(!err.contains("unacked"), "{err}");
}

#[test]
fn mqtt5_sub_format_prints_what_mosquitto_sub_prints() {
    let b = Broker::start();
    let p = port(b.tcp_port);
    // Everything but %E (the broker counts the expiry down: two readers may see different seconds); the
    // line ends in the payload, so that the reference reader can tell its probes.
    let fmt = "%q|%r|%l|%C|%F|%R|%D|%P|%x|%t %p";
    let reference = Sub::start(&b, "f5/#", 1, &["-V", "5", "-F", fmt]);
    let mut ours = QSub::start(&[
        "-V",
        "5",
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "f5/#",
        "-q",
        "1",
        "-F",
        fmt,
        "-C",
        "2",
    ]);
    #[rustfmt::skip]
    mosquitto_pub("127.0.0.1", &p, &[
        "-V", "5", "-t", "f5/a", "-q", "1", "-m", "hello",
        "-D", "publish", "message-expiry-interval", "300", "-D", "publish", "content-type", "text/x",
        "-D", "publish", "payload-format-indicator", "1", "-D", "publish", "response-topic", "f5/r",
        "-D", "publish", "correlation-data", "xyz",
        "-D", "publish", "user-property", "unit", "C", "-D", "publish", "user-property", "unit", "K",
    ]);
    mosquitto_pub(
        "127.0.0.1",
        &p,
        &["-V", "5", "-t", "f5/b", "-q", "1", "-m", "plain"],
    );
    assert_eq!(reference.wait_for(2, Duration::from_secs(10)), 2);
    assert!(ours.wait(T).success(), "{}", ours.stderr());
    let want = reference.take();
    assert_eq!(ours.lines(), want);
    assert!(want[0].contains("|unit:C unit:K|"), "{want:?}");
}

#[test]
fn mqtt5_check_shows_the_connack_properties() {
    let b = Broker::start_with(BrokerOptions {
        mqtt5_limits: true,
        ..Default::default()
    });
    let url = format!("mqtt://127.0.0.1:{}", b.tcp_port);
    #[rustfmt::skip]
    let o = qmqtt_run(
        &["check", "-V", "5", "-L", &url, "-i", "",
          "-D", "connect", "session-expiry-interval", "3600", "-D", "connect", "user-property", "site", "gw1"],
        b"",
        T,
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    for want in [
        "CONNACK accepted (MQTT 5, session present: no)",
        "receive maximum: 2\n",
        "maximum packet size: 256 bytes\n",
        "topic alias maximum: 2\n",
        "server keep alive: 10 s\n",
        "assigned client identifier: ",
    ] {
        assert!(out.contains(want), "{want:?} missing in\n{out}");
    }
    // MQTT 3.1.1 shows none of it.
    let o = qmqtt_run(&["check", "-L", &url], b"", T);
    assert!(o.status.success());
    assert!(
        !text(&o.stdout).contains("MQTT 5 CONNACK"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn sub_discards_a_message_over_max_message_size_and_stays_connected() {
    // Retained, so both arrive on subscribing: the one over --max-message-size is acknowledged, discarded
    // and reported on stderr; the connection stays up and the next one is printed.
    let b = Broker::start();
    let p = port(b.tcp_port);
    let big = "x".repeat(5000);
    for (topic, msg) in [("cli/big/a", big.as_str()), ("cli/big/b", "small")] {
        mosquitto_pub("127.0.0.1", &p, &["-t", topic, "-q", "1", "-r", "-m", msg]);
    }
    let o = qmqtt_run(
        &[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "cli/big/#",
            "-q",
            "1",
            "--max-message-size",
            "2048",
            "-C",
            "1",
            "-W",
            "10",
        ],
        b"",
        T,
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(text(&o.stdout), "small\n");
    assert!(err.contains("discarded an incoming message of"), "{err}");
    assert!(!err.contains("lost"), "{err}");
}
