//! Private keys from PEM, encrypted ones included (`privateKeyPassword`, `qmqtt --keypass`), decrypted in
//! memory with RustCrypto's crates:
//!
//! - **PKCS#8 encrypted** (`BEGIN ENCRYPTED PRIVATE KEY`, `openssl pkcs8 -topk8 -v2 aes-256-cbc` or
//!   `-scrypt`): PBES2 with PBKDF2 (HMAC-SHA-224/256/384/512) or scrypt, and AES-128/192/256-CBC or
//!   DES-EDE3-CBC, by the `pkcs8` crate. scrypt parameters are checked first: a key needing more than
//!   [`MAX_SCRYPT_BYTES`] of memory (OpenSSL's own limit) is refused, not allocated.
//! - **OpenSSL's legacy PEM encryption** (`Proc-Type: 4,ENCRYPTED` in a `BEGIN RSA/EC PRIVATE KEY` block,
//!   `openssl rsa -aes256`, `openssl ec -des3`, OpenSSL 1.x's default): `DEK-Info` AES-128/192/256-CBC or
//!   DES-EDE3-CBC, the key derived by OpenSSL's `EVP_BytesToKey` (MD5, one round, the IV's first 8 bytes as
//!   salt).
//! - Unencrypted PKCS#8, PKCS#1 and SEC1 keys as before (`rustls-pki-types`); a password given for one is
//!   not needed and not used (as OpenSSL).
//!
//! A wrong password is told apart from a damaged file as well as CBC allows: the padding and then the DER
//! structure of what was decrypted must be right, else it is [`KeyError::WrongPassword`]. The password is
//! only borrowed; the decrypted key and every intermediate buffer are wiped when dropped (`zeroize`).
use std::fmt;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use base64ct::Encoding;
use md5::{Digest, Md5};
use pkcs8::pkcs5::pbes2::Kdf;
use pkcs8::pkcs5::EncryptionScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use zeroize::Zeroizing;

/// The most memory a key's scrypt parameters may ask for (128·r·N bytes; OpenSSL's default maximum).
pub const MAX_SCRYPT_BYTES: u64 = 32 * 1024 * 1024;

/// Why no private key could be had from the file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key is encrypted and no password was given.
    NeedPassword,
    /// Decrypting with the password given did not yield a key.
    WrongPassword,
    /// The key is encrypted with something not supported (`what`: which scheme, in words).
    Unsupported(String),
    /// No private key in the file.
    NoKey,
    /// The PEM or its encryption header is malformed (`why`).
    Malformed(String),
}

/// How to re-encrypt a key into a form that is supported.
const REENCRYPT: &str =
    "re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8`";

impl KeyError {
    /// The sentence for this failure of `file` (e.g. "the private key file (privateKey, --key) 'k.pem'").
    pub fn in_file(&self, file: &str) -> String {
        match self {
            KeyError::NeedPassword => {
                format!("{file} is encrypted: give its password (privateKeyPassword, --keypass)")
            }
            KeyError::WrongPassword => format!(
                "privateKeyPassword: wrong password or not an encrypted key: {file} could not be decrypted \
                 with the password given (privateKeyPassword, --keypass)"
            ),
            KeyError::Unsupported(what) => {
                format!("{file} is encrypted with {what}, which is not supported: {REENCRYPT}")
            }
            KeyError::NoKey => format!(
                "no private key in {file}: expected PEM with a PKCS#8 (BEGIN PRIVATE KEY or BEGIN ENCRYPTED \
                 PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY) key"
            ),
            KeyError::Malformed(why) => format!(
                "{file} is not valid PEM ({why}): expected a PKCS#8, PKCS#1 or SEC1 PEM key"
            ),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.in_file("the key"))
    }
}

impl std::error::Error for KeyError {}

/// One PEM block: its label, its `Name: value` headers and its decoded body.
struct Block<'a> {
    label: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    der: Zeroizing<Vec<u8>>,
}

/// The first block whose label ends in `PRIVATE KEY`.
fn private_key_block(pem: &str) -> Result<Option<Block<'_>>, KeyError> {
    let mut lines = pem.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        if !label.ends_with("PRIVATE KEY") {
            continue;
        }
        let end = format!("-----END {label}-----");
        let mut headers = Vec::new();
        let mut body = Zeroizing::new(String::new());
        let mut in_headers = true;
        let mut ended = false;
        for l in lines.by_ref() {
            if l == end {
                ended = true;
                break;
            }
            if in_headers {
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim(), v.trim()));
                    continue;
                }
                in_headers = false;
                if l.is_empty() {
                    continue;
                }
            }
            body.push_str(l);
        }
        if !ended {
            return Err(KeyError::Malformed(format!("no '{end}' line")));
        }
        let der = base64ct::Base64::decode_vec(&body)
            .map_err(|_| KeyError::Malformed(format!("the body of '{label}' is not base64")))?;
        return Ok(Some(Block {
            label,
            headers,
            der: Zeroizing::new(der),
        }));
    }
    Ok(None)
}

/// Read the private key in `pem` (the file's bytes), decrypting it with `password` if it is encrypted.
pub fn decode(pem: &[u8], password: Option<&[u8]>) -> Result<PrivateKeyDer<'static>, KeyError> {
    let text = String::from_utf8_lossy(pem);
    let block = private_key_block(&text)?;
    match block {
        Some(b) if b.label == "ENCRYPTED PRIVATE KEY" => {
            let pw = password.ok_or(KeyError::NeedPassword)?;
            let der = pkcs8_decrypt(&b.der, pw)?;
            Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())))
        }
        Some(b)
            if b.headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("Proc-Type") && v.ends_with("ENCRYPTED")) =>
        {
            let pw = password.ok_or(KeyError::NeedPassword)?;
            let der = legacy_decrypt(&b, pw)?;
            match b.label {
                "RSA PRIVATE KEY" => {
                    Ok(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der.to_vec())))
                }
                "EC PRIVATE KEY" => Ok(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der.to_vec()))),
                other => Err(KeyError::Unsupported(format!(
                    "a '{other}' key (only RSA and EC keys)"
                ))),
            }
        }
        _ => {
            if password.is_some() {
                log::debug!("privateKeyPassword given for a key that is not encrypted: not used");
            }
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
                rustls_pki_types::pem::Error::NoItemsFound => KeyError::NoKey,
                e => KeyError::Malformed(e.to_string()),
            })
        }
    }
}

/// PKCS#8 `EncryptedPrivateKeyInfo` → the `PrivateKeyInfo` DER inside it.
fn pkcs8_decrypt(der: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der)
        .map_err(|e| KeyError::Malformed(format!("not a PKCS#8 encrypted key ({e})")))?;
    match &info.encryption_algorithm {
        EncryptionScheme::Pbes2(p) => {
            if let Kdf::Scrypt(s) = &p.kdf {
                let need = 128u64
                    .saturating_mul(s.block_size as u64)
                    .saturating_mul(s.cost_parameter);
                if need > MAX_SCRYPT_BYTES {
                    return Err(KeyError::Unsupported(format!(
                        "scrypt parameters needing {} MiB of memory (at most {} MiB)",
                        need >> 20,
                        MAX_SCRYPT_BYTES >> 20
                    )));
                }
            }
        }
        _ => {
            return Err(KeyError::Unsupported(
                "PKCS#5 v1.5 (PBES1: MD5/SHA-1 with DES or RC2)".into(),
            ))
        }
    }
    let doc = info.decrypt(password).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { oid }) => {
            KeyError::Unsupported(format!("the algorithm {oid}"))
        }
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::AlgorithmParametersInvalid {
            oid,
        }) => KeyError::Malformed(format!("invalid parameters for {oid}")),
        _ => KeyError::WrongPassword,
    })?;
    let bytes = Zeroizing::new(doc.as_bytes().to_vec());
    pkcs8::PrivateKeyInfoRef::try_from(&bytes[..]).map_err(|_| KeyError::WrongPassword)?;
    Ok(bytes)
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one round: `D_i = MD5(D_{i-1} ‖ password ‖ salt)`.
fn bytes_to_key(password: &[u8], salt: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 16));
    let mut prev: Option<Zeroizing<[u8; 16]>> = None;
    while out.len() < len {
        let mut h = Md5::new();
        if let Some(p) = &prev {
            h.update(&p[..]);
        }
        h.update(password);
        h.update(salt);
        let d: [u8; 16] = h.finalize().into();
        out.extend_from_slice(&d);
        prev = Some(Zeroizing::new(d));
    }
    out.truncate(len);
    out
}

fn cbc_decrypt<C>(key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<usize, KeyError>
where
    cbc::Decryptor<C>: KeyIvInit + BlockModeDecrypt,
    C: aes::cipher::BlockCipherDecrypt,
{
    let dec = cbc::Decryptor::<C>::new_from_slices(key, iv)
        .map_err(|_| KeyError::Malformed("the DEK-Info IV has the wrong length".into()))?;
    dec.decrypt_padded::<Pkcs7>(data)
        .map(|p| p.len())
        .map_err(|_| KeyError::WrongPassword)
}

/// A legacy `Proc-Type: 4,ENCRYPTED` block → the PKCS#1 / SEC1 DER inside it.
fn legacy_decrypt(b: &Block<'_>, password: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let dek = b
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("DEK-Info"))
        .map(|(_, v)| *v)
        .ok_or_else(|| KeyError::Malformed("Proc-Type ENCRYPTED without DEK-Info".into()))?;
    let (cipher, iv_hex) = dek
        .split_once(',')
        .ok_or_else(|| KeyError::Malformed(format!("DEK-Info '{dek}' is not CIPHER,IV")))?;
    let iv = hex(iv_hex.trim())
        .ok_or_else(|| KeyError::Malformed(format!("the DEK-Info IV '{iv_hex}' is not hex")))?;
    if iv.len() < 8 {
        return Err(KeyError::Malformed("the DEK-Info IV is too short".into()));
    }
    let key_len = match cipher.to_ascii_uppercase().as_str() {
        "AES-128-CBC" => 16,
        "AES-192-CBC" => 24,
        "AES-256-CBC" => 32,
        "DES-EDE3-CBC" => 24,
        other => return Err(KeyError::Unsupported(format!("the cipher {other}"))),
    };
    let key = bytes_to_key(password, &iv[..8], key_len);
    let mut data = Zeroizing::new(b.der.to_vec());
    let n = match key_len {
        16 => cbc_decrypt::<aes::Aes128>(&key, &iv, &mut data)?,
        32 => cbc_decrypt::<aes::Aes256>(&key, &iv, &mut data)?,
        _ if cipher.eq_ignore_ascii_case("DES-EDE3-CBC") => {
            cbc_decrypt::<des::TdesEde3>(&key, &iv, &mut data)?
        }
        _ => cbc_decrypt::<aes::Aes192>(&key, &iv, &mut data)?,
    };
    data.truncate(n);
    if !is_der_sequence(&data) {
        return Err(KeyError::WrongPassword);
    }
    Ok(data)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Is `b` exactly one DER SEQUENCE starting with an INTEGER (the shape of PKCS#1 and SEC1 keys)?
fn is_der_sequence(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0x30 {
        return false;
    }
    let (len, hdr) = match b[1] {
        l if l < 0x80 => (l as usize, 2),
        0x81 => (b[2] as usize, 3),
        0x82 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        _ => return false,
    };
    hdr + len == b.len() && b.get(hdr) == Some(&0x02)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        // The construction: the first 16 bytes are MD5(password ‖ salt), the next MD5(D1 ‖ password ‖ salt).
        // (tests/transport_keys.rs decrypts keys made by openssl itself.)
        let k = bytes_to_key(b"pass", b"saltsalt", 32);
        let d1: [u8; 16] = Md5::new().chain_update(b"passsaltsalt").finalize().into();
        let d2: [u8; 16] = Md5::new()
            .chain_update(d1)
            .chain_update(b"passsaltsalt")
            .finalize()
            .into();
        assert_eq!(&k[..16], &d1);
        assert_eq!(&k[16..], &d2);
        assert_eq!(bytes_to_key(b"p", b"s", 24).len(), 24);
    }

    #[test]
    fn pem_blocks_and_headers() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00FF\n\n\
                   AAEC\nAw==\n-----END RSA PRIVATE KEY-----\n";
        let b = private_key_block(pem).unwrap().unwrap();
        assert_eq!(b.label, "RSA PRIVATE KEY");
        assert_eq!(
            b.headers,
            vec![
                ("Proc-Type", "4,ENCRYPTED"),
                ("DEK-Info", "AES-128-CBC,00FF")
            ]
        );
        assert_eq!(&b.der[..], &[0, 1, 2, 3]);
        assert!(matches!(
            private_key_block("-----BEGIN PRIVATE KEY-----\nAAAA\n"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            private_key_block("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----"),
            Err(KeyError::Malformed(_))
        ));
        assert!(private_key_block("nothing").unwrap().is_none());
    }

    #[test]
    fn encrypted_without_password_and_bad_headers() {
        let pem =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(decode(pem, None), Err(KeyError::NeedPassword));
        assert!(matches!(
            decode(pem, Some(b"x")),
            Err(KeyError::Malformed(_))
        ));
        let legacy = |dek: &str| {
            format!(
                "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n{dek}\n\nAAECAwQFBgcICQoLDA0ODw==\n\
                 -----END EC PRIVATE KEY-----\n"
            )
        };
        let l = legacy("DEK-Info: AES-256-CBC,000102030405060708090A0B0C0D0E0F");
        assert_eq!(decode(l.as_bytes(), None), Err(KeyError::NeedPassword));
        assert_eq!(
            decode(l.as_bytes(), Some(b"pw")),
            Err(KeyError::WrongPassword)
        );
        assert!(matches!(
            decode(
                legacy("DEK-Info: DES-CBC,0001020304050607").as_bytes(),
                Some(b"pw")
            ),
            Err(KeyError::Unsupported(_))
        ));
        assert!(matches!(
            decode(legacy("DEK-Info: AES-256-CBC,zz").as_bytes(), Some(b"pw")),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            decode(legacy("X: y").as_bytes(), Some(b"pw")),
            Err(KeyError::Malformed(_))
        ));
        assert_eq!(decode(b"no key here", None), Err(KeyError::NoKey));
    }

    #[test]
    fn der_shape() {
        assert!(is_der_sequence(&[0x30, 0x03, 0x02, 0x01, 0x00]));
        assert!(!is_der_sequence(&[0x30, 0x04, 0x02, 0x01, 0x00]));
        assert!(!is_der_sequence(&[0x31, 0x03, 0x02, 0x01, 0x00]));
        assert!(!is_der_sequence(&[0x30, 0x03, 0x04, 0x01, 0x00]));
        assert!(!is_der_sequence(&[]));
    }

    #[test]
    fn messages() {
        assert!(KeyError::WrongPassword.to_string().starts_with(
            "privateKeyPassword: wrong password or not an encrypted key: the key could not"
        ));
        assert!(KeyError::Unsupported("x".into())
            .to_string()
            .contains("openssl pkcs8 -topk8 -v2 aes-256-cbc"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}", pw in proptest::option::of("\\PC{0,8}")) {
            let pem = format!("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n{s}\n-----END RSA PRIVATE KEY-----\n");
            let _ = decode(pem.as_bytes(), pw.as_deref().map(str::as_bytes));
            let _ = decode(s.as_bytes(), None);
        }
    }
}
