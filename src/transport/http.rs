//! The head of an HTTP/1.1 response — status line and headers — read sans-I/O, for the two hops that begin
//! with one: the proxy's answer to `CONNECT` ([`super::proxy`]) and the broker's answer to the WebSocket
//! upgrade ([`super::ws`]). Bounded: a head longer than [`MAX_HEAD`] is refused, so a peer that is not an
//! HTTP server cannot make the client hold more than that.
use std::fmt;

/// The largest response head read (status line, headers and the blank line).
pub const MAX_HEAD: usize = 8 * 1024;

/// Why a response head cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// The first bytes are not `HTTP/`: the peer speaks something else (`got`: what it sent, printable).
    NotHttp { got: String },
    /// The status line is not `HTTP/x.y NNN reason`.
    BadStatus { line: String },
    /// No blank line within [`MAX_HEAD`] bytes.
    TooLarge,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::NotHttp { got } => write!(f, "it answered with {got}, not HTTP"),
            HeadError::BadStatus { line } => write!(f, "its status line '{line}' is not HTTP"),
            HeadError::TooLarge => write!(
                f,
                "its answer has no end of headers within {} KiB",
                MAX_HEAD / 1024
            ),
        }
    }
}

/// Up to 24 bytes of what the peer sent, escaped, for messages.
pub fn preview(b: &[u8]) -> String {
    let n = b.len().min(24);
    let mut s = format!("\"{}\"", b[..n].escape_ascii());
    if b.len() > n {
        s.push('…');
    }
    s
}

/// A response head being read: feed it what the socket gives until [`Head::feed`] returns `Some`.
#[derive(Debug, Default)]
pub struct Head {
    buf: Vec<u8>,
    status: u16,
    /// Byte ranges of the status line and of each header line (without line ends) in `buf`.
    lines: Vec<(usize, usize)>,
}

impl Head {
    /// Take bytes from `data` up to the end of the head. `Ok(None)`: all of `data` was taken, more is
    /// needed. `Ok(Some(n))`: the head is complete and was the first `n` bytes of `data`; the rest belongs to
    /// whatever follows it.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, HeadError> {
        let old = self.buf.len();
        let room = MAX_HEAD - old;
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        // `HTTP/` is checked as soon as the bytes are there, so that a TLS or MQTT answer fails at once.
        let n = self.buf.len().min(5);
        if !b"HTTP/".starts_with(&self.buf[..n]) {
            return Err(HeadError::NotHttp {
                got: preview(&self.buf),
            });
        }
        let from = old.saturating_sub(3);
        let end = find_end(&self.buf[from..]).map(|e| from + e);
        match end {
            Some(end) => {
                self.buf.truncate(end);
                self.parse()?;
                Ok(Some(end - old))
            }
            None if self.buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
            None => Ok(None),
        }
    }

    fn parse(&mut self) -> Result<(), HeadError> {
        let mut at = 0;
        while at < self.buf.len() {
            let nl = self.buf[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.buf.len(), |p| at + p);
            let mut end = nl;
            if end > at && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            if end > at {
                self.lines.push((at, end));
            }
            at = nl + 1;
        }
        let line = self.status_line();
        let bad = || HeadError::BadStatus {
            line: line.to_string(),
        };
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let code = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/") || code.len() != 3 {
            return Err(bad());
        }
        self.status = code.parse().map_err(|_| bad())?;
        Ok(())
    }

    /// The status code (valid once the head is complete).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The status line as sent, e.g. `HTTP/1.1 407 Proxy Authentication Required`.
    pub fn status_line(&self) -> &str {
        self.lines.first().map_or("", |&(a, b)| {
            std::str::from_utf8(&self.buf[a..b]).unwrap_or("?")
        })
    }

    /// Every header as (name, value), values trimmed; lines that are not `name: value` are skipped.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().skip(1).filter_map(|&(a, b)| {
            let line = std::str::from_utf8(&self.buf[a..b]).ok()?;
            let (name, value) = line.split_once(':')?;
            Some((name.trim(), value.trim()))
        })
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Where the blank line ends (`\r\n\r\n`, or a bare `\n\n`), as an index just past it.
fn find_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESP: &[u8] =
        b"HTTP/1.1 200 Connection established\r\nProxy-Agent: tinyproxy/1.11.1\r\nX:  y \r\n\r\nMQTT";

    #[test]
    fn whole_and_byte_by_byte() {
        let mut h = Head::default();
        assert_eq!(h.feed(RESP), Ok(Some(RESP.len() - 4)));
        assert_eq!(h.status(), 200);
        assert_eq!(h.status_line(), "HTTP/1.1 200 Connection established");
        assert_eq!(h.header("proxy-agent"), Some("tinyproxy/1.11.1"));
        assert_eq!(h.header("x"), Some("y"));
        assert_eq!(h.header("nope"), None);

        let mut h = Head::default();
        let end = RESP.len() - 4;
        for (i, b) in RESP.iter().enumerate() {
            let r = h.feed(std::slice::from_ref(b)).unwrap();
            if i + 1 < end {
                assert_eq!(r, None, "at {i}");
            } else {
                assert_eq!(r, Some(1), "at {i}");
                break;
            }
        }
        assert_eq!(h.status(), 200);
    }

    #[test]
    fn not_http_fails_at_once() {
        let mut h = Head::default();
        // A TLS alert, as a TLS listener answers a CONNECT line.
        let e = h.feed(&[0x15, 0x03, 0x03, 0x00, 0x02]).unwrap_err();
        assert_eq!(
            e,
            HeadError::NotHttp {
                got: "\"\\x15\\x03\\x03\\x00\\x02\"".into()
            }
        );
        let mut h = Head::default();
        assert!(matches!(h.feed(b"H"), Ok(None)));
        assert!(matches!(h.feed(b"TTX"), Err(HeadError::NotHttp { .. })));
    }

    #[test]
    fn bad_status_and_bare_newlines() {
        let mut h = Head::default();
        assert!(matches!(
            h.feed(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HeadError::BadStatus { .. })
        ));
        let mut h = Head::default();
        assert_eq!(h.feed(b"HTTP/1.0 403 Forbidden\n\n"), Ok(Some(24)));
        assert_eq!(h.status(), 403);
        assert_eq!(h.status_line(), "HTTP/1.0 403 Forbidden");
    }

    #[test]
    fn bounded() {
        let mut h = Head::default();
        assert_eq!(h.feed(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        let filler = vec![b'a'; MAX_HEAD];
        assert_eq!(h.feed(&filler), Err(HeadError::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_pieces(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                                   cut in 0usize..300) {
            let mut h = Head::default();
            let cut = cut.min(data.len());
            if let Ok(None) = h.feed(&data[..cut]) {
                let _ = h.feed(&data[cut..]);
            }
        }

        #[test]
        fn split_anywhere_same_result(cut in 0usize..RESP.len()) {
            let mut h = Head::default();
            let first = h.feed(&RESP[..cut]).unwrap();
            let total = match first {
                Some(n) => n,
                None => cut + h.feed(&RESP[cut..]).unwrap().unwrap(),
            };
            proptest::prop_assert_eq!(total, RESP.len() - 4);
            proptest::prop_assert_eq!(h.status(), 200);
        }
    }
}
