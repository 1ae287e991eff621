//! `qmqtt sub`: subscribe and print payloads one per line (`-v`: `topic payload`), like mosquitto_sub.
//! `-C N` exits after N messages; `-W S` exits with code 27 after S seconds (as mosquitto_sub); `-F FORMAT`
//! prints each message as mosquitto_sub's format says, MQTT 5 properties included ([`crate::format`]).
//! The engine reconnects on its own and re-subscribes (or resumes the session with `-c`).
use std::ffi::OsString;
use std::io::Write;
use std::time::{Duration, Instant};

use qmqtt::{Event, QoS};

use crate::args::{Args, ConnOpts, UsageError};
use crate::util::{describe_connect_error, left, wait_readable, FirstConnect, Started};

pub const HELP: &str = "\
qmqtt sub: subscribe and print messages (flags as mosquitto_sub)

Usage: qmqtt sub [connection] -t FILTER [-t FILTER…] [options]

  -t FILTER            topic filter to subscribe to (repeatable; + and # allowed)
  -q 0|1|2             QoS to subscribe with (default 0)
  -C COUNT             exit after COUNT messages
  -W SECONDS           exit after SECONDS (counted from the connection); exit code 27
  -v                   print 'topic payload' instead of just the payload
  -F FORMAT            print each message as FORMAT says (mosquitto_sub's codes): %t topic, %p payload,
                       %q QoS, %r retain, %l length, %x/%X hex payload; MQTT 5 properties (-V 5): %E message
                       expiry, %C content type, %D correlation data, %F payload format, %R response topic,
                       %P user properties (name:value …), %S subscription ids; %% and \n \t \\ escapes
  -N                   no newline after each payload
  -c                   no clean session: resume the broker's session for -i ID (needs -i)
  --max-message-size BYTES
                       largest message taken (default 1048576); a bigger one is acknowledged,
                       discarded and reported on stderr, and the connection stays up
  --help               this help

Exit codes: 0 done (also on SIGINT/SIGTERM: disconnects cleanly), 1 connection error, 2 bad command
line, 27 -W timeout.
";

/// mosquitto_sub's exit code when `-W` ends it.
pub const TIMEOUT_EXIT: i32 = 27;

#[derive(Debug)]
struct SubOpts {
    conn: ConnOpts,
    topics: Vec<String>,
    qos: QoS,
    count: Option<u64>,
    timeout: Option<Duration>,
    verbose: bool,
    newline: bool,
    /// `-F FORMAT`.
    format: Option<String>,
    max_message: Option<usize>,
}

fn parse(argv: Vec<OsString>) -> Result<Option<SubOpts>, UsageError> {
    let mut a = Args::new("sub", argv);
    let mut conn = ConnOpts {
        clean: true,
        ..ConnOpts::default()
    };
    let mut o = SubOpts {
        conn: ConnOpts::default(),
        topics: Vec::new(),
        qos: QoS::AtMostOnce,
        count: None,
        timeout: None,
        verbose: false,
        newline: true,
        format: None,
        max_message: None,
    };
    while let Some(f) = a.next_flag()? {
        match f.as_str() {
            "--help" => return Ok(None),
            "-t" | "--topic" => {
                let t = a.value(&f)?;
                if t.is_empty() || t.contains('\0') {
                    return Err(a.err(format!("{f}: a topic filter must be non-empty")));
                }
                o.topics.push(t)
            }
            "-q" | "--qos" => o.qos = a.qos(&f)?,
            "-C" | "--count" => {
                let n: u64 = a.number(&f)?;
                if n == 0 {
                    return Err(a.err(format!("{f} must be at least 1")));
                }
                o.count = Some(n)
            }
            "-W" | "--timeout" => {
                let s = a.seconds(&f)?;
                if s.is_zero() {
                    return Err(a.err(format!("{f} must be more than 0")));
                }
                o.timeout = Some(s)
            }
            "-v" | "--verbose" => o.verbose = true,
            "-F" => {
                let f = a.value(&f)?;
                crate::format::check(&f).map_err(|m| a.err(format!("-F '{f}': {m}")))?;
                o.format = Some(f)
            }
            "--max-message-size" => {
                let n: usize = a.number(&f)?;
                if !(1024..=256 << 20).contains(&n) {
                    return Err(a.err(format!("{f} must be 1024 to 268435456 bytes")));
                }
                o.max_message = Some(n)
            }
            "-N" => o.newline = false,
            "-c" | "--disable-clean-session" => conn.clean = false,
            _ => {
                if !conn.flag(&f, &mut a)? {
                    return Err(a.unknown(&f));
                }
            }
        }
    }
    conn.validate(&a)?;
    if let Some(t) = conn.url_topic.clone() {
        o.topics.push(t);
    }
    if o.topics.is_empty() {
        return Err(a.err("no topic: give -t FILTER (or a topic in -L)".into()));
    }
    o.conn = conn;
    Ok(Some(o))
}

pub fn run(argv: Vec<OsString>) -> i32 {
    let o = match crate::args::options_or_exit(parse(argv), HELP) {
        Ok(o) => o,
        Err(code) => return code,
    };
    crate::util::init_logger(o.conn.debug);
    let mut cfg = o.conn.config(&format!("qmqtt-sub-{}", std::process::id()));
    if let Some(m) = o.max_message {
        cfg.max_packet_size = m;
        cfg.event_queue_bytes = cfg.event_queue_bytes.max(m + (64 << 10));
    }
    let Started {
        mut client,
        sig,
        uri,
        wait,
    } = match crate::util::start_client("sub", cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match crate::util::wait_first_connection(&client, wait, &sig) {
        Ok(()) => {}
        Err(FirstConnect::Failed(e)) => {
            errln!("qmqtt sub: {}", describe_connect_error(&uri, &e));
            client.disconnect(Duration::ZERO);
            return 1;
        }
        Err(FirstConnect::Interrupted) => {
            errln!("qmqtt sub: interrupted while connecting to {uri}");
            client.disconnect(Duration::ZERO);
            return 130;
        }
    }
    for t in &o.topics {
        if let Err(e) = client.subscribe(t, o.qos) {
            errln!(
                "qmqtt sub: cannot subscribe to '{t}': {}",
                crate::util::with_hint(e.to_string(), crate::util::client_hint(&e))
            );
            client.disconnect(Duration::ZERO);
            return 1;
        }
    }
    let deadline = o.timeout.map(|d| Instant::now() + d);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let mut received = 0u64;
    let mut write_err: Option<std::io::Error> = None;
    let mut last_check = Instant::now();
    let mut dropped = 0u64;
    let done = |n: u64| o.count.is_some_and(|c| n >= c);
    let code = loop {
        client.poll_events(1024, &mut |ev| match ev {
            Event::Message {
                topic,
                payload,
                qos,
                retain,
                properties,
            } => {
                if done(received) || write_err.is_some() {
                    return;
                }
                received += 1;
                let r = (|| {
                    if let Some(f) = &o.format {
                        let m = crate::format::Message {
                            topic,
                            payload,
                            qos,
                            retain,
                            properties,
                        };
                        crate::format::write(&mut out, f.as_bytes(), &m)?;
                    } else {
                        if o.verbose {
                            out.write_all(topic.as_bytes())?;
                            out.write_all(b" ")?;
                        }
                        out.write_all(payload)?;
                    }
                    if o.newline {
                        out.write_all(b"\n")?;
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    write_err = Some(e);
                }
            }
            Event::Subscribed { filter, granted } => match granted {
                None => errln!(
                    "qmqtt sub: the broker refused the subscription to '{filter}' (check its ACL)"
                ),
                Some(q) => log::info!("subscribed to '{filter}' with QoS {}", q as u8),
            },
            Event::ConnectionLost { cause } => log::warn!("connection lost: {cause}"),
            Event::Reconnecting { delay, attempt } => {
                log::info!("reconnecting in {delay:?} (attempt {attempt})")
            }
            Event::Connected { session_present } => {
                log::info!("connected (session present: {session_present})")
            }
            _ => {}
        });
        if write_err.is_none() {
            if let Err(e) = out.flush() {
                write_err = Some(e);
            }
        }
        if let Some(e) = &write_err {
            // A closed pipe (| head) is a normal way to stop.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                errln!("qmqtt sub: writing stdout: {e}");
                break 1;
            }
            break 0;
        }
        if done(received) {
            break 0;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let d = client.stats().dropped_incoming;
            if d > dropped {
                log::warn!(
                    "{} incoming message(s) dropped so far: each was larger than the client's event \
                     queue (4 MiB) can ever hold (a merely slow reader makes the broker wait instead)",
                    d
                );
                dropped = d;
            }
        }
        let l = left(deadline);
        if l == Some(Duration::ZERO) {
            break TIMEOUT_EXIT;
        }
        let step = Duration::from_secs(1);
        let [_, s] = wait_readable(
            [client.event_fd(), sig.fd()],
            Some(l.map_or(step, |l| l.min(step))),
        );
        if s && sig.take() {
            break 0;
        }
    };
    drop(out);
    client.disconnect(Duration::from_secs(1));
    if code == TIMEOUT_EXIT {
        errln!(
            "qmqtt sub: timed out after -W {}s",
            o.timeout.unwrap_or_default().as_secs_f64()
        );
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parse_errors() {
        let e = parse(args(&["-q", "1"])).unwrap_err().0;
        assert!(e.contains("no topic"), "{e}");
        let e = parse(args(&["-t", "a", "-C", "x"])).unwrap_err().0;
        assert_eq!(
            e,
            "qmqtt sub: bad number for -C: 'x' (see qmqtt sub --help)"
        );
        let e = parse(args(&["-t", "a", "-W"])).unwrap_err().0;
        assert!(e.contains("-W needs a value"), "{e}");
        let e = parse(args(&["-t", "a", "-c"])).unwrap_err().0;
        assert!(e.contains("-c needs"), "{e}");
        let o = parse(args(&[
            "-t", "a", "-t", "b/#", "-c", "-i", "x", "-v", "-C", "3",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.topics, vec!["a", "b/#"]);
        assert!(!o.conn.clean && o.verbose && o.count == Some(3));
    }
}
