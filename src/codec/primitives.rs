//! The wire primitives every packet is built from: the variable byte integer (the remaining length, and in
//! MQTT 5 property lengths and subscription identifiers), big-endian `u16`/`u32`, length-prefixed UTF-8
//! strings and binary data, and topic / filter validation.
//!
//! Readers work on a [`Reader`] over the packet's body (a slice whose end is the end of the packet), so a
//! field that runs past the end is "malformed" (the remaining length lied), never "need more bytes".

use super::{Error, PacketType};

/// Largest value the remaining length can hold (four bytes of seven bits): 268 435 455.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Decode a remaining length from the start of `buf` (the bytes after the first header byte).
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((value, bytes_used)))` otherwise.
pub fn read_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        if i == 4 {
            return Err(Error::MalformedRemainingLength);
        }
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        // Four continuation bytes: a fifth would be needed, which the format does not allow.
        return Err(Error::MalformedRemainingLength);
    }
    Ok(None)
}

/// Append the remaining-length encoding of `len` (which must be ≤ [`MAX_REMAINING_LENGTH`]).
pub fn write_remaining_length(out: &mut Vec<u8>, len: usize) -> Result<usize, Error> {
    let (b, n) = remaining_length_bytes(len)?;
    out.extend_from_slice(&b[..n]);
    Ok(n)
}

/// The remaining-length encoding of `len` (which must be ≤ [`MAX_REMAINING_LENGTH`]): the bytes, and how
/// many of them are used.
pub fn remaining_length_bytes(len: usize) -> Result<([u8; 4], usize), Error> {
    if len > MAX_REMAINING_LENGTH {
        return Err(Error::PayloadTooLarge { size: len });
    }
    let (mut b, mut x, mut n) = ([0u8; 4], len, 0);
    loop {
        b[n] = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            b[n] |= 0x80;
        }
        n += 1;
        if x == 0 {
            return Ok((b, n));
        }
    }
}

/// Bytes the remaining-length encoding of `len` takes (1..=4).
pub fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over one packet's body.
pub struct Reader<'a> {
    buf: &'a [u8],
    packet: PacketType,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], packet: PacketType) -> Self {
        Reader { buf, packet }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// The packet being read (named in errors).
    pub fn packet(&self) -> PacketType {
        self.packet
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn short(&self, what: &'static str) -> Error {
        Error::Malformed {
            packet: self.packet,
            what,
        }
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short(what))?;
        self.buf = rest;
        Ok(b)
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        if self.buf.len() < 2 {
            return Err(self.short(what));
        }
        let v = u16::from_be_bytes([self.buf[0], self.buf[1]]);
        self.buf = &self.buf[2..];
        Ok(v)
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A variable byte integer in its shortest form (MQTT 5 requires it [MQTT-1.5.5-1]).
    pub fn varint(&mut self, what: &'static str) -> Result<u32, Error> {
        let (v, n) = match read_remaining_length(self.buf) {
            Ok(Some(x)) => x,
            _ => return Err(self.short(what)),
        };
        if n != remaining_length_len(v) {
            return Err(Error::Malformed {
                packet: self.packet,
                what: "variable byte integer not in its shortest form",
            });
        }
        self.buf = &self.buf[n..];
        Ok(v as u32)
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(self.short(what));
        }
        let (v, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(v)
    }
    /// A non-zero packet identifier.
    pub fn pkid(&mut self) -> Result<u16, Error> {
        let id = self.u16("packet identifier")?;
        if id == 0 {
            return Err(Error::ZeroPacketId {
                packet: self.packet,
            });
        }
        Ok(id)
    }
    /// Two-byte length then that many bytes.
    pub fn binary(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let len = self.u16(what)? as usize;
        self.take(len, what)
    }
    /// A length-prefixed UTF-8 string without U+0000.
    pub fn string(&mut self, what: &'static str) -> Result<&'a str, Error> {
        let b = self.binary(what)?;
        check_str(b, what)
    }
    /// The body must be fully consumed.
    pub fn finish(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed {
                packet: self.packet,
                what: "trailing bytes after the last field",
            })
        }
    }
}

/// Check that `b` is an MQTT UTF-8 string: valid UTF-8 with no U+0000.
pub fn check_str<'a>(b: &'a [u8], field: &'static str) -> Result<&'a str, Error> {
    let s = std::str::from_utf8(b).map_err(|_| Error::InvalidUtf8 { field })?;
    if b.contains(&0) {
        return Err(Error::NulInString { field });
    }
    Ok(s)
}

/// Check a string about to be encoded: at most 65 535 bytes and no U+0000.
pub fn check_out_str(s: &str, field: &'static str) -> Result<(), Error> {
    if s.len() > u16::MAX as usize {
        return Err(Error::StringTooLong {
            field,
            len: s.len(),
        });
    }
    if s.as_bytes().contains(&0) {
        return Err(Error::NulInString { field });
    }
    Ok(())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A byte's high bit set where that byte of `x` is zero (and possibly above it: exact for "any").
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x
}

/// None of NUL, `+`, `#` in these 8 bytes (no branch).
#[inline]
fn word_clean(x: u64) -> bool {
    (zero_bytes(x) | zero_bytes(x ^ (ONES * b'+' as u64)) | zero_bytes(x ^ (ONES * b'#' as u64)))
        & HIGHS
        == 0
}

/// None of NUL, `+`, `#` in `b`: 8 bytes per step (every publish's topic is checked on the hot path).
#[inline]
pub(crate) fn no_nul_or_wildcard(b: &[u8]) -> bool {
    let word = |w: &[u8]| <[u8; 8]>::try_from(w).is_ok_and(|w| word_clean(u64::from_le_bytes(w)));
    if b.len() < 8 {
        // Padded with a harmless byte.
        let mut w = [b'a'; 8];
        w[..b.len()].copy_from_slice(b);
        return word_clean(u64::from_le_bytes(w));
    }
    let mut words = b.chunks_exact(8);
    let mut clean = true;
    for w in &mut words {
        clean &= word(w);
    }
    // The tail: the last 8 bytes, overlapping some already checked.
    clean && (words.remainder().is_empty() || word(&b[b.len() - 8..]))
}

/// `b` as text: ASCII (what topics almost always are) needs only a word-at-a-time check, anything else is
/// decoded as UTF-8.
#[inline]
pub(crate) fn utf8(b: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if b.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b)
    }
}

/// A PUBLISH topic name: non-empty, no wildcards, valid string.
pub fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        return Err(Error::EmptyTopic);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(Error::WildcardInTopic);
    }
    Ok(())
}

/// A topic filter: non-empty; `#` only as a whole last level; `+` only as a whole level.
pub fn check_filter(filter: &str) -> Result<(), Error> {
    if filter.is_empty() {
        return Err(Error::EmptyTopic);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return Err(Error::InvalidFilter);
        }
        if level.contains('+') && level != "+" {
            return Err(Error::InvalidFilter);
        }
    }
    Ok(())
}

pub fn write_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Length-prefixed bytes; the caller has checked the length fits in `u16`.
pub fn write_binary(out: &mut Vec<u8>, b: &[u8]) {
    write_u16(out, b.len() as u16);
    out.extend_from_slice(b);
}

/// Check a binary field about to be encoded fits its two-byte length.
pub fn check_out_binary(b: &[u8], field: &'static str) -> Result<(), Error> {
    if b.len() > u16::MAX as usize {
        return Err(Error::StringTooLong {
            field,
            len: b.len(),
        });
    }
    Ok(())
}

/// Append a fixed header (first byte + remaining length).
pub fn write_header(out: &mut Vec<u8>, byte1: u8, remaining: usize) -> Result<usize, Error> {
    if remaining > MAX_REMAINING_LENGTH {
        return Err(Error::PayloadTooLarge { size: remaining });
    }
    out.push(byte1);
    Ok(1 + write_remaining_length(out, remaining)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remaining-length table of MQTT 3.1.1 §2.2.3 (smallest and largest value of each width).
    #[test]
    fn remaining_length_spec_examples() {
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for &(v, bytes) in cases {
            let mut out = Vec::new();
            assert_eq!(write_remaining_length(&mut out, v).unwrap(), bytes.len());
            assert_eq!(out, bytes, "encoding {v}");
            assert_eq!(remaining_length_len(v), bytes.len());
            assert_eq!(
                read_remaining_length(bytes).unwrap(),
                Some((v, bytes.len())),
                "decoding {v}"
            );
            // Every proper prefix asks for more bytes.
            for cut in 0..bytes.len() {
                assert_eq!(read_remaining_length(&bytes[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn remaining_length_errors() {
        assert_eq!(
            read_remaining_length(&[0xff, 0xff, 0xff, 0xff]),
            Err(Error::MalformedRemainingLength)
        );
        assert_eq!(
            read_remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(Error::MalformedRemainingLength)
        );
        let mut out = Vec::new();
        assert!(matches!(
            write_remaining_length(&mut out, 268_435_456),
            Err(Error::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn filters() {
        for ok in [
            "a",
            "#",
            "+",
            "a/+/b",
            "a/#",
            "+/+",
            "/",
            "sport/tennis/#",
            "+/tennis/#",
        ] {
            check_filter(ok).unwrap();
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strings() {
        assert_eq!(
            check_str(b"a\0b", "x"),
            Err(Error::NulInString { field: "x" })
        );
        assert_eq!(
            check_str(&[0xc3, 0x28], "x"),
            Err(Error::InvalidUtf8 { field: "x" })
        );
        // A UTF-16 surrogate encoded in UTF-8 is not valid UTF-8.
        assert_eq!(
            check_str(&[0xed, 0xa0, 0x80], "x"),
            Err(Error::InvalidUtf8 { field: "x" })
        );
        assert_eq!(check_str("é/ü".as_bytes(), "x"), Ok("é/ü"));
    }
}
