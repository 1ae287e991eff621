//! The on-disk formats of the spool: segment records and the `acked` file, and the CRC-32C that guards them.
//!
//! All integers are little-endian.
//!
//! ## Record (in `seg-<16 hex digits of the first seq>.log`)
//!
//! ```text
//! offset size field
//!      0    4 magic        b"QSR1"
//!      4    4 crc          CRC-32C over bytes 0..4 and 8..end (the whole record except this field)
//!      8    4 payload_len
//!     12    2 topic_len
//!     14    1 flags        bits 0-1 QoS (0..=2), bit 2 retain, other bits 0
//!     15    1 reserved     0
//!     16    8 seq          sequence number: 1, 2, 3 ... contiguous within a segment, starting at its name
//!     24    8 time_ms      wall-clock time of the append, milliseconds since the Unix epoch
//!     32    8 tag          opaque to the spool (the driver's token)
//!     40    . topic        topic_len bytes of UTF-8
//!      .    . payload      payload_len bytes
//! ```
//!
//! A record is valid only if the magic, the reserved bits, the lengths (within the file), the CRC and the
//! sequence number (the one expected at that position) all check out, and the topic is UTF-8.
//!
//! ## `acked`
//!
//! 20 bytes: magic b"QSA1", reserved u32 = 0, acked seq u64, CRC-32C over bytes 0..16. Replaced atomically
//! (written to `acked.tmp`, then renamed).

/// Size of the fixed record header.
pub const HDR: usize = 40;
/// Record magic, `b"QSR1"`.
pub const MAGIC: [u8; 4] = *b"QSR1";
/// `acked` file magic, `b"QSA1"`.
pub const ACK_MAGIC: [u8; 4] = *b"QSA1";
/// Size of the `acked` file.
pub const ACK_LEN: usize = 20;

const fn crc_tables() -> [[u32; 256]; 8] {
    // CRC-32C (Castagnoli), reflected polynomial; tables for slicing-by-8.
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let p = t[k - 1][i];
            t[k][i] = (p >> 8) ^ t[0][(p & 0xff) as usize];
            k += 1;
        }
        i += 1;
    }
    t
}
static T: [[u32; 256]; 8] = crc_tables();

/// Continue a CRC-32C over `data`. Start with `!0`; finish with `!crc`. (Table-driven, eight bytes a step.)
pub fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = T[7][(lo & 0xff) as usize]
            ^ T[6][((lo >> 8) & 0xff) as usize]
            ^ T[5][((lo >> 16) & 0xff) as usize]
            ^ T[4][(lo >> 24) as usize]
            ^ T[3][(hi & 0xff) as usize]
            ^ T[2][((hi >> 8) & 0xff) as usize]
            ^ T[1][((hi >> 16) & 0xff) as usize]
            ^ T[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = T[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

fn record_crc(rec: &[u8]) -> u32 {
    !crc32c_update(crc32c_update(!0, &rec[0..4]), &rec[8..])
}

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub payload_len: u32,
    pub topic_len: u16,
    pub qos: u8,
    pub retain: bool,
    pub seq: u64,
    pub time_ms: u64,
    pub tag: u64,
}

impl Header {
    /// Whole record size: header, topic and payload (u64: a garbled length must not overflow on 32-bit).
    pub fn total(&self) -> u64 {
        HDR as u64 + self.topic_len as u64 + self.payload_len as u64
    }
}

/// Why a record failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    Magic,
    Flags,
    Crc,
    Utf8,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Decode the fixed header from `b` (at least [`HDR`] bytes). Checks the magic and the flag bits only.
pub fn decode_header(b: &[u8]) -> Result<Header, Bad> {
    if b[0..4] != MAGIC {
        return Err(Bad::Magic);
    }
    let flags = b[14];
    if flags & !0b111 != 0 || flags & 0b11 == 3 || b[15] != 0 {
        return Err(Bad::Flags);
    }
    Ok(Header {
        payload_len: u32_at(b, 8),
        topic_len: u16_at(b, 12),
        qos: flags & 0b11,
        retain: flags & 0b100 != 0,
        seq: u64_at(b, 16),
        time_ms: u64_at(b, 24),
        tag: u64_at(b, 32),
    })
}

/// Check the CRC and the topic's UTF-8 of a whole record `rec` (exactly `h.total()` bytes).
pub fn verify(h: &Header, rec: &[u8]) -> Result<(), Bad> {
    if u32_at(rec, 4) != record_crc(rec) {
        return Err(Bad::Crc);
    }
    if std::str::from_utf8(&rec[HDR..HDR + h.topic_len as usize]).is_err() {
        return Err(Bad::Utf8);
    }
    Ok(())
}

/// Append one encoded record to `out`. The caller has checked that the topic fits in a `u16` and the payload
/// in a `u32`.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    time_ms: u64,
    tag: u64,
    qos: u8,
    retain: bool,
    topic: &str,
    payload: &[u8],
) {
    let start = out.len();
    let mut h = [0u8; HDR];
    h[0..4].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..14].copy_from_slice(&(topic.len() as u16).to_le_bytes());
    h[14] = (qos & 0b11) | if retain { 0b100 } else { 0 };
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&time_ms.to_le_bytes());
    h[32..40].copy_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encode the `acked` file.
pub fn encode_ack(seq: u64) -> [u8; ACK_LEN] {
    let mut b = [0u8; ACK_LEN];
    b[0..4].copy_from_slice(&ACK_MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decode the `acked` file; `None` if it is not exactly a valid one.
pub fn decode_ack(b: &[u8]) -> Option<u64> {
    if b.len() != ACK_LEN || b[0..4] != ACK_MAGIC || u32_at(b, 4) != 0 {
        return None;
    }
    if crc32c(&b[0..16]) != u32_at(b, 16) {
        return None;
    }
    Some(u64_at(b, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 B.4 and the common check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn slicing_matches_bytewise() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let mut bytewise = !0u32;
            for &b in &data[..len] {
                bytewise = T[0][((bytewise ^ b as u32) & 0xff) as usize] ^ (bytewise >> 8);
            }
            assert_eq!(crc32c_update(!0, &data[..len]), bytewise, "len {len}");
            // Split anywhere: same result.
            let m = len / 3;
            assert_eq!(
                crc32c_update(crc32c_update(!0, &data[..m]), &data[m..len]),
                bytewise
            );
        }
    }

    #[test]
    fn record_round_trip_and_damage() {
        let mut v = Vec::new();
        encode(&mut v, 7, 1234, 99, 1, true, "a/b", b"hello");
        let h = decode_header(&v).unwrap();
        assert_eq!(h.total(), v.len() as u64);
        assert_eq!(
            (h.seq, h.time_ms, h.tag, h.qos, h.retain),
            (7, 1234, 99, 1, true)
        );
        verify(&h, &v).unwrap();
        for i in 0..v.len() {
            let mut w = v.clone();
            w[i] ^= 0x10;
            let bad = match decode_header(&w) {
                Err(_) => true,
                Ok(h2) => h2 != h || verify(&h2, &w).is_err(),
            };
            assert!(bad, "flip at byte {i} not detected");
        }
    }

    #[test]
    fn ack_file() {
        let b = encode_ack(42);
        assert_eq!(decode_ack(&b), Some(42));
        let mut c = b;
        c[9] ^= 1;
        assert_eq!(decode_ack(&c), None);
        assert_eq!(decode_ack(&b[..19]), None);
    }
}
