//! Broker URI parsing: schemes, default ports, IPv6 literals and the messages for bad URIs.
use qmqtt::error::Key;
use qmqtt::transport::{Endpoint, Scheme};

fn ok(uri: &str) -> (Scheme, String, u16) {
    let e = Endpoint::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    (e.scheme, e.host, e.port)
}

fn err(uri: &str) -> String {
    match Endpoint::parse(uri) {
        Ok(e) => panic!("{uri} parsed as {e:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn host_port_without_scheme_is_plain_tcp_as_paho() {
    assert_eq!(ok("broker:1883"), (Scheme::Tcp, "broker".into(), 1883));
    assert_eq!(
        ok("127.0.0.1:1884"),
        (Scheme::Tcp, "127.0.0.1".into(), 1884)
    );
    assert_eq!(ok("[::1]:1885"), (Scheme::Tcp, "::1".into(), 1885));
    assert_eq!(
        Endpoint::parse("localhost:1883").unwrap().to_string(),
        "tcp://localhost:1883"
    );
}

#[test]
fn schemes_and_default_ports() {
    assert_eq!(ok("tcp://broker"), (Scheme::Tcp, "broker".into(), 1883));
    assert_eq!(ok("mqtt://broker"), (Scheme::Tcp, "broker".into(), 1883));
    assert_eq!(ok("ssl://broker"), (Scheme::Tls, "broker".into(), 8883));
    assert_eq!(ok("mqtts://broker"), (Scheme::Tls, "broker".into(), 8883));
    assert_eq!(
        ok("SSL://Broker.example:443"),
        (Scheme::Tls, "Broker.example".into(), 443)
    );
    assert_eq!(
        ok("tcp://127.0.0.1:1884/"),
        (Scheme::Tcp, "127.0.0.1".into(), 1884)
    );
    assert_eq!(ok("  tcp://h:1  "), (Scheme::Tcp, "h".into(), 1));
}

#[test]
fn websocket_uris_have_a_path() {
    let p = |uri: &str| {
        let e = Endpoint::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        (e.scheme, e.host, e.port, e.path)
    };
    assert_eq!(p("ws://b"), (Scheme::Ws, "b".into(), 80, "/mqtt".into()));
    assert_eq!(p("WSS://b"), (Scheme::Wss, "b".into(), 443, "/mqtt".into()));
    assert_eq!(
        p("ws://b:8080/"),
        (Scheme::Ws, "b".into(), 8080, "/".into())
    );
    assert_eq!(
        p("wss://[::1]:8443/ws/mqtt?x=1"),
        (Scheme::Wss, "::1".into(), 8443, "/ws/mqtt?x=1".into())
    );
    assert_eq!(
        p("ws://b?t=1"),
        (Scheme::Ws, "b".into(), 80, "/?t=1".into())
    );
    assert_eq!(
        Endpoint::parse("wss://b:9/p").unwrap().to_string(),
        "wss://b:9/p"
    );
    assert!(Scheme::Wss.tls() && Scheme::Wss.websocket() && !Scheme::Ws.tls());
    assert!(err("ws://b/a#frag").contains("fragment"));
    assert!(err("ws://b/a b").contains("spaces"));
    assert!(err("ws://u:p@b/mqtt").contains("username/password"));
    // Paths are for WebSockets only.
    assert!(err("ssl://b/mqtt").contains("no path"));
}

#[test]
fn ipv6_literals() {
    assert_eq!(ok("ssl://[::1]:8884"), (Scheme::Tls, "::1".into(), 8884));
    assert_eq!(ok("ssl://[::1]"), (Scheme::Tls, "::1".into(), 8883));
    assert_eq!(
        ok("tcp://[fe80::1:2]:1883"),
        (Scheme::Tcp, "fe80::1:2".into(), 1883)
    );
    let m = err("tcp://::1:1883");
    assert!(m.contains("brackets"), "{m}");
    let m = err("tcp://[::1:1883");
    assert!(m.contains("']'"), "{m}");
    let m = err("tcp://[nothost]:1883");
    assert!(m.contains("not an IPv6 address"), "{m}");
    let m = err("tcp://[::1]1883");
    assert!(m.contains("after ']'"), "{m}");
    // Display puts the brackets back.
    assert_eq!(
        Endpoint::parse("ssl://[::1]:9").unwrap().to_string(),
        "ssl://[::1]:9"
    );
}

#[test]
fn unknown_scheme_says_invalid_protocol_scheme_and_lists_accepted() {
    for uri in [
        "wss+unix://broker:80",
        "http://x",
        "broker",
        "broker:1883/x",
        ":1883",
        "broker:mqtt",
    ] {
        let m = err(uri);
        assert!(m.starts_with("Invalid protocol scheme"), "{m}");
        for s in ["tcp://", "ssl://", "mqtt://", "mqtts://", "ws://", "wss://"] {
            assert!(m.contains(s), "{m} lacks {s}");
        }
    }
}

#[test]
fn bad_ports_and_hosts() {
    for p in ["0", "65536", "x", "", "-1", "18 83"] {
        let m = err(&format!("tcp://h:{p}"));
        assert!(
            m.contains("bad port") && m.contains("1 to 65535"),
            "{p}: {m}"
        );
    }
    let m = err("tcp://:1883");
    assert!(m.contains("missing host"), "{m}");
    let m = err("ssl://");
    assert!(m.contains("missing host"), "{m}");
    let m = err("tcp://user:pw@host:1883");
    assert!(m.contains("username/password"), "{m}");
    let m = err("tcp://host:1883/topic");
    assert!(m.contains("no path"), "{m}");
    let m = err("tcp://ho st:1883");
    assert!(m.contains("not allowed"), "{m}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any input gives an endpoint or a Uri error, never a panic.
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            match Endpoint::parse(&s) {
                Ok(_) => {}
                Err(e) => prop_assert!(
                    matches!(e.key, Key::Uri | Key::UriScheme),
                    "unexpected error kind {e:?}"
                ),
            }
        }

        /// Scheme-shaped inputs: never a panic either, whatever follows the scheme.
        #[test]
        fn never_panics_after_scheme(scheme in "(tcp|ssl|mqtt|mqtts|ws)", rest in "[\\[\\]:@/a-z0-9.%-]{0,30}") {
            let _ = Endpoint::parse(&format!("{scheme}://{rest}"));
        }

        /// Display and parse agree for names, IPv4 and IPv6 addresses.
        #[test]
        fn display_round_trips(
            tls in any::<bool>(),
            host in prop_oneof![
                "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}",
                any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
                any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
            ],
            port in 1u16..,
        ) {
            let ep = Endpoint {
                scheme: if tls { Scheme::Tls } else { Scheme::Tcp },
                host,
                port,
                path: String::new(),
            };
            prop_assert_eq!(Endpoint::parse(&ep.to_string()).unwrap(), ep);
        }
    }
}
