//! Conn through the fault proxy: TLS over a trickling link (records arrive in fragments), a stalled
//! handshake that resumes, and a cut / half-closed / refused link, each giving the right outcome.
mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::Broker;
use mio::{Events, Poll, Token};
use qmqtt::transport::{tls_config, Conn, Endpoint, TlsOptions};
use qmqtt::Error;

const CONNECT: [u8; 14] = [
    0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
];
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

struct Driver {
    conn: Conn,
    poll: Poll,
    events: Events,
    buf: Vec<u8>,
    sent: bool,
}

impl Driver {
    fn new(uri: &str, opts: &TlsOptions) -> Result<Driver, Error> {
        let ep = Endpoint::parse(uri)?;
        let mut conn = Conn::connect(&ep, Some((tls_config(opts)?, opts)))?;
        let poll = Poll::new().unwrap();
        conn.register(poll.registry(), Token(0)).unwrap();
        Ok(Driver {
            conn,
            poll,
            events: Events::with_capacity(8),
            buf: Vec::new(),
            sent: false,
        })
    }

    /// One turn of the loop: wait up to 50 ms, flush, read, send CONNECT once established.
    fn turn(&mut self) -> Result<(), Error> {
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(50)))
            .unwrap();
        self.conn.flush()?;
        while self.conn.read(&mut self.buf)? > 0 {}
        if self.conn.is_established() && !self.sent {
            self.conn.write(&CONNECT)?;
            self.conn.flush()?;
            self.sent = true;
        }
        Ok(())
    }

    /// Turn until `buf` holds `n` bytes or `secs` pass.
    fn until(&mut self, n: usize, secs: u64) -> Result<bool, Error> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.buf.len() < n {
            if Instant::now() > deadline {
                return Ok(false);
            }
            self.turn()?;
        }
        Ok(true)
    }

    /// Turn until an error comes out.
    fn until_error(&mut self, secs: u64) -> Error {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            assert!(Instant::now() < deadline, "no error within {secs} s");
            if let Err(e) = self.turn() {
                return e;
            }
        }
    }
}

fn ca(b: &Broker) -> TlsOptions {
    TlsOptions {
        ca_file: Some(b.certs.ca.clone()),
        ..TlsOptions::default()
    }
}

#[test]
fn tls_over_a_trickling_link() {
    let b = Broker::start();
    let p = Proxy::start(b.tls_port);
    p.trickle(Some(20_000));
    let mut d = Driver::new(&p.uri("ssl", "localhost"), &ca(&b)).unwrap();
    assert!(d.until(4, 10).unwrap(), "no CONNACK over the slow link");
    assert_eq!(d.buf, CONNACK_OK);
    // 2000 PINGREQs in one flush; their 2000 PINGRESPs trickle back in many small reads.
    for _ in 0..2000 {
        d.conn.write(&[0xc0, 0x00]).unwrap();
    }
    d.conn.flush().unwrap();
    assert!(d.until(4 + 4000, 15).unwrap(), "got {} bytes", d.buf.len());
    assert!(d.buf[4..].chunks(2).all(|c| c == [0xd0, 0x00]));
}

#[test]
fn stalled_handshake_waits_then_completes() {
    let b = Broker::start();
    let p = Proxy::start(b.tls_port);
    p.stall(true);
    let mut d = Driver::new(&p.uri("ssl", "localhost"), &ca(&b)).unwrap();
    // Nothing moves, nothing blocks: turns return at once and the handshake does not complete.
    let t0 = Instant::now();
    assert!(!d.until(4, 1).unwrap());
    assert!(t0.elapsed() < common::slow(Duration::from_secs(3)));
    assert!(!d.conn.is_established());
    p.stall(false);
    assert!(d.until(4, 10).unwrap(), "no CONNACK after the stall ended");
    assert_eq!(d.buf, CONNACK_OK);
}

#[test]
fn cut_link_is_an_error() {
    let b = Broker::start();
    let p = Proxy::start(b.tls_port);
    let mut d = Driver::new(&p.uri("ssl", "localhost"), &ca(&b)).unwrap();
    assert!(d.until(4, 10).unwrap());
    p.cut();
    match d.until_error(5) {
        Error::Closed { .. } => {}
        e @ Error::Io { .. } => assert!(e.to_string().contains("localhost"), "{e}"),
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn half_closed_link_is_closed() {
    let b = Broker::start();
    let p = Proxy::start(b.tls_port);
    let mut d = Driver::new(&p.uri("ssl", "localhost"), &ca(&b)).unwrap();
    assert!(d.until(4, 10).unwrap());
    p.half_close();
    assert!(matches!(d.until_error(5), Error::Closed { .. }));
}

#[test]
fn refused_port_is_an_io_error_naming_it() {
    let b = Broker::start();
    let p = Proxy::start(b.tls_port);
    p.refuse(true);
    let e = match Driver::new(&p.uri("ssl", "localhost"), &ca(&b)) {
        Ok(mut d) => d.until_error(5),
        Err(e) => e,
    };
    let m = e.to_string();
    assert!(matches!(e, Error::Tcp { .. }), "{e:?}");
    assert!(
        m.contains(&format!("127.0.0.1:{} refused the connection", p.port)),
        "{m}"
    );
    // Reopened: the next connection works.
    p.refuse(false);
    let mut d = Driver::new(&p.uri("ssl", "localhost"), &ca(&b)).unwrap();
    assert!(d.until(4, 10).unwrap());
}
