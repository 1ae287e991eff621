//! The one DER walker: reads the few X.509 fields the engine and `qmqtt check` show — subject, issuer,
//! notAfter, DNS/IP subject alternative names — and tells a self-issued certificate (for TLS error
//! messages). Read-only, bounds-checked, no allocation beyond the strings returned; anything it does not
//! understand yields `None` rather than a panic (it reports, it does not verify — rustls verifies).
use crate::clock::{days_from_civil, utc};

/// One DER element: tag and contents.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Split the first element off `input`: (element, rest).
fn tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur in certificates
    }
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((
        Tlv {
            tag,
            body: &rest[..len],
        },
        &rest[len..],
    ))
}

/// The elements of a constructed value, in order.
fn children(body: &[u8]) -> impl Iterator<Item = Tlv<'_>> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (t, r) = tlv(rest)?;
        rest = r;
        Some(t)
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// What `qmqtt check` prints about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// `CN=…, O=…` (the attributes we know, in certificate order).
    pub subject: String,
    pub issuer: String,
    /// Expiry, in seconds since the Unix epoch.
    pub not_after: i64,
    /// DNS names and IP addresses from subjectAltName.
    pub alt_names: Vec<String>,
}

impl CertSummary {
    /// `2027-11-25 08:00:00 UTC`
    pub fn not_after_str(&self) -> String {
        utc(self.not_after)
    }

    /// Seconds from `now_unix` to expiry (negative: expired).
    pub fn seconds_left(&self, now_unix: i64) -> i64 {
        self.not_after - now_unix
    }
}

/// The fields of a certificate's TBSCertificate, from the serial number on (the version skipped).
fn tbs_fields(der: &[u8]) -> Option<impl Iterator<Item = Tlv<'_>>> {
    let (cert, _) = tlv(der)?;
    if cert.tag != SEQUENCE {
        return None;
    }
    let tbs = children(cert.body).next()?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut it = children(tbs.body).peekable();
    // [0] EXPLICIT version, optional.
    if it.peek()?.tag == 0xa0 {
        it.next();
    }
    Some(it)
}

/// Is the certificate's issuer name the same as its subject name (a self-signed certificate)?
pub fn is_self_issued(der: &[u8]) -> bool {
    let names = || {
        let mut it = tbs_fields(der)?.skip(2); // serial, signature algorithm
        let issuer = it.next()?;
        let _validity = it.next()?;
        Some((issuer, it.next()?))
    };
    matches!(names(), Some((i, s)) if i == s)
}

/// Parse a DER certificate.
pub fn summarize(der: &[u8]) -> Option<CertSummary> {
    let mut it = tbs_fields(der)?;
    let _serial = it.next()?;
    let _sig_alg = it.next()?;
    let issuer = it.next()?;
    let validity = it.next()?;
    let subject = it.next()?;
    let _spki = it.next()?;
    let mut alt_names = Vec::new();
    for rest in it {
        // [3] EXPLICIT extensions
        if rest.tag == 0xa3 {
            if let Some((exts, _)) = tlv(rest.body) {
                alt_names = subject_alt_names(exts.body);
            }
        }
    }
    let mut v = children(validity.body);
    let _not_before = v.next()?;
    let not_after = parse_time(v.next()?)?;
    Some(CertSummary {
        subject: name(subject.body),
        issuer: name(issuer.body),
        not_after,
        alt_names,
    })
}

/// `Name ::= SEQUENCE OF SET OF SEQUENCE { OID, value }` as `CN=…, O=…`.
fn name(body: &[u8]) -> String {
    let mut out = String::new();
    for rdn in children(body).filter(|t| t.tag == SET) {
        for atv in children(rdn.body).filter(|t| t.tag == SEQUENCE) {
            let mut parts = children(atv.body);
            let (Some(oid), Some(val)) = (parts.next(), parts.next()) else {
                continue;
            };
            if oid.tag != OID {
                continue;
            }
            let key = match oid.body {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x06] => "C",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(key);
            out.push('=');
            out.push_str(&String::from_utf8_lossy(val.body));
        }
    }
    out
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, as seconds since the Unix epoch.
fn parse_time(t: Tlv<'_>) -> Option<i64> {
    let s = std::str::from_utf8(t.body).ok()?;
    let s = s.strip_suffix('Z')?;
    let (y, rest) = match t.tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s.get(..4)?.parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let secs = i64::from(n(4)? * 3600 + n(6)? * 60 + n(8)?);
    Some(days_from_civil(y, n(0)?, n(2)?) * 86400 + secs)
}

/// DNS names and IPs in the subjectAltName extension (OID 2.5.29.17), given the extensions SEQUENCE body.
fn subject_alt_names(exts: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for ext in children(exts).filter(|t| t.tag == SEQUENCE) {
        let mut parts = children(ext.body);
        let Some(oid) = parts.next() else { continue };
        if oid.tag != OID || oid.body != [0x55, 0x1d, 0x11] {
            continue;
        }
        // Optional BOOLEAN critical, then OCTET STRING wrapping GeneralNames.
        let Some(octets) = parts.find(|t| t.tag == 0x04) else {
            continue;
        };
        let Some((names, _)) = tlv(octets.body) else {
            continue;
        };
        for gn in children(names.body) {
            match gn.tag {
                0x82 => out.push(format!("DNS:{}", String::from_utf8_lossy(gn.body))),
                0x87 if gn.body.len() == 4 => {
                    let b = gn.body;
                    out.push(format!("IP:{}.{}.{}.{}", b[0], b[1], b[2], b[3]));
                }
                0x87 if gn.body.len() == 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(gn.body);
                    out.push(format!("IP:{}", std::net::Ipv6Addr::from(a)));
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(2026, 11, 25), 20782);
    }

    proptest::proptest! {
        #[test]
        fn der_parser_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = summarize(&b);
            let _ = is_self_issued(&b);
            let mut v = vec![0x30, 0x82, 0x00, b.len() as u8];
            v.extend_from_slice(&b);
            let _ = summarize(&v);
            let _ = is_self_issued(&v);
        }
    }

    #[test]
    fn der_garbage_is_not_self_issued() {
        assert!(!is_self_issued(&[]));
        assert!(!is_self_issued(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]));
        assert!(!is_self_issued(&[0x30, 0x03, 0x30, 0x01]));
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(summarize(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_none());
        for n in 0..64u8 {
            let v: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = summarize(&v);
        }
    }

    #[test]
    fn reads_a_generated_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "test-cn");
        dn.push(rcgen::DnType::OrganizationName, "Org");
        p.distinguished_name = dn;
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let s = summarize(cert.der()).unwrap();
        assert_eq!(s.subject, "CN=test-cn, O=Org");
        assert_eq!(s.issuer, "CN=test-cn, O=Org");
        assert_eq!(s.not_after_str(), "2031-07-09 00:00:00 UTC");
        assert_eq!(s.alt_names, vec!["DNS:localhost", "IP:127.0.0.1"]);
        assert_eq!(s.seconds_left(days_from_civil(2031, 7, 8) * 86400), 86400);
        assert!(is_self_issued(cert.der()));
        assert!(!is_self_issued(&[0x30, 0x03, 0x30, 0x01, 0x02]));
    }
}
