//! Transport: broker URIs, TCP and TLS (rustls 0.23, ring provider) as a non-blocking stream.
//!
//! STUB written by the lead to fix the interface the driver and the q layer use. The transport owner
//! implements it and may add to it, but keeps these names and meanings.
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// `tcp://` and `mqtt://` are plain TCP (default port 1883); `ssl://` and `mqtts://` are TLS (8883).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Tls,
}

/// A parsed broker address. `host` has no brackets for IPv6 literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parse `scheme://host[:port]` (IPv6 literals as `[::1]`). Errors name what is wrong.
    pub fn parse(_uri: &str) -> Result<Endpoint, TransportError> {
        todo!()
    }
}

/// Lowest TLS version accepted (TLS 1.0/1.1 are not offered by rustls and are refused at configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// TLS options. Verification of the certificate and of the host name is on by default; turning either off
/// is explicit and logs a warning.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// CA certificates (PEM). When neither this nor `ca_dir` is set, the Mozilla roots (webpki-roots) are used.
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates (every readable `*.pem`/`*.crt` file and OpenSSL hash links).
    pub ca_dir: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM: PKCS#1, PKCS#8 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Name sent in SNI and checked against the certificate; default: the URI's host.
    pub server_name: Option<String>,
    /// ALPN protocols, e.g. `x-amzn-mqtt-ca` for AWS IoT on port 443.
    pub alpn: Vec<Vec<u8>>,
    pub min_version: TlsVersion,
    /// Restrict cipher suites to these (rustls / IANA names, e.g. `TLS13_AES_128_GCM_SHA256`); empty: all.
    pub cipher_suites: Vec<String>,
    pub verify_certificate: bool,
    pub verify_hostname: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_file: None,
            ca_dir: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            alpn: Vec::new(),
            min_version: TlsVersion::Tls12,
            cipher_suites: Vec::new(),
            verify_certificate: true,
            verify_hostname: true,
        }
    }
}

/// Build the rustls client configuration once per connection config (reused across reconnects).
pub fn tls_config(_opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    todo!()
}

/// What went wrong, in words that say what to change.
#[derive(Debug)]
pub enum TransportError {
    /// The URI is malformed or has an unknown scheme.
    Uri(String),
    /// A TLS option or file is wrong (message names the file / option).
    Config(String),
    /// Name resolution, connect, read or write failed.
    Io(std::io::Error, String),
    /// The TLS handshake or a TLS record failed; the message names the reason (unknown issuer, expired,
    /// hostname mismatch, …) and the option to fix.
    Tls(rustls::Error, String),
    /// The peer closed the connection.
    Closed,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for TransportError {}

/// A non-blocking connection: mio TCP, optionally wrapped in rustls. Register [`Conn::socket`] with a
/// `mio::Poll` for READABLE | WRITABLE.
pub struct Conn {
    _p: (),
}

impl Conn {
    /// Resolve and start a non-blocking connect (the TCP handshake completes later; `is_established` tells).
    pub fn connect(
        _ep: &Endpoint,
        _tls: Option<(Arc<rustls::ClientConfig>, &TlsOptions)>,
    ) -> Result<Conn, TransportError> {
        todo!()
    }
    /// The socket to register with mio.
    pub fn socket(&mut self) -> &mut mio::net::TcpStream {
        todo!()
    }
    /// TCP connected and (for TLS) handshake complete: MQTT bytes may flow.
    pub fn is_established(&self) -> bool {
        todo!()
    }
    /// Read whatever is available; append plaintext to `out`. `Ok(0)` with nothing more: would block.
    /// `Err(TransportError::Closed)` on EOF.
    pub fn read(&mut self, _out: &mut Vec<u8>) -> Result<usize, TransportError> {
        todo!()
    }
    /// Queue plaintext for sending (encrypted into TLS records for TLS). Does not block.
    pub fn write(&mut self, _data: &[u8]) -> Result<(), TransportError> {
        todo!()
    }
    /// Push queued bytes to the socket. `Ok(true)` when everything is out, `Ok(false)` when the socket
    /// would block (wait for WRITABLE).
    pub fn flush(&mut self) -> Result<bool, TransportError> {
        todo!()
    }
    /// Bytes queued and not yet written to the socket (plaintext + TLS records).
    pub fn pending(&self) -> usize {
        todo!()
    }
    /// Negotiated TLS facts for `qmqtt check`: version, suite, ALPN, peer chain (DER).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        todo!()
    }
}

/// What `qmqtt check` reports about a TLS session.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher_suite: String,
    pub alpn: Option<Vec<u8>>,
    pub peer_chain: Vec<Vec<u8>>,
}
