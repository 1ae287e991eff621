//! A fault-injecting TCP proxy on loopback, for reliability tests.
//!
//! Sits between a client and the broker and can, at any moment:
//! - [`Proxy::cut`] every open connection (both sockets closed, as a dropped link);
//! - [`Proxy::stall`] traffic: bytes are held, not refused — connections stay open and silent;
//! - [`Proxy::trickle`] traffic to a number of bytes per second;
//! - [`Proxy::half_close`] connections (the broker-to-client direction is shut down, the other stays open);
//! - [`Proxy::refuse`] new connections: the listening port is closed (connects get ECONNREFUSED) and
//!   reopened on the same port afterwards.
//!
//! A test-only tool: threads and short sleeps are fine here; it only ever connects to 127.0.0.1.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    stalled: AtomicBool,
    refusing: AtomicBool,
    /// An acceptor thread holds the listening socket (cleared once it has dropped it).
    listening: AtomicBool,
    stopped: AtomicBool,
    /// Bytes per second per direction; 0 = unlimited.
    rate: AtomicU64,
    /// Incremented by `cut`: pumps of an older generation close their sockets.
    generation: AtomicUsize,
    accepted: AtomicUsize,
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
}

pub struct Proxy {
    pub port: u16,
    upstream: u16,
    st: Arc<State>,
}

impl Proxy {
    /// Listen on a free 127.0.0.1 port, forwarding to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        // Below the ephemeral range (as the brokers): once `refuse` closes the port, no outgoing connection
        // of any process can take it, nor connect to itself on it.
        let (l, port) = loop {
            let port = super::free_port();
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                break (l, port);
            }
        };
        let p = Proxy {
            port,
            upstream,
            st: Arc::new(State::default()),
        };
        p.spawn_acceptor(l);
        p
    }

    pub fn uri(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.st.accepted.load(Ordering::SeqCst)
    }

    fn spawn_acceptor(&self, l: TcpListener) {
        let st = self.st.clone();
        let upstream = self.upstream;
        l.set_nonblocking(true).unwrap();
        st.listening.store(true, Ordering::SeqCst);
        thread::spawn(move || loop {
            if st.stopped.load(Ordering::SeqCst) || st.refusing.load(Ordering::SeqCst) {
                drop(l); // closes the port
                st.listening.store(false, Ordering::SeqCst);
                return;
            }
            match l.accept() {
                Ok((c, _)) => {
                    let Ok(s) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        drop(c);
                        continue;
                    };
                    c.set_nonblocking(false).unwrap();
                    st.accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = c.set_nodelay(true);
                    let _ = s.set_nodelay(true);
                    st.conns
                        .lock()
                        .unwrap()
                        .push((c.try_clone().unwrap(), s.try_clone().unwrap()));
                    let g = st.generation.load(Ordering::SeqCst);
                    pump(
                        st.clone(),
                        c.try_clone().unwrap(),
                        s.try_clone().unwrap(),
                        g,
                    );
                    pump(st.clone(), s, c, g);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        });
    }

    /// Close every open connection now (new ones are still accepted).
    pub fn cut(&self) {
        self.st.generation.fetch_add(1, Ordering::SeqCst);
        for (a, b) in self.st.conns.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Hold all traffic (true) or let it flow again (false).
    pub fn stall(&self, on: bool) {
        self.st.stalled.store(on, Ordering::SeqCst);
    }

    /// Limit each direction to `bytes_per_sec` (None: unlimited).
    pub fn trickle(&self, bytes_per_sec: Option<u64>) {
        self.st
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Shut down the broker→client direction of every open connection (the client sees EOF while its own
    /// writes still reach the broker).
    pub fn half_close(&self) {
        for (c, _s) in self.st.conns.lock().unwrap().iter() {
            let _ = c.shutdown(Shutdown::Write);
        }
    }

    /// Close the listening port (connects are refused) — or reopen it on the same port.
    pub fn refuse(&self, on: bool) {
        if on {
            self.st.refusing.store(true, Ordering::SeqCst);
            // The acceptor notices within a poll and drops the listener: wait for that (not a fixed sleep,
            // which a slow or emulated machine can outlast).
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.st.listening.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < deadline,
                    "proxy acceptor did not close port {}",
                    self.port
                );
                thread::sleep(Duration::from_millis(2));
            }
            // Closed here, but a process another test thread is starting may hold a copy of the listening
            // socket between its fork and its exec (close-on-exec); under qemu that takes milliseconds, and
            // connects are accepted into the copy's backlog until then. Return once one is refused.
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "port {} still accepts connections",
                    self.port
                );
                thread::sleep(Duration::from_millis(10));
            }
        } else if self.st.refusing.swap(false, Ordering::SeqCst) {
            let deadline = Instant::now() + Duration::from_secs(5);
            let l = loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "cannot rebind proxy port {}: {e}",
                            self.port
                        );
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            self.spawn_acceptor(l);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.st.stopped.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Copy `from` → `to` until either closes or the proxy cuts this generation.
fn pump(st: Arc<State>, mut from: TcpStream, mut to: TcpStream, generation: usize) {
    thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = vec![0u8; 16 * 1024];
        let mut window_start = Instant::now();
        let mut sent_in_window = 0u64;
        loop {
            if st.generation.load(Ordering::SeqCst) != generation
                || st.stopped.load(Ordering::SeqCst)
            {
                break;
            }
            if st.stalled.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            let rate = st.rate.load(Ordering::SeqCst);
            let want = if rate == 0 {
                buf.len()
            } else {
                if window_start.elapsed() >= Duration::from_secs(1) {
                    window_start = Instant::now();
                    sent_in_window = 0;
                }
                let left = rate.saturating_sub(sent_in_window) as usize;
                if left == 0 {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                left.min(buf.len()).min(((rate / 20).max(1)) as usize)
            };
            match from.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    sent_in_window += n as u64;
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
