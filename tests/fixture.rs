//! The fixture itself works: mosquitto starts with all four listeners and mosquitto_sub sees publishes.
mod common;
use std::process::Command;
use std::time::Duration;

#[test]
fn broker_starts_and_relays() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "fixture/#", 1, &["-v"]);
    let ca = b.certs.ca.to_str().unwrap();
    common::mosquitto_pub(
        "localhost",
        b.tls_port,
        &["--cafile", ca, "-t", "fixture/a", "-m", "hello", "-q", "1"],
    );
    assert_eq!(sub.wait_for(1, Duration::from_secs(5)), 1);
    assert_eq!(sub.take(), vec!["fixture/a hello".to_string()]);
    // The mutual-TLS listener refuses a client without a certificate: mosquitto_pub fails (or, when the refusal
    // reaches it as a reset, keeps reconnecting until killed), and nothing it sent is delivered.
    let out = common::run_limited(
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &b.mtls_port.to_string()])
            .arg("--cafile")
            .arg(&b.certs.ca)
            .args(["-t", "fixture/b", "-m", "x"]),
        Duration::from_secs(10),
    );
    assert!(out.is_none_or(|o| !o.status.success()));
    common::mosquitto_pub(
        "localhost",
        b.tls_port,
        &["--cafile", ca, "-t", "fixture/c", "-m", "after", "-q", "1"],
    );
    assert_eq!(sub.wait_for(1, Duration::from_secs(5)), 1);
    assert_eq!(sub.take(), vec!["fixture/c after".to_string()]);
}

/// The proxy relays, cuts, refuses and reopens.
#[test]
fn proxy_relays_cuts_and_refuses() {
    use std::io::{Read, Write};
    let b = common::Broker::start();
    let p = common::proxy::Proxy::start(b.tcp_port);
    let connect = |port: u16| -> std::io::Result<std::net::TcpStream> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // MQTT 3.1.1 CONNECT, clean session, keep-alive 60, empty client id.
        s.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack)?;
        assert_eq!(ack, [0x20, 2, 0, 0]);
        Ok(s)
    };
    let mut s = connect(p.port).unwrap();
    p.cut();
    let mut one = [0u8; 1];
    assert!(
        matches!(s.read(&mut one), Ok(0) | Err(_)),
        "cut connection still open"
    );
    p.refuse(true);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p.port)).is_err(),
        "port not refusing"
    );
    p.refuse(false);
    connect(p.port).unwrap();
    assert_eq!(p.accepted(), 2);
}
