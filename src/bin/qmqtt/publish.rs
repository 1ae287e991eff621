//! `qmqtt pub`: publish one message, stdin, stdin line by line, or a synthetic benchmark stream.
//!
//! `-l` keeps going across broker restarts and network cuts (the engine queues, reconnects and resends).
//! When the publish queue is full it never drops a line: it waits on the client's event fd (level-triggered,
//! readable while events wait), drains the events and retries. At the end of input it waits until every
//! QoS 1/2 message is acknowledged, or until `--drain-timeout`, and prints one summary line on stderr.
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use qmqtt::{Client, Event, PublishError, QoS};

use crate::args::{Args, ConnOpts, UsageError};
use crate::util::{describe_connect_error, left, wait_readable, FirstConnect, Signals, Started};

pub const HELP: &str = "\
qmqtt pub: publish MQTT messages (flags as mosquitto_pub)

Usage: qmqtt pub [connection] -t TOPIC (-m MSG | -f FILE | -l | -s | -n) [options]

Message:
  -t TOPIC             topic to publish to (or the topic part of -L)
  -m MSG               one message
  -f FILE              the whole file as one message
  -s                   the whole of stdin as one message
  -l                   every line of stdin as its own message (newline removed); survives broker
                       restarts and network cuts, never drops a line when the queue is full
  -n                   one empty (zero-length) message
  -q 0|1|2             QoS (default 0)
  -r                   retain
  --repeat N           publish the message N times (with --size and no message: synthetic payloads)
  --size BYTES         synthetic payload size for --repeat (each starts with its number, then 'x's)
Delivery:
  --drain-timeout S    at the end, wait at most S seconds for QoS 1/2 acknowledgements (default: no
                       limit); messages still unacknowledged make the exit code 3
  --queue-bytes N      publish queue bound in bytes (default 4194304)
  --max-inflight N     QoS 1/2 messages in flight at once (default 100)
  --linger SECONDS     let the engine collect a burst for up to this long before sending (default 0)
  --spool DIR          store-and-forward: what the queue cannot hold while the broker is unreachable goes
                       to a disk spool in DIR, sent in order once it is back (also by the next run on DIR);
                       the first connection may fail (the engine keeps trying)
  --spool-bytes N      disk bound of the spool in bytes (default 67108864; oldest dropped beyond it)
  -c                   no clean session (keep the session on the broker; needs -i)
  --help               this help

On exit one line on stderr: sent=N acked=N dropped=N reconnects=N (sent: handed to the engine;
acked: QoS 1/2 acknowledged by the broker; dropped: dropped by the engine's queue policy), then
unacked=N if some were never acknowledged, failed=N if MQTT 5 reported some not delivered (refused by
the broker, or larger than its Maximum Packet Size; each is named on stderr), full_waits=N if the queue was full that often (and waited),
with --spool spooled=N (left in the spool) and backlog_delivered=N (previous runs' spooled messages
delivered by this one; sent/acked count this run's messages only), and with --repeat the elapsed time
and rate.
Exit codes: 0 done (every QoS 1/2 message of this run acknowledged), 1 connection or runtime error or messages failed, 2 bad command line, 3 not all acknowledged,
130 interrupted (SIGINT/SIGTERM: input stops, acknowledgements are awaited for --drain-timeout or 5 s,
a second interrupt quits at once; the summary line is printed either way).
";

/// Where the payload comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Message(Vec<u8>),
    File(OsString),
    Stdin,
    Lines,
    Null,
}

#[derive(Debug)]
struct PubOpts {
    conn: ConnOpts,
    topic: String,
    source: Source,
    qos: QoS,
    retain: bool,
    drain_timeout: Option<Duration>,
    repeat: u64,
    size: Option<usize>,
    linger: Option<Duration>,
    spool: Option<qmqtt::spool::SpoolConfig>,
}

fn parse(argv: Vec<OsString>) -> Result<Option<PubOpts>, UsageError> {
    let mut a = Args::new("pub", argv);
    let mut conn = ConnOpts {
        clean: true,
        ..ConnOpts::default()
    };
    let mut topic = None;
    let mut source: Option<Source> = None;
    let mut qos = QoS::AtMostOnce;
    let mut retain = false;
    let mut drain_timeout = None;
    let mut repeat = None;
    let mut size = None;
    let mut linger = None;
    let mut spool = None;
    let mut spool_bytes: Option<u64> = None;
    let mut set_source = |a: &Args, flag: &str, s: Source| -> Result<(), UsageError> {
        if source.is_some() {
            return Err(a.err(format!(
                "{flag}: only one of -m, -f, -l, -s, -n may be given"
            )));
        }
        source = Some(s);
        Ok(())
    };
    while let Some(f) = a.next_flag()? {
        match f.as_str() {
            "--help" => return Ok(None),
            "-t" | "--topic" => topic = Some(a.value(&f)?),
            "-m" | "--message" => {
                let m = a.value_bytes(&f)?;
                set_source(&a, &f, Source::Message(m))?
            }
            "-f" | "--file" => {
                let p = a.value_os(&f)?;
                set_source(&a, &f, Source::File(p))?
            }
            "-s" | "--stdin-file" => set_source(&a, &f, Source::Stdin)?,
            "-l" | "--stdin-line" => set_source(&a, &f, Source::Lines)?,
            "-n" | "--null-message" => set_source(&a, &f, Source::Null)?,
            "-q" | "--qos" => qos = a.qos(&f)?,
            "-r" | "--retain" => retain = true,
            "-c" | "--disable-clean-session" => conn.clean = false,
            "--drain-timeout" => drain_timeout = Some(a.seconds(&f)?),
            "--repeat" => repeat = Some(a.number::<u64>(&f)?),
            // u64, so that a size too large for a 32-bit machine is said to be too large, not a bad number.
            "--size" => size = Some(a.number::<u64>(&f)?),
            "--queue-bytes" => conn.queue_bytes = Some(a.number(&f)?),
            "--linger" => linger = Some(a.seconds(&f)?),
            "--spool" => spool = Some(qmqtt::spool::SpoolConfig::new(a.value_os(&f)?)),
            "--spool-bytes" => spool_bytes = Some(a.number(&f)?),
            "--max-inflight" => {
                let n: u16 = a.number(&f)?;
                if n == 0 {
                    return Err(a.err(format!("{f} must be at least 1")));
                }
                conn.max_inflight = Some(n)
            }
            _ => {
                if !conn.flag(&f, &mut a)? {
                    return Err(a.unknown(&f));
                }
            }
        }
    }
    conn.validate(&a)?;
    let Some(topic) = topic.or_else(|| conn.url_topic.clone()) else {
        return Err(a.err("no topic: give -t TOPIC (or a topic in -L)".into()));
    };
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(a.err(format!(
            "-t '{topic}': a topic to publish to must be non-empty, without + or #"
        )));
    }
    if let Some(n) = size.filter(|&n| n > MAX_MESSAGE as u64) {
        return Err(a.err(format!(
            "--size {n}: larger than the largest MQTT message ({MAX_MESSAGE} bytes)"
        )));
    }
    let size = size.map(|n| n as usize); // at most MAX_MESSAGE now
    let source =
        match (source, size) {
            (Some(s), _) => s,
            (None, Some(n)) if repeat.is_some() => Source::Message(vec![b'x'; n]),
            (None, _) => return Err(a.err(
                "nothing to publish: give -m MSG, -f FILE, -l, -s, -n or --repeat N --size BYTES"
                    .into(),
            )),
        };
    if (repeat.is_some() || size.is_some()) && matches!(source, Source::Lines) {
        return Err(a.err("--repeat/--size do not go with -l".into()));
    }
    if size.is_some() && repeat.is_none() {
        return Err(a.err("--size goes with --repeat N".into()));
    }
    match (&mut spool, spool_bytes) {
        (None, Some(_)) => return Err(a.err("--spool-bytes goes with --spool DIR".into())),
        (Some(sc), Some(n)) => {
            // Segments (the unit of deletion) of a quarter of the budget, at most the default 4 MiB.
            sc.budget_bytes = n;
            sc.segment_bytes = (n / 4).clamp(qmqtt::spool::MIN_SEGMENT_BYTES, sc.segment_bytes);
        }
        _ => {}
    }
    if repeat == Some(0) {
        return Err(a.err("--repeat must be at least 1".into()));
    }
    Ok(Some(PubOpts {
        conn,
        topic,
        source,
        qos,
        retain,
        drain_timeout,
        repeat: repeat.unwrap_or(1),
        size,
        linger,
        spool,
    }))
}

/// What happened, counted from the events this command saw.
#[derive(Default)]
struct Tally {
    /// Accepted by `Client::publish`.
    sent: u64,
    /// Of those, QoS 1/2.
    sent_qos12: u64,
    /// `Delivered` events (QoS 1/2: the engine reports QoS 0 deliveries only when asked).
    acked: u64,
    /// Times the queue was full and we waited.
    full_waits: u64,
    /// MQTT 5: `Failed` events (refused by the broker, or beyond its limits), and of those QoS 1/2.
    failed: u64,
    failed_qos12: u64,
}

impl Tally {
    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Delivered { .. } => self.acked += 1,
            Event::Failed { token, qos, cause } => {
                self.failed += 1;
                if qos != QoS::AtMostOnce {
                    self.failed_qos12 += 1;
                }
                // Each one for the first few; the summary line counts them all.
                if self.failed <= 10 {
                    errln!("qmqtt pub: message {token} failed: {cause}");
                }
            }
            Event::ConnectionLost { cause } => log::warn!("connection lost: {cause}"),
            Event::Reconnecting { delay, attempt } => {
                log::info!("reconnecting in {delay:?} (attempt {attempt})")
            }
            Event::Connected { session_present } => {
                log::info!("connected (session present: {session_present})")
            }
            _ => {}
        }
    }

    /// QoS 1/2 messages neither acknowledged nor failed.
    fn waiting(&self) -> u64 {
        self.sent_qos12
            .saturating_sub(self.acked + self.failed_qos12)
    }

    /// Hand every waiting event to `on_event`.
    fn drain(&mut self, c: &Client) {
        while c.poll_events(1024, &mut |e| self.on_event(e)) > 0 {}
    }
}

/// Why publishing stopped before the end of the input.
enum Stop {
    /// SIGINT / SIGTERM.
    Interrupted,
    Fatal(String),
}

/// Publish one message; when the queue is full, wait on the event fd, drain, retry — never drop.
/// The topic, QoS, retain flag and properties (`-D publish`) come from `o`.
fn publish_wait(
    c: &Client,
    t: &mut Tally,
    sig: &Signals,
    o: &PubOpts,
    payload: &[u8],
) -> Result<(), Stop> {
    let (topic, qos) = (o.topic.as_str(), o.qos);
    let props = o.conn.publish_props.properties();
    loop {
        match c.publish_with(topic, payload, qos, o.retain, props) {
            Ok(_) => {
                t.sent += 1;
                if qos != QoS::AtMostOnce {
                    t.sent_qos12 += 1;
                }
                return Ok(());
            }
            Err(PublishError::QueueFull) => {
                t.full_waits += 1;
                t.drain(c);
                // Until the queue has drained to half (or events must be drained first); at most 100 ms
                // between looks for a signal. Disconnected: the next publish says so.
                let _ = c.wait_for_room(Duration::from_millis(100));
                if sig.take() {
                    return Err(Stop::Interrupted);
                }
            }
            Err(PublishError::TooLarge) => {
                return Err(Stop::Fatal(format!(
                    "a message of {} bytes is larger than the publish queue or MQTT allows: raise \
                     --queue-bytes or send smaller messages",
                    payload.len()
                )))
            }
            Err(PublishError::TopicInvalid) => {
                return Err(Stop::Fatal(format!(
                    "topic '{topic}' is not valid for publishing (-t)"
                )))
            }
            Err(e @ (PublishError::NeedsMqtt5 | PublishError::PropertyNotAllowed)) => {
                return Err(Stop::Fatal(e.to_string()))
            }
            Err(PublishError::NotConnected) => {
                return Err(Stop::Fatal(
                    "the client is not connected and will not reconnect".into(),
                ))
            }
        }
    }
}

/// Reads stdin in large chunks and hands out complete lines without copying them.
struct LineReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where to continue looking for '\n' (everything in start..scan has none).
    scan: usize,
    eof: bool,
    max_line: usize,
}

impl LineReader {
    fn new(max_line: usize) -> LineReader {
        LineReader {
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
            scan: 0,
            eof: false,
            max_line,
        }
    }

    /// The next complete line (without '\n'); at end of input also a last line without '\n'.
    fn next_line(&mut self) -> Option<&[u8]> {
        let from = self.scan.max(self.start);
        match self.buf[from..self.end].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let (s, e) = (self.start, from + i);
                self.start = e + 1;
                self.scan = self.start;
                Some(&self.buf[s..e])
            }
            None if self.eof && self.start < self.end => {
                let s = self.start;
                self.start = self.end;
                Some(&self.buf[s..self.end])
            }
            None => {
                self.scan = self.end;
                None
            }
        }
    }

    /// One read from `input` (call when it is readable). Makes room first: moves the partial line to the
    /// front, or grows the buffer up to `max_line`.
    fn fill(&mut self, input: &mut impl Read) -> Result<(), String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scan = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.scan -= self.start;
                self.start = 0;
            } else if self.buf.len() < self.max_line {
                let n = (self.buf.len() * 2).min(self.max_line);
                self.buf.resize(n, 0);
            } else {
                return Err(format!(
                    "an input line is longer than {} bytes (the largest MQTT message)",
                    self.max_line
                ));
            }
        }
        match input.read(&mut self.buf[self.end..]) {
            Ok(0) => self.eof = true,
            Ok(n) => self.end += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading stdin: {e}")),
        }
        Ok(())
    }
}

/// The largest MQTT payload (remaining length limit), a bound for lines and whole-input messages.
const MAX_MESSAGE: usize = qmqtt::codec::MAX_REMAINING_LENGTH - 65_536;

pub fn run(argv: Vec<OsString>) -> i32 {
    let o = match crate::args::options_or_exit(parse(argv), HELP) {
        Ok(o) => o,
        Err(code) => return code,
    };
    crate::util::init_logger(o.conn.debug);
    // Whole-input sources are read before connecting (nothing to do while the broker waits).
    let payload: Vec<u8> = match &o.source {
        Source::Message(m) => m.clone(),
        Source::Null | Source::Lines => Vec::new(),
        Source::File(p) => match std::fs::read(p) {
            Ok(v) => v,
            Err(e) => {
                errln!(
                    "qmqtt pub: cannot read -f {}: {e}",
                    std::path::Path::new(p).display()
                );
                return 1;
            }
        },
        Source::Stdin => {
            let mut v = Vec::new();
            let mut stdin = std::io::stdin().lock().take(MAX_MESSAGE as u64 + 1);
            if let Err(e) = stdin.read_to_end(&mut v) {
                errln!("qmqtt pub: reading stdin: {e}");
                return 1;
            }
            if v.len() > MAX_MESSAGE {
                errln!("qmqtt pub: stdin is larger than the largest MQTT message ({MAX_MESSAGE} bytes)");
                return 1;
            }
            v
        }
    };
    let mut cfg = o.conn.config(&format!("qmqtt-pub-{}", std::process::id()));
    if let Some(l) = o.linger {
        cfg.linger = l;
    }
    cfg.spool = o.spool.clone();
    let Started {
        mut client,
        sig,
        uri,
        wait,
    } = match crate::util::start_client("pub", cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match crate::util::wait_first_connection(&client, wait, &sig) {
        Ok(()) => log::info!("connected to {uri}"),
        Err(FirstConnect::Failed(e)) if o.spool.is_some() => {
            log::warn!(
                "{} (publishing to the spool meanwhile)",
                describe_connect_error(&uri, &e)
            )
        }
        Err(FirstConnect::Failed(e)) => {
            errln!("qmqtt pub: {}", describe_connect_error(&uri, &e));
            client.disconnect(Duration::ZERO);
            errln!("sent=0 acked=0 dropped=0 reconnects=0");
            return 1;
        }
        Err(FirstConnect::Interrupted) => {
            errln!("qmqtt pub: interrupted while connecting to {uri}");
            client.disconnect(Duration::ZERO);
            errln!("sent=0 acked=0 dropped=0 reconnects=0");
            return 130;
        }
    }

    let mut t = Tally::default();
    let started = Instant::now();
    let mut failure: Option<String> = None;
    let mut interrupted = false;
    let r = match o.source {
        Source::Lines => publish_lines(&client, &mut t, &sig, &o),
        _ => publish_repeat(&client, &mut t, &sig, &o, payload),
    };
    match r {
        Ok(()) => {}
        Err(Stop::Interrupted) => interrupted = true,
        Err(Stop::Fatal(e)) => failure = Some(e),
    }
    let publishing = started.elapsed();

    // Drain: every QoS 1/2 message acknowledged, or the deadline (after an interrupt: --drain-timeout or
    // 5 s; a second interrupt stops at once).
    let grace = match (interrupted, o.drain_timeout) {
        (true, d) => Some(d.unwrap_or(Duration::from_secs(5))),
        (false, d) => d,
    };
    let deadline = grace.map(|d| Instant::now() + d);
    let mut quit_now = false;
    if interrupted {
        t.drain(&client);
        let waiting = t.waiting();
        if waiting > 0 {
            errln!(
                "qmqtt pub: interrupted: waiting up to {:.1}s for {waiting} unacknowledged message(s) \
                 (interrupt again to quit now)",
                grace.unwrap_or_default().as_secs_f64()
            );
        }
    }
    loop {
        t.drain(&client);
        // The Delivered and Failed events are the count: they carry this run's tokens (the engine admits a
        // message only with room for its event). `Stats::acked` would also count a previous run's spooled backlog.
        if t.waiting() == 0 {
            break;
        }
        let l = left(deadline);
        if l == Some(Duration::ZERO) {
            break;
        }
        let step = Duration::from_millis(500);
        let [_, s] = wait_readable(
            [client.event_fd(), sig.fd()],
            Some(l.map_or(step, |l| l.min(step))),
        );
        if s && sig.take() {
            interrupted = true;
            quit_now = true;
            break;
        }
    }
    // QoS 0 (and the DISCONNECT itself): let the engine flush what is queued.
    let flush = if quit_now {
        Duration::ZERO
    } else {
        left(deadline)
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_millis(200))
    };
    client.disconnect(flush);
    t.drain(&client);
    let elapsed = started.elapsed();
    let st = client.stats();
    let unacked = t.waiting();
    let mut line = format!(
        "sent={} acked={} dropped={} reconnects={}",
        t.sent,
        t.acked,
        st.dropped_oldest + st.dropped_newest,
        st.reconnects
    );
    if unacked > 0 {
        line.push_str(&format!(" unacked={unacked}"));
    }
    if t.failed > 0 {
        line.push_str(&format!(" failed={}", t.failed));
    }
    if t.full_waits > 0 {
        line.push_str(&format!(" full_waits={}", t.full_waits));
    }
    if o.spool.is_some() {
        // The previous runs' backlog apart from this run's messages (sent/acked above).
        line.push_str(&format!(
            " spooled={} backlog_delivered={}",
            st.spooled, st.spool_delivered_previous
        ));
    }
    if o.repeat > 1 {
        let secs = elapsed.as_secs_f64().max(1e-9);
        line.push_str(&format!(
            " elapsed={:.3}s publish={:.3}s rate={:.0}/s",
            secs,
            publishing.as_secs_f64(),
            t.sent as f64 / secs,
        ));
    }
    errln!("{line}");
    if let Some(f) = failure {
        errln!("qmqtt pub: {f}");
        return 1;
    }
    if interrupted {
        errln!("qmqtt pub: interrupted");
        return 130;
    }
    if t.failed > 0 {
        errln!(
            "qmqtt pub: {} message(s) not delivered: refused by the broker or beyond its limits",
            t.failed
        );
        return 1;
    }
    if unacked > 0 {
        errln!(
            "qmqtt pub: {unacked} QoS {} message(s) not acknowledged{}",
            o.qos as u8,
            match o.drain_timeout {
                Some(d) => format!(" after --drain-timeout {}s", d.as_secs_f64()),
                None => String::new(),
            }
        );
        return 3;
    }
    0
}

/// Write `i` in decimal at the front of a synthetic payload (the rest stays 'x').
fn number_payload(p: &mut [u8], i: u64) {
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = &digits[k..];
    let m = d.len().min(p.len());
    p[..m].copy_from_slice(&d[..m]);
    if m < p.len() {
        p[m] = b' ';
    }
}

/// `-m`, `-f`, `-s`, `-n`, `--repeat`: the one payload, `o.repeat` times.
fn publish_repeat(
    c: &Client,
    t: &mut Tally,
    sig: &Signals,
    o: &PubOpts,
    mut payload: Vec<u8>,
) -> Result<(), Stop> {
    for i in 0..o.repeat {
        if o.size.is_some() {
            number_payload(&mut payload, i);
        }
        publish_wait(c, t, sig, o, &payload)?;
        if i % 256 == 255 {
            t.drain(c);
            if sig.take() {
                return Err(Stop::Interrupted);
            }
        }
    }
    Ok(())
}

/// `-l`: lines of stdin, each its own message, until end of input.
fn publish_lines(c: &Client, t: &mut Tally, sig: &Signals, o: &PubOpts) -> Result<(), Stop> {
    // fd 0 is owned by the process; ManuallyDrop keeps it open after this File goes away. Reading it
    // directly (not through std's buffered Stdin) keeps poll(2) truthful about pending input.
    // SAFETY: fd 0 is open for the whole life of the process.
    let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let mut r = LineReader::new(MAX_MESSAGE);
    loop {
        while let Some(line) = r.next_line() {
            publish_wait(c, t, sig, o, line)?;
        }
        if r.eof {
            return Ok(());
        }
        t.drain(c);
        let [input, _events, s] = wait_readable([0, c.event_fd(), sig.fd()], None);
        if s && sig.take() {
            return Err(Stop::Interrupted);
        }
        if input {
            r.fill(&mut *stdin).map_err(Stop::Fatal)?;
        }
        t.drain(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn line_reader_splits_and_keeps_partial_lines() {
        let data = b"a\n\nbb\nlast-no-newline".to_vec();
        // Feed one byte per read to exercise partial lines.
        struct OneByte(Vec<u8>, usize);
        impl Read for OneByte {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                if self.1 == self.0.len() {
                    return Ok(0);
                }
                b[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let mut src = OneByte(data, 0);
        let mut r = LineReader::new(1 << 20);
        let mut got = Vec::new();
        while !r.eof {
            r.fill(&mut src).unwrap();
            while let Some(l) = r.next_line() {
                got.push(String::from_utf8(l.to_vec()).unwrap());
            }
        }
        assert_eq!(got, vec!["a", "", "bb", "last-no-newline"]);
    }

    #[test]
    fn line_reader_grows_up_to_the_bound() {
        let mut r = LineReader::new(100_000);
        let long = vec![b'y'; 90_000];
        let mut src = std::io::Cursor::new([&long[..], b"\n"].concat());
        let mut n = 0;
        while !r.eof {
            r.fill(&mut src).unwrap();
            while let Some(l) = r.next_line() {
                assert_eq!(l.len(), 90_000);
                n += 1;
            }
        }
        assert_eq!(n, 1);
        let mut r = LineReader::new(70_000);
        let mut src = std::io::Cursor::new(long);
        let err = loop {
            if let Err(e) = r.fill(&mut src) {
                break e;
            }
            assert!(r.next_line().is_none());
        };
        assert!(err.contains("longer than 70000"), "{err}");
    }

    #[test]
    fn parse_errors() {
        let e = parse(args(&["-t", "a"])).unwrap_err().0;
        assert!(e.contains("nothing to publish"), "{e}");
        let e = parse(args(&["-t", "a", "-m", "x", "-l"])).unwrap_err().0;
        assert!(e.contains("-l: only one of"), "{e}");
        let e = parse(args(&["-m", "x"])).unwrap_err().0;
        assert!(e.contains("no topic"), "{e}");
        let e = parse(args(&["-t", "a/#", "-m", "x"])).unwrap_err().0;
        assert!(e.contains("without + or #"), "{e}");
        let e = parse(args(&["-t", "a", "-m", "x", "-q", "3"]))
            .unwrap_err()
            .0;
        assert!(e.contains("bad QoS for -q: '3'"), "{e}");
        let e = parse(args(&["-t", "a", "-l", "-c"])).unwrap_err().0;
        assert!(e.contains("-c needs"), "{e}");
        assert!(parse(args(&["--help"])).unwrap().is_none());
        let o = parse(args(&["-t", "a", "--repeat", "3", "--size", "10"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.source, Source::Message(vec![b'x'; 10]));
        let o = parse(args(&["-L", "mqtt://h/top/ic", "-n", "-q", "2"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.topic, "top/ic");
        assert_eq!(o.qos, QoS::ExactlyOnce);
    }

    #[test]
    fn numbered_payloads() {
        let mut p = vec![b'x'; 8];
        number_payload(&mut p, 1234);
        assert_eq!(&p, b"1234 xxx");
        let mut p = vec![b'x'; 2];
        number_payload(&mut p, 98765);
        assert_eq!(&p, b"98");
    }
}
