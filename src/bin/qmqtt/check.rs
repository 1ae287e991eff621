//! `qmqtt check`: prove connectivity and TLS to a broker, step by step, and say exactly what failed and
//! which flag changes it. Drives one [`Conn`] and one [`Session`] by hand (no I/O thread) so that it can
//! report the TLS facts (version, suite, ALPN, the broker's chain) and the CONNACK of the same connection.
use std::ffi::OsString;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Poll, Token};
use qmqtt::codec::Protocol;
use qmqtt::error::{ConfigError, Error};
use qmqtt::session::{Event as SessionEvent, ServerInfo, Session, SessionConfig};
use qmqtt::transport::{der, tls_config, Conn, Endpoint, TlsInfo};

use crate::args::{Args, ConnOpts, UsageError};
use crate::util::{config_hint, hint};

pub const HELP: &str = "\
qmqtt check: connect to a broker and report TCP, TLS (version, cipher suite, certificate chain with
subjects and expiry, ALPN) and the MQTT CONNACK, or exactly why the connection failed and what to change.

Usage: qmqtt check -L mqtts://HOST:PORT [TLS flags] [-u USER -P PASS]
       qmqtt check -h HOST -p PORT [TLS flags] [-u USER -P PASS]
       [--proxy URL] shows the HTTP proxy's answer to CONNECT, a ws:// or wss:// URL the WebSocket upgrade;
       with --failover URI the brokers are tried in order and the one that answered is named.

  --timeout SECONDS    give up after SECONDS (default 10)
  --help               this help

Exit codes: 0 connected and accepted, 1 failed (the reason is printed), 2 bad command line.
";

struct CheckOpts {
    conn: ConnOpts,
    timeout: Duration,
}

fn parse(argv: Vec<OsString>) -> Result<Option<CheckOpts>, UsageError> {
    let mut a = Args::new("check", argv);
    let mut o = CheckOpts {
        conn: ConnOpts {
            clean: true,
            ..ConnOpts::default()
        },
        timeout: Duration::from_secs(10),
    };
    while let Some(f) = a.next_flag()? {
        match f.as_str() {
            "--help" => return Ok(None),
            "--timeout" => o.timeout = a.seconds(&f)?,
            _ => {
                if !o.conn.flag(&f, &mut a)? {
                    return Err(a.unknown(&f));
                }
            }
        }
    }
    o.conn.validate(&a)?;
    Ok(Some(o))
}

/// One failed step and why.
struct Failure {
    step: &'static str,
    why: Why,
}

enum Why {
    Config(ConfigError),
    Failed(Error),
    /// This command's own finding (no answer in time, the poller).
    Other(String),
}

impl Failure {
    fn what(&self) -> String {
        match &self.why {
            Why::Config(c) => c.to_string(),
            // The CLI's words for a close: what it most often means, in this command's flags.
            Why::Failed(Error::Closed {
                handshake: false, ..
            }) => "the broker closed the connection (during the TLS handshake this often means it \
                   requires a client certificate: --cert/--key; on a plain port: wrong port or protocol)"
                .into(),
            Why::Failed(e) => e.to_string(),
            Why::Other(m) => m.clone(),
        }
    }

    fn hint(&self) -> &'static str {
        match &self.why {
            Why::Config(c) => config_hint(c),
            Why::Failed(e) => hint(e),
            Why::Other(_) => "",
        }
    }
}

pub fn run(argv: Vec<OsString>) -> i32 {
    let o = match crate::args::options_or_exit(parse(argv), HELP) {
        Ok(o) => o,
        Err(code) => return code,
    };
    crate::util::init_logger(o.conn.debug);
    let uris = o.conn.uri();
    let list: Vec<&str> = uris.split(',').collect();
    let n = list.len();
    for (i, uri) in list.iter().enumerate() {
        if n > 1 {
            outln!("checking {uri} (broker {} of {n})", i + 1);
        } else {
            outln!("checking {uri}");
        }
        match check(&o, uri) {
            Ok(()) => {
                if n > 1 {
                    outln!(
                        "OK: {uri} (broker {} of {n}) answered and accepts MQTT connections with these \
                         settings",
                        i + 1
                    );
                } else {
                    outln!("OK: {uri} accepts MQTT connections with these settings");
                }
                return 0;
            }
            Err(f) => {
                outln!("FAILED at {}: {}", f.step, f.what());
                let h = f.hint();
                if !h.is_empty() {
                    outln!("  what to do: {h}");
                }
            }
        }
    }
    if n > 1 {
        outln!("FAILED: none of the {n} brokers answered");
    }
    1
}

fn check(o: &CheckOpts, uri: &str) -> Result<(), Failure> {
    let fail = |step: &'static str| {
        move |e: Error| Failure {
            step,
            why: Why::Failed(e),
        }
    };
    let config = |step: &'static str| {
        move |c: ConfigError| Failure {
            step,
            why: Why::Config(c),
        }
    };
    let other = |step: &'static str| {
        move |m: String| Failure {
            step,
            why: Why::Other(m),
        }
    };
    let ep = Endpoint::parse(uri).map_err(config("address"))?;
    let tls_opts = o.conn.tls_options();
    let tls = if ep.scheme.tls() {
        Some(tls_config(&tls_opts).map_err(config("TLS configuration"))?)
    } else {
        None
    };
    let env = |k: &str| std::env::var(k).ok();
    let p = o.conn.proxy.as_deref();
    let proxy = qmqtt::transport::proxy::select(p, p, ep.scheme.tls(), &ep.host, ep.port, &env)
        .map_err(|e| fail("proxy")(Error::Proxy(e)))?;
    if let Some(c) = &proxy {
        outln!("  through the HTTP proxy {} ({})", c.proxy, c.source);
    }
    let deadline = Instant::now() + o.timeout;
    let started = Instant::now();
    let mut conn = Conn::connect_via(&ep, proxy.as_ref(), tls.clone().map(|c| (c, &tls_opts)))
        .map_err(fail("TCP connect"))?;
    let mut poll = Poll::new().map_err(|e| other("setup")(format!("mio poll: {e}")))?;
    // Through the Conn, so that a fallback to the next resolved address is registered too.
    conn.register(poll.registry(), Token(0))
        .map_err(|e| other("setup")(format!("registering the socket: {e}")))?;
    let mut events = Events::with_capacity(8);

    let protocol = o.conn.protocol.unwrap_or(Protocol::V311);
    let mut session = Session::new(SessionConfig {
        client_id: o
            .conn
            .id
            .clone()
            .unwrap_or_else(|| format!("qmqtt-check-{}", std::process::id())),
        protocol,
        keep_alive: Duration::from_secs(u64::from(o.conn.keepalive.unwrap_or(60))),
        response_timeout: o.timeout,
        clean_session: true,
        username: o.conn.user.clone(),
        password: o.conn.pass.clone(),
        will: None,
        max_inflight: 1,
        max_packet_size: o.conn.max_packet_size.unwrap_or(1 << 20),
        mqtt5: o.conn.mqtt5.clone(),
    });
    let mut inbuf = Vec::with_capacity(16 << 10);
    let mut outbuf = Vec::with_capacity(1 << 10);
    let mut established = false;
    let step = |est: bool| {
        if !est && tls.is_some() {
            "TCP connect / TLS handshake"
        } else if !est {
            "TCP connect"
        } else {
            "MQTT CONNECT"
        }
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            let s = step(established);
            return Err(Failure {
                step: s,
                why: Why::Other(format!(
                    "no answer within {:?} ({}): is {}:{} the broker's {} port?",
                    o.timeout,
                    if established {
                        "no CONNACK"
                    } else {
                        "connection not established"
                    },
                    ep.host,
                    ep.port,
                    if tls.is_some() { "TLS" } else { "plain MQTT" }
                )),
            });
        }
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(other("setup")(format!("poll: {e}")));
            }
        }
        // Push and pull until nothing moves (mio is edge-triggered). A read error is reported after the
        // bytes before it were given to the session: a refusing broker sends CONNACK, then closes.
        conn.flush().map_err(fail(step(established)))?;
        let mut read_err = None;
        loop {
            match conn.read(&mut inbuf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        if !established && conn.is_established() {
            established = true;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            match conn.tls_info() {
                Some(info) => {
                    outln!(
                        "  TCP + TLS: connected to {}:{} ({}) in {ms:.1} ms",
                        ep.host,
                        ep.port,
                        conn.peer()
                    );
                    print_tls(&info);
                }
                None => outln!(
                    "  TCP: connected to {}:{} ({}) in {ms:.1} ms (plain, no TLS)",
                    ep.host,
                    ep.port,
                    conn.peer()
                ),
            }
            let hops = conn.hops();
            if let Some((p, status)) = &hops.proxy {
                outln!("  HTTP proxy: {p} answered CONNECT: {status}");
            }
            if let Some(ws) = &hops.websocket {
                outln!("  WebSocket: upgrade of {} answered: {ws}", ep.path);
            }
            session.handle_connected(Instant::now());
        }
        if !established {
            if let Some(e) = read_err {
                return Err(fail(step(established))(e));
            }
            continue;
        }
        if !inbuf.is_empty() {
            let r = session.handle_read(&inbuf, Instant::now());
            inbuf.clear();
            r.map_err(fail("MQTT CONNECT"))?;
        }
        session
            .handle_timeout(Instant::now())
            .map_err(fail("MQTT CONNECT"))?;
        while let Some(ev) = session.poll_event() {
            if let SessionEvent::Connected { session_present } = ev {
                outln!(
                    "  MQTT: CONNACK accepted ({}, session present: {}) after {:.1} ms",
                    match protocol {
                        Protocol::V31 => "MQTT 3.1",
                        Protocol::V311 => "MQTT 3.1.1",
                        Protocol::V5 => "MQTT 5",
                    },
                    if session_present { "yes" } else { "no" },
                    started.elapsed().as_secs_f64() * 1e3
                );
                if protocol == Protocol::V5 {
                    print_connack(session.server());
                }
                session.disconnect();
                outbuf.clear();
                session.poll_transmit(&mut outbuf);
                let _ = conn.write(&outbuf);
                let _ = conn.flush();
                return Ok(());
            }
        }
        if let Some(e) = read_err {
            return Err(fail("MQTT CONNECT")(e));
        }
        outbuf.clear();
        if session.poll_transmit(&mut outbuf) > 0 || !outbuf.is_empty() {
            conn.write(&outbuf).map_err(fail("MQTT CONNECT"))?;
            conn.flush().map_err(fail("MQTT CONNECT"))?;
        }
    }
}

/// Print what an MQTT 5 CONNACK said: the limits the broker sets and what it supports (its defaults when it
/// did not say), then what it assigned or told.
fn print_connack(i: &ServerInfo) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    outln!("  MQTT 5 CONNACK properties:");
    outln!("    receive maximum: {}", i.receive_maximum);
    match i.maximum_packet_size {
        Some(m) => outln!("    maximum packet size: {m} bytes"),
        None => outln!("    maximum packet size: not limited"),
    }
    outln!("    topic alias maximum: {}", i.topic_alias_maximum);
    outln!("    maximum QoS: {}", i.maximum_qos as u8);
    outln!("    retain available: {}", yes(i.retain_available));
    outln!(
        "    wildcard subscriptions: {}, subscription identifiers: {}, shared subscriptions: {}",
        yes(i.wildcard_subscription_available),
        yes(i.subscription_identifiers_available),
        yes(i.shared_subscription_available)
    );
    if let Some(k) = i.server_keep_alive {
        outln!("    server keep alive: {k} s");
    }
    if let Some(s) = i.session_expiry_interval {
        outln!("    session expiry interval: {s} s");
    }
    let texts = [
        ("assigned client identifier", &i.assigned_client_identifier),
        ("response information", &i.response_information),
        ("server reference", &i.server_reference),
        ("reason string", &i.reason_string),
    ];
    for (name, v) in texts {
        if let Some(v) = v {
            outln!("    {name}: {v}");
        }
    }
    for (k, v) in &i.user_properties {
        outln!("    user property: {k}: {v}");
    }
}

/// Print version, suite, ALPN and the broker's chain.
fn print_tls(info: &TlsInfo) {
    outln!("  TLS version: {}", pretty_version(&info.version));
    outln!("  cipher suite: {}", info.cipher_suite);
    match &info.alpn {
        Some(p) => outln!("  ALPN: {}", String::from_utf8_lossy(p)),
        None => outln!("  ALPN: none negotiated"),
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    outln!(
        "  certificate chain sent by the broker ({}):",
        info.peer_chain.len()
    );
    for (i, c) in info.peer_chain.iter().enumerate() {
        match der::summarize(c) {
            Some(s) => {
                let left = s.seconds_left(now);
                let when = if left < 0 {
                    format!("EXPIRED {} days ago", -left / 86400)
                } else {
                    format!("{} days left", left / 86400)
                };
                outln!("    [{i}] subject: {}", s.subject);
                outln!("        issuer:  {}", s.issuer);
                outln!("        expires: {} ({when})", s.not_after_str());
                if !s.alt_names.is_empty() {
                    outln!("        names:   {}", s.alt_names.join(", "));
                }
            }
            None => outln!(
                "    [{i}] ({} bytes, not a certificate this tool can read)",
                c.len()
            ),
        }
    }
}

/// `TLSv1.3` / `TLSv1.2` whatever the transport's spelling (rustls' Debug form is `TLSv1_3`).
fn pretty_version(v: &str) -> String {
    let n: String = v.chars().filter(char::is_ascii_digit).collect();
    match n.as_str() {
        "13" => "TLSv1.3".into(),
        "12" => "TLSv1.2".into(),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(pretty_version("TLSv1_3"), "TLSv1.3");
        assert_eq!(pretty_version("TLS 1.2"), "TLSv1.2");
        assert_eq!(pretty_version("odd"), "odd");
    }

    #[test]
    fn parse_flags() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let o = parse(a(&["-L", "mqtts://localhost:1234", "--cafile", "ca.pem"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.conn.uri(), "ssl://localhost:1234");
        let e = parse(a(&["-L"])).err().unwrap().0;
        assert!(e.contains("-L needs a value"), "{e}");
        assert!(parse(a(&["--help"])).unwrap().is_none());
    }
}
