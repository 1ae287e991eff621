//! The independent counting subscriber: a minimal MQTT 3.1.1 client over plain TCP (loopback) in its own
//! thread. It subscribes at QoS 0 to one topic, counts the PUBLISH packets for it, notes when the first and
//! the last expected one arrived and, in latency mode, the delay from the send time stamped in the payload.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::now_ns;

#[derive(Debug, Default, Clone)]
pub struct SubResult {
    pub count: u64,
    pub t_first: u64,
    pub t_last: u64,
    /// Publish→receive delays in ns (latency mode only).
    pub latencies: Vec<u64>,
}

pub struct Subscriber {
    stop: Arc<AtomicBool>,
    pub count: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<SubResult, String>>>,
}

fn remaining_length(n: usize, out: &mut Vec<u8>) {
    let mut n = n;
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Parse one fixed header: (first byte, remaining length, header length), or None when incomplete.
pub fn fixed_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    for i in 1..5 {
        let b = *buf.get(i)?;
        len += (b & 0x7f) as usize * mult;
        if b & 0x80 == 0 {
            return Some((first, len, i + 1));
        }
        mult *= 128;
    }
    None
}

pub fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// A PUBLISH packet: (bytes, offset of the packet id or 0, offset of the payload).
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8) -> (Vec<u8>, usize, usize) {
    let rl = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    let mut p = vec![0x30 | (qos << 1)];
    remaining_length(rl, &mut p);
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    let pid_at = if qos > 0 {
        p.extend_from_slice(&[0, 1]);
        p.len() - 2
    } else {
        0
    };
    let payload_at = p.len();
    p.extend_from_slice(payload);
    (p, pid_at, payload_at)
}

impl Subscriber {
    /// Connect, subscribe and return once the SUBACK is in.
    pub fn start(port: u16, topic: &str, expect: u64, latency: bool) -> Result<Subscriber, String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("subscriber connect to 127.0.0.1:{port}: {e}"))?;
        let _ = s.set_nodelay(true);
        let id = format!("bench-sub-{}-{}", std::process::id(), now_ns() % 1_000_000);
        s.write_all(&connect_packet(&id))
            .map_err(|e| format!("subscriber write: {e}"))?;
        let mut sub = vec![0x82];
        let rl = 2 + 2 + topic.len() + 1;
        remaining_length(rl, &mut sub);
        sub.extend_from_slice(&[0, 1]);
        sub.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        sub.extend_from_slice(topic.as_bytes());
        sub.push(0);
        s.write_all(&sub)
            .map_err(|e| format!("subscriber write: {e}"))?;
        // Wait for CONNACK and SUBACK.
        let mut buf = Vec::with_capacity(64);
        let mut got_suback = false;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        while !got_suback {
            let mut tmp = [0u8; 64];
            let n = s
                .read(&mut tmp)
                .map_err(|e| format!("subscriber: no CONNACK/SUBACK: {e}"))?;
            if n == 0 {
                return Err("subscriber: broker closed the connection".into());
            }
            buf.extend_from_slice(&tmp[..n]);
            while let Some((first, len, hl)) = fixed_header(&buf) {
                if buf.len() < hl + len {
                    break;
                }
                if first == 0x20 && buf.get(hl + 1) != Some(&0) {
                    return Err("subscriber: CONNACK refused".into());
                }
                if first == 0x90 {
                    got_suback = true;
                }
                buf.drain(..hl + len);
            }
        }
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (stop2, count2) = (stop.clone(), count.clone());
        let topic = topic.as_bytes().to_vec();
        let handle = std::thread::spawn(move || run(s, topic, expect, latency, stop2, count2));
        Ok(Subscriber {
            stop,
            count,
            handle: Some(handle),
        })
    }

    /// Wait until everything expected arrived, or until nothing new arrived for `quiet`; then stop.
    pub fn finish(mut self, quiet: Duration) -> Result<SubResult, String> {
        let mut last = self.count.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        while let Some(h) = &self.handle {
            if h.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            let c = self.count.load(Ordering::Relaxed);
            if c != last {
                last = c;
                since = std::time::Instant::now();
            } else if since.elapsed() > quiet {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| "subscriber thread panicked".to_string())?,
            None => Err("subscriber already finished".into()),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    mut s: TcpStream,
    topic: Vec<u8>,
    expect: u64,
    latency: bool,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Result<SubResult, String> {
    let mut r = SubResult::default();
    if latency {
        r.latencies.reserve(expect as usize);
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0usize;
    while r.count < expect && !stop.load(Ordering::Relaxed) {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match s.read(&mut buf[have..]) {
            Ok(0) => return Err("subscriber: broker closed the connection".into()),
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => return Err(format!("subscriber read: {e}")),
        };
        let now = now_ns();
        have += n;
        let mut at = 0;
        while let Some((first, len, hl)) = fixed_header(&buf[at..have]) {
            if have - at < hl + len {
                break;
            }
            let p = &buf[at + hl..at + hl + len];
            if first & 0xf0 == 0x30 && p.len() >= 2 {
                let tl = u16::from_be_bytes([p[0], p[1]]) as usize;
                let qos = (first >> 1) & 3;
                let off = 2 + tl + if qos > 0 { 2 } else { 0 };
                if p.len() >= off && &p[2..2 + tl] == topic.as_slice() {
                    if r.count == 0 {
                        r.t_first = now;
                    }
                    r.count += 1;
                    r.t_last = now;
                    if latency && p.len() >= off + 8 {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p[off..off + 8]);
                        r.latencies.push(now.saturating_sub(u64::from_le_bytes(ts)));
                    }
                }
            }
            at += hl + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        count.store(r.count, Ordering::Relaxed);
    }
    let _ = s.write_all(&[0xe0, 0]);
    Ok(r)
}
