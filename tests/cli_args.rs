//! The `qmqtt` command line: `--help` everywhere exits 0 and documents the flags; bad command lines exit 2
//! with a message that names the subcommand, the flag and where to look. No broker needed.
mod common;
use std::process::Output;

fn qmqtt(args: &[&str]) -> Output {
    common::qmqtt_cmd().args(args).output().expect("run qmqtt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_exits_zero_and_lists_the_flags() {
    let o = qmqtt(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let s = text(&o.stdout);
    for w in ["qmqtt pub", "qmqtt sub", "qmqtt check"] {
        assert!(s.contains(w), "top help lacks {w}: {s}");
    }
    for (cmd, words) in [
        (
            "pub",
            &[
                "-t TOPIC",
                "-m MSG",
                "-l",
                "-s",
                "--drain-timeout",
                "--repeat",
                "--size",
                "--queue-bytes",
                "--max-inflight",
                "--cafile",
                "--insecure",
                "--alpn",
                "--sni",
                "--tls-version",
                "sent=N acked=N dropped=N reconnects=N",
                "--linger",
                "--will-topic",
                "-V VERSION",
            ][..],
        ),
        (
            "sub",
            &[
                "-C COUNT",
                "-W SECONDS",
                "-v",
                "-c",
                "27",
                "--cert",
                "--max-message-size BYTES",
            ][..],
        ),
        ("check", &["-L mqtts://", "--cafile", "-u USER"][..]),
    ] {
        let o = qmqtt(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{cmd} --help");
        let s = text(&o.stdout);
        for w in words {
            assert!(s.contains(w), "qmqtt {cmd} --help lacks '{w}':\n{s}");
        }
        assert!(o.stderr.is_empty(), "{cmd} --help wrote to stderr");
    }
}

#[test]
fn errors_name_the_bad_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["pub", "-t", "a", "-m", "x", "--foo"],
            "qmqtt pub: unknown flag --foo (see qmqtt pub --help)",
        ),
        (
            &["sub", "-t", "a", "--bar"],
            "qmqtt sub: unknown flag --bar (see qmqtt sub --help)",
        ),
        (
            &["check", "--baz"],
            "qmqtt check: unknown flag --baz (see qmqtt check --help)",
        ),
        (
            &["pub", "-t", "a", "-m"],
            "qmqtt pub: -m needs a value (see qmqtt pub --help)",
        ),
        (
            &["pub", "-t", "a", "-m", "x", "-p", "eighty"],
            "qmqtt pub: bad number for -p: 'eighty' (see qmqtt pub --help)",
        ),
        (
            &["pub", "-t", "a", "-m", "x", "-p", "70000"],
            "qmqtt pub: bad number for -p: '70000' (see qmqtt pub --help)",
        ),
        (
            &["pub", "-t", "a", "-m", "x", "-q", "5"],
            "qmqtt pub: bad QoS for -q: '5' (use 0, 1 or 2) (see qmqtt pub --help)",
        ),
        (
            &["sub", "-t", "a", "-C", "-1"],
            "qmqtt sub: bad number for -C: '-1' (see qmqtt sub --help)",
        ),
        (
            &["sub", "-t", "a", "-W", "soon"],
            "qmqtt sub: bad number of seconds for -W: 'soon' (see qmqtt sub --help)",
        ),
        (
            &["pub", "-t", "a", "-l", "--drain-timeout", "x"],
            "qmqtt pub: bad number of seconds for --drain-timeout: 'x' (see qmqtt pub --help)",
        ),
        (&["pub", "-m", "x"], "qmqtt pub: no topic"),
        (&["pub", "-t", "a"], "qmqtt pub: nothing to publish"),
        (&["pub", "-t", "a", "-m", "x", "-l"], "-l: only one of"),
        (
            &["pub", "-t", "a", "-m", "x", "--cert", "c.pem"],
            "--cert and --key",
        ),
        (&["pub", "-t", "a", "-m", "x", "--insecure"], "TLS is off"),
        (
            &["pub", "-t", "a", "-m", "x", "-L", "http://h"],
            "unknown scheme",
        ),
        (&["sub", "-t", "a", "-c"], "-c needs a fixed client id"),
        (
            &["pub", "-t", "a", "--repeat", "1", "--size", "100000000000"],
            "--size 100000000000: larger than the largest MQTT message (268369919 bytes)",
        ),
        (
            &["sub", "-t", "a", "--max-message-size", "10"],
            "qmqtt sub: --max-message-size must be 1024 to 268435456 bytes (see qmqtt sub --help)",
        ),
        (&["pub", "stray"], "unexpected argument 'stray'"),
        (&["frob"], "qmqtt: unknown command 'frob'"),
    ];
    for (args, want) in cases {
        let o = qmqtt(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
        assert!(o.stdout.is_empty(), "{args:?} wrote to stdout");
    }
    // No arguments at all: usage on stderr, exit 2.
    let o = qmqtt(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("Usage"));
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    use std::os::fd::FromRawFd;
    // A pipe whose reading end is already closed: every write fails with EPIPE (SIGPIPE is ignored by
    // Rust programs), as with `qmqtt check … | head -1` once head has exited.
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let w = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
    let st = common::qmqtt_cmd()
        .args(["pub", "--help"])
        .stdout(w)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(0), "{}", text(&st.stderr));
    assert!(!text(&st.stderr).contains("panicked"));
}

#[test]
fn a_queue_larger_than_the_machine_is_an_error_not_an_abort() {
    // Refused before connecting (no broker at that port is ever tried): exit 1 with the setting named.
    // usize::MAX: no layout; 1 PiB (or, on 32 bits, just under the address space): more than any machine.
    let huge = [
        usize::MAX,
        usize::try_from(1u64 << 50).unwrap_or(usize::MAX - 4096),
    ];
    for n in huge.map(|n| n.to_string()) {
        let n = n.as_str();
        let o = qmqtt(&[
            "pub",
            "-t",
            "a",
            "-m",
            "x",
            "-L",
            "tcp://127.0.0.1:1",
            "--queue-bytes",
            n,
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{n}: {err}");
        assert!(
            err.contains(&format!(
                "queue_bytes {n}: more memory than this machine can give"
            )),
            "{n}: {err}"
        );
    }
}
