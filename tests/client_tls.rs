//! The Rust client over TLS and mutual TLS against mosquitto with the fixture's generated certificates.
mod common;

use std::time::Duration;

use common::client::{cfg, connect, Seen};
use qmqtt::client::{Client, ClientError};
use qmqtt::{Error, QoS};

const T: Duration = Duration::from_secs(10);

#[test]
fn tls_publish_and_receive() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "tls/#", 1, &["-v"]);
    let mut k = cfg(&b.tls_uri(), "tlsc");
    k.tls.ca_file = Some(b.certs.ca.clone());
    let c = connect(k);
    c.subscribe("echo/#", QoS::AtLeastOnce).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, T, |s| !s.subscribed.is_empty()));
    for i in 0..100 {
        c.publish("tls/x", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false)
            .unwrap();
    }
    c.publish("echo/me", b"back", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(sub.wait_for(100, T), 100);
    assert!(seen.until(&c, T, |s| s.delivered.len() == 101 && !s.msgs.is_empty()));
    assert_eq!(seen.msgs[0].1, b"back");
}

#[test]
fn mutual_tls_with_and_without_a_client_certificate() {
    let b = common::Broker::start();
    let mut k = cfg(&b.mtls_uri(), "mtls");
    k.tls.ca_file = Some(b.certs.ca.clone());
    k.tls.cert_file = Some(b.certs.client_cert.clone());
    k.tls.key_file = Some(b.certs.client_key.clone());
    let c = connect(k);
    c.publish("m/x", b"y", QoS::AtLeastOnce, false).unwrap();
    let mut seen = Seen::default();
    assert!(seen.until(&c, T, |s| s.delivered.len() == 1));

    let mut k = cfg(&b.mtls_uri(), "mtls-nocert");
    k.tls.ca_file = Some(b.certs.ca.clone());
    k.reconnect = false;
    let c = Client::connect(k).unwrap();
    assert!(matches!(c.wait_connected(T), Err(ClientError::Connect(_))));
}

#[test]
fn unknown_ca_is_refused_with_a_message() {
    let b = common::Broker::start();
    let mut k = cfg(&b.tls_uri(), "badca");
    k.tls.ca_file = Some(b.certs.other_ca.clone());
    k.reconnect = false;
    let c = Client::connect(k).unwrap();
    match c.wait_connected(T) {
        Err(ClientError::Connect(Error::Tls(t))) => assert_eq!(
            t.cause,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[test]
fn tls_batch_goes_out_in_few_socket_writes() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "tlsb/#", 0, &[]);
    let mut k = cfg(&b.tls_uri(), "tlsbatch");
    k.tls.ca_file = Some(b.certs.ca.clone());
    let c = connect(k);
    let w0 = c.stats().socket_writes;
    let payload = [b'x'; 64];
    let msgs = vec![("tlsb/t", &payload[..]); 10_000];
    let mut toks = Vec::new();
    c.publish_batch(msgs, QoS::AtMostOnce, false, &mut toks)
        .unwrap();
    assert_eq!(sub.wait_for(10_000, T), 10_000);
    let writes = c.stats().socket_writes - w0;
    eprintln!("TLS: 10000 QoS 0 messages in {writes} socket writes");
    assert!(
        writes <= 200,
        "{writes} writes for 10000 messages: no batching"
    );
}
