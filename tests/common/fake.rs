//! Minimal fake brokers on loopback for failure scenarios a real broker will not play: a CONNACK refusal
//! with any code, garbage instead of MQTT, a reset, a close, silence. Each accepted connection gets the
//! behaviour on its own thread; the listener lives as long as the test process.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

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
