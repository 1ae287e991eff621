//! The HTTP `CONNECT` hop: reaching the broker through an HTTP proxy, as paho (and so KxSystems/mqtt) does.
//!
//! - [`Proxy::parse`] reads a proxy setting: `http://[user:password@]host[:port][/]`, also `https://…` (paho's
//!   form for `https_proxy`; the hop to the proxy is plain HTTP all the same, as in paho — what goes through the
//!   tunnel is TLS to the broker) or a bare `host:port`. The port defaults to 8080 (paho's). `%XX` in the user
//!   and password stands for the byte XX (for `@`, `:` or `%` in them). Credentials never appear in `Debug`,
//!   `Display` or errors.
//! - [`select`] decides, for one broker, which proxy (if any) to use — a pure function of the two options and
//!   an environment lookup, with KX's rules: the option (`httpProxy` for a plain broker, `httpsProxy` for a
//!   TLS one) wins; otherwise the environment, but only when `PAHO_C_CLIENT_USE_HTTP_PROXY` is `TRUE` (paho
//!   1.3.14 and later, which KX ships): `mqtt_http_proxy` / `mqtt_https_proxy` / `mqtt_no_proxy` stand for
//!   `http_proxy` / `https_proxy` / `no_proxy` when set, a blank value unsetting it; a broker matching
//!   `no_proxy` goes direct. An option given blank means "no proxy" (the environment is not read).
//! - [`Tunnel`] is the hop itself, sans-I/O: [`Tunnel::request`] is the `CONNECT host:port HTTP/1.1` request
//!   (with `Proxy-Authorization: Basic …` when the URL has credentials) to send on the new TCP connection;
//!   [`Tunnel::feed`] reads the proxy's answer (at most 8 KiB of it) and says where the tunnel
//!   starts. Failures are a [`ProxyError`] naming the proxy, the status line and what to change.
use std::fmt;

use base64ct::Encoding;
use zeroize::Zeroizing;

use super::http::{Head, HeadError};
use crate::error::{Attempt, IoCause};

/// The proxy port used when a proxy URL has none (paho's default).
pub const DEFAULT_PROXY_PORT: u16 = 8080;

/// The variable that lets paho (1.3.14 and later) read proxies from the environment.
pub const USE_ENV: &str = "PAHO_C_CLIENT_USE_HTTP_PROXY";

/// The options that name a proxy, for messages (q keys, then the `qmqtt` flag).
const PROXY_OPTS: &str = "httpProxy/httpsProxy (--proxy)";

/// An HTTP proxy: where it is and, if the URL had them, the credentials for Basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    user: Option<String>,
    /// `base64(user:password)`, the value after `Basic `.
    basic: Option<Zeroizing<String>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.basic.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `host:port` (IPv6 in brackets); never the credentials.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_authority(f, &self.host, self.port)
    }
}

fn write_authority(f: &mut impl fmt::Write, host: &str, port: u16) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]:{port}")
    } else {
        write!(f, "{host}:{port}")
    }
}

fn authority(host: &str, port: u16) -> String {
    let mut s = String::new();
    let _ = write_authority(&mut s, host, port);
    s
}

/// Decode `%XX` escapes (paho's rule for user names and passwords); a `%` not followed by two hex digits
/// stays as it is.
fn pct_decode(s: &str) -> Zeroizing<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(b.len()));
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

impl Proxy {
    /// Parse `http://[user[:password]@]host[:port][/]` (or `https://…`, or `host[:port]`).
    pub fn parse(url: &str) -> Result<Proxy, ProxyError> {
        let url = url.trim();
        let bad = |why: &str| ProxyError::Url {
            url: super::redacted_uri(url).into_owned(),
            why: why.to_string(),
        };
        let rest = match url.find("://") {
            Some(i) => {
                let scheme = &url[..i];
                if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                    return Err(bad(
                        "only HTTP proxies are supported: write http://[user:password@]host:port",
                    ));
                }
                &url[i + 3..]
            }
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        if hostport.contains(['/', '?', '#']) {
            return Err(bad(
                "a proxy URL has no path: write http://[user:password@]host:port",
            ));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(bad("'[' without ']': write IPv6 addresses as [::1]:3128"));
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("the address in brackets is not an IPv6 address"));
            }
            match after {
                "" => (addr, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (addr, Some(p)),
                    None => return Err(bad("write [address]:port")),
                },
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                Some(_) => {
                    return Err(bad(
                        "an IPv6 address must be in brackets: http://[::1]:3128",
                    ))
                }
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host: write http://host:port"));
        }
        if host
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
        {
            return Err(bad("the host has a character not allowed in a host name"));
        }
        let port = match port {
            None => DEFAULT_PROXY_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        let (user, basic) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
                let mut plain = pct_decode(u);
                plain.push(b':');
                plain.extend_from_slice(&pct_decode(p));
                let b64 = base64ct::Base64::encode_string(&plain);
                let user = String::from_utf8_lossy(&pct_decode(u)).into_owned();
                (Some(user), Some(Zeroizing::new(b64)))
            }
        };
        Ok(Proxy {
            host: host.to_string(),
            port,
            user,
            basic,
        })
    }

    /// The URL had a user (and so the request carries `Proxy-Authorization: Basic`).
    pub fn has_credentials(&self) -> bool {
        self.basic.is_some()
    }

    /// The proxy user, if any (for messages; never the password).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// Where the proxy in use was configured, for messages and `qmqtt check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The connection's own option (q `httpProxy`/`httpsProxy`, `qmqtt --proxy`, `Config`).
    Option,
    /// This environment variable (read because `PAHO_C_CLIENT_USE_HTTP_PROXY=TRUE`).
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Option => f.write_str(PROXY_OPTS),
            Source::Env(v) => write!(f, "${v}, with ${USE_ENV}=TRUE"),
        }
    }
}

/// The proxy chosen for a broker, and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub proxy: Proxy,
    pub source: Source,
}

/// What the environment says for one of KX's variables: `mqtt_<name>` when set (blank: unset), else
/// `<name>` (blank: unset).
fn env_value(
    env: &dyn Fn(&str) -> Option<String>,
    std_name: &'static str,
    mqtt_name: &'static str,
) -> Option<(String, &'static str)> {
    match env(mqtt_name) {
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some((v, mqtt_name)),
        None => match env(std_name) {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some((v, std_name)),
            None => None,
        },
    }
}

/// Which proxy to use for the broker `host:port` (`tls`: the broker link is TLS).
///
/// `http` and `https` are the options (`httpProxy`, `httpsProxy`): the one for the broker's kind wins; given
/// blank, it means no proxy. Otherwise, when `env("PAHO_C_CLIENT_USE_HTTP_PROXY")` starts with `TRUE`,
/// `http_proxy` (plain) or `https_proxy` (TLS) — each overridden by its `mqtt_` form — unless `no_proxy` (or
/// `mqtt_no_proxy`) matches the broker (see [`no_proxy_matches`]). `env` is the process environment in use
/// (`|k| std::env::var(k).ok()`), a map in tests.
pub fn select(
    http: Option<&str>,
    https: Option<&str>,
    tls: bool,
    host: &str,
    port: u16,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Choice>, ProxyError> {
    let given = if tls { https } else { http };
    if let Some(g) = given {
        if g.trim().is_empty() {
            return Ok(None);
        }
        return Proxy::parse(g).map(|proxy| {
            Some(Choice {
                proxy,
                source: Source::Option,
            })
        });
    }
    if !env(USE_ENV).is_some_and(|v| v.starts_with("TRUE")) {
        return Ok(None);
    }
    let (std_name, mqtt_name) = if tls {
        ("https_proxy", "mqtt_https_proxy")
    } else {
        ("http_proxy", "mqtt_http_proxy")
    };
    let Some((value, from)) = env_value(env, std_name, mqtt_name) else {
        return Ok(None);
    };
    if let Some((list, _)) = env_value(env, "no_proxy", "mqtt_no_proxy") {
        if no_proxy_matches(&list, host, port) {
            log::debug!("{host}:{port} matches no_proxy '{list}': no proxy");
            return Ok(None);
        }
    }
    let proxy = Proxy::parse(&value).map_err(|e| match e {
        ProxyError::Url { url, why } => ProxyError::Url {
            url: format!("{url} (${from})"),
            why,
        },
        e => e,
    })?;
    Ok(Some(Choice {
        proxy,
        source: Source::Env(from),
    }))
}

/// Does the `no_proxy` list exempt `host:port`? paho's rules: comma-separated entries `name[:port]`; a
/// leading `.` is ignored; an entry matches the host itself and every name ending in `.entry`
/// (`example.com` matches `a.example.com`); `*` matches every host; an entry with a port matches only that
/// port. Names are compared without case, never resolved; IPv6 entries may be bracketed.
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    list.split(',').map(str::trim).any(|entry| {
        let entry = entry.strip_prefix('.').unwrap_or(entry);
        if entry.is_empty() {
            return false;
        }
        let (name, eport) = split_entry(entry);
        if eport.is_some_and(|p| p != port) {
            return false;
        }
        if name == "*" {
            return true;
        }
        if host.eq_ignore_ascii_case(name) {
            return true;
        }
        host.len() > name.len()
            && host.as_bytes()[host.len() - name.len() - 1] == b'.'
            && host[host.len() - name.len()..].eq_ignore_ascii_case(name)
    })
}

/// `name[:port]` / `[v6][:port]` / a bare IPv6 address → (name, port).
fn split_entry(entry: &str) -> (&str, Option<u16>) {
    if let Some(v6) = entry.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((a, rest)) => (a, rest.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (v6, None),
        };
    }
    match entry.split_once(':') {
        Some((n, p)) if !p.contains(':') => match p.parse() {
            Ok(p) => (n, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

/// The proxy a failure is about: where it is and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyName {
    /// `host:port`.
    pub addr: String,
    pub source: Source,
}

impl fmt::Display for ProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the HTTP proxy {} ({})", self.addr, self.source)
    }
}

/// Why the proxy hop failed. Each says which proxy, what it answered and what to change.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyError {
    /// The proxy setting is malformed (`url` with its password masked).
    Url { url: String, why: String },
    /// The proxy's host name did not resolve (`cause: None`: to no address).
    Dns {
        proxy: ProxyName,
        cause: Option<IoCause>,
    },
    /// No TCP connection to any address of the proxy.
    Tcp {
        proxy: ProxyName,
        attempts: Vec<Attempt>,
    },
    /// The proxy answered `CONNECT` with a status other than 2xx (and other than 401/407).
    Refused {
        proxy: ProxyName,
        target: String,
        status_line: String,
    },
    /// `407` (or `401`): the proxy wants credentials (`sent`: the request had some, so they are wrong). `scheme`: what
    /// its `Proxy-Authenticate` asks for.
    AuthRequired {
        proxy: ProxyName,
        status_line: String,
        sent: bool,
        scheme: Option<String>,
    },
    /// The answer is not HTTP: the address is not an HTTP proxy.
    NotHttp { proxy: ProxyName, why: HeadError },
    /// The proxy closed the connection before its answer was complete.
    Closed { proxy: ProxyName, target: String },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Url { url, why } => {
                write!(f, "invalid proxy '{url}': {why} (set in {PROXY_OPTS} or the environment)")
            }
            ProxyError::Dns { proxy, cause } => {
                write!(f, "cannot resolve {proxy}")?;
                if let Some(e) = cause {
                    write!(f, ": {e}")?;
                }
                f.write_str(": check the proxy's host name and this machine's DNS")
            }
            ProxyError::Tcp { proxy, attempts } => {
                write!(f, "cannot connect to {proxy}: ")?;
                for (i, a) in attempts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{}: {}", a.addr, a.cause)?;
                }
                f.write_str(": is the proxy running there, and the address and port right?")
            }
            ProxyError::Refused {
                proxy,
                target,
                status_line,
            } => write!(
                f,
                "{proxy} refused to connect to {target}: '{status_line}': the proxy must allow CONNECT to \
                 the broker's port (tinyproxy: ConnectPort; squid: SSL_ports and http_access); its log says \
                 why"
            ),
            ProxyError::AuthRequired {
                proxy,
                status_line,
                sent,
                scheme,
            } => {
                if *sent {
                    write!(f, "{proxy} refused the proxy user and password: '{status_line}': check them in the proxy URL")?;
                } else {
                    write!(
                        f,
                        "{proxy} requires authentication: '{status_line}': give a user and password in the \
                         proxy URL: http://user:password@host:port"
                    )?;
                }
                match scheme {
                    Some(s) if !s.eq_ignore_ascii_case("basic") => write!(
                        f,
                        " (it asks for {s} authentication; qmqtt sends Basic only)"
                    ),
                    _ => Ok(()),
                }
            }
            ProxyError::NotHttp { proxy, why } => write!(
                f,
                "{proxy} is not an HTTP proxy: {why}: check the proxy's address and port"
            ),
            ProxyError::Closed { proxy, target } => write!(
                f,
                "{proxy} closed (or reset) the connection before answering CONNECT {target}: is it an HTTP \
                 proxy? Its log says why"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// The `CONNECT` hop of one connection attempt: the request to send, then the proxy's answer to read.
#[derive(Debug)]
pub struct Tunnel {
    name: ProxyName,
    target: String,
    sent_credentials: bool,
    request: Zeroizing<Vec<u8>>,
    head: Head,
}

impl Tunnel {
    /// The hop through `choice` to the broker `host:port`.
    pub fn new(choice: &Choice, host: &str, port: u16) -> Tunnel {
        let target = authority(host, port);
        let mut req = Zeroizing::new(Vec::with_capacity(128));
        req.extend_from_slice(
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").as_bytes(),
        );
        if let Some(b) = &choice.proxy.basic {
            req.extend_from_slice(b"Proxy-Authorization: Basic ");
            req.extend_from_slice(b.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        Tunnel {
            name: ProxyName {
                addr: choice.proxy.to_string(),
                source: choice.source,
            },
            target,
            sent_credentials: choice.proxy.has_credentials(),
            request: req,
            head: Head::default(),
        }
    }

    /// The request to write to the proxy, whole, before anything else.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// The proxy the hop goes through, for messages and `qmqtt check`.
    pub fn proxy(&self) -> &ProxyName {
        &self.name
    }

    /// Read the proxy's answer. `Ok(None)`: all of `data` taken, more needed. `Ok(Some(n))`: the tunnel is
    /// open; the answer was the first `n` bytes of `data`, the rest is the broker's.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ProxyError> {
        let n = match self.head.feed(data) {
            Ok(None) => return Ok(None),
            Ok(Some(n)) => n,
            Err(why) => {
                return Err(ProxyError::NotHttp {
                    proxy: self.name.clone(),
                    why,
                })
            }
        };
        let status_line = self.head.status_line().to_string();
        match self.head.status() {
            200..=299 => Ok(Some(n)),
            // 407 is the proxy's status for this; some (tinyproxy, for wrong credentials) answer 401.
            401 | 407 => Err(ProxyError::AuthRequired {
                proxy: self.name.clone(),
                status_line,
                sent: self.sent_credentials,
                scheme: self
                    .head
                    .header("proxy-authenticate")
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_string),
            }),
            _ => Err(ProxyError::Refused {
                proxy: self.name.clone(),
                target: self.target.clone(),
                status_line,
            }),
        }
    }

    /// The proxy's status line, once [`Tunnel::feed`] said the tunnel is open.
    pub fn status_line(&self) -> &str {
        self.head.status_line()
    }

    /// The failure for an end of stream before the answer was complete.
    pub fn closed(&self) -> ProxyError {
        ProxyError::Closed {
            proxy: self.name.clone(),
            target: self.target.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn pick(pairs: &[(&str, &str)], tls: bool, host: &str) -> Option<(String, Source)> {
        select(None, None, tls, host, 1883, &env(pairs))
            .unwrap()
            .map(|c| (c.proxy.to_string(), c.source))
    }

    #[test]
    fn urls() {
        let p = Proxy::parse("http://proxy.lan:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.has_credentials()),
            ("proxy.lan", 3128, false)
        );
        let p = Proxy::parse("proxy.lan").unwrap();
        assert_eq!(p.port, DEFAULT_PROXY_PORT);
        let p = Proxy::parse("HTTPS://[::1]:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 3128));
        assert_eq!(p.to_string(), "[::1]:3128");
        let p = Proxy::parse("10.0.0.1:8888").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 8888));
        for bad in [
            "socks5://h:1080",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://h:1/path",
            "http://::1:3128",
            "http://h o:1",
            "http://[::1",
        ] {
            assert!(
                matches!(Proxy::parse(bad), Err(ProxyError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_are_basic_and_never_shown() {
        let p = Proxy::parse("http://gw:s%40cret:x@proxy:3128").unwrap();
        assert_eq!(p.user(), Some("gw"));
        // base64("gw:s@cret:x")
        assert_eq!(
            p.basic.as_deref().map(String::as_str),
            Some("Z3c6c0BjcmV0Ong=")
        );
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("cret") && !dbg.contains("Z3c6"), "{dbg}");
        assert!(!p.to_string().contains("cret"));
        let e = Proxy::parse("http://gw:hunter2@proxy:0")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("gw:***@proxy:0"),
            "{e}"
        );
        // A user without password: "user:".
        let p = Proxy::parse("http://only@proxy").unwrap();
        assert_eq!(p.basic.as_deref().map(String::as_str), Some("b25seTo="));
    }

    #[test]
    fn percent_escapes() {
        assert_eq!(&pct_decode("a%20b%zz%4")[..], b"a b%zz%4");
        assert_eq!(&pct_decode("%")[..], b"%");
        assert_eq!(&pct_decode("%41")[..], b"A");
    }

    #[test]
    fn option_wins_and_blank_means_none() {
        let e = env(&[(USE_ENV, "TRUE"), ("http_proxy", "http://envproxy:1")]);
        let c = select(Some("http://opt:2"), None, false, "b", 1883, &e)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.proxy.to_string(), c.source),
            ("opt:2".into(), Source::Option)
        );
        assert_eq!(select(Some(""), None, false, "b", 1883, &e).unwrap(), None);
        // The TLS broker's option is httpsProxy; httpProxy is not used for it.
        assert_eq!(
            select(Some("http://opt:2"), None, true, "b", 8883, &e).unwrap(),
            None
        );
        let c = select(None, Some("http://sopt:3"), true, "b", 8883, &e)
            .unwrap()
            .unwrap();
        assert_eq!(c.proxy.to_string(), "sopt:3");
        // The option ignores no_proxy (as paho).
        let e = env(&[(USE_ENV, "TRUE"), ("no_proxy", "*")]);
        assert!(select(Some("http://opt:2"), None, false, "b", 1883, &e)
            .unwrap()
            .is_some());
    }

    #[test]
    fn environment_only_with_paho_flag() {
        let base = [
            ("http_proxy", "http://std:1"),
            ("mqtt_http_proxy", "http://mq:2"),
        ];
        assert_eq!(pick(&base, false, "b"), None);
        let mut with = base.to_vec();
        with.push((USE_ENV, "FALSE"));
        assert_eq!(pick(&with, false, "b"), None);
        with.push((USE_ENV, "true"));
        assert_eq!(
            pick(&with, false, "b"),
            None,
            "paho compares case-sensitively"
        );
        let with = [base[0], base[1], (USE_ENV, "TRUE")];
        assert_eq!(
            pick(&with, false, "b"),
            Some(("mq:2".into(), Source::Env("mqtt_http_proxy")))
        );
    }

    #[test]
    fn mqtt_variables_override_and_blank_unsets() {
        let on = (USE_ENV, "TRUE");
        assert_eq!(
            pick(&[on, ("http_proxy", "std:1")], false, "b"),
            Some(("std:1".into(), Source::Env("http_proxy")))
        );
        assert_eq!(
            pick(
                &[on, ("http_proxy", "std:1"), ("mqtt_http_proxy", "")],
                false,
                "b"
            ),
            None
        );
        assert_eq!(pick(&[on, ("http_proxy", " ")], false, "b"), None);
        assert_eq!(
            pick(
                &[on, ("http_proxy", ""), ("mqtt_http_proxy", "mq:2")],
                false,
                "b"
            ),
            Some(("mq:2".into(), Source::Env("mqtt_http_proxy")))
        );
        // Plain brokers use http_proxy, TLS brokers https_proxy.
        let all = [
            on,
            ("http_proxy", "h:1"),
            ("https_proxy", "s:2"),
            ("mqtt_https_proxy", "ms:3"),
        ];
        assert_eq!(pick(&all, false, "b").unwrap().0, "h:1");
        assert_eq!(pick(&all, true, "b").unwrap().0, "ms:3");
        assert_eq!(pick(&[on, ("http_proxy", "h:1")], true, "b"), None);
    }

    #[test]
    fn no_proxy_from_either_variable() {
        let on = (USE_ENV, "TRUE");
        let p = ("http_proxy", "h:1");
        assert_eq!(
            pick(&[on, p, ("no_proxy", "broker.lan")], false, "broker.lan"),
            None
        );
        assert!(pick(&[on, p, ("no_proxy", "other")], false, "broker.lan").is_some());
        // mqtt_no_proxy overrides no_proxy; blank unsets it.
        assert!(pick(
            &[on, p, ("no_proxy", "broker.lan"), ("mqtt_no_proxy", "")],
            false,
            "broker.lan"
        )
        .is_some());
        assert_eq!(
            pick(
                &[on, p, ("no_proxy", "x"), ("mqtt_no_proxy", ".lan")],
                false,
                "broker.lan"
            ),
            None
        );
    }

    #[test]
    fn no_proxy_rules() {
        let m = no_proxy_matches;
        assert!(m("example.com", "example.com", 1));
        assert!(m("example.com", "a.b.EXAMPLE.com", 1));
        assert!(m(".example.com", "a.example.com", 1));
        assert!(!m("example.com", "badexample.com", 1));
        assert!(!m("a.example.com", "example.com", 1));
        assert!(m("*", "anything", 1));
        assert!(m("foo, 127.0.0.1", "127.0.0.1", 1883));
        assert!(!m("127.0.0.1", "127.0.0.10", 1883));
        assert!(m("broker:8883", "broker", 8883));
        assert!(!m("broker:8883", "broker", 1883));
        assert!(!m("*:8883", "broker", 1883));
        assert!(m("*:1883", "broker", 1883));
        assert!(m("[::1]:1883", "::1", 1883));
        assert!(m("::1", "[::1]", 1883));
        assert!(!m("", "broker", 1));
        assert!(!m(",,", "broker", 1));
    }

    #[test]
    fn bad_proxy_in_environment_names_the_variable() {
        let e = env(&[(USE_ENV, "TRUE"), ("https_proxy", "ftp://x:1")]);
        let err = select(None, None, true, "b", 8883, &e)
            .unwrap_err()
            .to_string();
        assert!(err.contains("$https_proxy"), "{err}");
    }

    fn tunnel(url: &str) -> Tunnel {
        let c = Choice {
            proxy: Proxy::parse(url).unwrap(),
            source: Source::Option,
        };
        Tunnel::new(&c, "broker.lan", 8883)
    }

    #[test]
    fn request_bytes() {
        assert_eq!(
            tunnel("http://p:3128").request(),
            b"CONNECT broker.lan:8883 HTTP/1.1\r\nHost: broker.lan:8883\r\n\r\n"
        );
        assert_eq!(
            tunnel("http://u:p@p:3128").request(),
            &b"CONNECT broker.lan:8883 HTTP/1.1\r\nHost: broker.lan:8883\r\nProxy-Authorization: Basic dTpw\r\n\r\n"[..]
        );
        let c = Choice {
            proxy: Proxy::parse("p").unwrap(),
            source: Source::Option,
        };
        assert!(Tunnel::new(&c, "::1", 1883)
            .request()
            .starts_with(b"CONNECT [::1]:1883 HTTP/1.1\r\n"));
    }

    #[test]
    fn answers() {
        let mut t = tunnel("http://p:3128");
        let ok =
            b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n\x20\x02";
        assert_eq!(t.feed(ok), Ok(Some(ok.len() - 2)));

        let mut t = tunnel("http://p:3128");
        let e = t
            .feed(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n")
            .unwrap_err();
        assert!(
            matches!(e, ProxyError::AuthRequired { sent: false, .. }),
            "{e:?}"
        );
        let m = e.to_string();
        assert!(
            m.contains("p:3128")
                && m.contains("'HTTP/1.1 407 Proxy Authentication Required'")
                && m.contains("http://user:password@host:port")
                && !m.contains("Basic only"),
            "{m}"
        );

        let mut t = tunnel("http://u:wrong@p:3128");
        let m = t
            .feed(b"HTTP/1.1 407 Denied\r\nProxy-Authenticate: Digest realm=x\r\n\r\n")
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("refused the proxy user and password") && m.contains("Digest"),
            "{m}"
        );
        assert!(!m.contains("wrong"), "{m}");

        let mut t = tunnel("http://p:3128");
        let m = t
            .feed(b"HTTP/1.1 403 Access violation\r\n\r\n")
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("'HTTP/1.1 403 Access violation'") && m.contains("broker.lan:8883"),
            "{m}"
        );

        let mut t = tunnel("http://p:3128");
        let e = t.feed(&[0x20, 0x02, 0x00, 0x00]).unwrap_err();
        assert!(matches!(e, ProxyError::NotHttp { .. }), "{e:?}");
        assert!(e.to_string().contains("is not an HTTP proxy"), "{e}");

        let t = tunnel("http://p:3128");
        assert!(t
            .closed()
            .to_string()
            .contains("closed (or reset) the connection before answering CONNECT broker.lan:8883"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Proxy::parse(&s);
            let _ = no_proxy_matches(&s, "h.example", 1);
            let _ = no_proxy_matches("example", &s, 1);
        }

        #[test]
        fn feed_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = tunnel("p").feed(&data);
        }
    }
}
