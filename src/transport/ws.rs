//! MQTT over WebSockets (RFC 6455, as MQTT 3.1.1 and 5 §6 use it): the client's upgrade and the framing,
//! sans-I/O, for the transport to put between TCP/TLS and the MQTT bytes.
//!
//! - [`Upgrade`]: the `GET <path> HTTP/1.1` request (`Upgrade: websocket`, a random `Sec-WebSocket-Key`,
//!   version 13, subprotocol `mqtt`) and the check of the broker's `101` answer (`Sec-WebSocket-Accept` is
//!   SHA-1 of the key and RFC 6455's GUID; a subprotocol other than `mqtt`, or any extension, is refused).
//! - [`Framer`]: MQTT bytes → binary frames of at most [`MAX_FRAME_OUT`] bytes, masked with a fresh key each
//!   (keys come from the system's CSPRNG, fetched [`MASK_POOL`] bytes at a time so that a flush costs no extra
//!   system call); also the pong and close frames.
//! - [`Deframer`]: the broker's frames → MQTT bytes, **in place** in the receive buffer (frame headers are
//!   squeezed out, payloads stay where they are read), streaming: a frame's payload is passed on as it
//!   arrives, never held whole, so the only memory a frame takes is its ≤ 14-byte header and, for control
//!   frames, their ≤ 125-byte payload (RFC 6455's bound). Binary and continuation frames carry MQTT (packets
//!   may span frames); control frames may come between the fragments of a message; a ping is answered with a
//!   pong ([`Deframer::take_pong`]), a close ends the stream ([`Closed`], answered by the transport's close).
//!   Text frames, masked server frames, reserved bits or opcodes, and fragmented or oversized control frames
//!   are protocol errors ([`WsError::Protocol`]).
//!
//! Why our own framing and not `tungstenite`: tungstenite's `WebSocket` owns its stream (`Read + Write`) and
//! its buffers, and hands out an owned `Message` per message (its frames are read into a fresh buffer and
//! sent from an owned `Bytes`), which would cost an allocation and a copy per MQTT batch each way, and bring
//! `http`, `httparse`, `rand`, `sha1`, `bytes`, `utf-8` and `thiserror` to the gateway. MQTT needs a small part
//! of RFC 6455 — binary frames, masking, ping/pong, close — and that part fits the transport's own buffers
//! with no allocation per message: this module, ~300 lines, tested below against the RFC's examples and by
//! property tests (any byte stream, any split), and end to end against a real broker's WebSocket listener.
//! SHA-1 and the random bytes come from `ring` (already in the build for rustls).
use std::fmt;

use base64ct::Encoding;
use ring::rand::{SecureRandom, SystemRandom};

use super::http::{Head, HeadError};

/// The path used when a `ws://` / `wss://` URI has none (paho's, mosquitto's and most brokers').
pub const DEFAULT_PATH: &str = "/mqtt";
/// The largest frame sent: MQTT bytes queued beyond this go in further frames.
pub const MAX_FRAME_OUT: usize = 65_535;
/// Random bytes fetched from the system at a time for masking keys (4 per frame).
pub const MASK_POOL: usize = 256;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL: usize = 125;
/// RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Why the WebSocket hop failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// The upgrade was answered with a status other than `101` (`target`: `host:port/path`).
    Refused { target: String, status_line: String },
    /// The answer is not a valid WebSocket upgrade (not HTTP, or a wrong or missing header).
    NotWebSocket { target: String, why: String },
    /// The broker broke RFC 6455 after the upgrade.
    Protocol(&'static str),
    /// The system's random generator failed (masking keys, the handshake key).
    Random,
    /// The broker closed the WebSocket with a close frame.
    Closed(Closed),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Refused {
                target,
                status_line,
            } => {
                write!(f, "the WebSocket upgrade to {target} was refused: '{status_line}'")?;
                if status_line.split(' ').nth(1) == Some("404") {
                    write!(f, ": no WebSocket endpoint at that path: give the broker's path in the URI (ws://host:port/path; default {DEFAULT_PATH})")
                } else {
                    f.write_str(": is this the broker's WebSocket listener? Its log says why")
                }
            }
            WsError::NotWebSocket { target, why } => write!(
                f,
                "{target} did not accept a WebSocket connection: {why}: is this the broker's WebSocket \
                 listener (ws:// for plain, wss:// for TLS)?"
            ),
            WsError::Protocol(why) => write!(f, "the broker broke the WebSocket protocol: {why}"),
            WsError::Random => f.write_str(
                "the system's random number generator failed (needed for WebSocket masking keys)",
            ),
            WsError::Closed(c) => c.fmt(f),
        }
    }
}

impl std::error::Error for WsError {}

/// The client side of the opening handshake.
#[derive(Debug)]
pub struct Upgrade {
    target: String,
    request: Vec<u8>,
    /// The `Sec-WebSocket-Accept` the broker must answer.
    accept: String,
    head: Head,
}

/// `base64(SHA-1(key ‖ GUID))`.
fn accept_for(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    base64ct::Base64::encode_string(ctx.finish().as_ref())
}

impl Upgrade {
    /// The upgrade for `path` on `host:port` (`default_port`: the scheme's, left out of `Host` when equal),
    /// with a random key.
    pub fn new(host: &str, port: u16, default_port: u16, path: &str) -> Result<Upgrade, WsError> {
        let mut nonce = [0u8; 16];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| WsError::Random)?;
        Ok(Upgrade::with_key(host, port, default_port, path, &nonce))
    }

    /// As [`Upgrade::new`] with a given 16-byte nonce (RFC 6455 §4.1 wants it random: tests only).
    pub fn with_key(
        host: &str,
        port: u16,
        default_port: u16,
        path: &str,
        nonce: &[u8; 16],
    ) -> Upgrade {
        let key = base64ct::Base64::encode_string(nonce);
        let h = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let host_hdr = if port == default_port {
            h.clone()
        } else {
            format!("{h}:{port}")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_hdr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        .into_bytes();
        Upgrade {
            target: format!("{h}:{port}{path}"),
            request,
            accept: accept_for(&key),
            head: Head::default(),
        }
    }

    /// The request to write, whole, before anything else.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// `host:port/path`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The broker's answer in words, once [`Upgrade::feed`] accepted it: its status line and subprotocol.
    pub fn answer(&self) -> String {
        match self.head.header("sec-websocket-protocol") {
            Some(p) => format!("{} (subprotocol {p})", self.head.status_line()),
            None => format!("{} (no subprotocol named)", self.head.status_line()),
        }
    }

    /// Read the broker's answer. `Ok(None)`: all of `data` taken, more needed. `Ok(Some(n))`: upgraded; the
    /// answer was the first `n` bytes of `data`, the rest are WebSocket frames.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, WsError> {
        let not_ws = |why: String| WsError::NotWebSocket {
            target: self.target.clone(),
            why,
        };
        let n = match self.head.feed(data) {
            Ok(None) => return Ok(None),
            Ok(Some(n)) => n,
            Err(
                e @ (HeadError::NotHttp { .. } | HeadError::BadStatus { .. } | HeadError::TooLarge),
            ) => return Err(not_ws(e.to_string())),
        };
        let h = &self.head;
        if h.status() != 101 {
            return Err(WsError::Refused {
                target: self.target.clone(),
                status_line: h.status_line().to_string(),
            });
        }
        if !h
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        {
            return Err(not_ws("its answer has no 'Upgrade: websocket'".into()));
        }
        if !h.header("connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        }) {
            return Err(not_ws("its answer has no 'Connection: Upgrade'".into()));
        }
        match h.header("sec-websocket-accept") {
            Some(a) if a == self.accept => {}
            Some(a) => {
                return Err(not_ws(format!(
                    "its Sec-WebSocket-Accept '{a}' does not match the key sent"
                )))
            }
            None => return Err(not_ws("its answer has no Sec-WebSocket-Accept".into())),
        }
        match h.header("sec-websocket-protocol") {
            None => log::debug!(
                "{}: the WebSocket upgrade names no subprotocol; going on with MQTT",
                self.target
            ),
            Some(p) if p.eq_ignore_ascii_case("mqtt") => {}
            Some(p) => {
                return Err(not_ws(format!(
                    "it chose the subprotocol '{p}', not 'mqtt'"
                )))
            }
        }
        if let Some(x) = h.header("sec-websocket-extensions") {
            return Err(not_ws(format!(
                "it chose the extension '{x}', none was offered"
            )));
        }
        Ok(Some(n))
    }
}

/// XOR `data` with the 4-byte `key` (which starts at `data[0]`), 8 bytes at a time.
fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Writes client frames (masked) into the caller's buffer.
pub struct Framer {
    rng: SystemRandom,
    pool: [u8; MASK_POOL],
    /// `pool[used..]` is unused randomness.
    used: usize,
}

impl fmt::Debug for Framer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framer").finish_non_exhaustive()
    }
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            rng: SystemRandom::new(),
            pool: [0; MASK_POOL],
            used: MASK_POOL,
        }
    }
}

impl Framer {
    fn mask_key(&mut self) -> Result<[u8; 4], WsError> {
        if self.used + 4 > MASK_POOL {
            self.rng.fill(&mut self.pool).map_err(|_| WsError::Random)?;
            self.used = 0;
        }
        let mut k = [0; 4];
        k.copy_from_slice(&self.pool[self.used..self.used + 4]);
        self.used += 4;
        Ok(k)
    }

    fn frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WsError> {
        let key = self.mask_key()?;
        let len = payload.len();
        out.reserve(14 + len);
        out.push(0x80 | opcode);
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        let at = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[at..], key);
        Ok(())
    }

    /// Append `data` (MQTT bytes) to `out` as binary frames of at most [`MAX_FRAME_OUT`] bytes each.
    /// Allocates only when `out` has to grow.
    pub fn data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), WsError> {
        for chunk in data.chunks(MAX_FRAME_OUT) {
            self.frame(OP_BINARY, chunk, out)?;
        }
        Ok(())
    }

    /// Append a pong carrying `payload` (the ping's; at most 125 bytes, as [`Deframer::take_pong`] gives).
    pub fn pong(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WsError> {
        self.frame(OP_PONG, &payload[..payload.len().min(MAX_CONTROL)], out)
    }

    /// Append a close frame with `code` (1000: normal closure; none: an empty close).
    pub fn close(&mut self, code: Option<u16>, out: &mut Vec<u8>) -> Result<(), WsError> {
        match code {
            Some(c) => self.frame(OP_CLOSE, &c.to_be_bytes(), out),
            None => self.frame(OP_CLOSE, &[], out),
        }
    }
}

/// A ping from the broker, to be answered with a pong carrying the same payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    buf: [u8; MAX_CONTROL],
    len: usize,
}

impl Ping {
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The broker's close frame: its status code and reason, if it gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.reason.is_empty()) {
            (None, _) => f.write_str("the broker closed the WebSocket"),
            (Some(c), true) => write!(f, "the broker closed the WebSocket (code {c})"),
            (Some(c), false) => write!(
                f,
                "the broker closed the WebSocket (code {c}: {})",
                self.reason
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame header (`hdr[..hdr_len]` so far).
    Header,
    /// Passing on a data frame's payload.
    Data,
    /// Collecting a control frame's payload (`op`).
    Control(u8),
    /// A close frame came: nothing more is read.
    Closed,
}

/// Reads the broker's frames in place (see the module docs).
#[derive(Debug)]
pub struct Deframer {
    state: State,
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// A data message is open (its last frame had no FIN): the next data frame must be a continuation.
    in_message: bool,
    ctrl: [u8; MAX_CONTROL],
    ctrl_len: usize,
    /// The last ping not yet answered.
    pong: Option<Ping>,
}

impl Default for Deframer {
    fn default() -> Self {
        Deframer {
            state: State::Header,
            hdr: [0; 14],
            hdr_len: 0,
            remaining: 0,
            in_message: false,
            ctrl: [0; MAX_CONTROL],
            ctrl_len: 0,
            pong: None,
        }
    }
}

/// The header's full length once its first two bytes are known.
fn header_len(b1: u8) -> usize {
    2 + match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    } + if b1 & 0x80 != 0 { 4 } else { 0 }
}

impl Deframer {
    /// Turn `buf[from..]` (bytes as read from the stream) into the MQTT bytes they carry, in place: on
    /// return `buf[from..]` holds only payload. A header cut by the end of `buf` is kept for the next call.
    /// `Ok(Some(closed))`: the broker sent a close frame (the bytes before it are kept; anything after it
    /// is dropped, and later calls drop everything).
    pub fn unframe(&mut self, buf: &mut Vec<u8>, from: usize) -> Result<Option<Closed>, WsError> {
        let end = buf.len();
        let (mut r, mut w) = (from, from);
        let mut closed = None;
        while r < end {
            match self.state {
                State::Closed => break,
                State::Header => {
                    let need = if self.hdr_len < 2 {
                        2
                    } else {
                        header_len(self.hdr[1])
                    };
                    let n = (need - self.hdr_len).min(end - r);
                    self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&buf[r..r + n]);
                    self.hdr_len += n;
                    r += n;
                    if self.hdr_len == 2 && header_len(self.hdr[1]) > 2 {
                        continue;
                    }
                    if self.hdr_len == need {
                        self.start_frame()?;
                        if self.remaining == 0 {
                            closed = self.end_frame();
                        }
                    }
                }
                State::Data => {
                    let n = self.remaining.min((end - r) as u64) as usize;
                    buf.copy_within(r..r + n, w);
                    w += n;
                    r += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        closed = self.end_frame();
                    }
                }
                State::Control(_) => {
                    let n = self.remaining.min((end - r) as u64) as usize;
                    self.ctrl[self.ctrl_len..self.ctrl_len + n].copy_from_slice(&buf[r..r + n]);
                    self.ctrl_len += n;
                    r += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        closed = self.end_frame();
                    }
                }
            }
        }
        buf.truncate(w);
        Ok(closed)
    }

    /// Check a complete header and set up for its payload.
    fn start_frame(&mut self) -> Result<(), WsError> {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0f;
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol(
                "a frame has reserved bits set (no extension was agreed)",
            ));
        }
        if b1 & 0x80 != 0 {
            return Err(WsError::Protocol(
                "a frame from the server is masked (RFC 6455 §5.1 forbids it)",
            ));
        }
        let len = match b1 & 0x7f {
            126 => u16::from_be_bytes([self.hdr[2], self.hdr[3]]) as u64,
            127 => {
                let mut l = [0; 8];
                l.copy_from_slice(&self.hdr[2..10]);
                let l = u64::from_be_bytes(l);
                if l >> 63 != 0 {
                    return Err(WsError::Protocol("a frame length has its top bit set"));
                }
                l
            }
            l => l as u64,
        };
        self.hdr_len = 0;
        self.remaining = len;
        self.state = match op {
            OP_BINARY | OP_CONT => {
                if op == OP_BINARY && self.in_message {
                    return Err(WsError::Protocol(
                        "a new binary message began before the last one ended",
                    ));
                }
                if op == OP_CONT && !self.in_message {
                    return Err(WsError::Protocol(
                        "a continuation frame came with no message to continue",
                    ));
                }
                self.in_message = !fin;
                State::Data
            }
            OP_TEXT => {
                return Err(WsError::Protocol(
                    "a text frame came: MQTT over WebSockets uses binary frames",
                ))
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WsError::Protocol("a control frame is fragmented"));
                }
                if len > MAX_CONTROL as u64 {
                    return Err(WsError::Protocol(
                        "a control frame is longer than 125 bytes",
                    ));
                }
                self.ctrl_len = 0;
                State::Control(op)
            }
            _ => return Err(WsError::Protocol("a frame has a reserved opcode")),
        };
        Ok(())
    }

    /// The current frame's payload is complete.
    fn end_frame(&mut self) -> Option<Closed> {
        let st = self.state;
        self.state = State::Header;
        match st {
            State::Control(OP_PING) => {
                self.pong = Some(Ping {
                    buf: self.ctrl,
                    len: self.ctrl_len,
                });
                None
            }
            State::Control(OP_CLOSE) => {
                self.state = State::Closed;
                let c = &self.ctrl[..self.ctrl_len];
                Some(Closed {
                    code: (c.len() >= 2).then(|| u16::from_be_bytes([c[0], c[1]])),
                    reason: String::from_utf8_lossy(c.get(2..).unwrap_or(&[])).into_owned(),
                })
            }
            _ => None,
        }
    }

    /// A ping to answer with a pong (the latest, if several came), once.
    pub fn take_pong(&mut self) -> Option<Ping> {
        self.pong.take()
    }

    /// A close frame was read.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A server frame (unmasked), as a broker writes it.
    fn server_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
        let n = payload.len();
        if n < 126 {
            f.push(n as u8);
        } else if n <= 0xffff {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    /// Decode client frames (masked), as a broker reads them: (fin, opcode, unmasked payload).
    fn read_client_frames(mut b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert!(b[1] & 0x80 != 0, "client frames are masked");
            let (len, mut at) = match b[1] & 0x7f {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                l => (l as usize, 2),
            };
            let key: [u8; 4] = b[at..at + 4].try_into().unwrap();
            at += 4;
            let p: Vec<u8> = b[at..at + len]
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ key[i % 4])
                .collect();
            out.push((b[0] & 0x80 != 0, b[0] & 0x0f, p));
            b = &b[at + len..];
        }
        out
    }

    #[test]
    fn rfc_6455_accept_example() {
        // §1.3: key "dGhlIHNhbXBsZSBub25jZQ==" ("the sample nonce") → "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn upgrade() -> Upgrade {
        Upgrade::with_key("broker.lan", 8080, 80, "/mqtt", b"the sample nonce")
    }

    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    #[test]
    fn request_bytes() {
        assert_eq!(
            std::str::from_utf8(upgrade().request()).unwrap(),
            "GET /mqtt HTTP/1.1\r\nHost: broker.lan:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        let u = Upgrade::with_key("::1", 443, 443, "/", b"the sample nonce");
        assert!(std::str::from_utf8(u.request())
            .unwrap()
            .contains("\r\nHost: [::1]\r\n"));
        assert_eq!(u.target(), "[::1]:443/");
        let a = Upgrade::new("h", 80, 80, "/mqtt").unwrap();
        let b = Upgrade::new("h", 80, 80, "/mqtt").unwrap();
        assert_ne!(a.request(), b.request(), "keys are random");
    }

    #[test]
    fn accepts_a_good_answer_and_keeps_what_follows() {
        let mut u = upgrade();
        let mut data = GOOD.as_bytes().to_vec();
        data.extend_from_slice(&server_frame(true, OP_BINARY, &[0x20, 2, 0, 0]));
        assert_eq!(u.feed(&data), Ok(Some(GOOD.len())));
        // Without the subprotocol header too (some brokers leave it out).
        let mut u = upgrade();
        let g = GOOD.replace("Sec-WebSocket-Protocol: mqtt\r\n", "");
        assert_eq!(u.feed(g.as_bytes()), Ok(Some(g.len())));
    }

    #[test]
    fn refuses_bad_answers() {
        let bad = |s: String| upgrade().feed(s.as_bytes()).unwrap_err().to_string();
        let m = bad("HTTP/1.1 404 Not Found\r\n\r\n".into());
        assert!(
            m.contains("'HTTP/1.1 404 Not Found'")
                && m.contains("path")
                && m.contains("broker.lan:8080/mqtt"),
            "{m}"
        );
        let m = bad("HTTP/1.1 400 Bad Request\r\n\r\n".into());
        assert!(
            m.contains("refused") && !m.contains("path in the URI"),
            "{m}"
        );
        assert!(bad(GOOD.replace("s3pP", "AAAA")).contains("does not match the key"));
        assert!(bad(GOOD.replace("Upgrade: websocket\r\n", "")).contains("Upgrade: websocket"));
        assert!(
            bad(GOOD.replace("Connection: Upgrade", "Connection: close"))
                .contains("Connection: Upgrade")
        );
        assert!(bad(GOOD.replace(": mqtt", ": mqttv3.1")).contains("'mqttv3.1'"));
        assert!(bad(GOOD.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ))
        .contains("permessage-deflate"));
        // An MQTT listener answers the GET with nothing useful: here, a CONNACK-like byte string.
        assert!(matches!(
            upgrade().feed(&[0x20, 0x02, 0, 0, 0, 0]),
            Err(WsError::NotWebSocket { .. })
        ));
    }

    #[test]
    fn frames_are_masked_binary_and_bounded() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        f.data(&data, &mut out).unwrap();
        let frames = read_client_frames(&out);
        assert_eq!(frames.len(), 4);
        assert!(frames
            .iter()
            .all(|(fin, op, p)| *fin && *op == OP_BINARY && p.len() <= MAX_FRAME_OUT));
        assert_eq!(frames.concat_payload(), data);
        // Small payloads: a 6-byte header.
        out.clear();
        f.data(b"\xc0\x00", &mut out).unwrap();
        assert_eq!(out.len(), 2 + 4 + 2);
        // Keys differ from frame to frame (a pool refill in between, too).
        let mut keys = std::collections::HashSet::new();
        for _ in 0..(MASK_POOL / 4 + 5) {
            out.clear();
            f.data(b"x", &mut out).unwrap();
            keys.insert(out[2..6].to_vec());
        }
        assert!(keys.len() > MASK_POOL / 4, "{}", keys.len());
        out.clear();
        f.pong(b"hi", &mut out).unwrap();
        f.close(Some(1000), &mut out).unwrap();
        assert_eq!(
            read_client_frames(&out),
            vec![
                (true, OP_PONG, b"hi".to_vec()),
                (true, OP_CLOSE, vec![3, 232])
            ]
        );
    }

    trait Concat {
        fn concat_payload(&self) -> Vec<u8>;
    }
    impl Concat for Vec<(bool, u8, Vec<u8>)> {
        fn concat_payload(&self) -> Vec<u8> {
            self.iter().flat_map(|(_, _, p)| p.clone()).collect()
        }
    }

    #[test]
    fn mask_matches_bytewise() {
        for n in 0..40 {
            let mut a: Vec<u8> = (0..n as u8).collect();
            let b: Vec<u8> = a
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ [1, 2, 3, 4][i % 4])
                .collect();
            apply_mask(&mut a, [1, 2, 3, 4]);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn deframes_in_place_with_control_frames_between_fragments() {
        let mut stream = b"junk-before".to_vec();
        let from = stream.len();
        stream.extend(server_frame(false, OP_BINARY, b"hel"));
        stream.extend(server_frame(true, OP_PING, b"p1"));
        stream.extend(server_frame(true, OP_PONG, b""));
        stream.extend(server_frame(false, OP_CONT, b"lo "));
        stream.extend(server_frame(true, OP_PING, b"p2"));
        stream.extend(server_frame(true, OP_CONT, &vec![b'w'; 300]));
        stream.extend(server_frame(true, OP_BINARY, b""));
        stream.extend(server_frame(true, OP_BINARY, &vec![b'z'; 70_000]));
        let mut d = Deframer::default();
        assert_eq!(d.unframe(&mut stream, from), Ok(None));
        let mut want = b"junk-beforehello ".to_vec();
        want.extend(vec![b'w'; 300]);
        want.extend(vec![b'z'; 70_000]);
        assert_eq!(stream, want);
        assert_eq!(d.take_pong().unwrap().payload(), b"p2", "the latest ping");
        assert_eq!(d.take_pong(), None);
    }

    #[test]
    fn close_frame_ends_the_stream() {
        let mut s = server_frame(true, OP_BINARY, b"ab");
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice(b"bye");
        s.extend(server_frame(true, OP_CLOSE, &close));
        s.extend(server_frame(true, OP_BINARY, b"after"));
        let mut d = Deframer::default();
        let c = d.unframe(&mut s, 0).unwrap().unwrap();
        assert_eq!(
            c,
            Closed {
                code: Some(1000),
                reason: "bye".into()
            }
        );
        assert_eq!(
            c.to_string(),
            "the broker closed the WebSocket (code 1000: bye)"
        );
        assert_eq!(s, b"ab");
        assert!(d.is_closed());
        let mut more = server_frame(true, OP_BINARY, b"x");
        assert_eq!(d.unframe(&mut more, 0), Ok(None));
        assert!(more.is_empty());
        let mut s = server_frame(true, OP_CLOSE, b"");
        assert_eq!(
            Deframer::default()
                .unframe(&mut s, 0)
                .unwrap()
                .unwrap()
                .code,
            None
        );
    }

    #[test]
    fn protocol_errors() {
        let err = |b: Vec<u8>| Deframer::default().unframe(&mut b.clone(), 0).unwrap_err();
        let msg = |b: Vec<u8>| err(b).to_string();
        assert!(msg(server_frame(true, OP_TEXT, b"x")).contains("text frame"));
        assert!(msg(server_frame(true, OP_CONT, b"x")).contains("no message to continue"));
        let mut two = server_frame(false, OP_BINARY, b"a");
        two.extend(server_frame(true, OP_BINARY, b"b"));
        assert!(msg(two).contains("before the last one ended"));
        assert!(msg(server_frame(false, OP_PING, b"")).contains("fragmented"));
        assert!(msg(server_frame(true, OP_PING, &[0; 126])).contains("125"));
        assert!(msg(server_frame(true, 3, b"")).contains("reserved opcode"));
        assert!(msg(server_frame(true, 0x0b, b"")).contains("reserved opcode"));
        let mut rsv = server_frame(true, OP_BINARY, b"");
        rsv[0] |= 0x40;
        assert!(msg(rsv).contains("reserved bits"));
        assert!(msg(vec![0x82, 0x81, 1, 2, 3, 4, 0]).contains("masked"));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(msg(huge).contains("top bit"));
    }

    fn stream_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        // Random messages, each split into random fragments, with pings between fragments.
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..400),
                proptest::collection::vec(1usize..200, 0..4),
                proptest::collection::vec(any::<bool>(), 0..4),
            ),
            0..8,
        )
        .prop_map(|msgs| {
            let (mut wire, mut want) = (Vec::new(), Vec::new());
            for (payload, cuts, pings) in msgs {
                want.extend_from_slice(&payload);
                let mut parts = Vec::new();
                let mut rest = &payload[..];
                for c in cuts {
                    let c = c.min(rest.len());
                    parts.push(&rest[..c]);
                    rest = &rest[c..];
                }
                parts.push(rest);
                let last = parts.len() - 1;
                for (i, p) in parts.iter().enumerate() {
                    let op = if i == 0 { OP_BINARY } else { OP_CONT };
                    wire.extend(server_frame(i == last, op, p));
                    if pings.get(i).copied().unwrap_or(false) && i != last {
                        wire.extend(server_frame(true, OP_PING, b"pp"));
                    }
                }
            }
            (wire, want)
        })
    }

    proptest! {
        #[test]
        fn any_split_gives_the_payload((wire, want) in stream_strategy(),
                                       cuts in proptest::collection::vec(0usize..2000, 0..6)) {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            let mut pieces = Vec::new();
            let mut rest = &wire[..];
            for c in cuts {
                let c = c.min(rest.len());
                pieces.push(&rest[..c]);
                rest = &rest[c..];
            }
            pieces.push(rest);
            for p in pieces {
                let from = got.len();
                got.extend_from_slice(p);
                prop_assert_eq!(d.unframe(&mut got, from), Ok(None));
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let mut d = Deframer::default();
            let cut = cut.min(data.len());
            let mut a = data[..cut].to_vec();
            if d.unframe(&mut a, 0).is_ok() {
                let mut b = data[cut..].to_vec();
                let _ = d.unframe(&mut b, 0);
            }
            let _ = upgrade().feed(&data);
        }

        #[test]
        fn framer_round_trips(data in proptest::collection::vec(any::<u8>(), 0..70_000usize)) {
            let mut f = Framer::default();
            let mut out = Vec::new();
            f.data(&data, &mut out).unwrap();
            prop_assert_eq!(read_client_frames(&out).concat_payload(), data);
        }
    }
}
