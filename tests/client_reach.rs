//! Reaching the broker from where gateways sit (issue 12), end to end through `Client` and `qmqtt`, with
//! real components: a real HTTP proxy (tinyproxy) in front of mosquitto for `Config::http_proxy` /
//! `https_proxy` (plain and mutual TLS inside the tunnel, reconnects through the proxy again) and for KX's
//! environment rules (`qmqtt check` in a prepared environment); two mosquitto brokers as one service, the
//! first killed mid-stream (every numbered QoS 1 message reaches a subscriber on one of them); the CA and
//! the client certificate rotated on disk while the broker restarts with a new chain (the same `Client`
//! comes back), and a broken replacement that leaves the previous material in use.
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::hops::{Aedes, ProxyOptions, Tinyproxy};
use common::{free_port, qmqtt_cmd, slow, Broker, Certs, Sub};
use qmqtt::client::{Client, Config, Event};
use qmqtt::QoS;

/// Wait until `f` holds, polling `c`'s events (dropped) meanwhile; fail with `what` and the stats.
fn wait(c: &Client, what: &str, mut f: impl FnMut(&Client) -> bool) {
    let deadline = Instant::now() + slow(Duration::from_secs(20));
    while !f(c) {
        assert!(Instant::now() < deadline, "{what}: {:?}", c.stats());
        c.poll_events(1000, &mut |_| {});
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publish `n` QoS 1 messages on `topic` and wait until each is acknowledged.
fn publish_acked(c: &Client, topic: &str, n: usize) {
    let mut left: BTreeSet<_> = (0..n)
        .map(|i| {
            c.publish(topic, format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
                .unwrap()
        })
        .collect();
    await_acks(c, &mut left, Duration::from_secs(20));
}

/// Drain `c`'s events until every token in `left` is acknowledged; fail after `timeout` (scaled by `slow`).
fn await_acks(c: &Client, left: &mut BTreeSet<u64>, timeout: Duration) {
    let deadline = Instant::now() + slow(timeout);
    while !left.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} unacknowledged: {:?}",
            left.len(),
            c.stats()
        );
        c.poll_events(1000, &mut |e| {
            if let Event::Delivered { token, .. } = e {
                left.remove(&token);
            }
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mutual_tls(cfg: &mut Config, certs: &Certs) {
    cfg.tls.ca_file = Some(certs.ca.clone());
    cfg.tls.cert_file = Some(certs.client_cert.clone());
    cfg.tls.key_file = Some(certs.client_key.clone());
}

#[test]
fn http_and_https_proxy_options_and_reconnects_through_the_proxy() {
    let mut b = Broker::start();
    let p = Tinyproxy::start(ProxyOptions {
        auth: true,
        ..Default::default()
    });
    // Plain: httpProxy; httpsProxy is for TLS brokers only, so a bad one does not matter here.
    let mut k = Config::new(b.tcp_uri(), "reach-proxy-plain");
    k.http_proxy = Some(p.url());
    k.https_proxy = Some("http://127.0.0.1:1".into());
    let mut c = Client::connect(k).unwrap();
    c.wait_connected(slow(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    let before = p.connects();
    assert!(before >= 1, "no CONNECT in tinyproxy's log:\n{}", p.log());
    publish_acked(&c, "reach/proxy/plain", 10);
    // The broker restarts: the reconnect goes through the proxy again.
    b.restart();
    wait(&c, "no reconnect through the proxy", |c| {
        c.stats().reconnects >= 1 && c.stats().connected
    });
    assert!(p.connects() > before, "{}", p.log());
    let sub = Sub::start(&b, "reach/proxy/#", 1, &[]);
    publish_acked(&c, "reach/proxy/plain", 10);
    c.disconnect(Duration::from_secs(1));

    // Mutual TLS inside the tunnel: httpsProxy.
    let mut k = Config::new(b.mtls_uri(), "reach-proxy-tls");
    mutual_tls(&mut k, &b.certs);
    k.https_proxy = Some(p.url());
    k.http_proxy = Some("http://127.0.0.1:1".into());
    let mut c = Client::connect(k).unwrap();
    c.wait_connected(slow(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    publish_acked(&c, "reach/proxy/tls", 10);
    c.disconnect(Duration::from_secs(1));
    assert_eq!(sub.wait_for(20, slow(Duration::from_secs(10))), 20);

    // A wrong proxy password fails the connect with the proxy's status line, the password not shown.
    let mut k = Config::new(b.tcp_uri(), "reach-proxy-wrong");
    k.http_proxy = Some(p.url_as(common::hops::PROXY_USER, "not-it"));
    k.reconnect = false;
    let shown = format!("{k:?}");
    assert!(
        !shown.contains("not-it") && shown.contains(":***@"),
        "{shown}"
    );
    let c = Client::connect(k).unwrap();
    let e = c
        .wait_connected(slow(Duration::from_secs(10)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{}", p.port))
            && e.contains("HTTP/1")
            && !e.contains("not-it"),
        "{e}"
    );
}

/// `qmqtt check` in the environment `env` (nothing else inherited that names a proxy).
fn check(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = qmqtt_cmd();
    cmd.arg("check").args(args).args(["--timeout", "10"]);
    for v in [
        "PAHO_C_CLIENT_USE_HTTP_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "mqtt_http_proxy",
        "mqtt_https_proxy",
        "mqtt_no_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run qmqtt check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_shows_the_proxy_hop_and_kx_environment_rules() {
    let b = Broker::start();
    let p = Tinyproxy::start(ProxyOptions::default());
    let url = p.url();
    let hop = format!("HTTP proxy: the HTTP proxy 127.0.0.1:{}", p.port);
    let ca = b.certs.ca.to_str().unwrap();
    let tls = ["-L", &b.tls_uri(), "--cafile", ca];

    let (ok, out) = check(&["-L", &b.tcp_uri(), "--proxy", &url], &[]);
    assert!(ok && out.contains(&hop) && out.contains("200"), "{out}");
    let (ok, out) = check(&tls, &[("https_proxy", &url)]);
    assert!(
        ok && !out.contains("HTTP proxy"),
        "no PAHO flag, no proxy: {out}"
    );
    let on = ("PAHO_C_CLIENT_USE_HTTP_PROXY", "TRUE");
    let (ok, out) = check(&tls, &[on, ("https_proxy", &url)]);
    assert!(
        ok && out.contains(&hop) && out.contains("$https_proxy"),
        "{out}"
    );
    // mqtt_https_proxy overrides https_proxy (which points nowhere).
    let (ok, out) = check(
        &tls,
        &[
            on,
            ("https_proxy", "http://127.0.0.1:1"),
            ("mqtt_https_proxy", &url),
        ],
    );
    assert!(ok && out.contains("$mqtt_https_proxy"), "{out}");
    // A blank mqtt_https_proxy unsets https_proxy.
    let (ok, out) = check(
        &tls,
        &[
            on,
            ("https_proxy", "http://127.0.0.1:1"),
            ("mqtt_https_proxy", ""),
        ],
    );
    assert!(ok && !out.contains("HTTP proxy"), "{out}");
    // no_proxy matches the broker: direct; mqtt_no_proxy overrides it.
    let (ok, out) = check(
        &tls,
        &[
            on,
            ("https_proxy", "http://127.0.0.1:1"),
            ("no_proxy", "localhost"),
        ],
    );
    assert!(ok && !out.contains("HTTP proxy"), "{out}");
    let (ok, out) = check(
        &tls,
        &[
            on,
            ("https_proxy", &url),
            ("no_proxy", "localhost"),
            ("mqtt_no_proxy", "elsewhere"),
        ],
    );
    assert!(ok && out.contains(&hop), "{out}");
    // Plain brokers use http_proxy, not https_proxy.
    let (ok, out) = check(&["-L", &b.tcp_uri()], &[on, ("http_proxy", &url)]);
    assert!(ok && out.contains("$http_proxy"), "{out}");
    // A proxy that is not there is named with where it was set.
    let (ok, out) = check(
        &["-L", &b.tcp_uri()],
        &[on, ("mqtt_http_proxy", "http://127.0.0.1:1")],
    );
    assert!(
        !ok && out.contains("127.0.0.1:1") && out.contains("$mqtt_http_proxy"),
        "{out}"
    );
}

#[test]
fn check_shows_the_websocket_upgrade_and_which_broker_answered() {
    let a = Aedes::start();
    let (ok, out) = check(&["-L", &a.ws_uri()], &[]);
    assert!(
        ok && out.contains("WebSocket: upgrade of /mqtt answered: HTTP/1.1 101"),
        "{out}"
    );
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    let (ok, out) = check(&["-L", &dead, "--failover", &a.ws_uri()], &[]);
    assert!(
        ok && out.contains("(broker 2 of 2) answered") && out.contains("FAILED at TCP connect"),
        "{out}"
    );
    let (ok, out) = check(&["-L", &dead, "--failover", &dead], &[]);
    assert!(
        !ok && out.contains("none of the 2 brokers answered"),
        "{out}"
    );
}

#[test]
fn several_brokers_the_first_killed_mid_stream_loses_nothing() {
    let mut a = Broker::start();
    let b = Broker::start();
    let sub_a = Sub::start(&a, "reach/ha", 1, &[]);
    let sub_b = Sub::start(&b, "reach/ha", 1, &[]);
    // One service, two brokers: the client stays with the first while it answers.
    let mut k = Config::new(format!("{},{}", a.tcp_uri(), b.tcp_uri()), "reach-ha");
    k.clean_session = false;
    k.max_inflight = 20;
    let c = Client::connect(k).unwrap();
    c.wait_connected(slow(Duration::from_secs(10))).unwrap();
    let first = format!("tcp://127.0.0.1:{}", a.tcp_port);
    assert_eq!(c.stats().broker.as_deref(), Some(first.as_str()));

    const N: usize = 2000;
    let mut tokens = BTreeSet::new();
    let mut seq_of = std::collections::HashMap::new();
    let mut delivered = BTreeSet::new();
    // Acknowledged by the first broker and not at its subscriber when it was killed: the broker's loss.
    let mut broker_lost = BTreeSet::new();
    let mut killed = false;
    for i in 0..N {
        let t = c
            .publish(
                "reach/ha",
                format!("{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        tokens.insert(t);
        seq_of.insert(t, i);
        if i % 10 == 9 {
            c.poll_events(1000, &mut |e| {
                if let Event::Delivered { token, .. } = e {
                    tokens.remove(&token);
                    delivered.insert(token);
                }
            });
            std::thread::sleep(Duration::from_millis(2));
        }
        if !killed && sub_a.lines.lock().unwrap().len() >= N / 4 {
            a.kill();
            killed = true;
            // Every acknowledgement from the first broker is in the events before the loss (they keep
            // their order); its subscriber gets nothing more once its output has settled.
            let mut lost = false;
            let deadline = Instant::now() + slow(Duration::from_secs(10));
            while !lost {
                assert!(Instant::now() < deadline, "the kill was not noticed");
                c.poll_events(1000, &mut |e| match e {
                    Event::Delivered { token, .. } => {
                        tokens.remove(&token);
                        delivered.insert(token);
                    }
                    Event::ConnectionLost { .. } => lost = true,
                    _ => {}
                });
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(300));
            let at_a: BTreeSet<usize> = sub_a
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| l.parse().ok())
                .collect();
            broker_lost = delivered
                .iter()
                .map(|t| seq_of[t])
                .filter(|i| !at_a.contains(i))
                .collect();
        }
    }
    assert!(killed, "the first broker was never killed: {:?}", c.stats());
    await_acks(&c, &mut tokens, Duration::from_secs(30));
    let s = c.stats();
    let second = format!("tcp://127.0.0.1:{}", b.tcp_port);
    assert_eq!(s.broker.as_deref(), Some(second.as_str()), "{s:?}");
    assert!(s.reconnects >= 1 && s.connected, "{s:?}");
    eprintln!(
        "several brokers: {} acknowledged by the killed broker before it passed them on",
        broker_lost.len()
    );
    let want: BTreeSet<usize> = (0..N).filter(|i| !broker_lost.contains(i)).collect();
    let deadline = Instant::now() + slow(Duration::from_secs(10));
    loop {
        let got: BTreeSet<usize> = sub_a
            .lines
            .lock()
            .unwrap()
            .iter()
            .chain(sub_b.lines.lock().unwrap().iter())
            .filter_map(|l| l.parse().ok())
            .collect();
        if got.is_superset(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            want.difference(&got).take(20).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !sub_b.lines.lock().unwrap().is_empty(),
        "nothing went to the second broker"
    );
}

/// Replace `dst` the way rotation tools do: write a new file beside it and rename it over.
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[test]
fn rotated_ca_and_client_certificate_are_read_again_at_reconnect() {
    let mut b = Broker::start();
    // The client's own copies of its files.
    let mine = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        mine.path().join("ca.pem"),
        mine.path().join("client.pem"),
        mine.path().join("client.key"),
    );
    for (s, d) in [
        (&b.certs.ca, &ca),
        (&b.certs.client_cert, &cert),
        (&b.certs.client_key, &key),
    ] {
        std::fs::copy(s, d).unwrap();
    }
    let mut k = Config::new(b.mtls_uri(), "reach-rotate");
    k.tls.ca_file = Some(ca.clone());
    k.tls.cert_file = Some(cert.clone());
    k.tls.key_file = Some(key.clone());
    let mut c = Client::connect(k).unwrap();
    c.wait_connected(slow(Duration::from_secs(10))).unwrap();
    publish_acked(&c, "reach/rotate", 5);

    // A new CA: the broker's chain and the client's certificate and CA all change.
    let next = tempfile::tempdir().unwrap();
    let new = Certs::generate(next.path());
    for (s, d) in [
        (&new.ca, &b.certs.ca),
        (&new.server_cert, &b.certs.server_cert),
        (&new.server_key, &b.certs.server_key),
        (&new.ca, &ca),
        (&new.client_cert, &cert),
        (&new.client_key, &key),
    ] {
        replace(s, d);
    }
    b.restart();
    wait(&c, "no reconnect with the new chain", |c| {
        c.stats().reconnects >= 1 && c.stats().connected
    });
    publish_acked(&c, "reach/rotate", 5);

    // A broken replacement (not PEM) keeps what is in use: the restarted broker is reached again.
    std::fs::write(cert.with_extension("new"), "not a certificate\n").unwrap();
    std::fs::rename(cert.with_extension("new"), &cert).unwrap();
    b.restart();
    wait(&c, "no reconnect with the previous material", |c| {
        c.stats().reconnects >= 2 && c.stats().connected
    });
    publish_acked(&c, "reach/rotate", 5);
    c.disconnect(Duration::from_secs(1));
}

#[test]
fn without_rotation_the_new_chain_is_refused() {
    // The control for the test above: a client whose files were not replaced cannot reach the new chain.
    let mut b = Broker::start();
    let mut k = Config::new(b.mtls_uri(), "reach-norotate");
    let mine = tempfile::tempdir().unwrap();
    let old = Certs::generate(mine.path());
    // The broker's certificates, copied: the client keeps these.
    for (s, d) in [
        (&b.certs.ca, &old.ca),
        (&b.certs.client_cert, &old.client_cert),
        (&b.certs.client_key, &old.client_key),
    ] {
        std::fs::copy(s, d).unwrap();
    }
    mutual_tls(&mut k, &old);
    k.backoff_max = Duration::from_secs(1);
    let c = Client::connect(k).unwrap();
    c.wait_connected(slow(Duration::from_secs(10))).unwrap();
    let next = tempfile::tempdir().unwrap();
    let new = Certs::generate(next.path());
    for (s, d) in [
        (&new.ca, &b.certs.ca),
        (&new.server_cert, &b.certs.server_cert),
        (&new.server_key, &b.certs.server_key),
    ] {
        replace(s, d);
    }
    b.restart();
    wait(&c, "the old CA was not refused", |c| {
        let s = c.stats();
        !s.connected && matches!(&s.last_error, Some(qmqtt::Error::Tls(_)))
    });
}

#[test]
fn qmqtt_pub_through_the_proxy_and_to_the_broker_that_answers() {
    let b = Broker::start();
    let p = Tinyproxy::start(ProxyOptions::default());
    let sub = Sub::start(&b, "reach/cli/#", 1, &[]);
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    let before = p.connects();
    let out = common::qmqtt_run(
        &[
            "pub",
            "-L",
            &dead,
            "--failover",
            &b.tcp_uri(),
            "--proxy",
            &p.url(),
            "-t",
            "reach/cli/x",
            "-q",
            "1",
            "-m",
            "via",
        ],
        b"",
        slow(Duration::from_secs(30)),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sub.wait_for(1, slow(Duration::from_secs(10))), 1);
    assert_eq!(sub.take(), ["via"]);
    // Both brokers were asked for through the proxy: the dead one (refused) and the one that answered.
    assert_eq!(p.connects(), before + 2, "{}", p.log());
}
