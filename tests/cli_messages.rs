//! What `qmqtt pub` and `qmqtt check` print when a connection cannot be made, pinned line for line: the
//! error, then the advice in this command's flags. The same scenarios as tests/error_texts.rs (real
//! mosquitto, rustls, fake brokers on loopback).
mod common;

use std::time::Duration;

use common::fake::{self, Fake};
use common::{free_port, Broker};

const T: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `qmqtt pub ARGS -t t -m x`: exit code and stderr.
fn publish(args: &[&str]) -> (Option<i32>, String) {
    let mut a = vec!["pub"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-t", "t", "-m", "x"]);
    let o = common::qmqtt_run(&a, b"", T);
    (o.status.code(), text(&o.stderr))
}

/// `qmqtt check ARGS`: exit code and stdout.
fn check(args: &[&str]) -> (Option<i32>, String) {
    let mut a = vec!["check", "--timeout", "5"];
    a.extend_from_slice(args);
    let o = common::qmqtt_run(&a, b"", T);
    (o.status.code(), text(&o.stdout))
}

const SUMMARY: &str = "sent=0 acked=0 dropped=0 reconnects=0\n";

fn os(code: i32) -> String {
    std::io::Error::from_raw_os_error(code).to_string()
}

#[test]
fn pub_connect_failures() {
    let closed = free_port();
    assert_eq!(
        publish(&["-L", &format!("mqtt://127.0.0.1:{closed}")]),
        (
            Some(1),
            format!(
                "qmqtt pub: cannot connect to tcp://127.0.0.1:{closed}: 127.0.0.1:{closed} refused the \
                 connection ({}): is the broker running and listening on port \
                 {closed}?\n  hint: nothing accepts connections there: check -h HOST and -p PORT (or -L URL) \
                 and that the broker runs\n{SUMMARY}",
                os(libc::ECONNREFUSED)
            )
        )
    );
    let (code, err) = publish(&["-L", "mqtt://nonexistent.invalid"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(
            "qmqtt pub: cannot connect to tcp://nonexistent.invalid:1883: cannot resolve the broker host \
             'nonexistent.invalid': "
        ) && err.ends_with(&format!(
            ": check the host name and this machine's DNS\n{SUMMARY}"
        )),
        "{err}"
    );
    assert_eq!(
        publish(&["-L", "mqtt://bad host:1883/t"]),
        (
            Some(1),
            "qmqtt pub: bad configuration: uri: invalid broker URI 'tcp://bad host:1883': ' ' is not allowed \
             in a host name\n"
                .to_string()
        )
    );
    let reset = fake::start(Fake::Reset);
    assert_eq!(
        publish(&["-L", &format!("mqtt://127.0.0.1:{reset}")]),
        (
            Some(1),
            format!(
                "qmqtt pub: cannot connect to tcp://127.0.0.1:{reset}: the connection to 127.0.0.1 \
                 (127.0.0.1:{reset}) was reset while reading\n{SUMMARY}"
            )
        )
    );
    for (code, hint) in [
        (
            1,
            "\n  hint: the broker does not speak MQTT 3.1.1 or the stream is corrupt".replace(
                " or the stream is corrupt",
                "",
            ),
        ),
        (
            2,
            "\n  hint: the broker rejected the client id: choose another with -i ID".to_string(),
        ),
        (3, String::new()),
        (
            4,
            "\n  hint: the broker refused the credentials: check -u USER and -P PASS (and the broker's ACL)"
                .to_string(),
        ),
        (
            5,
            "\n  hint: the broker refused the credentials: check -u USER and -P PASS (and the broker's ACL)"
                .to_string(),
        ),
        (9, String::new()),
    ] {
        let words = match code {
            1 => "unacceptable protocol version (set MQTTVersion to one the broker supports (3 or 4))",
            2 => "client id rejected (use another client id (unique, allowed characters and length))",
            3 => "server unavailable (retry later or check the broker)",
            4 => "bad user name or password (check username and password)",
            5 => "not authorized (check the credentials and the broker's access rules)",
            _ => "refused (check the broker's log)",
        };
        let port = fake::start(Fake::Connack(code));
        assert_eq!(
            publish(&["-L", &format!("mqtt://127.0.0.1:{port}")]),
            (
                Some(1),
                format!(
                    "qmqtt pub: cannot connect to tcp://127.0.0.1:{port}: the broker refused the connection: \
                     {words}{hint}\n{SUMMARY}"
                )
            ),
            "CONNACK {code}"
        );
    }
    let silent = fake::start(Fake::Silent);
    assert_eq!(
        publish(&[
            "-L",
            &format!("mqtt://127.0.0.1:{silent}"),
            "-k",
            "1"
        ]),
        (
            Some(1),
            format!(
                "qmqtt pub: cannot connect to tcp://127.0.0.1:{silent}: timeout: the broker did not send \
                 CONNACK in time (the link or the broker is stalled; the connection is dropped and made \
                 again)\n{SUMMARY}"
            )
        )
    );
}

#[test]
fn pub_tls_failures() {
    let b = Broker::start();
    let c = &b.certs;
    let (ca, other) = (c.ca.to_str().unwrap(), c.other_ca.to_str().unwrap());
    let tls = format!("mqtts://localhost:{}", b.tls_port);
    assert_eq!(
        publish(&["-L", &tls, "--cafile", other]),
        (
            Some(1),
            format!(
                "qmqtt pub: cannot connect to ssl://localhost:{}: TLS handshake with localhost failed: server \
                 certificate is not signed by a trusted CA: set trustStore/--cafile to the CA that signed it \
                 (or CApath/--capath to a directory holding it) (trusted now: the CA file '{other}')\n  hint: \
                 unknown issuer: the broker's certificate is not signed by a CA this client trusts; pass the \
                 CA certificate that signed it with --cafile FILE (or --capath DIR)\n{SUMMARY}",
                b.tls_port
            )
        )
    );
    assert_eq!(
        publish(&["-L", &tls, "--cafile", ca, "--sni", "elsewhere.example"]),
        (
            Some(1),
            format!(
                "qmqtt pub: cannot connect to ssl://localhost:{}: TLS handshake with elsewhere.example \
                 failed: server certificate is not valid for host name 'elsewhere.example' (it names \
                 localhost, 127.0.0.1, 0::1): connect by a name in the certificate, or set the TLS server \
                 name (SNI) to one\n  hint: the broker's certificate is not for this host name: connect with \
                 a name the certificate lists (-h), or set --sni NAME, or skip the host name check with \
                 --insecure\n{SUMMARY}",
                b.tls_port
            )
        )
    );
    let mtls = format!("mqtts://localhost:{}", b.mtls_port);
    assert_eq!(
        publish(&["-L", &mtls, "--cafile", ca]),
        (
            Some(1),
            format!(
                "qmqtt pub: cannot connect to ssl://localhost:{}: TLS with localhost failed: the broker \
                 requires a client certificate (alert CertificateRequired): set keyStore/privateKey \
                 (--cert/--key)\n  hint: the broker rejected the TLS handshake, most often because it \
                 requires a client certificate: pass --cert FILE --key FILE (signed by a CA the broker \
                 trusts)\n{SUMMARY}",
                b.mtls_port
            )
        )
    );
    let enc = c.dir.join("enc.key");
    std::fs::write(
        &enc,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&enc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let enc = enc.to_str().unwrap();
    assert_eq!(
        publish(&[
            "-L",
            &mtls,
            "--cafile",
            ca,
            "--cert",
            c.client_cert.to_str().unwrap(),
            "--key",
            enc
        ]),
        (
            Some(1),
            format!(
                "qmqtt pub: bad configuration: tls: the private key file (privateKey, --key) '{enc}' is \
                 encrypted: give its password (privateKeyPassword, --keypass)\n"
            )
        )
    );
}

#[test]
fn check_failures() {
    let b = Broker::start();
    let c = &b.certs;
    let (ca, other) = (c.ca.to_str().unwrap(), c.other_ca.to_str().unwrap());
    let closed = free_port();
    assert_eq!(
        check(&["-L", &format!("mqtt://127.0.0.1:{closed}")]),
        (
            Some(1),
            format!(
                "checking tcp://127.0.0.1:{closed}\nFAILED at TCP connect: cannot connect to 127.0.0.1: \
                 127.0.0.1:{closed} refused the connection ({e}): is the broker running and listening on \
                 port {closed}?\n  what to do: nothing accepts connections there: check -h HOST and -p \
                 PORT (or -L URL) and that the broker runs\n",
                e = os(libc::ECONNREFUSED)
            )
        )
    );
    assert_eq!(
        check(&["-L", "mqtt://bad host:1883"]),
        (
            Some(1),
            "checking tcp://bad host:1883\nFAILED at address: invalid broker URI 'tcp://bad host:1883': ' ' is \
             not allowed in a host name\n"
                .to_string()
        )
    );
    let auth = format!("mqtt://127.0.0.1:{}", b.auth_port);
    let (code, out) = check(&["-L", &auth, "-u", common::USER, "-P", "bad"]);
    assert_eq!(code, Some(1));
    assert!(
        out.ends_with(
            "\nFAILED at MQTT CONNECT: the broker refused the connection: not authorized (check the \
             credentials and the broker's access rules)\n  what to do: the broker refused the credentials: check -u USER and -P PASS (and the broker's ACL)\n"
        ),
        "{out}"
    );
    let tls = format!("mqtts://localhost:{}", b.tls_port);
    assert_eq!(
        check(&["-L", &tls, "--cafile", other]),
        (
            Some(1),
            format!(
                "checking ssl://localhost:{}\nFAILED at TCP connect / TLS handshake: TLS handshake with \
                 localhost failed: server certificate is not signed by a trusted CA: set trustStore/--cafile \
                 to the CA that signed it (or CApath/--capath to a directory holding it) (trusted now: the CA \
                 file '{other}')\n  what to do: unknown issuer: the \
                 broker's certificate is not signed by a CA this client trusts; pass the CA certificate that \
                 signed it with --cafile FILE (or --capath DIR)\n",
                b.tls_port
            )
        )
    );
    // TLS 1.3: the client finishes its handshake before the broker's alert comes.
    let mtls = format!("mqtts://localhost:{}", b.mtls_port);
    let (code, out) = check(&["-L", &mtls, "--cafile", ca]);
    assert_eq!(code, Some(1));
    assert!(
        out.ends_with(
            "\nFAILED at MQTT CONNECT: TLS with localhost failed: the broker requires a client certificate \
             (alert CertificateRequired): set keyStore/privateKey (--cert/--key)\n  what to do: the broker rejected the TLS handshake, most \
             often because it requires a client certificate: pass --cert FILE --key FILE (signed by a CA the \
             broker trusts)\n"
        ),
        "{out}"
    );
    let port = fake::start(Fake::Connack(2));
    let (code, out) = check(&["-L", &format!("mqtt://127.0.0.1:{port}")]);
    assert_eq!(code, Some(1));
    assert!(
        out.ends_with(
            "\nFAILED at MQTT CONNECT: the broker refused the connection: client id rejected (use another \
             client id (unique, allowed characters and length))\n  what to do: the broker rejected the client id: choose another with -i ID\n"
        ),
        "{out}"
    );
}

/// A connection lost while publishing lines: the warning as the user sees it (without -d), once.
#[test]
fn pub_reports_a_lost_connection() {
    let mut b = Broker::start();
    use std::process::Stdio;
    let uri = format!("mqtt://127.0.0.1:{}/lines", b.tcp_port);
    let mut child =
        common::qmqtt_spawn(["pub", "-L", &uri, "-l"], Stdio::piped(), Stdio::inherit());
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    writeln!(stdin, "one").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    b.stop();
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    let lost: Vec<&str> = err.lines().filter(|l| l.contains("lost")).collect();
    assert_eq!(
        lost.iter()
            .map(|l| l.split_once("] ").map_or(*l, |x| x.1))
            .collect::<Vec<_>>(),
        vec!["connection lost: the broker closed the connection"],
        "{err}"
    );
}
