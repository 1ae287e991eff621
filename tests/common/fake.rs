//! Minimal fake brokers on loopback for scenarios a real broker will not play: a CONNACK refusal with any
//! code, garbage instead of MQTT, a reset, a close, silence, acknowledgements paced one segment at a time.
//! Each accepted connection gets the behaviour on its own thread; the listener lives as long as the test
//! process.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use qmqtt::QoS;

/// How a fake broker treats each connection after reading what the client sent first (its CONNECT).
#[derive(Clone, Copy, Debug)]
pub enum Fake {
    /// Never answer; keep the connection open.
    Silent,
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST: SO_LINGER 0).
    Reset,
    /// Send these bytes, then stay silent.
    Send(&'static [u8]),
    /// CONNACK with this return code, then stay silent.
    Connack(u8),
    /// Accept (MQTT 3.1.1), then acknowledge each QoS 1 PUBLISH in a TCP segment of its own, `gap` after
    /// the previous one, the first `limit` of them; the rest stay unacknowledged. PINGREQs are answered.
    PacedAcks { gap: Duration, limit: u32 },
}

/// Start a fake broker; returns its port.
pub fn start(how: Fake) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s, how));
        }
    });
    port
}

fn serve(mut s: TcpStream, how: Fake) {
    let mut b = [0u8; 4096];
    let _ = s.read(&mut b);
    match how {
        Fake::Silent => {}
        Fake::Close => return,
        Fake::Reset => return reset(s),
        Fake::Send(bytes) => {
            let _ = s.write_all(bytes);
        }
        Fake::Connack(code) => {
            let _ = s.write_all(&[0x20, 2, 0, code]);
        }
        Fake::PacedAcks { gap, limit } => return paced_acks(s, gap, limit),
    }
    // Hold the connection (the client gives up first); drain what it sends meanwhile.
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
}

fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our own socket with a valid linger struct of the stated size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn paced_acks(mut s: TcpStream, gap: Duration, limit: u32) {
    use qmqtt::codec::{decode, encode_ack, DecodeOptions, Packet, PacketType};
    let _ = s.set_nodelay(true);
    if s.write_all(&[0x20, 2, 0, 0]).is_err() {
        return;
    }
    let (mut buf, mut b, mut ack, mut acked) = (Vec::new(), [0u8; 65536], Vec::new(), 0u32);
    loop {
        let n = match s.read(&mut b) {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&b[..n]);
        let mut at = 0;
        while let Ok(Some((p, len))) = decode(&buf[at..], &DecodeOptions::default()) {
            at += len;
            ack.clear();
            match p {
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce && acked < limit => {
                    std::thread::sleep(gap);
                    let _ = encode_ack(&mut ack, PacketType::PubAck, p.pkid);
                    acked += 1;
                }
                Packet::PingReq => ack.extend_from_slice(&[0xd0, 0]),
                Packet::Disconnect(_) => return,
                _ => {}
            }
            if s.write_all(&ack).is_err() {
                return;
            }
        }
        buf.drain(..at);
    }
}
