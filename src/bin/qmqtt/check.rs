//! `qmqtt check`: prove connectivity and TLS to a broker, step by step, and say exactly what failed and
//! which flag changes it. Drives one [`Conn`] and one [`Session`] by hand (no I/O thread) so that it can
//! report the TLS facts (version, suite, ALPN, the broker's chain) and the CONNACK of the same connection.
use std::ffi::OsString;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Poll, Token};
use qmqtt::codec::Protocol;
use qmqtt::session::{Event as SessionEvent, Session, SessionConfig, SessionError};
use qmqtt::transport::{tls_config, Conn, Endpoint, TlsInfo, TransportError};

use crate::args::{Args, ConnOpts, UsageError};
use crate::der;
use crate::util::hint;

pub const HELP: &str = "\
qmqtt check: connect to a broker and report TCP, TLS (version, cipher suite, certificate chain with
subjects and expiry, ALPN) and the MQTT CONNACK, or exactly why the connection failed and what to change.

Usage: qmqtt check -L mqtts://HOST:PORT [TLS flags] [-u USER -P PASS]
       qmqtt check -h HOST -p PORT [TLS flags] [-u USER -P PASS]

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

/// One failed step: what, and the advice.
struct Failure {
    step: &'static str,
    what: String,
}

pub fn run(argv: Vec<OsString>) -> i32 {
    let o = match crate::args::options_or_exit(parse(argv), HELP) {
        Ok(o) => o,
        Err(code) => return code,
    };
    crate::util::init_logger(o.conn.debug);
    let uri = o.conn.uri();
    outln!("checking {uri}");
    match check(&o, &uri) {
        Ok(()) => {
            outln!("OK: {uri} accepts MQTT connections with these settings");
            0
        }
        Err(f) => {
            outln!("FAILED at {}: {}", f.step, f.what);
            let h = hint(&f.what);
            if !h.is_empty() {
                outln!("  what to do: {h}");
            }
            1
        }
    }
}

fn check(o: &CheckOpts, uri: &str) -> Result<(), Failure> {
    let fail = |step: &'static str| move |what: String| Failure { step, what };
    let ep = Endpoint::parse(uri).map_err(|e| fail("address")(transport_text(&e)))?;
    let tls_opts = o.conn.tls_options();
    let tls = if o.conn.tls() {
        let cfg =
            tls_config(&tls_opts).map_err(|e| fail("TLS configuration")(transport_text(&e)))?;
        Some(cfg)
    } else {
        None
    };
    let deadline = Instant::now() + o.timeout;
    let started = Instant::now();
    let mut conn = Conn::connect(&ep, tls.clone().map(|c| (c, &tls_opts)))
        .map_err(|e| fail("TCP connect")(transport_text(&e)))?;
    let mut poll = Poll::new().map_err(|e| fail("setup")(format!("mio poll: {e}")))?;
    // Through the Conn, so that a fallback to the next resolved address is registered too.
    conn.register(poll.registry(), Token(0))
        .map_err(|e| fail("setup")(format!("registering the socket: {e}")))?;
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
        max_packet_size: 1 << 20,
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
                what: format!(
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
                ),
            });
        }
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(fail("setup")(format!("poll: {e}")));
            }
        }
        // Push and pull until nothing moves (mio is edge-triggered). A read error is reported after the
        // bytes before it were given to the session: a refusing broker sends CONNACK, then closes.
        conn.flush()
            .map_err(|e| fail(step(established))(transport_text(&e)))?;
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
            session.handle_connected(Instant::now());
        }
        if !established {
            if let Some(e) = read_err {
                return Err(fail(step(established))(transport_text(&e)));
            }
            continue;
        }
        if !inbuf.is_empty() {
            let r = session.handle_read(&inbuf, Instant::now());
            inbuf.clear();
            r.map_err(|e| fail("MQTT CONNECT")(session_text(&e)))?;
        }
        session
            .handle_timeout(Instant::now())
            .map_err(|e| fail("MQTT CONNECT")(session_text(&e)))?;
        while let Some(ev) = session.poll_event() {
            if let SessionEvent::Connected { session_present } = ev {
                outln!(
                    "  MQTT: CONNACK accepted ({}, session present: {}) after {:.1} ms",
                    if protocol == Protocol::V31 {
                        "MQTT 3.1"
                    } else {
                        "MQTT 3.1.1"
                    },
                    if session_present { "yes" } else { "no" },
                    started.elapsed().as_secs_f64() * 1e3
                );
                session.disconnect();
                outbuf.clear();
                session.poll_transmit(&mut outbuf);
                let _ = conn.write(&outbuf);
                let _ = conn.flush();
                return Ok(());
            }
        }
        if let Some(e) = read_err {
            return Err(fail("MQTT CONNECT")(transport_text(&e)));
        }
        outbuf.clear();
        if session.poll_transmit(&mut outbuf) > 0 || !outbuf.is_empty() {
            conn.write(&outbuf)
                .map_err(|e| fail("MQTT CONNECT")(transport_text(&e)))?;
            conn.flush()
                .map_err(|e| fail("MQTT CONNECT")(transport_text(&e)))?;
        }
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

/// The transport's own words (they say what to change in option terms; the hint adds our flags).
fn transport_text(e: &TransportError) -> String {
    match e {
        TransportError::Uri(m) | TransportError::Config(m) => m.clone(),
        TransportError::Io(err, m) => {
            if m.is_empty() {
                err.to_string()
            } else {
                format!("{m} ({err})")
            }
        }
        TransportError::Tls(err, m) => {
            if m.is_empty() {
                err.to_string()
            } else {
                format!("{m} ({err:?})")
            }
        }
        TransportError::Closed => "the broker closed the connection (during the TLS handshake this often \
            means it requires a client certificate: --cert/--key; on a plain port: wrong port or protocol)"
            .into(),
    }
}

fn session_text(e: &SessionError) -> String {
    match e {
        SessionError::Refused(code) => format!("the broker refused the connection: {code:?}"),
        SessionError::Protocol(m) => format!("not MQTT from the broker: {m}"),
        other => other.to_string(),
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
