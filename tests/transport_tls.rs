//! Conn against a real mosquitto: MQTT CONNECT → CONNACK over TCP, TLS and mutual TLS, and the refusals
//! (unknown CA, expired / not yet valid / wrong-host / self-signed certificates, missing client certificate)
//! with the messages that say what to change.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, BrokerOptions};
use mio::{Events, Poll, Token};
use qmqtt::transport::{tls_config, Conn, Endpoint, TlsOptions, TlsVersion};
use qmqtt::Error;

/// CONNECT, MQTT 3.1.1, clean session, keepalive 60, empty client id.
const CONNECT: [u8; 14] = [
    0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
];
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// Drive `conn` with a mio Poll until the MQTT CONNACK (4 bytes) arrives; returns it with the connection.
fn mqtt_connect(mut conn: Conn) -> Result<(Conn, Vec<u8>), Error> {
    let mut poll = Poll::new().unwrap();
    conn.register(poll.registry(), Token(0)).unwrap();
    let mut events = Events::with_capacity(8);
    let mut buf = Vec::new();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no CONNACK within 10 s");
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        conn.flush()?;
        while conn.read(&mut buf)? > 0 {}
        if conn.is_established() && !sent {
            conn.write(&CONNECT)?;
            conn.flush()?;
            sent = true;
        }
        if buf.len() >= 4 {
            return Ok((conn, buf));
        }
    }
}

fn connect(uri: &str, tls: Option<&TlsOptions>) -> Result<(Conn, Vec<u8>), Error> {
    let ep = Endpoint::parse(uri)?;
    let tls = match tls {
        Some(o) => Some((tls_config(o)?, o)),
        None => None,
    };
    mqtt_connect(Conn::connect(&ep, tls)?)
}

fn ca(path: &Path) -> TlsOptions {
    TlsOptions {
        ca_file: Some(path.to_path_buf()),
        ..TlsOptions::default()
    }
}

/// The connection must fail with a TLS error whose message contains every one of `wants`.
fn refused(uri: &str, opts: &TlsOptions, wants: &[&str]) -> String {
    match connect(uri, Some(opts)) {
        Ok((_, b)) => panic!("{uri}: connected (got {b:02x?}) but should have been refused"),
        Err(e @ Error::Tls(..)) => {
            let m = e.to_string();
            eprintln!("refused as expected: {m}");
            for w in wants {
                assert!(m.contains(w), "message lacks '{w}': {m}");
            }
            m
        }
        Err(e) => panic!("{uri}: expected a TLS error, got {e:?}"),
    }
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[test]
fn tcp_connack() {
    let b = Broker::start();
    let (c, buf) = connect(&b.tcp_uri(), None).unwrap();
    assert_eq!(buf, CONNACK_OK);
    assert!(c.tls_info().is_none());
    assert_eq!(c.pending(), 0);
}

#[test]
fn tls_with_test_ca_connack_and_info() {
    let b = Broker::start();
    let (c, buf) = connect(&b.tls_uri(), Some(&ca(&b.certs.ca))).unwrap();
    assert_eq!(buf, CONNACK_OK);
    let info = c.tls_info().expect("TLS info");
    assert_eq!(info.version, "TLS 1.3");
    assert!(info.cipher_suite.starts_with("TLS13_"), "{info:?}");
    assert_eq!(info.alpn, None);
    assert_eq!(info.peer_chain[0], pem_der(&b.certs.server_cert));
    let st = c.io_stats();
    assert!(st.socket_writes >= 2 && st.bytes_read > 0, "{st:?}");
}

#[test]
fn tls_by_ip_address_and_server_name() {
    let b = Broker::start();
    // The certificate has 127.0.0.1 as an IP SAN: connecting by IP verifies against it (no SNI is sent).
    let uri = format!("ssl://127.0.0.1:{}", b.tls_port);
    let (_, buf) = connect(&uri, Some(&ca(&b.certs.ca))).unwrap();
    assert_eq!(buf, CONNACK_OK);
    // By IP, checked against a name the certificate has.
    let opts = TlsOptions {
        server_name: Some("localhost".into()),
        ..ca(&b.certs.ca)
    };
    let (_, buf) = connect(&uri, Some(&opts)).unwrap();
    assert_eq!(buf, CONNACK_OK);
}

#[test]
fn tls_ca_directory() {
    let b = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&b.certs.ca, dir.path().join("ca.pem")).unwrap();
    std::fs::write(dir.path().join("README"), "not a certificate").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // An OpenSSL-style hash link and a dangling link: followed / skipped.
    std::os::unix::fs::symlink("ca.pem", dir.path().join("0123abcd.0")).unwrap();
    std::os::unix::fs::symlink("gone.pem", dir.path().join("fedc3210.0")).unwrap();
    let opts = TlsOptions {
        ca_dir: Some(dir.path().to_path_buf()),
        ..TlsOptions::default()
    };
    let (_, buf) = connect(&b.tls_uri(), Some(&opts)).unwrap();
    assert_eq!(buf, CONNACK_OK);
    // A directory with the other CA only: refused as unknown issuer.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::copy(&b.certs.other_ca, dir2.path().join("other.crt")).unwrap();
    let opts = TlsOptions {
        ca_dir: Some(dir2.path().to_path_buf()),
        ..TlsOptions::default()
    };
    refused(&b.tls_uri(), &opts, &["not signed by a trusted CA"]);
}

#[test]
fn mtls_with_client_cert() {
    let b = Broker::start();
    let opts = TlsOptions {
        cert_file: Some(b.certs.client_cert.clone()),
        key_file: Some(b.certs.client_key.clone()),
        ..ca(&b.certs.ca)
    };
    let (_, buf) = connect(&b.mtls_uri(), Some(&opts)).unwrap();
    assert_eq!(buf, CONNACK_OK);
}

#[test]
fn mtls_without_client_cert_says_so() {
    let b = Broker::start();
    // TLS 1.3: the broker's certificate_required alert arrives after the handshake.
    let m = refused(
        &b.mtls_uri(),
        &ca(&b.certs.ca),
        &[
            "requires a client certificate",
            "keyStore/privateKey",
            "--cert/--key",
        ],
    );
    assert!(m.contains("CertificateRequired"), "{m}");
    // TLS 1.2: a handshake_failure alert during the handshake.
    let opts = TlsOptions {
        cipher_suites: vec!["ECDHE-ECDSA-AES128-GCM-SHA256".into()],
        ..ca(&b.certs.ca)
    };
    refused(
        &b.mtls_uri(),
        &opts,
        &["client certificate", "--cert/--key"],
    );
}

#[test]
fn mtls_with_cert_the_broker_does_not_trust_says_refused() {
    let b = Broker::start();
    // The self-signed server certificate as a client certificate: not from the broker's CA.
    let opts = TlsOptions {
        cert_file: Some(b.certs.selfsigned_cert.clone()),
        key_file: Some(b.certs.selfsigned_key.clone()),
        ..ca(&b.certs.ca)
    };
    refused(
        &b.mtls_uri(),
        &opts,
        &["refused the client certificate", "keyStore/privateKey"],
    );
}

#[test]
fn tls13_minimum_and_tls12_by_cipher_suite() {
    let b = Broker::start();
    let opts = TlsOptions {
        min_version: TlsVersion::Tls13,
        ..ca(&b.certs.ca)
    };
    let (c, buf) = connect(&b.tls_uri(), Some(&opts)).unwrap();
    assert_eq!(buf, CONNACK_OK);
    assert_eq!(c.tls_info().unwrap().version, "TLS 1.3");
    // Only a TLS 1.2 suite (OpenSSL name): TLS 1.2 with that suite.
    let opts = TlsOptions {
        cipher_suites: vec!["ECDHE-ECDSA-AES128-GCM-SHA256".into()],
        ..ca(&b.certs.ca)
    };
    let (c, buf) = connect(&b.tls_uri(), Some(&opts)).unwrap();
    assert_eq!(buf, CONNACK_OK);
    let info = c.tls_info().unwrap();
    assert_eq!(info.version, "TLS 1.2");
    assert_eq!(info.cipher_suite, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
    // A TLS 1.3 suite by rustls name.
    let opts = TlsOptions {
        cipher_suites: vec!["TLS13_CHACHA20_POLY1305_SHA256".into()],
        ..ca(&b.certs.ca)
    };
    let (c, _) = connect(&b.tls_uri(), Some(&opts)).unwrap();
    assert_eq!(
        c.tls_info().unwrap().cipher_suite,
        "TLS13_CHACHA20_POLY1305_SHA256"
    );
}

#[test]
fn default_roots_refuse_test_broker() {
    let b = Broker::start();
    refused(
        &b.tls_uri(),
        &TlsOptions::default(),
        &[
            "not signed by a trusted CA",
            "set trustStore/--cafile",
            "only the built-in Mozilla roots",
        ],
    );
}

#[test]
fn other_ca_refuses() {
    let b = Broker::start();
    let m = refused(
        &b.tls_uri(),
        &ca(&b.certs.other_ca),
        &["server certificate is not signed by a trusted CA: set trustStore/--cafile"],
    );
    assert!(!m.contains("self-signed"), "{m}");
    assert!(m.contains("other-ca.pem") && !m.contains("Mozilla"), "{m}");
}

#[test]
fn wrong_host_name_refused_and_named() {
    let b = Broker::start();
    // Good certificate (localhost, 127.0.0.1, ::1) but checked against another name.
    let opts = TlsOptions {
        server_name: Some("elsewhere.example".into()),
        ..ca(&b.certs.ca)
    };
    refused(
        &b.tls_uri(),
        &opts,
        &[
            "not valid for host name 'elsewhere.example' (it names localhost, 127.0.0.1,",
            "connect by a name in the certificate",
            "server name (SNI)",
        ],
    );
    // A broker serving a certificate for elsewhere.example, reached as localhost.
    let w = Broker::start_with(BrokerOptions {
        tls_cert: Some((b.certs.wronghost_cert.clone(), b.certs.bad_keys[2].clone())),
        ..BrokerOptions::default()
    });
    refused(
        &w.tls_uri(),
        &ca(&b.certs.ca),
        &["not valid for host name 'localhost' (it names elsewhere.example)"],
    );
    // verify_hostname = false: accepted (the chain is still checked against the CA).
    let lax = TlsOptions {
        verify_hostname: false,
        ..ca(&b.certs.ca)
    };
    let (_, buf) = connect(&w.tls_uri(), Some(&lax)).unwrap();
    assert_eq!(buf, CONNACK_OK);
    // ... but a chain from an unknown CA is still refused.
    let lax_other = TlsOptions {
        verify_hostname: false,
        ..ca(&b.certs.other_ca)
    };
    refused(&w.tls_uri(), &lax_other, &["not signed by a trusted CA"]);
}

#[test]
fn expired_certificate_refused() {
    let b = Broker::start();
    let e = Broker::start_with(BrokerOptions {
        tls_cert: Some((b.certs.expired_cert.clone(), b.certs.bad_keys[0].clone())),
        ..BrokerOptions::default()
    });
    refused(
        &e.tls_uri(),
        &ca(&b.certs.ca),
        &["has expired", "2021-01-01", "renew", "clock"],
    );
}

#[test]
fn not_yet_valid_certificate_refused() {
    let b = Broker::start();
    let f = Broker::start_with(BrokerOptions {
        tls_cert: Some((b.certs.future_cert.clone(), b.certs.bad_keys[1].clone())),
        ..BrokerOptions::default()
    });
    refused(
        &f.tls_uri(),
        &ca(&b.certs.ca),
        &["not valid yet", "2090-01-01", "clock"],
    );
}

#[test]
fn self_signed_refused_unless_verification_off() {
    let b = Broker::start();
    let s = Broker::start_with(BrokerOptions {
        tls_cert: Some((
            b.certs.selfsigned_cert.clone(),
            b.certs.selfsigned_key.clone(),
        )),
        ..BrokerOptions::default()
    });
    refused(
        &s.tls_uri(),
        &ca(&b.certs.ca),
        &[
            "server certificate is not signed by a trusted CA: set trustStore/--cafile",
            "self-signed",
        ],
    );
    let off = TlsOptions {
        verify_certificate: false,
        ..TlsOptions::default()
    };
    let (c, buf) = connect(&s.tls_uri(), Some(&off)).unwrap();
    assert_eq!(buf, CONNACK_OK);
    assert_eq!(
        c.tls_info().unwrap().peer_chain[0],
        pem_der(&b.certs.selfsigned_cert)
    );
}

#[test]
fn tls_to_plain_port_says_check_the_port() {
    let b = Broker::start();
    // TLS client on the plain MQTT port: the broker answers the ClientHello with nothing TLS can parse or
    // closes; either way the message points at the port / scheme.
    let uri = format!("ssl://localhost:{}", b.tcp_port);
    match connect(&uri, Some(&ca(&b.certs.ca))) {
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("TLS listener"), "{m}");
        }
        Ok(_) => panic!("TLS to a plain port connected"),
    }
}

#[test]
fn refused_connection_names_address() {
    let port = common::free_port();
    let ep = Endpoint::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let e = match mqtt_connect(Conn::connect(&ep, None).unwrap()) {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    let m = e.to_string();
    assert!(matches!(e, Error::Tcp { .. }), "{e:?}");
    assert!(
        m.contains(&format!("127.0.0.1:{port} refused the connection"))
            && m.contains("broker running"),
        "{m}"
    );
}

#[test]
fn falls_over_to_next_address() {
    let b = Broker::start();
    let dead = common::free_port();
    let addrs = [
        format!("127.0.0.1:{dead}").parse().unwrap(),
        format!("127.0.0.1:{}", b.tls_port).parse().unwrap(),
    ];
    let o = ca(&b.certs.ca);
    let conn =
        Conn::connect_addrs(&addrs, "localhost", Some((tls_config(&o).unwrap(), &o))).unwrap();
    let (c, buf) = mqtt_connect(conn).unwrap();
    assert_eq!(buf, CONNACK_OK);
    assert_eq!(c.peer(), addrs[1]);
}

/// Plain and TLS listeners on ::1 (extra listeners; the TLS one with certificates generated here, whose
/// server certificate names ::1): URIs with IPv6 literals connect, and TLS verifies the IP address.
#[test]
fn ipv6_loopback_tcp_and_tls() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = common::Certs::generate(dir.path());
    let (tcp6, tls6) = (common::free_port(), common::free_port());
    let b = Broker::start_with(BrokerOptions {
        extra: format!(
            "listener {tcp6} ::1\nallow_anonymous true\n\
             listener {tls6} ::1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
            certs.ca.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        ),
        ..BrokerOptions::default()
    });
    let retry = |uri: &str, o: Option<&TlsOptions>| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match connect(uri, o) {
                Ok((c, buf)) => return (c, buf),
                Err(Error::Tcp { .. } | Error::Io { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("{uri}: {e}: {}", b.log()),
            }
        }
    };
    let (c, buf) = retry(&format!("tcp://[::1]:{tcp6}"), None);
    assert_eq!(buf, CONNACK_OK);
    assert_eq!(c.peer(), format!("[::1]:{tcp6}").parse().unwrap());
    let (c, buf) = retry(&format!("ssl://[::1]:{tls6}"), Some(&ca(&certs.ca)));
    assert_eq!(buf, CONNACK_OK);
    assert!(c.tls_info().is_some());
    // The other CA's certificates are not accepted over IPv6 either.
    refused(
        &format!("ssl://[::1]:{tls6}"),
        &ca(&certs.other_ca),
        &["not signed by a trusted CA"],
    );
}

#[test]
fn ipv6_literal_refused_where_broker_does_not_listen() {
    // The fixture's own listeners are on 127.0.0.1 only: [::1] is refused (or unreachable without IPv6),
    // and the error names the address.
    let b = Broker::start();
    let ep = Endpoint::parse(&format!("ssl://[::1]:{}", b.tls_port)).unwrap();
    assert_eq!(ep.host, "::1");
    let o = ca(&b.certs.ca);
    match Conn::connect(&ep, Some((tls_config(&o).unwrap(), &o))).and_then(mqtt_connect) {
        Ok(_) => panic!("connected to [::1] though the broker listens on 127.0.0.1 only"),
        Err(e) => assert!(e.to_string().contains("[::1]"), "{e}"),
    }
}

/// Many small writes between flushes go out as few large TLS records in few syscalls.
#[test]
fn small_writes_coalesce_into_few_records() {
    let b = Broker::start();
    let (mut c, _) = connect(&b.tls_uri(), Some(&ca(&b.certs.ca))).unwrap();
    // PINGREQ ×1000 (2 bytes each) + QoS 0 PUBLISH ×1000 (~30 bytes): 32 KB of plaintext.
    let publish: Vec<u8> = {
        let mut p = vec![0x30, 0x1c, 0x00, 0x06];
        p.extend_from_slice(b"t/coal");
        p.extend_from_slice(&[b'x'; 20]);
        p
    };
    assert_eq!(publish.len(), 30);
    let before = c.io_stats();
    let mut plain = 0;
    for _ in 0..1000 {
        c.write(&[0xc0, 0x00]).unwrap();
        c.write(&publish).unwrap();
        plain += 32;
    }
    assert_eq!(c.pending(), plain);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.flush().unwrap() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.pending(), 0);
    let after = c.io_stats();
    let tls_bytes = after.bytes_written - before.bytes_written;
    let records_overhead = tls_bytes - plain as u64;
    // 32000 bytes = 2 full records: 2 × (5 header + 16 tag + 1 type) = 44 bytes. One record per write would
    // cost 2000 × 22 = 44000.
    assert!(
        records_overhead <= 3 * 22,
        "TLS overhead {records_overhead} bytes: records not coalesced"
    );
    assert!(
        after.socket_writes - before.socket_writes <= 2,
        "{before:?} → {after:?}"
    );
    // The broker answers the 1000 PINGREQs with 1000 PINGRESPs (d0 00): the stream is intact.
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while buf.len() < 2000 {
        assert!(
            Instant::now() < deadline,
            "got {} bytes of PINGRESP",
            buf.len()
        );
        c.read(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(buf.chunks(2).all(|p| p == [0xd0, 0x00]));
}

/// Same over TCP: one write syscall for many queued packets; the buffer is reused (no growth once warm).
#[test]
fn tcp_writes_coalesce() {
    let b = Broker::start();
    let (mut c, _) = connect(&b.tcp_uri(), None).unwrap();
    for round in 0..3 {
        let before = c.io_stats();
        for _ in 0..500 {
            c.write(&[0xc0, 0x00]).unwrap();
        }
        assert!(c.flush().unwrap());
        let after = c.io_stats();
        assert_eq!(
            after.socket_writes - before.socket_writes,
            1,
            "round {round}"
        );
        assert_eq!(after.bytes_written - before.bytes_written, 1000);
    }
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while buf.len() < 3000 {
        assert!(Instant::now() < deadline, "got {} bytes", buf.len());
        c.read(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn broker_close_is_closed() {
    let mut b = Broker::start();
    let (mut c, _) = connect(&b.tls_uri(), Some(&ca(&b.certs.ca))).unwrap();
    b.stop();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no Closed after broker stop");
        match c.read(&mut buf) {
            Err(Error::Closed { .. }) => break,
            Err(e) => panic!("expected Closed, got {e:?}"),
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

// Client keys in the other PEM encodings: SEC1 (openssl ec) and PKCS#1 RSA (openssl genrsa -traditional).
fn openssl(args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl CLI");
    assert!(st.success(), "openssl {args:?}");
}

#[test]
fn mtls_with_sec1_client_key() {
    let b = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("client-sec1.key");
    openssl(&[
        "ec",
        "-in",
        b.certs.client_key.to_str().unwrap(),
        "-out",
        k.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&k).unwrap();
    assert!(text.contains("BEGIN EC PRIVATE KEY"), "{text}");
    let opts = TlsOptions {
        cert_file: Some(b.certs.client_cert.clone()),
        key_file: Some(k),
        ..ca(&b.certs.ca)
    };
    let (_, buf) = connect(&b.mtls_uri(), Some(&opts)).unwrap();
    assert_eq!(buf, CONNACK_OK);
}

#[test]
fn mtls_with_pkcs1_rsa_client_key() {
    // A CA of our own (openssl), a PKCS#1 RSA client key and certificate signed by it, and a broker listener
    // that requires client certificates from that CA.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-subj",
        "/CN=pkcs1 test CA",
        "-days",
        "2",
    ]);
    openssl(&["genrsa", "-traditional", "-out", &p("rsa.key"), "2048"]);
    let text = std::fs::read_to_string(p("rsa.key")).unwrap();
    assert!(text.contains("BEGIN RSA PRIVATE KEY"), "not PKCS#1: {text}");
    std::fs::write(p("client-ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(&[
        "req",
        "-new",
        "-key",
        &p("rsa.key"),
        "-subj",
        "/CN=rsa-client",
        "-out",
        &p("rsa.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("rsa.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("rsa.pem"),
        "-days",
        "2",
        "-extfile",
        &p("client-ext"),
    ]);
    // Server side of the extra listener: a localhost certificate from the same CA.
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("srv.key"),
        "-subj",
        "/CN=localhost",
        "-out",
        &p("srv.csr"),
    ]);
    std::fs::write(p("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("srv.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("srv.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext"),
    ]);
    let port = common::free_port();
    let b = Broker::start_with(BrokerOptions {
        extra: format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            p("ca.pem"),
            p("srv.pem"),
            p("srv.key")
        ),
        ..BrokerOptions::default()
    });
    let uri = format!("ssl://localhost:{port}");
    let opts = TlsOptions {
        ca_file: Some(p("ca.pem").into()),
        cert_file: Some(p("rsa.pem").into()),
        key_file: Some(p("rsa.key").into()),
        ..TlsOptions::default()
    };
    // The listener may take a moment after the fixture's own listeners are up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let buf = loop {
        match connect(&uri, Some(&opts)) {
            Ok((_, buf)) => break buf,
            Err(Error::Tcp { .. } | Error::Io { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}: {}", b.log()),
        }
    };
    assert_eq!(buf, CONNACK_OK);
}

#[test]
fn close_sends_close_notify_then_refuses_io() {
    let b = Broker::start();
    let (mut c, _) = connect(&b.tls_uri(), Some(&ca(&b.certs.ca))).unwrap();
    let before = c.io_stats();
    c.close();
    let after = c.io_stats();
    // close_notify: one encrypted alert record (5 header + 2 alert + 1 type + 16 tag).
    assert_eq!(
        after.bytes_written - before.bytes_written,
        24,
        "{before:?} → {after:?}"
    );
    assert!(matches!(c.write(b"x"), Err(Error::Closed { .. })));
    assert!(matches!(c.flush(), Err(Error::Closed { .. })));
    assert!(matches!(c.read(&mut Vec::new()), Err(Error::Closed { .. })));
}

#[test]
fn no_address_is_an_error() {
    let e = Conn::connect_addrs(&[], "nowhere", None).unwrap_err();
    assert!(e.to_string().contains("resolves to no address"), "{e}");
}

/// A server that speaks only TLS 1.1 (or 1.0) — `openssl s_server` with the old protocol forced on — is
/// refused: rustls offers TLS 1.2 and 1.3 only, and the message says no version is shared.
#[test]
fn tls_1_0_and_1_1_servers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::Certs::generate(dir.path());
    for (flag, name) in [("-tls1_1", "TLS 1.1"), ("-tls1", "TLS 1.0")] {
        let port = common::free_port();
        let mut server = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(flag)
            // OpenSSL 3 disables TLS < 1.2 at its default security level; level 0 turns it back on.
            .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-cert"])
            .arg(&certs.server_cert)
            .arg("-key")
            .arg(&certs.server_key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl (apt-get install openssl)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "openssl s_server {flag} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = refused(
            &format!("ssl://localhost:{port}"),
            &ca(&certs.ca),
            &["no TLS version or cipher suite in common"],
        );
        eprintln!("{name}: {m}");
        let _ = server.kill();
        let _ = server.wait();
    }
}
