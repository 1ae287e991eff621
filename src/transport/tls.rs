//! TLS configuration (rustls 0.23, ring provider), and TLS failures as [`Error::Tls`] values carrying what
//! their message needs (the name checked, the trusted CAs, a self-signed certificate).
//!
//! The server certificate is checked by [`Verifier`], a thin wrapper around rustls' `WebPkiServerVerifier`:
//! in full mode it only remembers, for the error message, whether a refused certificate is self-signed;
//! with `verify_hostname = false` it ignores a certificate that does not name the host (the chain is still
//! verified against the CAs); with `verify_certificate = false` it accepts any certificate (the handshake
//! signatures are still checked with the provider's algorithms).
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::der::is_self_issued;
use super::keys::{self, KeyError};
use super::{TlsOptions, TlsVersion};
use crate::error::{ConfigError, Error, Fault, Key, TlsError};
use crate::secret::Secret;

/// The CA options (q: `trustStore`/`CApath`; CLI: `--cafile`/`--capath`).
const CA_OPTS: &str = "trustStore/--cafile (or CApath/--capath)";

/// OpenSSL's names for the TLS 1.2 suites rustls implements, so that `enabledCipherSuites` written for
/// paho/OpenSSL keeps working. TLS 1.3 suites have the same IANA name in OpenSSL.
const OPENSSL_NAMES: &[(&str, &str)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
];

fn suite_name(s: &SupportedCipherSuite) -> &'static str {
    s.suite().as_str().unwrap_or("unknown")
}

/// Does `want` (case-insensitive) name this suite: its rustls name, its IANA name (`TLS_AES_…` for the
/// `TLS13_…` suites) or its OpenSSL name?
fn suite_matches(s: &SupportedCipherSuite, want: &str) -> bool {
    let name = suite_name(s);
    if name.eq_ignore_ascii_case(want) {
        return true;
    }
    if let Some(rest) = name.strip_prefix("TLS13_") {
        if let Some(w) = want
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("TLS_"))
            .map(|_| &want[4..])
        {
            return rest.eq_ignore_ascii_case(w);
        }
    }
    OPENSSL_NAMES
        .iter()
        .any(|(iana, ossl)| *iana == name && ossl.eq_ignore_ascii_case(want))
}

/// The cipher suite names [`TlsOptions::cipher_suites`] accepts (rustls names; IANA and OpenSSL names of
/// the same suites are accepted too).
pub fn supported_cipher_suites() -> Vec<&'static str> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(suite_name)
        .collect()
}

fn select_suites(
    all: &[SupportedCipherSuite],
    wanted: &[String],
) -> Result<Vec<SupportedCipherSuite>, ConfigError> {
    let mut out = Vec::new();
    for w in wanted {
        let w = w.trim();
        if w.is_empty() {
            continue;
        }
        match all.iter().find(|s| suite_matches(s, w)) {
            Some(s) => {
                if !out
                    .iter()
                    .any(|o: &SupportedCipherSuite| o.suite() == s.suite())
                {
                    out.push(*s);
                }
            }
            None => {
                return Err(ConfigError::invalid(
                    Key::CipherSuites,
                    format!(
                        "unknown cipher suite '{w}' in enabledCipherSuites: supported are {}",
                        all.iter().map(suite_name).collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(ConfigError::invalid(
            Key::CipherSuites,
            "enabledCipherSuites names no cipher suite: leave it empty for all suites",
        ));
    }
    Ok(out)
}

/// The state of the files a TLS configuration is read from — the CA file, the CA directory and each of its
/// entries, the client certificate and key: device, inode, size and modification time of each (following
/// links; `None` for one that cannot be read). Cheap to take (a `stat` per file); two differ when a file was
/// replaced (renamed over, rewritten, its link retargeted), so the driver reads the files again before a
/// reconnect only when this changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles(Vec<(PathBuf, Option<Stamp>)>);

/// Device, inode, size, modification time.
type Stamp = (u64, u64, u64, SystemTime);

impl TlsFiles {
    pub fn of(opts: &TlsOptions) -> TlsFiles {
        use std::os::unix::fs::MetadataExt;
        let stamp = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
        };
        let mut v: Vec<_> = [&opts.ca_file, &opts.ca_dir, &opts.cert_file, &opts.key_file]
            .into_iter()
            .flatten()
            .map(|p| (p.clone(), stamp(p)))
            .collect();
        if let Some(Ok(rd)) = opts.ca_dir.as_ref().map(std::fs::read_dir) {
            let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            v.extend(entries.into_iter().map(|p| {
                let s = stamp(&p);
                (p, s)
            }));
        }
        TlsFiles(v)
    }
}

/// Build the rustls client configuration once per connection config (reused across reconnects).
///
/// Reads the CA file / directory and the client certificate and key now, so that a wrong path or file is
/// reported when the connection is configured, not at each reconnect.
pub fn tls_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !opts.cipher_suites.is_empty() {
        provider.cipher_suites = select_suites(&provider.cipher_suites, &opts.cipher_suites)?;
    }
    let provider = Arc::new(provider);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| {
            ConfigError::invalid(
                Key::CipherSuites,
                format!(
                    "the TLS settings cannot work together ({e}): the cipher suites in enabledCipherSuites \
                     must include one for TLS {} or later",
                    match opts.min_version {
                        TlsVersion::Tls12 => "1.2",
                        TlsVersion::Tls13 => "1.3",
                    }
                ),
            )
        })?;

    let inner = if opts.verify_certificate {
        let roots = load_roots(opts)?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| {
                ConfigError::invalid(
                    Key::CaFile,
                    format!("cannot build the certificate verifier: {e}: check {CA_OPTS}"),
                )
            })?;
        if !opts.verify_hostname {
            log::warn!(
                "TLS host name verification is off (verify): any certificate signed by a trusted CA is accepted \
                 for any host"
            );
        }
        Some(v)
    } else {
        log::warn!(
            "TLS certificate verification is off (enableServerCertAuth=0): the broker's identity is not checked \
             and the connection can be intercepted"
        );
        None
    };
    let verifier = Arc::new(Verifier {
        inner,
        check_name: opts.verify_hostname,
        algs: provider.signature_verification_algorithms,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    let mut config = match (&opts.cert_file, &opts.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(c), Some(k)) => {
            let chain = load_certs(c, Key::ClientCert, "client certificate (keyStore, --cert)")?;
            let key = load_key(k, opts.key_password.as_ref())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                let why = match e {
                    rustls::Error::InconsistentKeys(_) => "the key does not belong to the certificate",
                    _ => "check that the certificate is an X.509 v3 certificate and the key belongs to it",
                };
                ConfigError::invalid(
                    Key::ClientCert,
                    format!(
                        "the client certificate '{}' and key '{}' cannot be used ({e}): {why}",
                        c.display(),
                        k.display()
                    ),
                )
            })?
        }
        (Some(c), None) => {
            return Err(ConfigError::new(
                Key::PrivateKey,
                Fault::Missing,
                format!(
                    "a client certificate ('{}') needs its private key: set privateKey (--key)",
                    c.display()
                ),
            ))
        }
        (None, Some(k)) => {
            return Err(ConfigError::new(
                Key::ClientCert,
                Fault::Missing,
                format!(
                    "a private key ('{}') needs its client certificate: set keyStore (--cert)",
                    k.display()
                ),
            ))
        }
    };
    config.alpn_protocols = opts.alpn.clone();
    Ok(Arc::new(config))
}

fn load_roots(opts: &TlsOptions) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    if opts.ca_file.is_none() && opts.ca_dir.is_none() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    }
    if let Some(f) = &opts.ca_file {
        let certs = load_certs(f, Key::CaFile, "CA file (trustStore, --cafile)")?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ConfigError::invalid(
                Key::CaFile,
                format!(
                    "the CA file (trustStore, --cafile) '{}' holds no certificate usable as a CA: give the \
                     PEM certificate of the CA that signed the broker's certificate",
                    f.display()
                ),
            ));
        }
    }
    if let Some(d) = &opts.ca_dir {
        let added = load_ca_dir(&mut roots, d)?;
        if added == 0 {
            return Err(ConfigError::invalid(
                Key::CaDir,
                format!(
                    "no PEM CA certificate found in the CA directory (CApath, --capath) '{}'",
                    d.display()
                ),
            ));
        }
    }
    Ok(roots)
}

/// Add every PEM certificate of every readable file in `dir` (including OpenSSL hash links); returns how
/// many were added. Unreadable files are skipped with a warning, files without certificates silently.
fn load_ca_dir(roots: &mut RootCertStore, dir: &Path) -> Result<usize, ConfigError> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::invalid(
            Key::CaDir,
            format!(
                "cannot read the CA directory (CApath, --capath) '{}': {e}",
                dir.display()
            ),
        )
    })?;
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut added = 0;
    for p in paths {
        // metadata follows symlinks (OpenSSL's hash links point at the certificate files).
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("skipping unreadable file '{}' in CApath: {e}", p.display());
                continue;
            }
        };
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(|c| c.ok())
            .collect();
        if certs.is_empty() {
            log::debug!("no PEM certificate in '{}' (CApath): skipped", p.display());
            continue;
        }
        added += roots.add_parsable_certificates(certs).0;
    }
    Ok(added)
}

fn load_certs(
    path: &Path,
    key: Key,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |m: String| ConfigError::invalid(key, m);
    let bytes = std::fs::read(path)
        .map_err(|e| bad(format!("cannot read the {what} '{}': {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "the {what} '{}' is not valid PEM ({e}): give PEM certificates (-----BEGIN CERTIFICATE-----)",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(bad(format!(
            "no certificate in the {what} '{}': expected PEM (-----BEGIN CERTIFICATE-----); convert DER with \
             `openssl x509 -inform der -in FILE -out FILE.pem`",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path, password: Option<&Secret>) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let what = "private key file (privateKey, --key)";
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::invalid(
            Key::PrivateKey,
            format!("cannot read the {what} '{}': {e}", path.display()),
        )
    })?;
    let bytes = zeroize::Zeroizing::new(bytes);
    warn_if_loose(path);
    keys::decode(&bytes, password.map(Secret::expose)).map_err(|e| {
        let (key, fault) = match e {
            KeyError::NeedPassword => (Key::PrivateKeyPassword, Fault::Missing),
            KeyError::WrongPassword => (Key::PrivateKeyPassword, Fault::Invalid),
            KeyError::Unsupported(_) => (Key::PrivateKey, Fault::Unsupported),
            KeyError::NoKey | KeyError::Malformed(_) => (Key::PrivateKey, Fault::Invalid),
        };
        ConfigError::new(
            key,
            fault,
            e.in_file(&format!("the {what} '{}'", path.display())),
        )
    })
}

/// Warn (never failing) when a key file can be read by group or others.
fn warn_if_loose(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode();
            if mode & 0o044 != 0 {
                log::warn!(
                    "private key file '{}' is readable by group or others (mode {:o}): `chmod 600` it",
                    path.display(),
                    mode & 0o777
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

thread_local! {
    /// Set by [`Verifier`] when it refuses a certificate whose issuer is its own subject. Verification runs
    /// inside `process_new_packets` on the caller's thread, so the error mapping that follows on the same
    /// thread reads it.
    static LAST_SELF_SIGNED: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug)]
struct Verifier {
    /// `None`: accept any certificate (`verify_certificate = false`).
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        LAST_SELF_SIGNED.with(|c| c.set(false));
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                if matches!(
                    e,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                ) && is_self_issued(end_entity)
                {
                    LAST_SELF_SIGNED.with(|c| c.set(true));
                }
                Err(e)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.as_ref().and_then(|v| v.root_hint_subjects())
    }
}

/// What the error mapping needs to know about the connection.
pub(crate) struct ErrCtx<'a> {
    /// The name the certificate was checked against (SNI / server name or the URI's host).
    pub server_name: &'a str,
    pub client_cert: bool,
    /// Which CAs are trusted, in words (see [`trust_description`]).
    pub trust: &'a str,
}

/// Which CAs the options trust, for messages: the CA file / directory or the built-in roots.
pub(crate) fn trust_description(opts: &TlsOptions) -> String {
    let mut parts = Vec::new();
    if let Some(f) = &opts.ca_file {
        parts.push(format!("the CA file '{}'", f.display()));
    }
    if let Some(d) = &opts.ca_dir {
        parts.push(format!("the CA directory '{}'", d.display()));
    }
    if parts.is_empty() {
        "only the built-in Mozilla roots, as no CA is given".to_string()
    } else {
        parts.join(" and ")
    }
}

/// A rustls error of this connection as [`Error::Tls`].
pub(crate) fn tls_failure(e: rustls::Error, cx: &ErrCtx<'_>) -> Error {
    Error::Tls(Box::new(TlsError {
        server_name: cx.server_name.to_string(),
        cause: e,
        client_cert: cx.client_cert,
        trust: cx.trust.to_string(),
        self_signed: LAST_SELF_SIGNED.with(|c| c.replace(false)),
        setup: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_change_when_a_file_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (ca, dir) = (d.path().join("ca.pem"), d.path().join("cas"));
        std::fs::write(&ca, "one").unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.pem"), "a").unwrap();
        let opts = TlsOptions {
            ca_file: Some(ca.clone()),
            ca_dir: Some(dir.clone()),
            cert_file: Some(d.path().join("missing.pem")),
            ..TlsOptions::default()
        };
        let first = TlsFiles::of(&opts);
        assert_eq!(first, TlsFiles::of(&opts));
        // Renamed over (a new inode), same size.
        std::fs::write(d.path().join("new"), "two").unwrap();
        std::fs::rename(d.path().join("new"), &ca).unwrap();
        let second = TlsFiles::of(&opts);
        assert_ne!(first, second);
        // A file added to the CA directory; the missing certificate appearing.
        std::fs::write(dir.join("b.pem"), "b").unwrap();
        let third = TlsFiles::of(&opts);
        assert_ne!(second, third);
        std::fs::write(d.path().join("missing.pem"), "c").unwrap();
        assert_ne!(third, TlsFiles::of(&opts));
    }

    #[test]
    fn suite_names() {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        for n in [
            "TLS13_AES_128_GCM_SHA256",
            "tls_aes_128_gcm_sha256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ] {
            let s = select_suites(&all, &[n.to_string()]).unwrap();
            assert_eq!(s.len(), 1, "{n}");
        }
        let e = select_suites(&all, &["RC4-MD5".into()]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("'RC4-MD5'") && m.contains("TLS13_AES_256_GCM_SHA384"),
            "{m}"
        );
    }
}
