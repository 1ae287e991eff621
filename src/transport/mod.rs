//! Transport: broker URIs, TCP and TLS (rustls 0.23, ring provider) as a non-blocking stream.
//!
//! What this layer does for the driver:
//! - [`Endpoint::parse`] turns `tcp://`, `mqtt://` (plain, port 1883) and `ssl://`, `mqtts://` (TLS, port
//!   8883) URIs into host and port, IPv6 literals in brackets (`ssl://[::1]:8883`). Errors say what is wrong.
//! - [`tls_config`] turns [`TlsOptions`] into a rustls `ClientConfig` (ring provider, chosen versions and
//!   cipher suites, CA file / directory or the Mozilla roots, client certificate for mutual TLS). Build it
//!   once per connection configuration and reuse it across reconnects; [`TlsFiles`] tells cheaply whether
//!   its files changed on disk since (certificate rotation), so that it is built again only then.
//! - [`Conn`] is the non-blocking stream: a mio `TcpStream`, optionally wrapped in a rustls
//!   `ClientConnection`. [`Conn::write`] only queues plaintext in a buffer that is reused; [`Conn::flush`]
//!   encrypts everything queued in as few TLS records as possible (up to 16 KiB each) and writes them with
//!   vectored writes, so many small MQTT packets between two flushes cost few records and few syscalls.
//! - Failures are typed values: a bad URI or TLS option is a [`ConfigError`] naming the setting; a failed
//!   connection is an [`Error`](crate::Error) (DNS, TCP attempts, I/O, TLS with rustls' cause, closed),
//!   worded in [`crate::error`]: each names the cause and the option to change.
//!
//! The hops a connection can also go through, each sans-I/O (request bytes out, the peer's answer in,
//! typed errors): [`proxy`] (HTTP `CONNECT`, KX's proxy options and environment), [`ws`] (the WebSocket
//! upgrade and RFC 6455 framing, in place in the caller's buffers); [`keys`] reads PEM private keys,
//! encrypted ones included; [`der`] reads the few certificate fields that messages and `qmqtt check` show.
//!
//! Verification of the server certificate and of its host name is on unless turned off explicitly; turning
//! either off logs a warning when the configuration is built.
//!
//! How the driver uses it (one I/O thread, a `mio::Poll`):
//! 1. `let cfg = tls_config(&opts)?` once per connection configuration (TLS only);
//! 2. `let mut conn = Conn::connect(&endpoint, Some((cfg.clone(), &opts)))?` (resolves the name: blocking;
//!    the client resolves with [`resolve`] on a thread of its own and uses [`Conn::connect_resolved`]),
//!    then `conn.register(poll.registry(), token)` — with this registration a failed connect moves on to
//!    the next resolved address by itself;
//! 3. on WRITABLE call [`Conn::flush`]; on READABLE call [`Conn::read`] until it returns `Ok(0)` (for TLS it
//!    also sends what the handshake needs);
//! 4. once [`Conn::is_established`], write MQTT bytes with [`Conn::write`] (queues only) and push them with
//!    [`Conn::flush`] (`Ok(false)`: wait for WRITABLE); bound your own queue with [`Conn::pending`];
//! 5. [`Conn::close`] to end politely.
use std::fmt;
use std::path::PathBuf;

use crate::error::{ConfigError, Key};
use crate::secret::Secret;

mod cipher;
mod conn;
pub mod der;
mod http;
pub mod keys;
pub mod proxy;
mod tls;
pub mod ws;

pub use cipher::{suite_order, CpuAes, SuiteOrder};
pub use conn::{resolve, Conn, IoStats, MAX_READ_PER_CALL, SEND_BUFFER_KEEP};
pub use tls::{supported_cipher_suites, tls_config, TlsFiles};

/// How the broker is reached: `tcp://`/`mqtt://` plain TCP (port 1883), `ssl://`/`mqtts://` TLS (8883),
/// `ws://` MQTT over a WebSocket (80), `wss://` over a WebSocket in TLS (443).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Scheme {
    /// The port used when the URI has none: 1883, 8883, 80, 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => 1883,
            Scheme::Tls => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// The link to the broker is TLS (`ssl://`, `mqtts://`, `wss://`).
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    /// MQTT goes in WebSocket frames (`ws://`, `wss://`).
    pub fn websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "ssl",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

/// The schemes [`Endpoint::parse`] accepts, for error messages.
/// `host:port` with no scheme (and no path), which paho takes as `tcp://host:port`.
pub fn is_host_port(uri: &str) -> bool {
    let uri = uri.trim();
    match uri.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !uri.contains('/')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

pub const ACCEPTED_SCHEMES: &str =
    "tcp://, mqtt:// (plain TCP, port 1883), ssl://, mqtts:// (TLS, port 8883), \
     ws:// (WebSocket, port 80) or wss:// (WebSocket over TLS, port 443)";

/// A parsed broker address. `host` has no brackets for IPv6 literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The WebSocket request path (with any query), `/mqtt` when the URI has none; empty for TCP and TLS.
    pub path: String,
}

/// `uri` for a message: a password in its user info (`scheme://user:password@host`) shows as
/// `user:***@`, so that it never reaches an error, a log line or `Debug` output; `user@host` stays.
pub fn redacted_uri(uri: &str) -> std::borrow::Cow<'_, str> {
    let (scheme, rest) = match uri.find("://") {
        Some(i) => uri.split_at(i + 3),
        None => ("", uri),
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority
        .rfind('@')
        .and_then(|at| Some((at, authority[..at].find(':')?)))
    {
        Some((at, colon)) => format!("{scheme}{}:***{}", &rest[..colon], &rest[at..]).into(),
        None => uri.into(),
    }
}

/// A comma-separated list of brokers (`Config::uri`) for a message: each URI as [`redacted_uri`] shows it.
pub fn redacted_uris(list: &str) -> String {
    let shown: Vec<_> = list.split(',').map(redacted_uri).collect();
    shown.join(",")
}

impl Endpoint {
    /// Parse `scheme://host[:port]` (IPv6 literals as `[::1]`), `ws[s]://host[:port][/path]`. Errors name
    /// what is wrong.
    ///
    /// Schemes are case-insensitive; a trailing `/` is allowed; user info (`user@host`) is not, nor a path
    /// except for WebSockets (`ws://host/mqtt`, the default; a query stays part of it).
    /// `scheme://host[:port]`, or `host:port` (plain TCP, as paho).
    pub fn parse(uri: &str) -> Result<Endpoint, ConfigError> {
        let raw = uri.trim();
        // Messages show the URI without its password (a URI with user info is refused below).
        let shown = redacted_uri(raw);
        let uri = &*shown;
        let (scheme, rest) = match raw.split_once("://") {
            Some(sr) => sr,
            // paho (so KX) takes `host:port` without a scheme as plain TCP.
            None if is_host_port(raw) => ("tcp", raw),
            None => {
                return Err(ConfigError::invalid(Key::UriScheme, format!(
                    "Invalid protocol scheme: no scheme in broker URI '{uri}': write it as \
                     scheme://host[:port] with scheme {ACCEPTED_SCHEMES} (or host:port for plain TCP)"
                )))
            }
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => Scheme::Tcp,
            "ssl" | "mqtts" => Scheme::Tls,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            other => {
                return Err(ConfigError::invalid(Key::UriScheme, format!(
                    "Invalid protocol scheme '{other}://' in broker URI '{uri}': use {ACCEPTED_SCHEMES}"
                )))
            }
        };
        let bad = |what: String| {
            ConfigError::invalid(Key::Uri, format!("invalid broker URI '{uri}': {what}"))
        };
        let (authority, path) = if scheme.websocket() {
            match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            }
        } else {
            (rest.strip_suffix('/').unwrap_or(rest), "")
        };
        if path.contains('#')
            || path.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(bad(
                "a WebSocket path has no fragment ('#') nor spaces: write ws://host[:port]/path"
                    .into(),
            ));
        }
        let path = match path {
            "" => ws::DEFAULT_PATH.to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if authority.contains('/') || authority.contains('?') || authority.contains('#') {
            return Err(bad(
                "a broker URI has no path or query: write scheme://host[:port]".into(),
            ));
        }
        if authority.contains('@') {
            return Err(bad(
                "user names and passwords do not go in the URI: give them as the username/password options"
                    .into(),
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(bad("'[' without ']': write IPv6 addresses as [::1]".into()));
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(format!("'{addr}' in brackets is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => {
                        return Err(bad(format!(
                            "unexpected '{p}' after ']': write [addr]:port"
                        )))
                    }
                },
            };
            (addr, port)
        } else {
            match authority.matches(':').count() {
                0 => (authority, None),
                1 => {
                    let (h, p) = authority.split_once(':').unwrap_or((authority, ""));
                    (h, Some(p))
                }
                _ => {
                    return Err(bad(
                        "an IPv6 address must be in brackets, with the port after them: ssl://[::1]:8883".into(),
                    ))
                }
            }
        };
        if host.is_empty() {
            return Err(bad("missing host: write scheme://host[:port]".into()));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
        {
            return Err(bad(format!("'{c}' is not allowed in a host name")));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(bad(format!(
                    "bad port '{p}': a port is a number from 1 to 65535 (or leave it out for {})",
                    scheme.default_port()
                )))
                }
            },
        };
        Ok(Endpoint {
            scheme,
            host: host.to_string(),
            port,
            path: if scheme.websocket() {
                path
            } else {
                String::new()
            },
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.scheme.name();
        if self.host.contains(':') {
            write!(f, "{s}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{s}://{}:{}{}", self.host, self.port, self.path)
        }
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
    /// A directory of PEM CA certificates: every regular file in it (OpenSSL hash links followed) that holds
    /// PEM certificates; unreadable files are skipped with a warning, other files silently.
    pub ca_dir: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM: PKCS#1, PKCS#8 or SEC1; encrypted PKCS#8 or OpenSSL-encrypted PEM with
    /// `key_password`, see [`keys`]).
    pub key_file: Option<PathBuf>,
    /// The password of an encrypted `key_file` (KX `privateKeyPassword`, `qmqtt --keypass`).
    pub key_password: Option<Secret>,
    /// Name sent in SNI and checked against the certificate; default: the URI's host.
    pub server_name: Option<String>,
    /// ALPN protocols, e.g. `x-amzn-mqtt-ca` for AWS IoT on port 443.
    pub alpn: Vec<Vec<u8>>,
    pub min_version: TlsVersion,
    /// Restrict cipher suites to these (rustls / IANA names, e.g. `TLS13_AES_128_GCM_SHA256`, or OpenSSL
    /// names such as `ECDHE-RSA-AES128-GCM-SHA256`; see [`supported_cipher_suites`]); empty: all.
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
            key_password: None,
            server_name: None,
            alpn: Vec::new(),
            min_version: TlsVersion::Tls12,
            cipher_suites: Vec::new(),
            verify_certificate: true,
            verify_hostname: true,
        }
    }
}

/// What `qmqtt check` reports about a TLS session.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// `TLS 1.2` or `TLS 1.3`.
    pub version: String,
    /// The rustls / IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    pub alpn: Option<Vec<u8>>,
    /// The server's certificate chain as sent, leaf first (DER).
    pub peer_chain: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::{redacted_uri, redacted_uris};

    #[test]
    fn only_passwords_are_hidden() {
        assert_eq!(
            redacted_uri("mqtt://u:hunter2@h:1883"),
            "mqtt://u:***@h:1883"
        );
        assert_eq!(
            redacted_uri("http://u:a@b:c@proxy:3128"),
            "http://u:***@proxy:3128"
        );
        assert_eq!(
            redacted_uris("tcp://gw1:pw1@a:1883,ssl://b:8883,ws://gw2:pw2@c/mqtt"),
            "tcp://gw1:***@a:1883,ssl://b:8883,ws://gw2:***@c/mqtt"
        );
        assert_eq!(redacted_uri("mqtt://u@h"), "mqtt://u@h");
        assert_eq!(redacted_uri("mqtt://h:1883"), "mqtt://h:1883");
        assert_eq!(redacted_uri("ws://h:80/p@x:y"), "ws://h:80/p@x:y");
        assert_eq!(redacted_uri("u:p@h"), "u:***@h");
    }
}
