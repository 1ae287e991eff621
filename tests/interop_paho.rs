//! Interop with an independent MQTT implementation: the Eclipse paho C engine (the one under
//! KxSystems/mqtt), through the `paho-mqtt` crate, over TLS to a real mosquitto.
//!
//! - paho receives what our engine publishes at QoS 0, 1 and 2 (the `Client` API directly);
//! - our engine receives what paho publishes at QoS 0, 1 and 2.
//!
//! Each message carries its QoS and a sequence number; both sides must see each exactly once, in order per
//! QoS, with the QoS it was sent at (the subscriptions are at QoS 2, so nothing is downgraded).
// paho-mqtt is a dev-dependency on x86_64 only (Cargo.toml): it does not cross-build for ARM.
#![cfg(target_arch = "x86_64")]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Broker;
use qmqtt::{Client, Config, Event, QoS};

const PER_QOS: usize = 200;

fn paho_client(b: &Broker, id: &str) -> paho_mqtt::Client {
    let create = paho_mqtt::CreateOptionsBuilder::new()
        .server_uri(format!("ssl://localhost:{}", b.tls_port))
        .client_id(id)
        .finalize();
    paho_mqtt::Client::new(create).expect("paho client")
}

fn paho_connect(b: &Broker, cli: &paho_mqtt::Client) {
    let ssl = paho_mqtt::SslOptionsBuilder::new()
        .trust_store(&b.certs.ca)
        .expect("paho trust store")
        .enable_server_cert_auth(true)
        .verify(true)
        .finalize();
    let opts = paho_mqtt::ConnectOptionsBuilder::new_v3()
        .ssl_options(ssl)
        .clean_session(true)
        .keep_alive_interval(Duration::from_secs(30))
        .finalize();
    cli.connect(opts).expect("paho connects over TLS");
}

fn our_client(b: &Broker, id: &str) -> Client {
    let mut cfg = Config::new(b.tls_uri(), id);
    cfg.tls.ca_file = Some(b.certs.ca.clone());
    let c = Client::connect(cfg).expect("our client config");
    c.wait_connected(Duration::from_secs(10))
        .expect("our client connects over TLS");
    c
}

/// Drain our client's events into `on(state, event)` until `done(state)` or `t` passes (sleep-free:
/// waits on the event fd).
fn pump<S>(
    c: &Client,
    t: Duration,
    state: &mut S,
    mut on: impl FnMut(&mut S, Event<'_>),
    done: impl Fn(&S) -> bool,
) {
    let deadline = Instant::now() + t;
    while !done(state) && Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: c.event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        c.poll_events(1024, &mut |e| on(state, e));
    }
}

fn want(q: u8) -> Vec<String> {
    (0..PER_QOS).map(|i| format!("q{q} #{i}")).collect()
}

#[test]
fn paho_receives_what_our_engine_publishes() {
    let b = Broker::start();
    let paho = paho_client(&b, "paho-sub");
    let rx = paho.start_consuming();
    paho_connect(&b, &paho);
    paho.subscribe("interop/ours/#", 2)
        .expect("paho subscribes");

    let mut ours = our_client(&b, "qmqtt-pub");
    let mut payload = Vec::with_capacity(64);
    let mut delivered: BTreeMap<u8, usize> = BTreeMap::new();
    let count = |d: &mut BTreeMap<u8, usize>, e: Event<'_>| {
        if let Event::Delivered { qos, .. } = e {
            *d.entry(qos as u8).or_default() += 1;
        }
    };
    for q in 0..3u8 {
        let topic = format!("interop/ours/q{q}");
        for i in 0..PER_QOS {
            payload.clear();
            payload.extend_from_slice(format!("q{q} #{i}").as_bytes());
            loop {
                match ours.publish(&topic, &payload, QoS::from_u8(q).unwrap(), false) {
                    Ok(_) => break,
                    Err(qmqtt::PublishError::QueueFull) => pump(
                        &ours,
                        Duration::from_millis(20),
                        &mut delivered,
                        count,
                        |_| false,
                    ),
                    Err(e) => panic!("publish: {e}"),
                }
            }
        }
    }
    // Our side: every QoS 1/2 message acknowledged (QoS 0 has no acknowledgement).
    pump(&ours, Duration::from_secs(20), &mut delivered, count, |d| {
        d.get(&1) >= Some(&PER_QOS) && d.get(&2) >= Some(&PER_QOS)
    });
    assert_eq!(
        delivered.get(&1),
        Some(&PER_QOS),
        "QoS 1 acknowledgements: {delivered:?}"
    );
    assert_eq!(
        delivered.get(&2),
        Some(&PER_QOS),
        "QoS 2 completions: {delivered:?}"
    );

    // paho's side: each message once, in order per QoS, at its QoS.
    let mut got: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.values().map(Vec::len).sum::<usize>() < 3 * PER_QOS && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(m)) => {
                let q = m.qos() as u8;
                assert_eq!(m.topic(), format!("interop/ours/q{q}"), "topic vs QoS");
                got.entry(q).or_default().push(m.payload_str().into_owned());
            }
            Ok(None) => panic!("paho lost its connection"),
            Err(_) => {}
        }
    }
    // Anything late would be a duplicate.
    while let Ok(Some(m)) = rx.recv_timeout(Duration::from_millis(300)) {
        got.entry(m.qos() as u8)
            .or_default()
            .push(m.payload_str().into_owned());
    }
    for q in 0..3u8 {
        assert_eq!(got.get(&q), Some(&want(q)), "paho received at QoS {q}");
    }
    ours.disconnect(Duration::from_secs(2));
    let _ = paho.disconnect(None);
}

#[test]
fn our_engine_receives_what_paho_publishes() {
    let b = Broker::start();
    let mut ours = our_client(&b, "qmqtt-sub");
    ours.subscribe("interop/paho/#", QoS::ExactlyOnce)
        .expect("subscribe");
    let mut granted = None;
    pump(
        &ours,
        Duration::from_secs(10),
        &mut granted,
        |g, e| {
            if let Event::Subscribed { filter, granted } = e {
                assert_eq!(filter, "interop/paho/#");
                *g = Some(granted);
            }
        },
        |g| g.is_some(),
    );
    assert_eq!(granted, Some(Some(QoS::ExactlyOnce)), "SUBACK");

    let paho = paho_client(&b, "paho-pub");
    paho_connect(&b, &paho);
    for q in 0..3i32 {
        for i in 0..PER_QOS {
            let m = paho_mqtt::Message::new(format!("interop/paho/q{q}"), format!("q{q} #{i}"), q);
            paho.publish(m).expect("paho publishes");
        }
    }

    let mut got: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    let on = |got: &mut BTreeMap<u8, Vec<String>>, e: Event<'_>| {
        if let Event::Message {
            topic,
            payload,
            qos,
            retain,
            ..
        } = e
        {
            assert!(!retain);
            assert_eq!(
                topic,
                format!("interop/paho/q{}", qos as u8),
                "topic vs QoS"
            );
            got.entry(qos as u8)
                .or_default()
                .push(String::from_utf8_lossy(payload).into_owned());
        }
    };
    pump(&ours, Duration::from_secs(20), &mut got, on, |g| {
        g.values().map(Vec::len).sum::<usize>() >= 3 * PER_QOS
    });
    // Anything late would be a duplicate.
    pump(&ours, Duration::from_millis(300), &mut got, on, |_| false);
    for q in 0..3u8 {
        assert_eq!(
            got.get(&q),
            Some(&want(q)),
            "our engine received at QoS {q}"
        );
    }
    let st = ours.stats();
    assert_eq!(st.received, 3 * PER_QOS as u64, "{st:?}");
    let _ = paho.disconnect(None);
    ours.disconnect(Duration::from_secs(2));
}
