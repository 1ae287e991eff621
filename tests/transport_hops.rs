//! Conn through its hops against real components: a real HTTP proxy (tinyproxy) in front of mosquitto —
//! plain, TLS and mutual TLS inside the tunnel, Basic authentication right, wrong and missing, a
//! `ConnectPort` rule refusing a port, a proxy that is not there or not HTTP — and a real broker's WebSocket
//! listeners (aedes), plain and TLS, directly and through the proxy. Each case ends in an MQTT CONNACK (and
//! a PINGREQ/PINGRESP) or in the typed error that says what to change.
mod common;

use std::time::{Duration, Instant};

use common::hops::{Aedes, ProxyOptions, Tinyproxy};
use common::{free_port, Broker};
use mio::{Events, Poll, Token};
use qmqtt::transport::proxy::{Choice, Proxy, ProxyError, Source};
use qmqtt::transport::ws::WsError;
use qmqtt::transport::{tls_config, Conn, Endpoint, TlsOptions};
use qmqtt::Error;

/// CONNECT, MQTT 3.1.1, clean session, keepalive 60, client id "hops".
const CONNECT: [u8; 18] = [
    0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'h', b'o',
    b'p', b's',
];
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const PINGREQ: [u8; 2] = [0xc0, 0x00];
const PINGRESP: [u8; 2] = [0xd0, 0x00];

/// Drive `conn` until `want` bytes came after writing `send` once established.
fn exchange(conn: &mut Conn, poll: &mut Poll, send: &[u8], want: usize) -> Result<Vec<u8>, Error> {
    let mut events = Events::with_capacity(8);
    let mut buf = Vec::new();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "no answer within 10 s ({buf:02x?})"
        );
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        conn.flush()?;
        while conn.read(&mut buf)? > 0 {}
        if conn.is_established() && !sent {
            conn.write(send)?;
            conn.flush()?;
            sent = true;
        }
        if buf.len() >= want {
            return Ok(buf);
        }
    }
}

/// Connect to `uri` (through `proxy` if given), CONNECT → CONNACK, PINGREQ → PINGRESP.
fn mqtt(uri: &str, proxy: Option<&str>, tls: Option<&TlsOptions>) -> Result<Conn, Error> {
    let ep = Endpoint::parse(uri)?;
    let choice = proxy.map(|p| Choice {
        proxy: Proxy::parse(p).unwrap(),
        source: Source::Option,
    });
    let tls = match tls {
        Some(o) => Some((tls_config(o)?, o)),
        None => None,
    };
    let mut conn = Conn::connect_via(&ep, choice.as_ref(), tls)?;
    let mut poll = Poll::new().unwrap();
    conn.register(poll.registry(), Token(0)).unwrap();
    let got = exchange(&mut conn, &mut poll, &CONNECT, 4)?;
    assert_eq!(got, CONNACK_OK, "{uri}");
    let got = exchange(&mut conn, &mut poll, &PINGREQ, 2)?;
    assert_eq!(got, PINGRESP, "{uri}");
    Ok(conn)
}

fn ca(b: &common::Certs) -> TlsOptions {
    TlsOptions {
        ca_file: Some(b.ca.clone()),
        ..TlsOptions::default()
    }
}

fn mutual(b: &common::Certs) -> TlsOptions {
    TlsOptions {
        cert_file: Some(b.client_cert.clone()),
        key_file: Some(b.client_key.clone()),
        ..ca(b)
    }
}

#[test]
fn plain_tls_and_mutual_tls_through_the_proxy() {
    let b = Broker::start();
    let p = Tinyproxy::start(ProxyOptions::default());
    let c = mqtt(&b.tcp_uri(), Some(&p.url()), None).unwrap();
    let (via, status) = c.hops().proxy.expect("proxy hop");
    assert_eq!(via.addr, format!("127.0.0.1:{}", p.port));
    assert!(status.contains(" 200 "), "{status}");
    assert!(c.tls_info().is_none());

    let c = mqtt(&b.tls_uri(), Some(&p.url()), Some(&ca(&b.certs))).unwrap();
    let info = c.tls_info().expect("TLS inside the tunnel");
    assert!(info.version.starts_with("TLS"), "{info:?}");
    mqtt(&b.mtls_uri(), Some(&p.url()), Some(&mutual(&b.certs))).unwrap();
    // Without the client certificate the broker (not the proxy) refuses, inside the tunnel.
    match mqtt(&b.mtls_uri(), Some(&p.url()), Some(&ca(&b.certs))) {
        Err(Error::Tls(_)) | Err(Error::Io { .. }) | Err(Error::Closed { .. }) => {}
        other => panic!("expected the broker's TLS refusal, got {other:?}"),
    }
    assert!(p.connects() >= 4, "{}", p.log());
}

#[test]
fn proxy_authentication() {
    let b = Broker::start();
    let p = Tinyproxy::start(ProxyOptions {
        auth: true,
        ..ProxyOptions::default()
    });
    mqtt(&b.tcp_uri(), Some(&p.url()), None).unwrap();
    mqtt(&b.tls_uri(), Some(&p.url()), Some(&ca(&b.certs))).unwrap();

    let none = format!("http://127.0.0.1:{}", p.port);
    match mqtt(&b.tcp_uri(), Some(&none), None) {
        Err(e @ Error::Proxy(ProxyError::AuthRequired { sent: false, .. })) => {
            let m = e.to_string();
            assert!(m.contains("407") && m.contains("user and password"), "{m}");
        }
        other => panic!("expected 407, got {other:?}"),
    }
    match mqtt(&b.tcp_uri(), Some(&p.url_as("gw-proxy", "wrong")), None) {
        Err(e @ Error::Proxy(ProxyError::AuthRequired { sent: true, .. })) => {
            let m = e.to_string();
            assert!(
                m.contains("refused the proxy user and password") && !m.contains("wrong"),
                "{m}"
            );
        }
        other => panic!("expected 407, got {other:?}"),
    }
}

#[test]
fn connect_port_rule_refuses_other_ports() {
    let b = Broker::start();
    let p = Tinyproxy::start(ProxyOptions {
        connect_ports: vec![b.tls_port],
        ..ProxyOptions::default()
    });
    mqtt(&b.tls_uri(), Some(&p.url()), Some(&ca(&b.certs))).unwrap();
    match mqtt(&b.tcp_uri(), Some(&p.url()), None) {
        Err(e @ Error::Proxy(ProxyError::Refused { .. })) => {
            let m = e.to_string();
            assert!(
                m.contains(&format!("127.0.0.1:{}", b.tcp_port))
                    && m.contains("403")
                    && m.contains("ConnectPort"),
                "{m}"
            );
        }
        other => panic!("expected a refused CONNECT, got {other:?}"),
    }
}

#[test]
fn proxy_not_there_or_not_http() {
    let b = Broker::start();
    let nothing = format!("http://127.0.0.1:{}", free_port());
    match mqtt(&b.tcp_uri(), Some(&nothing), None) {
        Err(e @ Error::Proxy(ProxyError::Tcp { .. })) => {
            let m = e.to_string();
            assert!(
                m.contains("cannot connect to the HTTP proxy") && m.contains("refused"),
                "{m}"
            );
        }
        other => panic!("expected the proxy unreachable, got {other:?}"),
    }
    // mosquitto's TLS port as the "proxy": it answers CONNECT with a TLS alert, or closes.
    let tls_port = format!("http://127.0.0.1:{}", b.tls_port);
    match mqtt(&b.tcp_uri(), Some(&tls_port), None) {
        Err(Error::Proxy(ProxyError::NotHttp { .. } | ProxyError::Closed { .. })) => {}
        other => panic!("expected not-a-proxy, got {other:?}"),
    }
    let bad_host = "http://no-such-proxy.invalid:3128";
    match mqtt(&b.tcp_uri(), Some(bad_host), None) {
        Err(e @ Error::Proxy(ProxyError::Dns { .. })) => {
            assert!(e.to_string().contains("no-such-proxy.invalid"), "{e}")
        }
        other => panic!("expected the proxy's name unresolved, got {other:?}"),
    }
}

#[test]
fn websockets_plain_and_tls_directly_and_through_the_proxy() {
    let a = Aedes::start();
    let c = mqtt(&a.ws_uri(), None, None).unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let answer = c.hops().websocket.expect("upgrade answer");
    assert!(
        answer.contains("101") && answer.contains("subprotocol mqtt"),
        "{answer}"
    );
    mqtt(&a.wss_uri(), None, Some(&ca(&a.certs))).unwrap();

    let p = Tinyproxy::start(ProxyOptions {
        auth: true,
        connect_ports: vec![a.ws_port, a.wss_port],
    });
    let c = mqtt(&a.ws_uri(), Some(&p.url()), None).unwrap();
    assert!(c.hops().proxy.is_some() && c.hops().websocket.is_some());
    mqtt(&a.wss_uri(), Some(&p.url()), Some(&ca(&a.certs))).unwrap();
}

#[test]
fn websocket_refusals() {
    let a = Aedes::start();
    let wrong_path = format!("ws://127.0.0.1:{}/nope", a.ws_port);
    match mqtt(&wrong_path, None, None) {
        Err(e @ Error::WebSocket(WsError::Refused { .. })) => {
            assert!(e.to_string().contains("/nope"), "{e}")
        }
        other => panic!("expected the upgrade refused, got {other:?}"),
    }
    // A plain MQTT port is not a WebSocket listener.
    let b = Broker::start();
    let mqtt_port = format!("ws://127.0.0.1:{}/mqtt", b.tcp_port);
    match mqtt(&mqtt_port, None, None) {
        Err(e @ Error::WebSocket(WsError::NotWebSocket { .. })) => {
            assert!(e.to_string().contains("WebSocket listener"), "{e}")
        }
        other => panic!("expected not-a-WebSocket, got {other:?}"),
    }
    // ws:// to the TLS WebSocket port: the TLS server does not answer HTTP.
    let plain_to_tls = format!("ws://127.0.0.1:{}/mqtt", a.wss_port);
    assert!(
        matches!(mqtt(&plain_to_tls, None, None), Err(Error::WebSocket(_))),
        "ws:// to a wss port must fail as a WebSocket error"
    );
}
