//! Every sentence the engine says about a failure, pinned word for word: what `Client::connect` and
//! `wait_connected` return, the `ConnectionLost` cause and `Stats::last_error` — the texts q's `lastError`,
//! `.mqtt.disconn` and the `qmqtt` command show. Each scenario is made with a real component (mosquitto,
//! rustls, the kernel's TCP, a spool directory) or a minimal fake broker on loopback; the expected text has
//! only the scenario's own values (ports, paths, the system's error words) filled in.
mod common;

use std::path::Path;
use std::time::Duration;

use common::fake::{self, Fake};
use common::{free_port, Broker, BrokerOptions};
use qmqtt::client::{Client, ClientError, Config, Event};
use qmqtt::codec::Protocol;
use qmqtt::error::{Fault, Key};
use qmqtt::session::Will;
use qmqtt::spool::SpoolConfig;
use qmqtt::transport::TlsVersion;
use qmqtt::QoS;

const T: Duration = Duration::from_secs(10);

fn cfg(uri: &str) -> Config {
    let mut c = Config::new(uri, "texts");
    c.connect_timeout = Duration::from_secs(5);
    c.reconnect = false;
    c
}

/// The configuration error `Client::connect` returns, as displayed.
fn config_error(c: Config) -> String {
    match Client::connect(c) {
        Err(e @ ClientError::Config(_)) => e.to_string(),
        Err(e) => panic!("not a configuration error: {e:?}"),
        Ok(_) => panic!("configuration accepted"),
    }
}

/// What a failed first connection reports: `wait_connected`'s error, the `ConnectionLost` cause and
/// `last_error`, which must all say the same.
fn connect_error(c: Config) -> String {
    let c = Client::connect(c).expect("configuration accepted");
    let e = match c.wait_connected(T) {
        Err(e @ ClientError::Connect(_)) => e.to_string(),
        r => panic!("expected a connect error, got {r:?}"),
    };
    // The event follows the outcome `wait_connected` saw.
    let mut lost = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while lost.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        c.poll_events(100, &mut |ev| {
            if let Event::ConnectionLost { cause } = ev {
                lost.push(cause.to_string());
            }
        });
    }
    assert_eq!(lost, vec![e.clone()], "ConnectionLost");
    assert_eq!(
        c.stats().last_error.map(|e| e.to_string()).as_deref(),
        Some(e.as_str()),
        "last_error"
    );
    e
}

/// The cause of the first loss of an established connection (also `last_error`).
fn lost_cause(c: Config, cut: impl FnOnce()) -> String {
    let c = Client::connect(c).expect("configuration accepted");
    c.wait_connected(T).expect("connected");
    cut();
    let deadline = std::time::Instant::now() + T;
    let mut cause = None;
    while cause.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        c.poll_events(100, &mut |ev| {
            if let Event::ConnectionLost { cause: m } = ev {
                cause.get_or_insert(m.to_string());
            }
        });
    }
    let cause = cause.expect("ConnectionLost");
    assert_eq!(
        c.stats().last_error.map(|e| e.to_string()).as_deref(),
        Some(cause.as_str())
    );
    cause
}

/// What an HTTP server answers to bytes it does not understand.
const HTTP: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\r\n";

fn dir_str(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn configuration_errors() {
    let uri = "tcp://127.0.0.1:1883";
    let with = |f: &dyn Fn(&mut Config)| {
        let mut c = cfg(uri);
        f(&mut c);
        config_error(c)
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with(&|c| c.client_id = "x".repeat(70_000)),
            "invalid configuration: client id: longer than 65535 bytes; use a shorter id",
        ),
        (
            with(&|c| c.client_id = "a\0b".into()),
            "invalid configuration: client id: contains a NUL character",
        ),
        (
            with(&|c| {
                c.protocol = Protocol::V31;
                c.client_id = "x".repeat(24)
            }),
            "invalid configuration: client id: MQTT 3.1 (MQTTVersion 3) needs 1 to 23 bytes, got 24; shorten \
             it or use MQTTVersion 4",
        ),
        (
            with(&|c| {
                c.client_id = String::new();
                c.clean_session = false
            }),
            "invalid configuration: client id: an empty id needs cleansession true (the broker cannot keep a \
             session for it)",
        ),
        (
            with(&|c| c.username = Some("u".repeat(70_000))),
            "invalid configuration: username: longer than 65535 bytes",
        ),
        (
            with(&|c| {
                c.username = Some("u".into());
                c.password = Some(vec![b'p'; 70_000])
            }),
            "invalid configuration: password: longer than 65535 bytes",
        ),
        (
            with(&|c| c.password = Some(b"p".to_vec())),
            "invalid configuration: password: MQTT sends a password only with a username; set username too",
        ),
        (
            with(&|c| c.keep_alive = Duration::from_secs(70_000)),
            "invalid configuration: keepAliveInterval: at most 65535 seconds",
        ),
        (
            with(&|c| c.connect_timeout = Duration::ZERO),
            "invalid configuration: connectTimeout: must be more than 0",
        ),
        (
            with(&|c| c.max_inflight = 0),
            "invalid configuration: maxInflightMessages: must be at least 1",
        ),
        (
            with(&|c| c.queue_messages = 0),
            "invalid configuration: queue_messages: the publish queue must hold at least one message",
        ),
        (
            with(&|c| c.queue_bytes = 10),
            "invalid configuration: queue_bytes: the publish queue needs at least 64 bytes",
        ),
        (
            with(&|c| c.event_queue_bytes = 10),
            "invalid configuration: event_queue_bytes: the event queue needs at least 1024 bytes",
        ),
        (
            with(&|c| c.max_packet_size = 10),
            "invalid configuration: max_packet_size: must be at least 64 bytes",
        ),
        (
            with(&|c| c.backoff_min = Duration::ZERO),
            "invalid configuration: backoff: backoff_min must be more than 0 and at most backoff_max",
        ),
        (
            with(&|c| {
                c.will = Some(Will {
                    topic: "w/#".into(),
                    payload: Vec::new(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    properties: Default::default(),
                })
            }),
            "invalid configuration: will topic \"w/#\": must be 1 to 65535 bytes without '+', '#' or NUL",
        ),
        (
            with(&|c| {
                c.will = Some(Will {
                    topic: "w".into(),
                    payload: vec![0; 70_000],
                    qos: QoS::AtMostOnce,
                    retain: false,
                    properties: Default::default(),
                })
            }),
            "invalid configuration: will payload: longer than 65535 bytes",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

#[test]
fn uri_errors() {
    let e = |u: &str| config_error(cfg(u));
    assert_eq!(
        e("127.0.0.1"),
        "invalid configuration: uri: Invalid protocol scheme: no scheme in broker URI '127.0.0.1': \
         write it as scheme://host[:port] with scheme tcp://, mqtt:// (plain TCP, port 1883), ssl://, \
         mqtts:// (TLS, port 8883), ws:// (WebSocket, port 80) or wss:// (WebSocket over TLS, port 443) (or \
         host:port for plain TCP)"
    );
    assert_eq!(
        e("quic://h:80"),
        "invalid configuration: uri: Invalid protocol scheme 'quic://' in broker URI 'quic://h:80': use \
         tcp://, mqtt:// (plain TCP, port 1883), ssl://, mqtts:// (TLS, port 8883), ws:// (WebSocket, port \
         80) or wss:// (WebSocket over TLS, port 443)"
    );
    assert_eq!(
        e("mqtt://h:1883/t"),
        "invalid configuration: uri: invalid broker URI 'mqtt://h:1883/t': a broker URI has no path or \
         query: write scheme://host[:port]"
    );
    assert_eq!(
        e("mqtt://u@h"),
        "invalid configuration: uri: invalid broker URI 'mqtt://u@h': user names and passwords do not go \
         in the URI: give them as the username/password options"
    );
    assert_eq!(
        e("mqtt://bad host:1883"),
        "invalid configuration: uri: invalid broker URI 'mqtt://bad host:1883': ' ' is not allowed in a \
         host name"
    );
    assert_eq!(
        e("mqtt://h:0"),
        "invalid configuration: uri: invalid broker URI 'mqtt://h:0': bad port '0': a port is a number \
         from 1 to 65535 (or leave it out for 1883)"
    );
    assert_eq!(
        e("mqtt://::1:1883"),
        "invalid configuration: uri: invalid broker URI 'mqtt://::1:1883': an IPv6 address must be in \
         brackets, with the port after them: ssl://[::1]:8883"
    );
    assert_eq!(
        e("mqtt://:1883"),
        "invalid configuration: uri: invalid broker URI 'mqtt://:1883': missing host: write \
         scheme://host[:port]"
    );
}

#[test]
fn tls_configuration_errors() {
    let d = tempfile::tempdir().unwrap();
    let certs = common::Certs::generate(&d.path().join("certs"));
    let dir = dir_str(&certs.dir);
    let uri = "ssl://localhost:8883";
    let with = |f: &dyn Fn(&mut Config)| {
        let mut c = cfg(uri);
        f(&mut c);
        config_error(c)
    };
    assert_eq!(
        with(&|c| c.tls.cipher_suites = vec!["RC4-MD5".into()]),
        "invalid configuration: tls: unknown cipher suite 'RC4-MD5' in enabledCipherSuites: supported are \
         TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256, \
         TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, \
         TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, \
         TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
    );
    assert_eq!(
        with(&|c| c.tls.cipher_suites = vec![" ".into()]),
        "invalid configuration: tls: enabledCipherSuites names no cipher suite: leave it empty for all \
         suites"
    );
    assert_eq!(
        with(&|c| {
            c.tls.min_version = TlsVersion::Tls13;
            c.tls.cipher_suites = vec!["ECDHE-RSA-AES128-GCM-SHA256".into()]
        }),
        format!(
            "invalid configuration: tls: the TLS settings cannot work together {}: the cipher suites in \
             enabledCipherSuites must include one for TLS 1.3 or later",
            with_versions_cause()
        )
    );
    let missing = certs.dir.join("missing.pem");
    let os_missing = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(
        with(&|c| c.tls.ca_file = Some(missing.clone())),
        format!(
            "invalid configuration: tls: cannot read the CA file (trustStore, --cafile) '{dir}/missing.pem': \
             {os_missing}"
        )
    );
    assert_eq!(
        with(&|c| c.tls.ca_file = Some(certs.client_key.clone())),
        format!(
            "invalid configuration: tls: no certificate in the CA file (trustStore, --cafile) \
             '{dir}/client.key': expected PEM (-----BEGIN CERTIFICATE-----); convert DER with `openssl x509 \
             -inform der -in FILE -out FILE.pem`"
        )
    );
    let junk = certs.dir.join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let got = with(&|c| c.tls.ca_file = Some(junk.clone()));
    assert!(
        got.starts_with(&format!(
            "invalid configuration: tls: the CA file (trustStore, --cafile) '{dir}/junk.pem' is not valid \
             PEM ("
        )) && got.ends_with("): give PEM certificates (-----BEGIN CERTIFICATE-----)"),
        "{got}"
    );
    assert_eq!(
        with(&|c| c.tls.ca_dir = Some(certs.dir.join("nodir"))),
        format!(
            "invalid configuration: tls: cannot read the CA directory (CApath, --capath) '{dir}/nodir': \
             {os_missing}"
        )
    );
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(
        with(&|c| c.tls.ca_dir = Some(empty.clone())),
        format!(
            "invalid configuration: tls: no PEM CA certificate found in the CA directory (CApath, --capath) \
             '{}'",
            empty.display()
        )
    );
    assert_eq!(
        with(&|c| c.tls.cert_file = Some(certs.client_cert.clone())),
        format!(
            "invalid configuration: tls: a client certificate ('{dir}/client.pem') needs its private key: set \
             privateKey (--key)"
        )
    );
    assert_eq!(
        with(&|c| c.tls.key_file = Some(certs.client_key.clone())),
        format!(
            "invalid configuration: tls: a private key ('{dir}/client.key') needs its client certificate: set \
             keyStore (--cert)"
        )
    );
    let both = |cert: &Path, key: &Path| {
        with(&|c| {
            c.tls.cert_file = Some(cert.to_path_buf());
            c.tls.key_file = Some(key.to_path_buf())
        })
    };
    assert_eq!(
        both(&certs.client_cert, &certs.ca),
        format!(
            "invalid configuration: tls: no private key in the private key file (privateKey, --key) \
             '{dir}/ca.pem': expected PEM with a PKCS#8 (BEGIN PRIVATE KEY or BEGIN ENCRYPTED PRIVATE KEY), \
             PKCS#1 (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY) key"
        )
    );
    let enc = certs.dir.join("enc.key");
    std::fs::write(
        &enc,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    assert_eq!(
        both(&certs.client_cert, &enc),
        format!(
            "invalid configuration: tls: the private key file (privateKey, --key) '{dir}/enc.key' is \
             encrypted: give its password (privateKeyPassword, --keypass)"
        )
    );
    assert_eq!(
        both(&certs.client_cert, &certs.server_key),
        format!(
            "invalid configuration: tls: the client certificate '{dir}/client.pem' and key \
             '{dir}/server.key' cannot be used (keys may not be consistent: KeyMismatch): the key does not \
             belong to the certificate"
        )
    );
    assert_eq!(
        both(&missing, &certs.client_key),
        format!(
            "invalid configuration: tls: cannot read the client certificate (keyStore, --cert) \
             '{dir}/missing.pem': {os_missing}"
        )
    );
}

/// rustls' words for a version list the chosen suites cannot serve.
fn with_versions_cause() -> String {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| s.suite().as_str() == Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"));
    match rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
    {
        Err(e) => format!("({e})"),
        Ok(_) => panic!("rustls accepted TLS 1.3 with a TLS 1.2 suite"),
    }
}

#[test]
fn spool_and_filter_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let mut a = cfg("tcp://127.0.0.1:1");
    a.spool = Some(SpoolConfig::new(&dir));
    // Reconnecting, so that its I/O thread keeps the spool open.
    let mut keep = a.clone();
    keep.reconnect = true;
    let first = Client::connect(keep).expect("first spool user");
    assert_eq!(
        config_error(a),
        format!(
            "invalid configuration: spool directory {} is locked: another process (or another open spool) \
             owns it; stop that one or configure a different spool directory",
            dir.display()
        )
    );
    drop(first);
    let file = d.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut b = cfg("tcp://127.0.0.1:1");
    b.spool = Some(SpoolConfig::new(&file));
    let got = config_error(b);
    assert!(
        got.starts_with(&format!(
            "invalid configuration: cannot open the spool in {}: ",
            file.display()
        )),
        "{got}"
    );
    let mut c = cfg("tcp://127.0.0.1:1");
    let mut sc = SpoolConfig::new(d.path().join("s2"));
    sc.segment_bytes = 10;
    c.spool = Some(sc);
    assert_eq!(
        config_error(c),
        "invalid configuration: spool segment_bytes 10 is out of range: use 1024 to 4294967295 (default 4 \
         MiB)"
    );

    let b = Broker::start();
    let c = Client::connect(cfg(&b.tcp_uri())).unwrap();
    assert_eq!(
        c.subscribe("a/#/b", QoS::AtMostOnce).unwrap_err().to_string(),
        "invalid configuration: topic filter \"a/#/b\": invalid topic filter: '+' must be a whole level and \
         '#' must be the whole last level (e.g. a/+/c, a/#)"
    );
}

#[test]
fn tcp_and_dns_failures() {
    let port = free_port();
    let os_refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string();
    assert_eq!(
        connect_error(cfg(&format!("tcp://127.0.0.1:{port}"))),
        format!(
            "cannot connect to 127.0.0.1: 127.0.0.1:{port} refused the connection ({os_refused}): is the \
             broker running and listening on port {port}?"
        )
    );
    let got = connect_error(cfg("tcp://nonexistent.invalid:1883"));
    assert!(
        got.starts_with("cannot resolve the broker host 'nonexistent.invalid': ")
            && got.ends_with(": check the host name and this machine's DNS"),
        "{got}"
    );
    let reset = fake::start(Fake::Reset);
    assert_eq!(
        connect_error(cfg(&format!("tcp://127.0.0.1:{reset}"))),
        format!("the connection to 127.0.0.1 (127.0.0.1:{reset}) was reset while reading")
    );
    let closes = fake::start(Fake::Close);
    assert_eq!(
        connect_error(cfg(&format!("tcp://127.0.0.1:{closes}"))),
        "the broker closed the connection"
    );
}

#[test]
fn broker_refusals_and_protocol_errors() {
    let words = [
        (
            1,
            "unacceptable protocol version (set MQTTVersion to one the broker supports (3 or 4))",
        ),
        (
            2,
            "client id rejected (use another client id (unique, allowed characters and length))",
        ),
        (3, "server unavailable (retry later or check the broker)"),
        (4, "bad user name or password (check username and password)"),
        (
            5,
            "not authorized (check the credentials and the broker's access rules)",
        ),
        (9, "refused (check the broker's log)"),
    ];
    for (code, what) in words {
        let port = fake::start(Fake::Connack(code));
        assert_eq!(
            connect_error(cfg(&format!("tcp://127.0.0.1:{port}"))),
            format!("the broker refused the connection: {what}"),
            "CONNACK {code}"
        );
    }
    let garbage = fake::start(Fake::Send(HTTP));
    assert_eq!(
        connect_error(cfg(&format!("tcp://127.0.0.1:{garbage}"))),
        format!(
            "protocol error from the broker: the broker sent invalid data: {} (instead of a CONNACK: is this \
             an MQTT port? check the URI's scheme and port)",
            garbage_cause()
        )
    );
    // A PUBLISH (topic "t", payload "x") where the CONNACK belongs.
    let early = fake::start(Fake::Send(&[0x30, 4, 0, 1, b't', b'x']));
    assert_eq!(
        connect_error(cfg(&format!("tcp://127.0.0.1:{early}"))),
        "protocol error from the broker: the broker sent PUBLISH before CONNACK (CONNACK must come first: \
         is this an MQTT port?)"
    );
}

/// The codec's words for "HTTP/1.1 …" read as MQTT.
fn garbage_cause() -> String {
    match qmqtt::codec::decode(HTTP, &qmqtt::codec::DecodeOptions::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("HTTP decoded as MQTT"),
    }
}

#[test]
fn timeouts_and_local_stops() {
    let silent = fake::start(Fake::Silent);
    let uri = format!("tcp://127.0.0.1:{silent}");
    // keep-alive below the connect timeout: the CONNACK timeout (response timeout) comes first.
    let mut c = cfg(&uri);
    c.keep_alive = Duration::from_secs(1);
    assert_eq!(
        connect_error(c),
        "timeout: the broker did not send CONNACK in time (the link or the broker is stalled; the \
         connection is dropped and made again)"
    );
    let mut c = cfg(&uri);
    c.connect_timeout = Duration::from_secs(1);
    assert_eq!(
        connect_error(c),
        format!(
            "no MQTT connection to 127.0.0.1:{silent} within the connect timeout (1s); is the broker up and \
             reachable? (raise connectTimeout for slow links)"
        )
    );
    let mut client = Client::connect(cfg(&uri)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    client.disconnect(Duration::ZERO);
    assert_eq!(
        client.wait_connected(T).unwrap_err().to_string(),
        "the client was disconnected before the connection was made"
    );
    // A connection that stops answering: PINGRESP timeout.
    let mute = fake::start(Fake::Connack(0));
    let mut c = cfg(&format!("tcp://127.0.0.1:{mute}"));
    c.keep_alive = Duration::from_secs(1);
    assert_eq!(
        lost_cause(c, || {}),
        "timeout: the broker did not send PINGRESP in time (the link or the broker is stalled; the \
         connection is dropped and made again)"
    );
    // A broker that goes away.
    let mut b = Broker::start();
    let c = cfg(&b.tcp_uri());
    assert_eq!(
        lost_cause(c, || b.stop()),
        "the broker closed the connection"
    );
}

#[test]
fn tls_failures() {
    let b = Broker::start();
    let certs = b.certs.clone();
    let tls = |port: u16, f: &dyn Fn(&mut Config)| {
        let mut c = cfg(&format!("ssl://localhost:{port}"));
        c.tls.ca_file = Some(certs.ca.clone());
        f(&mut c);
        connect_error(c)
    };
    let other = dir_str(&certs.other_ca);
    assert_eq!(
        tls(b.tls_port, &|c| c.tls.ca_file = Some(certs.other_ca.clone())),
        format!(
            "TLS handshake with localhost failed: server certificate is not signed by a trusted CA: set \
             trustStore/--cafile to the CA that signed it (or CApath/--capath to a directory holding it) \
             (trusted now: the CA file '{other}')"
        )
    );
    assert_eq!(
        tls(b.tls_port, &|c| c.tls.server_name = Some("elsewhere.example".into())),
        "TLS handshake with elsewhere.example failed: server certificate is not valid for host name \
         'elsewhere.example' (it names localhost, 127.0.0.1, 0::1): connect by a name in the certificate, \
         or set the TLS server name (SNI) to one"
    );
    assert_eq!(
        tls(b.mtls_port, &|_| {}),
        "TLS with localhost failed: the broker requires a client certificate (alert \
         CertificateRequired): set keyStore/privateKey (--cert/--key)"
    );
    assert_eq!(
        tls(b.mtls_port, &|c| {
            c.tls.cert_file = Some(certs.selfsigned_cert.clone());
            c.tls.key_file = Some(certs.selfsigned_key.clone())
        }),
        "TLS with localhost failed: the broker refused the client certificate (alert UnknownCA): check \
         that keyStore/privateKey (--cert/--key) hold a valid certificate signed by a CA the broker \
         trusts, and its matching key"
    );
    // mosquitto's plain port drops a ClientHello with a reset (or, if it read it all, a close).
    let got = tls(b.tcp_port, &|_| {});
    let os_reset = std::io::Error::from_raw_os_error(libc::ECONNRESET).to_string();
    let p = b.tcp_port;
    assert!(
        got == format!(
            "reading from the connection to localhost (127.0.0.1:{p}) failed during the TLS handshake \
             ({os_reset}): is this port a TLS listener, and does it accept this client (certificate, TLS \
             version)? The broker's log says why"
        ) || got
            == format!(
                "the broker localhost (127.0.0.1:{p}) closed the connection during the TLS handshake: is \
                 this port a TLS listener, and does it accept this client (certificate, TLS version)? The \
                 broker's log says why"
            ),
        "{got}"
    );
    let http = fake::start(Fake::Send(HTTP));
    let got = tls(http, &|_| {});
    assert!(
        got.starts_with("TLS with localhost failed: the broker sent something that is not TLS (")
            && got.ends_with(
                "): is this port a TLS listener? Use tcp:// for plain MQTT ports (usually 1883), ssl:// for \
                 TLS (usually 8883)"
            ),
        "{got}"
    );
    assert_eq!(
        tls(b.tls_port, &|c| c.tls.server_name = Some("bad name".into())),
        "'bad name' is not a valid TLS server name: give a DNS name or an IP address"
    );

    // Certificates the broker serves that no client should accept (all signed by, or checked against,
    // the first broker's CA).
    let serve = |cert: &Path, key: &Path| {
        let b = Broker::start_with(BrokerOptions {
            tls_cert: Some((cert.to_path_buf(), key.to_path_buf())),
            ..BrokerOptions::default()
        });
        let mut c = cfg(&b.tls_uri());
        c.tls.ca_file = Some(certs.ca.clone());
        connect_error(c)
    };
    let got = serve(&certs.expired_cert, &certs.bad_keys[0]);
    assert!(
        got.starts_with(
            "TLS handshake with localhost failed: server certificate has expired (valid until 2021-01-01 \
             00:00:00 UTC, this machine's clock says "
        ) && got.ends_with(" UTC): renew the broker's certificate, or check this machine's clock"),
        "{got}"
    );
    let got = serve(&certs.future_cert, &certs.bad_keys[1]);
    assert!(
        got.starts_with(
            "TLS handshake with localhost failed: server certificate is not valid yet (valid from 2090-01-01 \
             00:00:00 UTC, this machine's clock says "
        ) && got.ends_with(
            " UTC): check this machine's clock (set it with NTP), or the certificate's start date"
        ),
        "{got}"
    );
    assert_eq!(
        serve(&certs.wronghost_cert, &certs.bad_keys[2]),
        "TLS handshake with localhost failed: server certificate is not valid for host name 'localhost' \
         (it names elsewhere.example): connect by a name in the certificate, or set the TLS server name \
         (SNI) to one"
    );
    assert_eq!(
        serve(&certs.selfsigned_cert, &certs.selfsigned_key),
        format!(
            "TLS handshake with localhost failed: server certificate is not signed by a trusted CA: set \
             trustStore/--cafile to the CA that signed it (or CApath/--capath to a directory holding it). It \
             is self-signed (trusted now: the CA file '{}'); only for testing, certificate verification can \
             be turned off (enableServerCertAuth=0)",
            certs.ca.display()
        )
    );
    // A listener with one TLS 1.2 cipher suite, a client with another: no common suite.
    let p12 = free_port();
    let b12 = Broker::start_with(BrokerOptions {
        extra: format!(
            "listener {p12} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n\
             ciphers ECDHE-ECDSA-AES128-GCM-SHA256\n",
            certs.ca.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        ),
        ..BrokerOptions::default()
    });
    let mut c = cfg(&format!("ssl://localhost:{p12}"));
    c.tls.ca_file = Some(certs.ca.clone());
    c.tls.cipher_suites = vec!["ECDHE-ECDSA-CHACHA20-POLY1305".into()];
    assert_eq!(
        connect_error(c),
        "TLS handshake with localhost failed: the broker refused the handshake (alert HandshakeFailure): it \
         may require a client certificate: set keyStore/privateKey (--cert/--key); or it shares no TLS \
         version / cipher suite with this client: check sslVersion and enabledCipherSuites"
    );
    drop(b12);
}

#[test]
fn tls_settings_on_a_plain_address_fail() {
    // Credentials would otherwise travel in clear text while the caller believes in TLS.
    let err = |uri: &str, f: &dyn Fn(&mut Config)| {
        let mut c = cfg(uri);
        f(&mut c);
        match Client::connect(c) {
            Err(ClientError::Config(e)) => e,
            Err(e) => panic!("not a configuration error: {e:?}"),
            Ok(_) => panic!("configuration accepted"),
        }
    };
    let e = err("tcp://127.0.0.1:1883", &|c| {
        c.tls.ca_file = Some("ca.pem".into())
    });
    assert_eq!((e.key, e.fault), (Key::CaFile, Fault::NeedsTls));
    assert_eq!(
        ClientError::Config(e).to_string(),
        "invalid configuration: trustStore (--cafile) is a TLS setting but tcp://127.0.0.1:1883 is not a \
         TLS address: use ssl:// or mqtts:// (wss:// over WebSocket) for it to apply, or leave it out"
    );
    let e = err("mqtt://localhost", &|c| c.tls.verify_hostname = false);
    assert_eq!((e.key, e.fault), (Key::VerifyHostname, Fault::NeedsTls));
    assert!(
        e.to_string()
            .contains("verify (--insecure) is a TLS setting"),
        "{e}"
    );
    let e = err("ws://localhost/mqtt", &|c| {
        c.tls.min_version = TlsVersion::Tls13
    });
    assert_eq!((e.key, e.fault), (Key::TlsVersion, Fault::NeedsTls));
    // A list with no TLS broker fails too; one with a TLS broker takes them (for that one).
    let e = err("tcp://127.0.0.1:1883,mqtt://localhost", &|c| {
        c.tls.ca_file = Some("ca.pem".into())
    });
    assert_eq!((e.key, e.fault), (Key::CaFile, Fault::NeedsTls));
    assert!(
        e.to_string().contains(
            "trustStore (--cafile) is a TLS setting but no broker of tcp://127.0.0.1:1883,mqtt://localhost \
             has a TLS address"
        ),
        "{e}"
    );
    let mut c = cfg(&format!(
        "tcp://127.0.0.1:{},ssl://127.0.0.1:{}",
        common::free_port(),
        common::free_port()
    ));
    c.tls.verify_hostname = false;
    assert!(Client::connect(c).is_ok());
    // The same settings on a TLS address are taken.
    let mut c = cfg(&format!("ssl://127.0.0.1:{}", common::free_port()));
    c.tls.verify_hostname = false;
    c.tls.min_version = TlsVersion::Tls13;
    assert!(Client::connect(c).is_ok());
}
