//! A hostile or broken "broker": a `TcpListener` in the test that answers CONNECT with garbage (an HTTP
//! error page, random bytes), announces a PUBLISH of 256 MiB and streams junk, sends a remaining length of
//! five bytes, sends a well-formed PUBLISH bigger than `max_packet_size`, or never answers at all.
//!
//! Asserted for each: the client drops the connection with an error that says what was wrong
//! (`Stats::last_error` and the `ConnectionLost` cause), memory stays bounded (the heap's peak, counted by
//! the test's allocator, and RSS; the tests run one at a time for that), and it keeps retrying with its
//! backoff — the fake broker timestamps every connection attempt and the gaps must follow
//! `backoff_min · 2^k` (upper half, jittered), not a hot loop.
mod common;
#[path = "common/fault.rs"]
mod fault;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Event};
use qmqtt::error::{Error, Timeout};
use qmqtt::transport::MAX_READ_PER_CALL;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[global_allocator]
static A: common::alloc::Counting = common::alloc::Counting;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_millis(1600);

#[derive(Clone)]
enum Mode {
    /// Answer CONNECT with these bytes, then wait for the client to go.
    Reply(Vec<u8>),
    /// Answer with these bytes, then stream junk (up to 64 MiB) until the client goes.
    ReplyThenStream(Vec<u8>),
    /// Read and never answer.
    Silent,
    /// CONNACK, then send this chunk over and over as fast as the client takes it, never reading again.
    Flood(Vec<u8>),
}

struct Fake {
    port: u16,
    accepts: Arc<Mutex<Vec<Instant>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Connections being served: each ends when the client closes its end.
    open: Arc<AtomicUsize>,
}

impl Fake {
    fn start(mode: Mode) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let f = Fake {
            port,
            accepts: Arc::default(),
            sent: Arc::default(),
            stop: Arc::default(),
            open: Arc::default(),
        };
        let (acc, sent, stop, open) = (
            f.accepts.clone(),
            f.sent.clone(),
            f.stop.clone(),
            f.open.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        acc.lock().unwrap().push(Instant::now());
                        let (mode, sent, stop, open) =
                            (mode.clone(), sent.clone(), stop.clone(), open.clone());
                        open.fetch_add(1, Ordering::Relaxed);
                        std::thread::spawn(move || {
                            serve(s, mode, &sent, &stop);
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        f
    }

    fn uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Wait until the client has closed every connection (after it was dropped: its I/O thread is done
    /// with the socket, so what it allocates no longer counts in the next test's memory).
    fn wait_closed(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        while self.open.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            self.open.load(Ordering::Relaxed),
            0,
            "a connection stayed open 20 s after the client was dropped"
        );
    }

    fn gaps(&self) -> Vec<Duration> {
        let a = self.accepts.lock().unwrap();
        a.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Memory from a starting point on: anonymous RSS, and the heap counted by the test's allocator.
struct Since {
    rss_kib: u64,
    heap: u64,
}

impl Since {
    fn now() -> Since {
        Since {
            rss_kib: fault::rss_kib(),
            heap: common::alloc::reset_peak(),
        }
    }

    /// (RSS growth, the heap's growth at its peak), KiB.
    fn grown(&self) -> (i64, i64) {
        let rss = fault::rss_kib() as i64 - self.rss_kib as i64;
        (rss, (common::alloc::peak_bytes() - self.heap) as i64 / 1024)
    }
}

fn serve(mut s: TcpStream, mode: Mode, sent: &AtomicU64, stop: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    // The CONNECT.
    if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
        return;
    }
    let mut wait_close = |s: &mut TcpStream| {
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    };
    match mode {
        Mode::Reply(r) => {
            if s.write_all(&r).is_ok() {
                sent.fetch_add(r.len() as u64, Ordering::Relaxed);
            }
            wait_close(&mut s);
        }
        Mode::ReplyThenStream(r) => {
            if s.write_all(&r).is_err() {
                return;
            }
            let junk = [0x5au8; 64 << 10];
            for _ in 0..1024 {
                if stop.load(Ordering::Relaxed) || s.write_all(&junk).is_err() {
                    return;
                }
                sent.fetch_add(junk.len() as u64, Ordering::Relaxed);
            }
        }
        Mode::Silent => wait_close(&mut s),
        Mode::Flood(chunk) => {
            // A small receive buffer (no autotuning up to tcp_rmem's maximum): the client's acknowledgements
            // back up into its own buffers soon.
            small_receive_buffer(&s);
            if s.write_all(&CONNACK).is_err() {
                return;
            }
            while !stop.load(Ordering::Relaxed) && s.write_all(&chunk).is_ok() {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

fn small_receive_buffer(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on our own socket with a valid int of the stated size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// CONNACK, accepted, no session.
const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

fn client(uri: &str, id: &str, max_packet: usize) -> Client {
    let mut k = qmqtt::client::Config::new(uri, id);
    k.connect_timeout = Duration::from_secs(1);
    k.keep_alive = Duration::from_secs(5);
    k.backoff_min = BACKOFF_MIN;
    k.backoff_max = BACKOFF_MAX;
    k.max_packet_size = max_packet;
    Client::connect(k).unwrap()
}

struct Outcome {
    causes: Vec<String>,
    last_error: String,
    attempts: usize,
    min_gap: Duration,
    rss_growth: i64,
    /// The most the heap grew by (KiB) while the fake broker did its worst.
    heap_peak: i64,
    sent: u64,
    connected: usize,
}

/// Let the client deal with `mode` for `secs`; collect what it said and how often it came back.
fn run(name: &str, what: &str, mode: Mode, max_packet: usize, secs: f64) -> Outcome {
    let fk = Fake::start(mode);
    let c = client(&fk.uri(), name, max_packet);
    let mut causes = Vec::new();
    let mut connected = 0;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    // Memory is measured from the first failure on (the client, its queues and threads exist by then).
    let mut mem = None;
    while Instant::now() < until {
        if mem.is_none() && !causes.is_empty() {
            mem = Some(Since::now());
        }
        fault::readable(c.event_fd(), 20);
        c.poll_events(100, &mut |e| match e {
            Event::ConnectionLost { cause } => causes.push(cause.to_string()),
            Event::Connected { .. } => connected += 1,
            _ => {}
        });
    }
    let (rss_growth, heap_peak) = mem.unwrap_or_else(Since::now).grown();
    let st = c.stats();
    drop(c);
    fk.wait_closed();
    let gaps = fk.gaps();
    let o = Outcome {
        causes,
        last_error: st
            .last_error
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        attempts: gaps.len() + 1,
        min_gap: gaps.iter().min().copied().unwrap_or(Duration::MAX),
        rss_growth,
        heap_peak,
        sent: fk.sent.load(Ordering::Relaxed),
        connected,
    };
    fault::report(
        name,
        &format!(
            "{what}: connection dropped with \"{}\"; {} connection attempts in {secs:.0} s (gaps min {:?}, \
             {}), heap peak +{} KiB, anon RSS {:+} KiB, {:.1} MiB sent by the fake broker",
            o.last_error,
            o.attempts,
            o.min_gap,
            gaps.iter()
                .take(6)
                .map(|g| format!("{}", g.as_millis()))
                .collect::<Vec<_>>()
                .join("/")
                + " ms",
            o.heap_peak,
            o.rss_growth,
            o.sent as f64 / (1 << 20) as f64
        ),
    );
    // Checks common to every hostile broker.
    assert!(!o.causes.is_empty(), "no ConnectionLost reported");
    assert!(!o.last_error.is_empty(), "no last_error");
    assert!(
        o.attempts >= 2,
        "the client gave up: {} attempts",
        o.attempts
    );
    // At most one read's worth of buffer (the transport reads up to MAX_READ_PER_CALL before the session
    // looks at a header) plus slack for the fake broker's own threads — whatever the broker announces.
    let bound = (MAX_READ_PER_CALL as i64 + (16 << 10) + (512 << 10)) / 1024;
    assert!(
        o.heap_peak < bound,
        "the heap grew by {} KiB at its peak (bound {bound} KiB)",
        o.heap_peak
    );
    assert!(
        o.rss_growth < bound,
        "RSS grew {} KiB (bound {bound} KiB)",
        o.rss_growth
    );
    // Exponential backoff, each gap at least the lower end of its step — also when every failure follows an
    // accepted CONNACK: only a connection that stays up resets the backoff, so a broker that
    // accepts and drops at once is not retried in a hot loop.
    for (k, g) in gaps.iter().enumerate() {
        let base = (BACKOFF_MIN * (1 << k.min(10))).min(BACKOFF_MAX);
        assert!(
            *g >= base / 2 - Duration::from_millis(10),
            "gap {k} is {g:?}, backoff step {base:?}: {gaps:?}"
        );
    }
    o
}

#[test]
fn fault_hostile_http_reply() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let page = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\nBad Request".to_vec();
    let o = run(
        "fault_hostile_http_reply",
        "fake broker answers CONNECT with an HTTP 400 page",
        Mode::Reply(page),
        1 << 20,
        4.0,
    );
    assert_eq!(o.connected, 0);
    assert!(
        o.last_error.contains("protocol error") || o.last_error.contains("malformed"),
        "{}",
        o.last_error
    );
    // … and says what is likely wrong: not an MQTT port.
    assert!(o.last_error.contains("MQTT port"), "{}", o.last_error);
}

#[test]
fn fault_hostile_random_bytes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let o = run(
        "fault_hostile_random_bytes",
        "fake broker answers CONNECT with 4 KiB of random bytes",
        Mode::Reply(garbage),
        1 << 20,
        4.0,
    );
    assert_eq!(o.connected, 0);
}

#[test]
fn fault_hostile_huge_remaining_length() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // CONNACK, then a PUBLISH announcing 268 435 455 bytes, then junk as fast as the client takes it.
    let mut r = CONNACK.to_vec();
    r.extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0x7f]);
    let o = run(
        "fault_hostile_huge_remaining_length",
        "CONNACK, then a PUBLISH announcing 256 MiB, then a stream of junk",
        Mode::ReplyThenStream(r),
        1 << 20,
        3.0,
    );
    assert!(o.connected >= 2);
    // An incoming message over max_packet_size is read past without being kept (issue 16): the client
    // skips the announced 256 MiB in bounded memory (asserted by `run`) until the broker gives up.
    assert!(
        o.last_error.contains("closed the connection"),
        "{}",
        o.last_error
    );
}

#[test]
fn fault_hostile_malformed_remaining_length() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = CONNACK.to_vec();
    r.extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0]);
    let o = run(
        "fault_hostile_malformed_remaining_length",
        "CONNACK, then a PUBLISH whose remaining length runs to 5 bytes",
        Mode::Reply(r),
        1 << 20,
        3.0,
    );
    assert!(
        o.last_error.contains("remaining length"),
        "{}",
        o.last_error
    );
}

#[test]
fn fault_hostile_publish_over_max_packet_size() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A well-formed QoS 0 PUBLISH of 8 KiB to a client that accepts 4 KiB.
    let mut r = CONNACK.to_vec();
    let topic = b"big/x";
    let body = 2 + topic.len() + 8192;
    r.push(0x30);
    let mut len = body;
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        r.push(b);
        if len == 0 {
            break;
        }
    }
    r.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    r.extend_from_slice(topic);
    r.extend(std::iter::repeat_n(b'p', 8192));
    // Read past without being kept, counted, and the connection stays up (issue 16: a persistent
    // session's broker would send it again after every reconnect).
    let fk = Fake::start(Mode::Reply(r));
    let c = client(
        &fk.uri(),
        "fault_hostile_publish_over_max_packet_size",
        4096,
    );
    let rss0 = fault::rss_kib();
    let (mut lost, mut msgs, mut connected) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while c.stats().dropped_oversize == 0 && Instant::now() < until {
        fault::readable(c.event_fd(), 20);
        c.poll_events(100, &mut |e| match e {
            Event::ConnectionLost { .. } => lost += 1,
            Event::Message { .. } => msgs += 1,
            Event::Connected { .. } => connected += 1,
            _ => {}
        });
    }
    std::thread::sleep(Duration::from_millis(300)); // a drop would show now
    c.poll_events(100, &mut |e| match e {
        Event::ConnectionLost { .. } => lost += 1,
        Event::Message { .. } => msgs += 1,
        Event::Connected { .. } => connected += 1,
        _ => {}
    });
    let st = c.stats();
    let grew = fault::rss_kib() as i64 - rss0 as i64;
    fault::report(
        "fault_hostile_publish_over_max_packet_size",
        &format!(
            "CONNACK, then a well-formed 8 KiB PUBLISH with max_packet_size 4 KiB: {} discarded, {lost} \
             connection losses, {msgs} messages delivered, anon RSS {grew:+} KiB",
            st.dropped_oversize
        ),
    );
    assert_eq!(st.dropped_oversize, 1, "{st:?}");
    assert_eq!((lost, msgs, connected), (0, 0, 1), "{st:?}");
    assert!(c.is_connected());
    assert!(grew < 1024, "RSS grew {grew} KiB");
}

#[test]
fn fault_hostile_never_answers_connect() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(
        "fault_hostile_never_answers_connect",
        "fake broker accepts TCP and never answers CONNECT (connect timeout 1 s)",
        Mode::Silent,
        1 << 20,
        6.0,
    );
    assert_eq!(o.connected, 0);
    // Each attempt waits out the timeout before the backoff starts.
    assert!(
        o.min_gap >= Duration::from_millis(950),
        "min gap {:?}",
        o.min_gap
    );
    assert!(o.attempts <= 5, "{} attempts in 6 s", o.attempts);
    assert!(
        o.last_error.contains("CONNACK") || o.last_error.contains("connect timeout"),
        "{}",
        o.last_error
    );
}

/// 64 KiB of back-to-back packets made by `packet(pkid)`, packet ids counting from 1.
fn flood_chunk(packet: impl Fn(u16) -> Vec<u8>) -> Vec<u8> {
    let mut chunk = Vec::new();
    let mut id = 1u16;
    while chunk.len() < 64 << 10 {
        chunk.extend(packet(id));
        id += 1;
    }
    chunk
}

/// A broker that floods packets each owing it an acknowledgement and never reads: the client must stop
/// reading once `max_unsent_bytes` wait unsent (memory stays bounded) and drop the connection when the
/// broker reads nothing for the keep-alive (`Timeout::Unread`), then reconnect.
fn flood(name: &str, what: &str, chunk: Vec<u8>, secs: f64) {
    const MAX_UNSENT: usize = 64 << 10;
    let fk = Fake::start(Mode::Flood(chunk));
    let mut k = qmqtt::client::Config::new(fk.uri(), name);
    k.connect_timeout = Duration::from_secs(1);
    k.keep_alive = Duration::from_secs(1);
    k.backoff_min = BACKOFF_MIN;
    k.backoff_max = BACKOFF_MAX;
    k.max_unsent_bytes = MAX_UNSENT;
    // A small event queue: its pages are all touched before memory is first measured.
    k.event_queue_bytes = 64 << 10;
    let c = Client::connect(k).unwrap();
    let (mut unread, mut other, mut connected, mut messages) = (0, Vec::new(), 0, 0u64);
    let mut mem = None;
    // Until it was dropped for not reading and came back, then `secs` more (at most a minute in all).
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut until = None;
    while until.is_none_or(|t| Instant::now() < t) && Instant::now() < give_up {
        if until.is_none() && unread >= 1 && connected >= 2 {
            until = Some(Instant::now() + Duration::from_secs_f64(secs));
        }
        fault::readable(c.event_fd(), 20);
        c.poll_events(usize::MAX, &mut |e| match e {
            Event::ConnectionLost {
                cause: Error::Timeout(Timeout::Unread { .. }),
            } => unread += 1,
            Event::ConnectionLost { cause } => other.push(cause.to_string()),
            Event::Connected { .. } => connected += 1,
            Event::Message { .. } => messages += 1,
            _ => {}
        });
        // Measured from the first connection on (the client, its queues and threads exist by then).
        if mem.is_none() && connected > 0 {
            mem = Some(Since::now());
        }
    }
    let (growth, heap_peak) = mem.unwrap_or_else(Since::now).grown();
    let st = c.stats();
    drop(c);
    fk.wait_closed();
    fault::report(
        name,
        &format!(
            "{what}: heap peak +{heap_peak} KiB, anon RSS {growth:+} KiB, {connected} connections, \
             {unread} dropped for not reading, {messages} messages, {:.1} MiB sent by the fake broker, {} bytes to it",
            fk.sent.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            st.bytes_out
        ),
    );
    // What the client holds: what is owed (MAX_UNSENT, plus the acknowledgements of one read) in the
    // transport, in the session and in the buffer swapped between them; one read. Plus 256 KiB for the fake
    // broker's copies of its chunk.
    let held =
        (3 * (MAX_UNSENT + MAX_READ_PER_CALL) + MAX_READ_PER_CALL + (256 << 10)) as i64 / 1024;
    // Heap: each of those buffers may have up to twice that capacity (a Vec grows by doubling), and a
    // growing one has its old block (at most one read) beside the new during the copy. Measured: +1.5-2.5 MiB
    // mostly, +7.4 MiB when all four had just doubled to 2 MiB at once (1 run in 5).
    let bound = 2 * held + MAX_READ_PER_CALL as i64 / 1024;
    assert!(
        heap_peak < bound,
        "the heap grew by {heap_peak} KiB at its peak (bound {bound} KiB)"
    );
    // Resident memory, measured at the end: what the client holds, and as much again for what the system
    // allocator keeps of freed blocks and the arenas of the fake broker's threads (measured: RSS +0.5-6 MiB).
    assert!(
        growth < 2 * held,
        "RSS grew {growth} KiB (bound {} KiB)",
        2 * held
    );
    assert!(other.is_empty(), "other losses: {other:?}");
    assert!(
        unread >= 1,
        "never dropped for not reading ({connected} connections)"
    );
    assert!(connected >= 2, "did not reconnect: {connected} connections");
}

#[test]
fn fault_hostile_pubrel_flood_never_reads() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let chunk = flood_chunk(|id| {
        let [h, l] = id.to_be_bytes();
        vec![0x62, 2, h, l]
    });
    flood(
        "fault_hostile_pubrel_flood_never_reads",
        "CONNACK, then PUBRELs as fast as the client reads, never reading its PUBCOMPs",
        chunk,
        2.0,
    );
}

#[test]
fn fault_hostile_publish_flood_never_reads() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // QoS 1 and QoS 2 PUBLISHes to "t" with a one-byte payload, alternately.
    let chunk = flood_chunk(|id| {
        let [h, l] = id.to_be_bytes();
        let qos = if id % 2 == 0 { 0x32 } else { 0x34 };
        vec![qos, 6, 0, 1, b't', h, l, b'x']
    });
    flood(
        "fault_hostile_publish_flood_never_reads",
        "CONNACK, then QoS 1/2 PUBLISHes as fast as the client reads, never reading its PUBACKs/PUBRECs",
        chunk,
        2.0,
    );
}
