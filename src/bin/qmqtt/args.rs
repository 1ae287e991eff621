//! The hand-written command-line parser (no clap: the binary stays lean) and the connection options every
//! subcommand shares (`-h -p -L -i -u -P -k`, the TLS flags, `-d`), turned into a [`qmqtt::Config`].
//!
//! Flags follow mosquitto_pub / mosquitto_sub. Every error names the subcommand and the flag and points at
//! `--help`; the caller prints it and exits with [`USAGE_EXIT`].
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use qmqtt::codec::{PropertiesBuf, Property, Protocol};
use qmqtt::session::{Mqtt5Config, Will};
use qmqtt::transport::{TlsOptions, TlsVersion};
use qmqtt::{Config, QoS};

/// Exit code for a bad command line.
pub const USAGE_EXIT: i32 = 2;

/// A subcommand's parsed options, or the exit code once its help (`Ok(None)`: exit 0, help printed with the
/// connection flags) or its usage error (exit 2) has been printed.
pub fn options_or_exit<T>(parsed: Result<Option<T>, UsageError>, help: &str) -> Result<T, i32> {
    match parsed {
        Ok(Some(o)) => Ok(o),
        Ok(None) => {
            out!("{help}\n{CONN_HELP}");
            Err(0)
        }
        Err(e) => {
            errln!("{e}");
            Err(USAGE_EXIT)
        }
    }
}

/// A command-line error, already worded for the user.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The arguments of one subcommand, consumed front to back.
pub struct Args {
    /// `pub`, `sub` or `check`: used in error messages.
    pub cmd: &'static str,
    items: std::vec::IntoIter<OsString>,
}

impl Args {
    pub fn new(cmd: &'static str, items: Vec<OsString>) -> Args {
        Args {
            cmd,
            items: items.into_iter(),
        }
    }

    /// The next flag, or `None` at the end. Non-UTF-8 flags and positional arguments are errors.
    pub fn next_flag(&mut self) -> Result<Option<String>, UsageError> {
        match self.items.next() {
            None => Ok(None),
            Some(a) => match a.into_string() {
                Ok(s) if s.starts_with('-') && s.len() > 1 => Ok(Some(s)),
                Ok(s) => Err(self.err(format!("unexpected argument '{s}' (flags start with -)"))),
                Err(a) => Err(self.err(format!("unexpected argument '{}'", a.to_string_lossy()))),
            },
        }
    }

    /// An error for this subcommand, with the pointer to its help.
    pub fn err(&self, msg: String) -> UsageError {
        UsageError(format!(
            "qmqtt {}: {msg} (see qmqtt {} --help)",
            self.cmd, self.cmd
        ))
    }

    /// The raw value after `flag` (may be any bytes: message payloads).
    pub fn value_os(&mut self, flag: &str) -> Result<OsString, UsageError> {
        self.items
            .next()
            .ok_or_else(|| self.err(format!("{flag} needs a value")))
    }

    /// The value after `flag` as bytes.
    pub fn value_bytes(&mut self, flag: &str) -> Result<Vec<u8>, UsageError> {
        Ok(self.value_os(flag)?.into_vec())
    }

    /// The value after `flag` as UTF-8 text.
    pub fn value(&mut self, flag: &str) -> Result<String, UsageError> {
        let v = self.value_os(flag)?;
        v.into_string()
            .map_err(|v| self.err(format!("{flag}: '{}' is not UTF-8", v.to_string_lossy())))
    }

    /// The value after `flag` parsed as a number (or anything `FromStr`).
    pub fn number<T: FromStr>(&mut self, flag: &str) -> Result<T, UsageError> {
        let v = self.value(flag)?;
        v.trim()
            .parse()
            .map_err(|_| self.err(format!("bad number for {flag}: '{v}'")))
    }

    /// A QoS value 0, 1 or 2.
    pub fn qos(&mut self, flag: &str) -> Result<QoS, UsageError> {
        let v = self.value(flag)?;
        match v.trim() {
            "0" => Ok(QoS::AtMostOnce),
            "1" => Ok(QoS::AtLeastOnce),
            "2" => Ok(QoS::ExactlyOnce),
            _ => Err(self.err(format!("bad QoS for {flag}: '{v}' (use 0, 1 or 2)"))),
        }
    }

    /// Seconds, fractional allowed (`0.5`).
    pub fn seconds(&mut self, flag: &str) -> Result<Duration, UsageError> {
        let v = self.value(flag)?;
        match v.trim().parse::<f64>() {
            Ok(s) if (0.0..1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
            _ => Err(self.err(format!("bad number of seconds for {flag}: '{v}'"))),
        }
    }

    pub fn unknown(&self, flag: &str) -> UsageError {
        self.err(format!("unknown flag {flag}"))
    }
}

/// Connection options shared by `pub`, `sub` and `check`.
#[derive(Debug, Clone, Default)]
pub struct ConnOpts {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// From `-L`: scheme said TLS.
    pub url_tls: Option<bool>,
    /// From `-L`: the topic part.
    pub url_topic: Option<String>,
    /// From a `ws://` / `wss://` `-L`: the WebSocket path (MQTT over WebSockets).
    pub url_ws_path: Option<String>,
    pub id: Option<String>,
    pub user: Option<String>,
    pub pass: Option<Vec<u8>>,
    pub keepalive: Option<u16>,
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub keypass: Option<String>,
    /// `--proxy`: the HTTP proxy for every broker (blank: none, the environment not read).
    pub proxy: Option<String>,
    /// `--failover`: more brokers, tried in order after the first (paho's serverURIs).
    pub failover: Vec<String>,
    pub insecure: bool,
    pub tls_version: Option<TlsVersion>,
    pub alpn: Vec<Vec<u8>>,
    pub sni: Option<String>,
    pub ciphers: Vec<String>,
    pub max_inflight: Option<u16>,
    pub queue_bytes: Option<usize>,
    pub clean: bool,
    pub debug: bool,
    pub protocol: Option<Protocol>,
    pub will_topic: Option<String>,
    pub will_payload: Option<Vec<u8>>,
    pub will_qos: Option<QoS>,
    pub will_retain: bool,
    /// `-D connect …`: MQTT 5 CONNECT settings.
    pub mqtt5: Mqtt5Config,
    /// `-D connect maximum-packet-size N`.
    pub max_packet_size: Option<usize>,
    /// `-D publish …`: the properties of every message `pub` sends.
    pub publish_props: PropertiesBuf,
    /// Some `-D` was given (they need `-V 5`).
    pub props_given: bool,
}

/// Help text for the shared flags.
pub const CONN_HELP: &str = "\
Connection:
  -h HOST              broker host (default localhost)
  -p PORT              broker port (default 1883, or 8883 with TLS)
  -L URL               mqtt[s]://[USER[:PASS]@]HOST[:PORT][/TOPIC] (also tcp://, ssl://), or
                       ws[s]://[USER[:PASS]@]HOST[:PORT][/PATH]: MQTT over a WebSocket (ports 80/443,
                       path /mqtt)
  --failover URI       another broker of the same service (tcp://, ssl://, ws://, wss://), tried when the
                       ones before do not answer (repeatable; unacknowledged messages go to the one reached)
  --proxy URL          reach the broker through this HTTP proxy: http://[USER:PASS@]HOST:PORT (CONNECT);
                       without it $http_proxy/$https_proxy apply when PAHO_C_CLIENT_USE_HTTP_PROXY=TRUE
                       (mqtt_http_proxy, mqtt_https_proxy, mqtt_no_proxy override them); '' for none
  -i ID                client id (default qmqtt-<cmd>-<pid>)
  -u USER, -P PASS     username and password
  -k SECONDS           keep-alive interval (default 60; 0 turns it off)
  -V VERSION           MQTT version: mqttv311 (default), mqttv31 or mqttv5 (also 311, 31, 5)
  -D CMD NAME VALUE    an MQTT 5 property (with -V 5), as mosquitto's: -D connect session-expiry-interval,
                       receive-maximum, maximum-packet-size, topic-alias-maximum, request-response-information,
                       user-property NAME VALUE; -D publish (qmqtt pub) message-expiry-interval, content-type,
                       payload-format-indicator, response-topic, correlation-data, user-property NAME VALUE
  --will-topic T       last will: topic (with --will-payload, --will-qos 0|1|2, --will-retain)
  -d                   debug logging on stderr
TLS (on with --cafile, --capath, --cert, -p 8883 or an mqtts:// / ssl:// URL):
  --cafile FILE        CA certificate(s), PEM, to verify the broker (default: the Mozilla roots)
  --capath DIR         a directory of PEM CA certificates
  --cert FILE          client certificate chain (PEM) for mutual TLS; needs --key
  --key FILE           client private key (PEM; encrypted PKCS#8 or OpenSSL PEM with --keypass)
  --keypass PASS       the password of an encrypted --key
  --insecure           do not check the broker's host name against its certificate
  --tls-version V      lowest TLS version: tlsv1.2 (default) or tlsv1.3
  --alpn PROTO         offer this ALPN protocol (repeatable), e.g. x-amzn-mqtt-ca
  --sni NAME           server name to send and verify instead of the host
  --ciphers LIST       colon-separated TLS cipher suites (rustls names, e.g. TLS13_AES_128_GCM_SHA256)
";

impl ConnOpts {
    /// Consume `flag` (and its value) if it is a shared flag. `Ok(false)`: not ours.
    pub fn flag(&mut self, flag: &str, a: &mut Args) -> Result<bool, UsageError> {
        match flag {
            "-h" | "--host" => self.host = Some(a.value(flag)?),
            "-p" | "--port" => self.port = Some(a.number(flag)?),
            "-L" | "--url" => {
                let v = a.value(flag)?;
                self.url(&v).map_err(|m| {
                    a.err(format!(
                        "{flag} '{}': {m}",
                        qmqtt::transport::redacted_uri(&v)
                    ))
                })?;
            }
            "--failover" => self.failover.push(a.value(flag)?),
            "--proxy" => self.proxy = Some(a.value(flag)?),
            "-i" | "--id" => self.id = Some(a.value(flag)?),
            "-u" | "--username" => self.user = Some(a.value(flag)?),
            "-P" | "--pw" => self.pass = Some(a.value_bytes(flag)?),
            "-k" | "--keepalive" => self.keepalive = Some(a.number(flag)?),
            "--cafile" => self.cafile = Some(a.value_os(flag)?.into()),
            "--capath" => self.capath = Some(a.value_os(flag)?.into()),
            "--cert" => self.cert = Some(a.value_os(flag)?.into()),
            "--key" => self.key = Some(a.value_os(flag)?.into()),
            "--keypass" => self.keypass = Some(a.value(flag)?),
            "--insecure" => self.insecure = true,
            "--tls-version" => {
                let v = a.value(flag)?;
                self.tls_version = Some(match v.to_ascii_lowercase().as_str() {
                    "tlsv1.2" | "1.2" => TlsVersion::Tls12,
                    "tlsv1.3" | "1.3" => TlsVersion::Tls13,
                    "tlsv1" | "tlsv1.0" | "tlsv1.1" => {
                        return Err(a.err(format!(
                            "{flag} {v}: TLS 1.0/1.1 are not supported (insecure); use tlsv1.2 or tlsv1.3"
                        )))
                    }
                    _ => return Err(a.err(format!("{flag}: unknown version '{v}' (use tlsv1.2 or tlsv1.3)"))),
                });
            }
            "--alpn" => self.alpn.push(a.value_bytes(flag)?),
            "--sni" => self.sni = Some(a.value(flag)?),
            "--ciphers" => {
                let v = a.value(flag)?;
                self.ciphers = v
                    .split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "-d" | "--debug" => self.debug = true,
            "-V" | "--protocol-version" => {
                let v = a.value(flag)?;
                self.protocol = Some(match v.to_ascii_lowercase().as_str() {
                    "mqttv311" | "311" | "4" => Protocol::V311,
                    "mqttv31" | "31" | "3" => Protocol::V31,
                    "mqttv5" | "5" => Protocol::V5,
                    _ => {
                        return Err(a.err(format!(
                            "{flag}: unknown version '{v}' (use mqttv5, mqttv311 or mqttv31)"
                        )))
                    }
                });
            }
            "--will-topic" => self.will_topic = Some(a.value(flag)?),
            "--will-payload" => self.will_payload = Some(a.value_bytes(flag)?),
            "--will-qos" => self.will_qos = Some(a.qos(flag)?),
            "--will-retain" => self.will_retain = true,
            "-D" | "--property" => {
                let cmd = a.value(flag)?;
                let name = a.value(flag)?;
                let value = a.value(flag)?;
                // `user-property NAME VALUE`: one more.
                let extra = match name.as_str() {
                    "user-property" => Some(a.value(flag)?),
                    _ => None,
                };
                self.property(&cmd, &name, value, extra.unwrap_or_default())
                    .map_err(|m| a.err(format!("{flag} {cmd} {name}: {m}")))?;
                self.props_given = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// One `-D CMD NAME VALUE` (mosquitto_pub's names; `user-property` has a second value, `extra`).
    fn property(&mut self, cmd: &str, name: &str, v: String, extra: String) -> Result<(), String> {
        fn num<T: FromStr>(v: &str, what: &str) -> Result<T, String> {
            v.trim().parse().map_err(|_| format!("'{v}' is not {what}"))
        }
        let flag = |v: &str| match v.trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(format!("'{v}' is not 0 or 1")),
        };
        let m = &mut self.mqtt5;
        let p = &mut self.publish_props;
        let pushed = |r: Result<&mut PropertiesBuf, qmqtt::codec::Error>| {
            r.map(|_| ()).map_err(|e| e.to_string())
        };
        match (cmd, name) {
            ("connect", "session-expiry-interval") => {
                m.session_expiry = num(&v, "a number of seconds (0 to 4294967295)")?
            }
            ("connect", "receive-maximum") => {
                m.receive_maximum = num(&v, "a number from 1 to 65535")?;
                if m.receive_maximum == 0 {
                    return Err("must be 1 to 65535".into());
                }
            }
            ("connect", "maximum-packet-size") => {
                let n: u32 = num(&v, "a number of bytes")?;
                if n < 64 {
                    return Err("must be at least 64 bytes".into());
                }
                self.max_packet_size = Some(n as usize);
            }
            ("connect", "topic-alias-maximum") => {
                m.topic_alias_maximum = num(&v, "a number from 0 to 65535")?
            }
            ("connect", "request-response-information") => {
                m.request_response_information = flag(&v)?
            }
            ("connect", "user-property") => {
                m.user_properties.push((v, extra));
            }
            ("publish", "message-expiry-interval") => pushed(p.push(
                Property::MessageExpiryInterval(num(&v, "a number of seconds")?),
            ))?,
            ("publish", "content-type") => pushed(p.push(Property::ContentType(&v)))?,
            ("publish", "payload-format-indicator") => {
                pushed(p.push(Property::PayloadFormatIndicator(flag(&v)?)))?
            }
            ("publish", "response-topic") => {
                if v.is_empty() || v.contains(['+', '#']) {
                    return Err(format!("'{v}' is not a topic to publish to"));
                }
                pushed(p.push(Property::ResponseTopic(&v)))?
            }
            ("publish", "correlation-data") => {
                pushed(p.push(Property::CorrelationData(v.as_bytes())))?
            }
            ("publish", "user-property") => pushed(p.push(Property::UserProperty(&v, &extra)))?,
            ("publish", "topic-alias") => {
                return Err("qmqtt assigns topic aliases itself (as the broker allows)".into())
            }
            ("connect" | "publish", _) => return Err("unknown or unsupported property".into()),
            _ => return Err("qmqtt takes -D connect and -D publish properties".into()),
        }
        Ok(())
    }

    /// Parse a mosquitto-style `-L` URL.
    fn url(&mut self, url: &str) -> Result<(), String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected scheme://host, e.g. mqtts://broker:8883/topic")?;
        let (tls, ws) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (false, false),
            "mqtts" | "ssl" => (true, false),
            "ws" => (false, true),
            "wss" => (true, true),
            s => {
                return Err(format!(
                    "unknown scheme '{s}' (use mqtt, mqtts, tcp, ssl, ws or wss)"
                ))
            }
        };
        let (authority, topic) = match rest.split_once('/') {
            Some((a, t)) => (a, Some(t)),
            None => (rest, None),
        };
        // For WebSockets the part after the host is the request path, not a topic.
        let (topic, ws_path) = if ws {
            (
                None,
                Some(topic.map_or("/mqtt".to_string(), |p| format!("/{p}"))),
            )
        } else {
            (topic, None)
        };
        let hostport = match authority.rsplit_once('@') {
            Some((cred, hp)) => {
                match cred.split_once(':') {
                    Some((u, p)) => {
                        self.user = Some(u.to_string());
                        self.pass = Some(p.as_bytes().to_vec());
                    }
                    None => self.user = Some(cred.to_string()),
                }
                hp
            }
            None => authority,
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("unexpected '{after}' after ']'")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        self.host = Some(host.to_string());
        if let Some(p) = port {
            self.port = Some(p.parse().map_err(|_| format!("bad port '{p}'"))?);
        }
        self.url_tls = Some(tls);
        self.url_ws_path = ws_path;
        if let Some(t) = topic.filter(|t| !t.is_empty()) {
            self.url_topic = Some(t.to_string());
        }
        Ok(())
    }

    /// TLS is on when the URL says so, a TLS file is given, or the port is 8883.
    pub fn tls(&self) -> bool {
        self.url_tls.unwrap_or(false)
            || self.cafile.is_some()
            || self.capath.is_some()
            || self.cert.is_some()
            || self.port == Some(8883)
    }

    pub fn host(&self) -> &str {
        self.host.as_deref().unwrap_or("localhost")
    }

    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(match (self.tls(), self.url_ws_path.is_some()) {
                (true, true) => 443,
                (false, true) => 80,
                (true, false) => 8883,
                (false, false) => 1883,
            })
    }

    /// The engine's URI: the broker's, then the `--failover` ones, comma-separated.
    pub fn uri(&self) -> String {
        let mut u = self.first_uri();
        for f in &self.failover {
            u.push(',');
            u.push_str(f);
        }
        u
    }

    /// The first broker: `ssl://host:port`, `tcp://host:port` or `ws[s]://host:port/path` (IPv6 literals
    /// bracketed).
    fn first_uri(&self) -> String {
        let host = self.host();
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match &self.url_ws_path {
            Some(path) => {
                let scheme = if self.tls() { "wss" } else { "ws" };
                format!("{scheme}://{host}:{}{path}", self.port())
            }
            None => {
                let scheme = if self.tls() { "ssl" } else { "tcp" };
                format!("{scheme}://{host}:{}", self.port())
            }
        }
    }

    pub fn tls_options(&self) -> TlsOptions {
        let mut t = TlsOptions {
            ca_file: self.cafile.clone(),
            ca_dir: self.capath.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            key_password: self.keypass.as_deref().map(qmqtt::Secret::from),
            server_name: self.sni.clone(),
            alpn: self.alpn.clone(),
            cipher_suites: self.ciphers.clone(),
            verify_hostname: !self.insecure,
            ..TlsOptions::default()
        };
        if let Some(v) = self.tls_version {
            t.min_version = v;
        }
        t
    }

    /// Check combinations that cannot work before connecting.
    pub fn validate(&self, a: &Args) -> Result<(), UsageError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(a.err("--cert and --key go together (give both)".into()));
        }
        if self.keypass.is_some() && self.key.is_none() {
            return Err(a.err("--keypass is the password of --key: give --key too".into()));
        }
        if let Some(f) = self.failover.iter().find(|f| f.contains(',')) {
            return Err(a.err(format!(
                "--failover '{}': one URI each (repeat --failover for more)",
                qmqtt::transport::redacted_uri(f)
            )));
        }
        if self.pass.is_some() && self.user.is_none() {
            return Err(a.err("-P needs -u USER as well".into()));
        }
        if self.will_topic.is_none()
            && (self.will_payload.is_some() || self.will_qos.is_some() || self.will_retain)
        {
            return Err(a.err("--will-payload/--will-qos/--will-retain need --will-topic".into()));
        }
        if let Some(t) = &self.will_topic {
            if t.is_empty() || t.contains(['+', '#']) {
                return Err(a.err(format!(
                    "--will-topic '{t}': must be non-empty, without + or #"
                )));
            }
        }
        if self.props_given && self.protocol != Some(Protocol::V5) {
            return Err(a.err("-D: properties are MQTT 5: add -V 5".into()));
        }
        if !self.publish_props.is_empty() && a.cmd != "pub" {
            return Err(
                a.err("-D publish: properties of published messages go with qmqtt pub".into())
            );
        }
        let failover_tls = self.failover.iter().any(|f| {
            let f = f.to_ascii_lowercase();
            ["ssl://", "mqtts://", "wss://"]
                .iter()
                .any(|s| f.starts_with(s))
        });
        if !self.tls()
            && !failover_tls
            && (self.insecure
                || !self.alpn.is_empty()
                || self.sni.is_some()
                || self.tls_version.is_some()
                || !self.ciphers.is_empty())
        {
            return Err(a.err(
                "TLS flags given but TLS is off: add --cafile/--capath, use -p 8883 or -L mqtts://"
                    .into(),
            ));
        }
        if !self.clean && self.id.is_none() {
            return Err(a.err("-c needs a fixed client id: add -i ID".into()));
        }
        Ok(())
    }

    /// The engine configuration for these options.
    pub fn config(&self, default_id: &str) -> Config {
        let id = self.id.clone().unwrap_or_else(|| default_id.to_string());
        let mut c = Config::new(self.uri(), id);
        c.http_proxy = self.proxy.clone();
        c.https_proxy = self.proxy.clone();
        c.username = self.user.clone();
        c.password = self.pass.clone();
        if let Some(k) = self.keepalive {
            c.keep_alive = Duration::from_secs(u64::from(k));
        }
        c.clean_session = self.clean;
        c.tls = self.tls_options();
        if let Some(p) = self.protocol {
            c.protocol = p;
        }
        if let Some(t) = &self.will_topic {
            c.will = Some(Will {
                topic: t.clone(),
                payload: self.will_payload.clone().unwrap_or_default(),
                qos: self.will_qos.unwrap_or(QoS::AtMostOnce),
                retain: self.will_retain,
                properties: Default::default(),
            });
        }
        if let Some(m) = self.max_inflight {
            c.max_inflight = m;
        }
        if let Some(q) = self.queue_bytes {
            c.queue_bytes = q;
        }
        c.mqtt5 = self.mqtt5.clone();
        if let Some(m) = self.max_packet_size {
            c.max_packet_size = m;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<ConnOpts, UsageError> {
        let mut a = Args::new("pub", v.iter().map(OsString::from).collect());
        let mut o = ConnOpts {
            clean: true,
            ..ConnOpts::default()
        };
        while let Some(f) = a.next_flag()? {
            if !o.flag(&f, &mut a)? {
                return Err(a.unknown(&f));
            }
        }
        o.validate(&a)?;
        Ok(o)
    }

    #[test]
    fn url_forms() {
        let o = parse(&["-L", "mqtts://u:p@example.org:1234/a/b"]).unwrap();
        assert_eq!(o.uri(), "ssl://example.org:1234");
        assert_eq!(o.user.as_deref(), Some("u"));
        assert_eq!(o.pass.as_deref(), Some(&b"p"[..]));
        assert_eq!(o.url_topic.as_deref(), Some("a/b"));
        let o = parse(&["-L", "mqtt://[::1]:1884"]).unwrap();
        assert_eq!(o.uri(), "tcp://[::1]:1884");
        let o = parse(&["-L", "ssl://h"]).unwrap();
        assert_eq!(o.uri(), "ssl://h:8883");
        assert!(parse(&["-L", "http://h"])
            .unwrap_err()
            .0
            .contains("unknown scheme"));
        let o = parse(&["-h", "::1", "-p", "8883"]).unwrap();
        assert_eq!(o.uri(), "ssl://[::1]:8883");
        let o = parse(&["--cafile", "x.pem", "-h", "b"]).unwrap();
        assert_eq!(o.uri(), "ssl://b:8883");
        // WebSockets: the path is the request path, not a topic; ports 80 / 443.
        let o = parse(&["-L", "ws://u@b"]).unwrap();
        assert_eq!((o.uri(), o.url_topic), ("ws://b:80/mqtt".to_string(), None));
        let o = parse(&["-L", "wss://b:8443/ws/mqtt"]).unwrap();
        assert_eq!(o.uri(), "wss://b:8443/ws/mqtt");
        let o = parse(&["-L", "wss://b", "--cafile", "c.pem"]).unwrap();
        assert_eq!(o.uri(), "wss://b:443/mqtt");
    }

    #[test]
    fn failover_and_proxy() {
        let o = parse(&[
            "-L",
            "tcp://a:1",
            "--failover",
            "wss://b/mqtt",
            "--failover",
            "ssl://c:2",
            "--proxy",
            "http://p:3",
            "--cafile",
            "ca.pem",
        ]);
        // --cafile makes the first broker TLS too.
        let o = o.unwrap();
        assert_eq!(o.uri(), "ssl://a:1,wss://b/mqtt,ssl://c:2");
        let c = o.config("x");
        assert_eq!(
            (c.http_proxy.as_deref(), c.https_proxy.as_deref()),
            (Some("http://p:3"), Some("http://p:3"))
        );
        // TLS flags are for the TLS brokers of the list.
        assert!(parse(&["-L", "tcp://a:1", "--failover", "ssl://b:2", "--insecure"]).is_ok());
        let e = parse(&["--failover", "tcp://a:1,tcp://b:2"]).unwrap_err().0;
        assert!(e.contains("repeat --failover"), "{e}");
    }

    #[test]
    fn key_password() {
        let o = parse(&["--cert", "c", "--key", "k", "--keypass", "pw"]).unwrap();
        let t = o.tls_options();
        assert_eq!(
            t.key_password.as_ref().map(|s| s.expose()),
            Some(&b"pw"[..])
        );
        assert!(!format!("{t:?}").contains("pw\""), "{t:?}");
        let e = parse(&["--keypass", "pw"]).unwrap_err().0;
        assert!(e.contains("--keypass is the password of --key"), "{e}");
    }

    #[test]
    fn mqtt5_properties() {
        #[rustfmt::skip]
        let o = parse(&[
            "-V", "mqttv5", "-D", "connect", "session-expiry-interval", "3600",
            "-D", "connect", "user-property", "site", "gw1", "-D", "connect", "maximum-packet-size", "4096",
            "-D", "publish", "message-expiry-interval", "60", "-D", "publish", "user-property", "unit", "C",
        ])
        .unwrap();
        let c = o.config("x");
        assert_eq!(c.protocol, Protocol::V5);
        assert_eq!(c.mqtt5.session_expiry, 3600);
        assert_eq!(c.mqtt5.user_properties, [("site".into(), "gw1".into())]);
        assert_eq!(c.max_packet_size, 4096);
        let p = o.publish_props.properties();
        assert_eq!(p.message_expiry_interval(), Some(60));
        assert_eq!(p.user_properties().collect::<Vec<_>>(), [("unit", "C")]);
        for (args, want) in [
            (
                &["-D", "publish", "content-type", "x"][..],
                "properties are MQTT 5: add -V 5",
            ),
            (
                &["-V", "5", "-D", "publish", "topic-alias", "1"],
                "assigns topic aliases itself",
            ),
            (
                &["-V", "5", "-D", "publish", "message-expiry-interval", "x"],
                "'x' is not a number",
            ),
            (
                &["-V", "5", "-D", "connect", "receive-maximum", "0"],
                "must be 1 to 65535",
            ),
            (
                &["-V", "5", "-D", "subscribe", "user-property", "a", "b"],
                "-D connect and -D publish",
            ),
            (
                &["-V", "5", "-D", "publish", "user-property", "a"],
                "-D needs a value",
            ),
        ] {
            let e = parse(args).unwrap_err().0;
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let e = parse(&["-p", "x"]).unwrap_err().0;
        assert_eq!(
            e,
            "qmqtt pub: bad number for -p: 'x' (see qmqtt pub --help)"
        );
        let e = parse(&["-p"]).unwrap_err().0;
        assert!(e.contains("-p needs a value"), "{e}");
        let e = parse(&["--foo"]).unwrap_err().0;
        assert_eq!(e, "qmqtt pub: unknown flag --foo (see qmqtt pub --help)");
        let e = parse(&["--cert", "c.pem"]).unwrap_err().0;
        assert!(e.contains("--cert and --key"), "{e}");
        let e = parse(&["--insecure"]).unwrap_err().0;
        assert!(e.contains("TLS is off"), "{e}");
        let e = parse(&["--cafile", "c", "--tls-version", "tlsv1.1"])
            .unwrap_err()
            .0;
        assert!(e.contains("not supported"), "{e}");
    }
}
