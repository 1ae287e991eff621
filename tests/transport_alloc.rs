//! Once warm, `Conn::write` does not allocate, and a TLS flush of many small packets allocates about once
//! per 16 KiB record (rustls' record buffers), not once per packet. Counted with a global allocator; this
//! binary holds a single test so that no other test thread allocates meanwhile.
mod common;

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use qmqtt::transport::{tls_config, Conn, Endpoint, TlsOptions};

#[global_allocator]
static A: common::alloc::Counting = common::alloc::Counting;

const CONNECT: [u8; 14] = [
    0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
];

fn established(mut c: Conn) -> Conn {
    let mut poll = Poll::new().unwrap();
    c.register(poll.registry(), Token(0)).unwrap();
    let mut ev = Events::with_capacity(4);
    let mut buf = Vec::new();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while buf.len() < 4 {
        assert!(Instant::now() < deadline);
        poll.poll(&mut ev, Some(Duration::from_millis(50))).unwrap();
        c.flush().unwrap();
        while c.read(&mut buf).unwrap() > 0 {}
        if c.is_established() && !sent {
            c.write(&CONNECT).unwrap();
            c.flush().unwrap();
            sent = true;
        }
    }
    c.deregister().unwrap();
    c
}

fn flush_all(c: &mut Conn) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.flush().unwrap() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn writes_do_not_allocate_once_warm() {
    let b = common::Broker::start();
    let publish = {
        let mut p = vec![0x30, 0x1c, 0x00, 0x06];
        p.extend_from_slice(b"t/allo");
        p.extend_from_slice(&[b'y'; 20]);
        p
    };
    for tls in [false, true] {
        let opts = TlsOptions {
            ca_file: Some(b.certs.ca.clone()),
            ..TlsOptions::default()
        };
        let conn = if tls {
            let ep = Endpoint::parse(&b.tls_uri()).unwrap();
            Conn::connect(&ep, Some((tls_config(&opts).unwrap(), &opts))).unwrap()
        } else {
            Conn::connect(&Endpoint::parse(&b.tcp_uri()).unwrap(), None).unwrap()
        };
        let mut c = established(conn);
        // Warm up: the send buffer grows to its working size.
        for _ in 0..500 {
            c.write(&publish).unwrap();
        }
        flush_all(&mut c);
        for round in 0..3 {
            let a0 = common::alloc::all_allocs() as usize;
            for _ in 0..500 {
                c.write(&publish).unwrap();
            }
            let a1 = common::alloc::all_allocs() as usize;
            assert_eq!(a1 - a0, 0, "tls={tls} round {round}: writes allocated");
            flush_all(&mut c);
            let a2 = common::alloc::all_allocs() as usize;
            // 15000 bytes: one TLS record (rustls allocates its buffer: 1), nothing for TCP.
            let limit = if tls { 2 } else { 0 };
            assert!(
                a2 - a1 <= limit,
                "tls={tls} round {round}: flush allocated {} times",
                a2 - a1
            );
        }
    }
}
