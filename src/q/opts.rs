//! `.mqtt.conn` options: the dictionary q passes ⇄ [`Config`].
//!
//! Every key KX's library accepts is accepted, with KX's types (symbols, or int/long numbers) and error
//! strings (`<key> type incorrect`, `Unsupported conn opt name in dictionary`, …). Values may come as a mixed
//! list (what KX's `conn` wrapper builds) or as a typed vector (`` `username`password!`u`p ``); empty keys are
//! skipped (KX's wrapper prepends `` `  `` ↦ `::`). Keys whose meaning cannot be honoured fail the connect with an
//! error naming the key; nothing is silently ignored. qmqtt's own keys follow KX's.
use std::ffi::CStr;
use std::path::PathBuf;
use std::time::Duration;

use log::warn;

use super::k::{KRef, Val, KS};
use crate::client::{Config, FullPolicy};
use crate::codec::{Protocol, QoS};
use crate::error::{ConfigError, Fault, Key as Setting};
use crate::session::Will;
use crate::spool::{SpoolConfig, SpoolFull, SyncPolicy};
use crate::transport::TlsVersion;

/// A static, NUL-terminated q error string.
pub type QErr = &'static CStr;

/// `concat!` into a `&'static CStr`, checked at compile time.
macro_rules! cs {
    ($($s:expr),+) => {{
        const C: &::std::ffi::CStr =
            match ::std::ffi::CStr::from_bytes_with_nul(concat!($($s),+, "\0").as_bytes()) {
                Ok(c) => c,
                Err(_) => panic!("interior NUL in a q error string"),
            };
        C
    }};
}

/// A parsed connection request.
pub struct ConnSpec {
    pub cfg: Config,
    /// `rcvPayload` `byte: received payloads reach q as byte vectors instead of char vectors.
    pub rcv_bytes: bool,
    /// `logLevel` given: applied (globally) when the connection is made.
    pub log_level: Option<log::LevelFilter>,
    /// `rcvProperties` 1b: received messages go to `msgrcvdp[topic;msg;props]` with their MQTT 5 properties.
    pub rcv_props: bool,
}

/// One option key: its name and its two error strings.
struct Key {
    name: &'static [u8],
    ty: QErr,
    bad: QErr,
    /// The error when an MQTT 5 key comes without `MQTTVersion 5`.
    v5: QErr,
}

macro_rules! key {
    ($n:literal) => {
        Key {
            name: $n.as_bytes(),
            ty: cs!($n, " type incorrect"),
            bad: cs!($n, " invalid"),
            v5: cs!($n, ": MQTT 5 only"),
        }
    };
}

const KEYS: &[Key] = &[
    key!("username"),
    key!("password"),
    key!("keepAliveInterval"),
    key!("cleansession"),
    key!("reliable"),
    key!("connectTimeout"),
    key!("retryInterval"),
    key!("MQTTVersion"),
    key!("maxInflightMessages"),
    key!("cleanstart"),
    key!("httpProxy"),
    key!("httpsProxy"),
    key!("lastWillTopic"),
    key!("lastWillQos"),
    key!("lastWillMessage"),
    key!("lastWillRetain"),
    key!("trustStore"),
    key!("keyStore"),
    key!("privateKey"),
    key!("privateKeyPassword"),
    key!("enabledCipherSuites"),
    key!("CApath"),
    key!("enableServerCertAuth"),
    key!("sslVersion"),
    key!("verify"),
    // qmqtt's own keys
    key!("queueBytes"),
    key!("queueMessages"),
    key!("fullPolicy"),
    key!("autoReconnect"),
    key!("backoffMin"),
    key!("backoffMax"),
    key!("alpn"),
    key!("sni"),
    key!("rcvPayload"),
    key!("logLevel"),
    key!("linger"),
    key!("maxMessageSize"),
    key!("batchScheduling"),
    key!("spoolDir"),
    key!("spoolBytes"),
    key!("spoolFull"),
    key!("spoolSync"),
    key!("drainRate"),
    // MQTT 5 (with MQTTVersion 5)
    key!("sessionExpiryInterval"),
    key!("receiveMaximum"),
    key!("maximumPacketSize"),
    key!("topicAliases"),
    key!("topicAliasMaximum"),
    key!("userProperties"),
    key!("rcvProperties"),
];

pub const E_OPTIONS: QErr = c"options";
pub const E_KEY_TYPE: QErr = c"options key type incorrect";
pub const E_VALUE_TYPE: QErr = c"options value type incorrect";
pub const E_UNSUPPORTED: QErr = c"Unsupported conn opt name in dictionary";

/// A symbol or string value as UTF-8 text.
fn text<'a>(v: Val<'a>, k: &Key) -> Result<&'a str, QErr> {
    match v {
        Val::Sym(b) | Val::Chars(b) => std::str::from_utf8(b).map_err(|_| k.bad),
        _ => Err(k.ty),
    }
}

/// A number (boolean, byte, short, int or long; KX takes int and long).
fn int(v: Val<'_>, k: &Key) -> Result<i64, QErr> {
    match v {
        Val::Int(i) => Ok(i),
        Val::IntNull => Err(k.bad),
        _ => Err(k.ty),
    }
}

fn in_range(v: i64, lo: i64, hi: i64, k: &Key) -> Result<i64, QErr> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(k.bad)
    }
}

fn flag(v: Val<'_>, k: &Key) -> Result<bool, QErr> {
    int(v, k).map(|i| i != 0)
}

fn path(v: Val<'_>, k: &Key) -> Result<Option<PathBuf>, QErr> {
    let s = text(v, k)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn qos(v: Val<'_>, k: &Key) -> Result<QoS, QErr> {
    let i = int(v, k)?;
    u8::try_from(i).ok().and_then(QoS::from_u8).ok_or(k.bad)
}

/// Schemes the engine accepts; anything else is KX's (paho's) `Invalid protocol scheme`.
/// Every broker of the (comma-separated) list has a scheme qmqtt speaks, or is `host:port` (plain TCP, as paho).
pub fn scheme_ok(uris: &str) -> bool {
    uris.split(',').all(|uri| {
        let uri = uri.trim();
        ["tcp://", "ssl://", "mqtt://", "mqtts://", "ws://", "wss://"]
            .iter()
            .any(|s| uri.len() > s.len() && uri[..s.len()].eq_ignore_ascii_case(s))
            || crate::transport::is_host_port(uri)
    })
}

/// A broker of the (comma-separated) list is reached over TLS.
pub fn is_tls(uris: &str) -> bool {
    uris.split(',').any(|uri| {
        let uri = uri.trim();
        ["ssl://", "mqtts://", "wss://"]
            .iter()
            .any(|s| uri.len() >= s.len() && uri[..s.len()].eq_ignore_ascii_case(s))
    })
}

/// Build the connection's configuration from the URI, the client id and the options dictionary.
pub fn parse(uri: &str, client_id: &str, opts: KRef<'_>) -> Result<ConnSpec, QErr> {
    let (keys, vals) = opts.dict().ok_or(E_OPTIONS)?;
    let n = match keys.t() {
        KS => keys.len().ok_or(E_OPTIONS)?,
        // `()!()`: an empty mixed list of keys.
        0 if keys.len() == Some(0) => 0,
        _ => return Err(E_KEY_TYPE),
    };
    if n > 0 {
        let vt = vals.t();
        if !(0..=19).contains(&vt) {
            return Err(E_VALUE_TYPE);
        }
    }
    if vals.len() != Some(n) && n > 0 {
        return Err(E_OPTIONS);
    }

    let mut cfg = Config::new(uri, client_id);
    // KX's MQTTVersion 0 (the default): 3.1.1 with paho's fallback to 3.1.
    cfg.protocol_fallback = true;
    let mut spec_rcv_bytes = false;
    let mut log_level = None;
    let mut reliable: Option<bool> = None;
    let mut max_inflight: Option<u16> = None;
    let mut will_topic: Option<String> = None;
    let mut will_qos = QoS::AtMostOnce;
    let mut will_msg: Vec<u8> = Vec::new();
    let mut will_retain = false;
    let mut will_extra = false;
    let mut key_store: Option<PathBuf> = None;
    let mut private_key: Option<PathBuf> = None;
    // The first TLS option given: an error on an address without TLS.
    let mut tls_key = None;
    let mut spool: Option<SpoolConfig> = None;
    let mut spool_extra: Vec<(&Key, Val<'_>)> = Vec::new();
    let mut clean_start: Option<bool> = None;
    let mut rcv_props = false;
    // The first MQTT 5 key given (checked against MQTTVersion once every key is read).
    let mut v5_key: Option<&Key> = None;

    for i in 0..n {
        let name = match keys.item(i) {
            Some(Val::Sym(b)) => b,
            _ => return Err(E_KEY_TYPE),
        };
        if name.is_empty() {
            continue;
        }
        let v = vals.item(i).ok_or(E_OPTIONS)?;
        let k = KEYS.iter().find(|k| k.name == name).ok_or(E_UNSUPPORTED)?;
        match k.name {
            b"username" => {
                let s = text(v, k)?;
                cfg.username = (!s.is_empty()).then(|| s.to_string());
            }
            b"password" => match v {
                Val::Sym(b) | Val::Chars(b) | Val::Bytes(b) => {
                    cfg.password = (!b.is_empty()).then(|| b.to_vec())
                }
                _ => return Err(k.ty),
            },
            b"keepAliveInterval" => {
                cfg.keep_alive = Duration::from_secs(in_range(int(v, k)?, 0, 65535, k)? as u64)
            }
            b"cleansession" => cfg.clean_session = flag(v, k)?,
            b"reliable" => reliable = Some(flag(v, k)?),
            b"connectTimeout" => {
                cfg.connect_timeout =
                    Duration::from_secs(in_range(int(v, k)?, 1, 86_400, k)? as u64)
            }
            b"retryInterval" => {
                let r = in_range(int(v, k)?, 0, i32::MAX as i64, k)?;
                if r != 0 {
                    warn!("retryInterval {r}: unacknowledged messages are resent on reconnect (MQTT 3.1.1 rule); there is no periodic resend, the value is not used");
                }
            }
            b"MQTTVersion" => {
                let v = int(v, k)?;
                // 0 (KX's default): 3.1.1, then 3.1 if the broker refuses it, as paho.
                cfg.protocol_fallback = v == 0;
                cfg.protocol = match v {
                    0 | 4 => Protocol::V311,
                    3 => Protocol::V31,
                    5 => Protocol::V5,
                    _ => return Err(k.bad),
                }
            }
            b"maxInflightMessages" => {
                let m = int(v, k)?;
                if m != -1 {
                    max_inflight = Some(in_range(m, 1, u16::MAX as i64, k)? as u16);
                }
            }
            b"cleanstart" => clean_start = Some(flag(v, k)?),
            b"httpProxy" => cfg.http_proxy = Some(text(v, k)?.to_string()),
            b"httpsProxy" => cfg.https_proxy = Some(text(v, k)?.to_string()),
            b"lastWillTopic" => {
                let s = text(v, k)?;
                will_topic = (!s.is_empty()).then(|| s.to_string());
            }
            b"lastWillQos" => {
                will_qos = qos(v, k)?;
                will_extra = true;
            }
            b"lastWillMessage" => {
                will_msg = match v {
                    Val::Chars(b) | Val::Bytes(b) | Val::Sym(b) => b.to_vec(),
                    _ => return Err(k.ty),
                };
                will_extra = true;
            }
            b"lastWillRetain" => {
                will_retain = flag(v, k)?;
                will_extra = true;
            }
            b"trustStore" => {
                cfg.tls.ca_file = path(v, k)?;
                tls_key.get_or_insert(Setting::CaFile);
            }
            b"keyStore" => {
                key_store = path(v, k)?;
                tls_key.get_or_insert(Setting::ClientCert);
            }
            b"privateKey" => {
                private_key = path(v, k)?;
                tls_key.get_or_insert(Setting::PrivateKey);
            }
            b"privateKeyPassword" => {
                let s = text(v, k)?;
                cfg.tls.key_password = (!s.is_empty()).then(|| crate::Secret::from(s));
            }
            b"enabledCipherSuites" => {
                let s = text(v, k)?;
                // OpenSSL's "ALL" / "DEFAULT" (paho's default): every suite rustls offers.
                let all = s.eq_ignore_ascii_case("ALL") || s.eq_ignore_ascii_case("DEFAULT");
                cfg.tls.cipher_suites = if all { "" } else { s }
                    .split([':', ',', ' '])
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect();
                tls_key.get_or_insert(Setting::CipherSuites);
            }
            b"CApath" => {
                cfg.tls.ca_dir = path(v, k)?;
                tls_key.get_or_insert(Setting::CaDir);
            }
            b"enableServerCertAuth" => {
                cfg.tls.verify_certificate = flag(v, k)?;
                if !cfg.tls.verify_certificate {
                    warn!("enableServerCertAuth 0: the broker's certificate is NOT verified; anyone on the path can impersonate it");
                }
                tls_key.get_or_insert(Setting::VerifyCertificate);
            }
            b"sslVersion" => {
                cfg.tls.min_version = match int(v, k)? {
                    0 | 3 => TlsVersion::Tls12,
                    4 => TlsVersion::Tls13,
                    1 | 2 => return Err(c"sslVersion: TLS 1.0/1.1 unsupported"),
                    _ => return Err(k.bad),
                };
                tls_key.get_or_insert(Setting::TlsVersion);
            }
            b"verify" => {
                cfg.tls.verify_hostname = flag(v, k)?;
                if !cfg.tls.verify_hostname {
                    warn!(
                        "verify 0: the broker's host name is NOT checked against its certificate"
                    );
                }
                tls_key.get_or_insert(Setting::VerifyHostname);
            }
            b"queueBytes" => {
                cfg.queue_bytes = in_range(int(v, k)?, 1024, isize::MAX as i64, k)? as usize
            }
            b"queueMessages" => {
                cfg.queue_messages = in_range(int(v, k)?, 1, isize::MAX as i64, k)? as usize
            }
            b"fullPolicy" => {
                cfg.full_policy = match v {
                    Val::Sym(b"error") => FullPolicy::Error,
                    Val::Sym(b"dropOldest") => FullPolicy::DropOldest,
                    Val::Sym(b"dropNewest") => FullPolicy::DropNewest,
                    Val::Sym(_) => return Err(k.bad),
                    _ => return Err(k.ty),
                }
            }
            b"autoReconnect" => cfg.reconnect = flag(v, k)?,
            b"backoffMin" => {
                cfg.backoff_min =
                    Duration::from_millis(in_range(int(v, k)?, 1, 86_400_000, k)? as u64)
            }
            b"backoffMax" => {
                cfg.backoff_max =
                    Duration::from_millis(in_range(int(v, k)?, 1, 86_400_000, k)? as u64)
            }
            b"alpn" => {
                cfg.tls.alpn = match v {
                    Val::Sym(b) | Val::Chars(b) => vec![b.to_vec()],
                    Val::Syms(list) => {
                        let mut out = Vec::new();
                        for j in 0..list.len().unwrap_or(0) {
                            match list.item(j) {
                                Some(Val::Sym(b)) => out.push(b.to_vec()),
                                _ => return Err(k.ty),
                            }
                        }
                        out
                    }
                    _ => return Err(k.ty),
                };
                if cfg.tls.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
                    return Err(k.bad);
                }
                tls_key.get_or_insert(Setting::Alpn);
            }
            b"sni" => {
                let s = text(v, k)?;
                cfg.tls.server_name = (!s.is_empty()).then(|| s.to_string());
                tls_key.get_or_insert(Setting::ServerName);
            }
            b"rcvPayload" => {
                spec_rcv_bytes = match v {
                    Val::Sym(b"char") => false,
                    Val::Sym(b"byte") => true,
                    Val::Sym(_) => return Err(k.bad),
                    _ => return Err(k.ty),
                }
            }
            b"linger" => {
                cfg.linger = Duration::from_millis(in_range(int(v, k)?, 0, 10_000, k)? as u64)
            }
            b"maxMessageSize" => max_incoming(&mut cfg, v, k)?,
            b"batchScheduling" => cfg.batch_scheduling = flag(v, k)?,
            b"spoolDir" => spool = path(v, k)?.map(SpoolConfig::new),
            // Applied once spoolDir is known (keys may come in any order).
            b"spoolBytes" | b"spoolFull" | b"spoolSync" | b"drainRate" => spool_extra.push((k, v)),
            b"logLevel" => {
                log_level = Some(
                    match v {
                        Val::Sym(b) => super::qlog::parse(b),
                        Val::Int(i) => super::qlog::from_number(i),
                        Val::IntNull => None,
                        _ => return Err(k.ty),
                    }
                    .ok_or(k.bad)?,
                )
            }
            b"sessionExpiryInterval"
            | b"receiveMaximum"
            | b"maximumPacketSize"
            | b"topicAliases"
            | b"topicAliasMaximum"
            | b"userProperties"
            | b"rcvProperties" => {
                mqtt5_key(&mut cfg, &mut rcv_props, k, v)?;
                if k.name != b"maximumPacketSize" {
                    v5_key = v5_key.or(Some(k));
                }
            }
            _ => return Err(E_UNSUPPORTED),
        }
    }
    if cfg.protocol == Protocol::V5 {
        // MQTT 5 has Clean Start where 3.1.1 has Clean Session: `cleanstart` (KX's key), else `cleansession`.
        if let Some(c) = clean_start {
            cfg.clean_session = c;
        }
    } else if clean_start == Some(true) {
        return Err(c"cleanstart: MQTT 5 only");
    } else if let Some(k) = v5_key {
        return Err(k.v5);
    }

    if let Some(sp) = spool.as_mut() {
        for (k, v) in spool_extra {
            match k.name {
                b"spoolBytes" => {
                    sp.budget_bytes = in_range(int(v, k)?, 1 << 20, i64::MAX, k)? as u64
                }
                b"spoolFull" => {
                    sp.full = match v {
                        Val::Sym(b"dropOldest") => SpoolFull::DropOldest,
                        Val::Sym(b"refuse") => SpoolFull::Refuse,
                        Val::Sym(_) => return Err(k.bad),
                        _ => return Err(k.ty),
                    }
                }
                b"spoolSync" => {
                    sp.sync = match v {
                        Val::Sym(b"batch") => SyncPolicy::EveryBatch,
                        Val::Sym(b"never") => SyncPolicy::Never,
                        Val::Int(ms) => SyncPolicy::Interval(Duration::from_millis(in_range(
                            ms, 1, 86_400_000, k,
                        )?
                            as u64)),
                        Val::Sym(_) | Val::IntNull => return Err(k.bad),
                        _ => return Err(k.ty),
                    }
                }
                _ => sp.drain_rate = Some(in_range(int(v, k)?, 1, u32::MAX as i64, k)? as u32),
            }
        }
        // A segment must fit twice in the budget: shrink segments for small budgets.
        sp.segment_bytes = sp.segment_bytes.min(sp.budget_bytes / 2);
        cfg.spool = spool;
    } else if !spool_extra.is_empty() {
        return Err(c"spoolDir missing");
    }

    // paho: `reliable` 1 = one message in flight, 0 = ten; `maxInflightMessages` (> 0) wins over both.
    cfg.max_inflight = match (max_inflight, reliable) {
        (Some(m), _) => m,
        (None, Some(true)) => 1,
        (None, Some(false)) => 10,
        (None, None) => cfg.max_inflight,
    };
    if cfg.backoff_min > cfg.backoff_max {
        return Err(c"backoffMin greater than backoffMax");
    }
    match will_topic {
        Some(topic) => {
            cfg.will = Some(Will {
                topic,
                payload: will_msg,
                qos: will_qos,
                retain: will_retain,
                properties: Default::default(),
            })
        }
        None if will_extra => return Err(c"lastWillTopic missing"),
        None => {}
    }
    // paho reads the private key from the keyStore file when privateKey is not given.
    cfg.tls.key_file = private_key.or_else(|| key_store.clone());
    cfg.tls.cert_file = key_store;
    // Also for a TLS option given at its default value (the engine sees only values that differ).
    // (An address that does not parse is the engine's to report.) A list of brokers takes them when one
    // of its brokers uses TLS (they apply to those).
    let tls_uri = uri
        .split(',')
        .any(|u| crate::transport::Endpoint::parse(u).map_or(true, |e| e.scheme.tls()));
    if let Some(key) = tls_key.filter(|_| !tls_uri) {
        return Err(super::config_error(&ConfigError::new(
            key,
            Fault::NeedsTls,
            "",
        )));
    }
    Ok(ConnSpec {
        cfg,
        rcv_bytes: spec_rcv_bytes,
        log_level,
        rcv_props,
    })
}

/// `maxMessageSize` (KX style) and `maximumPacketSize` (MQTT 5's name, which the broker is told): one bound,
/// the largest incoming packet; the event queue grows to hold one.
fn max_incoming(cfg: &mut Config, v: Val<'_>, k: &Key) -> Result<(), &'static CStr> {
    let m = in_range(int(v, k)?, 64, 256 << 20, k)? as usize;
    cfg.max_packet_size = m;
    cfg.event_queue_bytes = cfg.event_queue_bytes.max(m + (64 << 10));
    Ok(())
}

/// The MQTT 5 keys: `sessionExpiryInterval` (seconds), `receiveMaximum` (1-65535), `maximumPacketSize`
/// (bytes; also the incoming limit under 3.1.1), `topicAliases` (aliases this client uses, 0: none),
/// `topicAliasMaximum` (aliases the broker may use), `userProperties` (CONNECT's, a dictionary of
/// strings), `rcvProperties` (1b: `msgrcvdp` with the received properties).
fn mqtt5_key(cfg: &mut Config, rcv_props: &mut bool, k: &Key, v: Val<'_>) -> Result<(), QErr> {
    let m = &mut cfg.mqtt5;
    match k.name {
        b"sessionExpiryInterval" => {
            // -1 (or 0W), as u32::MAX, means the session never expires.
            let s = int(v, k)?;
            m.session_expiry = if s == -1 || s == i64::MAX {
                u32::MAX
            } else {
                in_range(s, 0, u32::MAX as i64, k)? as u32
            }
        }
        b"receiveMaximum" => m.receive_maximum = in_range(int(v, k)?, 1, 65535, k)? as u16,
        b"maximumPacketSize" => max_incoming(cfg, v, k)?,
        b"topicAliases" => m.topic_aliases = in_range(int(v, k)?, 0, 65535, k)? as u16,
        b"topicAliasMaximum" => m.topic_alias_maximum = in_range(int(v, k)?, 0, 65535, k)? as u16,
        b"userProperties" => m.user_properties = string_pairs(v, k)?,
        _ => *rcv_props = flag(v, k)?,
    }
    Ok(())
}

/// A dictionary of symbols to strings (or symbols) as name/value pairs: user properties.
fn string_pairs(v: Val<'_>, k: &Key) -> Result<Vec<(String, String)>, QErr> {
    let Val::Dict(d) = v else { return Err(k.ty) };
    let (names, vals) = d.dict().ok_or(k.ty)?;
    let n = names.len().ok_or(k.ty)?;
    if vals.len() != Some(n) {
        return Err(k.ty);
    }
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| k.bad)
    };
    (0..n)
        .map(|i| match (names.item(i), vals.item(i)) {
            (Some(Val::Sym(a) | Val::Chars(a)), Some(Val::Sym(b) | Val::Chars(b))) => {
                Ok((utf8(a)?, utf8(b)?))
            }
            _ => Err(k.ty),
        })
        .collect()
}
