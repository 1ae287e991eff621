//! Helpers for the `fault_*` reliability tests: a steady load of numbered messages, an independent counting
//! subscriber, resident memory, the short/long switch and the one-line summary each test leaves in
//! `target/reliability/<test>.txt` (collected into the README's reliability table).
//!
//! Include with `#[path = "common/fault.rs"] mod fault;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Config, Event};
use qmqtt::QoS;

/// `QMQTT_FAULT_LONG=1`: the long versions (minutes of faults instead of seconds).
pub fn long() -> bool {
    std::env::var("QMQTT_FAULT_LONG").is_ok_and(|v| v == "1")
}

/// Pick the short (CI) or the long value.
pub fn pick<T>(short: T, long_: T) -> T {
    if long() {
        long_
    } else {
        short
    }
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Resident memory of this process that is not file-backed, KiB (`RssAnon` in /proc/self/status): heap,
/// stacks, anonymous mappings — what a leak or an unbounded buffer grows. `VmRSS` also counts pages of the
/// (large, unoptimised) test binary paged in as new code runs, which is noise here.
pub fn rss_kib() -> u64 {
    status_kib("RssAnon:")
}

/// `VmRSS` (resident, including file-backed pages), KiB, for the record.
pub fn vmrss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Print the summary line and write it to `target/reliability/<test>.txt`.
pub fn report(test: &str, line: &str) {
    let line = format!("{test}: {line}");
    eprintln!("RELIABILITY {line}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("reliability");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{test}.txt")), format!("{line}\n"));
}

/// Milliseconds with one decimal, or "-" for none.
pub fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        None => "-".into(),
    }
}

pub use crate::common::client::readable;

/// A config with fast, realistic reconnects for fault tests.
pub fn cfg(uri: &str, id: &str) -> Config {
    let mut c = Config::new(uri, id);
    c.connect_timeout = Duration::from_secs(3);
    c.keep_alive = Duration::from_secs(2);
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_secs(1);
    c
}

/// The sequence number in the first 8 bytes of a payload.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[derive(Default)]
pub struct CountState {
    /// Arrivals per sequence number.
    pub counts: Vec<u32>,
    /// First arrival per sequence number.
    pub first: Vec<Option<Instant>>,
    pub received: u64,
    pub distinct: u64,
    /// Times of `Subscribed` events (the first, and each replay after a session was lost).
    pub subscribed: Vec<Instant>,
    pub connected: Vec<(Instant, bool)>,
    pub lost: Vec<String>,
    pub foreign: u64,
}

/// An independent subscriber: a qmqtt `Client` directly on the broker (no proxy), `clean_session = false`
/// with a fixed id (the broker keeps its messages while it is away), a 64 MiB event queue (it cannot drop
/// what it receives: checked by [`Counter::dropped`]) and a thread that drains it all the time, counting
/// distinct sequence numbers.
pub struct Counter {
    pub client: Arc<Client>,
    pub st: Arc<Mutex<CountState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Counter {
    pub fn start(uri: &str, id: &str, filter: &str, qos: QoS) -> Counter {
        let mut k = cfg(uri, id);
        k.clean_session = false;
        k.keep_alive = Duration::from_secs(5);
        k.event_queue_bytes = 64 << 20;
        k.max_packet_size = 1 << 16;
        let client = Arc::new(Client::connect(k).expect("subscriber config"));
        client
            .wait_connected(Duration::from_secs(10))
            .expect("subscriber connected");
        client.subscribe(filter, qos).expect("subscribe");
        let st = Arc::new(Mutex::new(CountState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, st2, stop2) = (client.clone(), st.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if !readable(c2.event_fd(), 50) {
                    continue;
                }
                let now = Instant::now();
                let mut s = st2.lock().unwrap();
                c2.poll_events(10_000, &mut |e| match e {
                    Event::Message { payload, .. } => match seq_of(payload) {
                        Some(q) => {
                            let q = q as usize;
                            if s.counts.len() <= q {
                                s.counts.resize(q + 1, 0);
                                s.first.resize(q + 1, None);
                            }
                            s.counts[q] += 1;
                            s.received += 1;
                            if s.counts[q] == 1 {
                                s.distinct += 1;
                                s.first[q] = Some(now);
                            }
                        }
                        None => s.foreign += 1,
                    },
                    Event::Subscribed { .. } => s.subscribed.push(now),
                    Event::Connected { session_present } => {
                        s.connected.push((now, session_present))
                    }
                    Event::ConnectionLost { cause } => s.lost.push(cause.to_string()),
                    _ => {}
                });
            }
        });
        let c = Counter {
            client,
            st,
            stop,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.st.lock().unwrap().subscribed.is_empty() {
            assert!(Instant::now() < deadline, "subscriber: no SUBACK");
            std::thread::sleep(Duration::from_millis(5));
        }
        c
    }

    pub fn distinct(&self) -> u64 {
        self.st.lock().unwrap().distinct
    }
    pub fn received(&self) -> u64 {
        self.st.lock().unwrap().received
    }
    /// Messages the subscriber itself dropped (must stay 0, or the test measures the wrong thing).
    pub fn dropped(&self) -> u64 {
        self.client.stats().dropped_incoming
    }

    /// Wait until `n` distinct numbers (0..n) have arrived, or `timeout`.
    pub fn wait_distinct(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.distinct() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sequence numbers in 0..n that never arrived.
    pub fn missing(&self, n: u64) -> Vec<u64> {
        let s = self.st.lock().unwrap();
        (0..n)
            .filter(|&q| s.counts.get(q as usize).is_none_or(|&c| c == 0))
            .collect()
    }

    /// (extra copies received, numbers received more than once).
    pub fn dups(&self) -> (u64, u64) {
        let s = self.st.lock().unwrap();
        let extra = s.counts.iter().map(|&c| c.saturating_sub(1) as u64).sum();
        let seqs = s.counts.iter().filter(|&&c| c > 1).count() as u64;
        (extra, seqs)
    }

    pub fn first_arrival(&self, q: u64) -> Option<Instant> {
        self.st
            .lock()
            .unwrap()
            .first
            .get(q as usize)
            .copied()
            .flatten()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the publishing side saw.
#[derive(Default)]
pub struct PubLog {
    /// When each sequence number was handed to `publish` (sequence q has token q + 1).
    pub pub_time: Vec<Instant>,
    /// Delivered events per sequence number.
    pub delivered: Vec<u32>,
    pub delivered_n: u64,
    pub connected: Vec<Instant>,
    pub lost: Vec<(Instant, String)>,
    pub reconnecting: Vec<(Instant, Duration, u32)>,
    /// Slowest `publish` call.
    pub max_call: Duration,
}

impl PubLog {
    /// Take every waiting event without blocking.
    pub fn drain(&mut self, c: &Client) {
        let now = Instant::now();
        while c.poll_events(10_000, &mut |e| match e {
            Event::Delivered { token, .. } => {
                let q = (token - 1) as usize;
                if self.delivered.len() <= q {
                    self.delivered.resize(q + 1, 0);
                }
                self.delivered[q] += 1;
                if self.delivered[q] == 1 {
                    self.delivered_n += 1;
                }
            }
            Event::Connected { .. } => self.connected.push(now),
            Event::ConnectionLost { cause } => self.lost.push((now, cause.to_string())),
            Event::Reconnecting { delay, attempt } => self.reconnecting.push((now, delay, attempt)),
            _ => {}
        }) > 0
        {}
    }

    pub fn published(&self) -> u64 {
        self.pub_time.len() as u64
    }

    /// Delivered events beyond one per message (must be 0: a token is reported once).
    pub fn delivered_twice(&self) -> u64 {
        self.delivered.iter().filter(|&&c| c > 1).count() as u64
    }
}

/// A steady stream: `rate` messages per second of `len` bytes (the sequence number first) to `topic`.
pub struct Load {
    pub rate: u32,
    pub duration: Duration,
    pub qos: QoS,
    pub topic: String,
    pub len: usize,
}

impl Load {
    pub fn new(topic: &str, qos: QoS, rate: u32, duration: Duration) -> Load {
        Load {
            rate,
            duration,
            qos,
            topic: topic.into(),
            len: 32,
        }
    }

    /// Publish for `duration` from this thread, draining the publisher's events, calling `tick` with the
    /// elapsed time about every millisecond (faults are injected there). Every publish must be accepted.
    /// Time spent inside `tick` (a broker killed and restarted: seconds under emulation) does not count as
    /// load time, so every fault scheduled within `duration` happens at any speed.
    pub fn run(&self, c: &Client, log: &mut PubLog, mut tick: impl FnMut(Duration, &mut PubLog)) {
        let mut payload = vec![b'.'; self.len.max(8)];
        let start = Instant::now();
        let mut in_tick = Duration::ZERO;
        let mut seq = log.published();
        let base = seq;
        loop {
            let el = start.elapsed().saturating_sub(in_tick);
            if el >= self.duration {
                break;
            }
            let due = base + (el.as_secs_f64() * self.rate as f64) as u64;
            while seq < due {
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                let t0 = Instant::now();
                let r = c.publish(&self.topic, &payload, self.qos, false);
                let dt = t0.elapsed();
                log.max_call = log.max_call.max(dt);
                let tok =
                    r.unwrap_or_else(|e| panic!("publish {seq} refused: {e} ({:?})", c.stats()));
                assert_eq!(tok, seq + 1, "tokens follow the sequence");
                log.pub_time.push(t0);
                seq += 1;
            }
            log.drain(c);
            let t = Instant::now();
            tick(el, log);
            in_tick += t.elapsed();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Drain the publisher until every message is acknowledged and the subscriber has every number but the
/// `excused` ones (lost by a broker, not by the client), or `timeout`. Returns whether both happened.
pub fn settle(
    c: &Client,
    log: &mut PubLog,
    sub: &Counter,
    excused: &HashSet<u64>,
    timeout: Duration,
) -> bool {
    let n = log.published();
    let deadline = Instant::now() + timeout;
    loop {
        log.drain(c);
        if log.delivered_n >= n
            && (sub.distinct() >= n || sub.missing(n).iter().all(|q| excused.contains(q)))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        readable(c.event_fd(), 20);
    }
}

/// Recovery after each fault end: from the end to the first arrival at the subscriber of a message
/// published after it (new data flowing end to end again).
pub fn recoveries(log: &PubLog, sub: &Counter, ends: &[Instant]) -> Vec<Option<Duration>> {
    let s = sub.st.lock().unwrap();
    ends.iter()
        .map(|&end| {
            let from = log.pub_time.partition_point(|&t| t < end);
            (from..log.pub_time.len())
                .filter_map(|q| s.first.get(q).copied().flatten())
                .min()
                .map(|a| a.saturating_duration_since(end))
        })
        .collect()
}

/// Largest and mean of the recoveries that happened.
pub fn summarize(r: &[Option<Duration>]) -> (Option<Duration>, Option<Duration>, usize) {
    let got: Vec<Duration> = r.iter().flatten().copied().collect();
    let max = got.iter().max().copied();
    let mean = if got.is_empty() {
        None
    } else {
        Some(got.iter().sum::<Duration>() / got.len() as u32)
    };
    (max, mean, r.len() - got.len())
}
