//! The q extension: K ⇄ Rust translation behind `.mqtt.*` (feature `q`; shipped as `mqttkdb.so`).
//!
//! Exports KX's C functions with KX's names, arities, argument types and error strings — `connX`/3,
//! `init`/1, `pub`/4, `sub`/2, `unsub`/1, `isConnected`/1, `disconnect`/1 — so KX's own `mqtt.q` binds to this
//! library unchanged. Additions (bound by our `q/mqtt.q`): several connections addressed by a handle
//! (`connh`/3, `pubh`/5, `subh`/3, `unsubh`/2, `isConnectedh`/1, `disconnecth`/2, `statsh`/1), batch publish
//! (`pubbatch`/4, `pubbatchh`/5), counters (`stats`/1) and the log level (`loglevel`/1). MQTT 5 (`MQTTVersion 5`,
//! options in [`opts`]): publishing with properties (`pubp`/5, `pubph`/6, `pubbatchp`/5, `pubbatchph`/6; the
//! dictionary is [`props`]'s), and the callbacks `.mqtt.msgrcvdp[topic;msg;props]` (with `rcvProperties`) and
//! `.mqtt.msgfail[token;reason]` (a delivery the broker refused or its limits ruled out).
//!
//! Threads: q calls the exports on its main thread (publishing from q's secondary threads is also safe).
//! Each connection's I/O thread signals its event queue on a file descriptor; `connX`/`connh` register that fd
//! with q's `sd1`, so the callbacks `.mqtt.msgrcvd`, `.mqtt.msgsent`, `.mqtt.disconn` and `.mqtt.subrefused`
//! (and the handle forms `.mqtt.msgrcvdh[h;…]`…) run on q's main thread only, drained in batches. `sub`/`unsub`
//! wait for the broker's answer on q's thread (a condvar the I/O thread signals), never calling into q
//! from another thread; `conn` for the default connection's own broker and client id keeps it (see `rejoin`).
//!
//! Failure: no panic crosses into q (each export catches unwinds → `'internal error`); every string handed
//! to `krr` is static. Long explanations (why a TLS handshake failed, …) go to the log on stderr and to the
//! `lastError` of `.mqtt.stats[]`; the q error is a short category, a `match` on the failure's kind.
use std::cell::RefCell;
use std::ffi::CStr;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kdbplus::api::{native, K};
use log::{debug, error, info, warn};

mod k;
mod opts;
mod props;
mod qlog;

use self::k::{KRef, Val};
use self::opts::QErr;
use crate::client::{Client, ClientError, Event, PublishError};
use crate::codec::{ConnectReturnCode, Properties, QoS};
use crate::error::{ConfigError, Error, Fault, Key, Timeout, TlsError};
use crate::session::Token;
use crate::transport::proxy::ProxyError;
use crate::transport::ws::WsError;

/// Most events handed to q per wake-up of the event fd (q's loop calls again while more are waiting).
const EVENT_BATCH: usize = 1024;
/// Extra time `conn` waits beyond `connectTimeout` for the engine to report its own verdict.
const CONNECT_GRACE: Duration = Duration::from_secs(2);
/// How long `sub`/`unsub` wait for the broker's SUBACK/UNSUBACK when connected (paho's, so KX's, 10 s).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `conn` lets a connected default connection it replaces (other broker or client id) deliver what
/// it holds before closing it.
const REPLACE_DRAIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------
// connections

/// One connection: the engine's client and what q needs to know about it.
struct Conn {
    /// 0 for the KX-style default connection (callbacks with KX's signatures), ≥ 1 for `connh` handles.
    handle: i64,
    client: Mutex<Option<Client>>,
    fd: RawFd,
    /// The broker address and client id it was made with (`conn` keeps a default connection with the same).
    uri: String,
    client_id: String,
    /// Received payloads as byte vectors (`rcvPayload` `byte).
    rcv_bytes: bool,
    /// Received messages go to `msgrcvdp` with their properties (`rcvProperties` 1b).
    rcv_props: bool,
    callback_errors: AtomicU64,
}

struct Registry {
    conns: Vec<Arc<Conn>>,
    next_handle: i64,
    /// Why the last `conn` failed (also kept after the failure for `.mqtt.stats[]`).
    last_error: Option<String>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    conns: Vec::new(),
    next_handle: 1,
    last_error: None,
});
static INIT: AtomicBool = AtomicBool::new(false);

fn reg() -> MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_client(c: &Conn) -> MutexGuard<'_, Option<Client>> {
    c.client.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn find(&self, handle: i64) -> Option<&Arc<Conn>> {
        self.conns.iter().find(|c| c.handle == handle)
    }
    fn take(&mut self, handle: i64) -> Option<Arc<Conn>> {
        let i = self.conns.iter().position(|c| c.handle == handle)?;
        Some(self.conns.swap_remove(i))
    }
}

/// Deregister from q's loop and stop the client (waiting up to `timeout` for queued messages).
fn close_conn(c: &Conn, timeout: Duration) {
    // SAFETY: sd0x with 0 removes the fd from q's loop without closing it (the engine owns it).
    unsafe { native::sd0x(c.fd, 0) };
    let client = lock_client(c).take();
    if let Some(mut client) = client {
        client.disconnect(timeout);
    }
    info!("connection {} closed", c.handle);
}

// ---------------------------------------------------------------------------------------------------------
// errors

fn krr(e: QErr) -> K {
    // SAFETY: e is a static NUL-terminated string, as krr requires (q keeps the pointer).
    unsafe { native::krr(e.as_ptr()) }
}

/// Run an export's body: a q error for `Err`, `'internal error` for a panic.
fn guard(f: impl FnOnce() -> Result<K, QErr>) -> K {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => krr(e),
        Err(_) => {
            error!("internal error (a panic was caught at the q boundary); please report it");
            krr(c"internal error")
        }
    }
}

fn arg<'a>(x: K) -> Option<KRef<'a>> {
    // SAFETY: q hands us valid K objects (or null from a broken caller) that live for the call.
    unsafe { KRef::new(x) }
}

/// The q error for a connect failure (the full sentence goes to the log and to `lastError`).
fn connect_error(e: &Error) -> QErr {
    use std::io::ErrorKind::TimedOut;
    match e {
        Error::Mqtt311Only { .. } => c"conn refused: unacceptable protocol version",
        Error::Refused { code, .. } => match code {
            ConnectReturnCode::BadUsernameOrPassword => c"conn refused: bad user name or password",
            ConnectReturnCode::NotAuthorized => c"conn refused: not authorized",
            ConnectReturnCode::IdentifierRejected => c"conn refused: identifier rejected",
            ConnectReturnCode::UnacceptableProtocolVersion => {
                c"conn refused: unacceptable protocol version"
            }
            ConnectReturnCode::ServerUnavailable => c"conn refused: server unavailable",
            ConnectReturnCode::Accepted | ConnectReturnCode::Other(_) => c"conn refused",
        },
        Error::Tls(t) => tls_error(t),
        Error::Proxy(p) => match p {
            ProxyError::AuthRequired { sent: false, .. } => c"proxy: authentication required",
            ProxyError::AuthRequired { sent: true, .. } => c"proxy: authentication failed",
            ProxyError::Refused { .. } => c"proxy: connect refused",
            ProxyError::NotHttp { .. } | ProxyError::Closed { .. } => c"proxy: not an HTTP proxy",
            ProxyError::Dns { .. } | ProxyError::Tcp { .. } => c"proxy: unreachable",
            ProxyError::Url { .. } => c"httpProxy invalid",
        },
        Error::WebSocket(w) => match w {
            WsError::Refused { .. } => c"websocket: upgrade refused",
            WsError::NotWebSocket { .. } => c"websocket: not a WebSocket listener",
            WsError::Protocol(_) => c"websocket: protocol error",
            WsError::Random | WsError::Closed(_) => c"Failure",
        },
        Error::Io {
            handshake: true, ..
        }
        | Error::Closed {
            handshake: true, ..
        } => c"tls: handshake failed",
        Error::Io { cause, .. } if cause.kind() == TimedOut => c"timeout",
        Error::Tcp { attempts, .. } if attempts.iter().any(|a| a.cause.kind() == TimedOut) => {
            c"timeout"
        }
        Error::Timeout(Timeout::ConnAck | Timeout::PingResp | Timeout::Unread { .. }) => c"timeout",
        // KX (paho) says 'Failure when the connect timeout passes, as for the rest.
        Error::Timeout(Timeout::Connect { .. })
        | Error::Config(_)
        | Error::Dns { .. }
        | Error::Tcp { .. }
        | Error::Io { .. }
        | Error::Closed { .. }
        | Error::Protocol(_)
        | Error::Disconnected { .. }
        | Error::System { .. }
        | Error::Stopped
        | Error::LocallyClosed => c"Failure",
    }
}

fn tls_error(t: &TlsError) -> QErr {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    if t.setup {
        return c"tls: failed";
    }
    match &t.cause {
        R::InvalidCertificate(c) => match c {
            C::UnknownIssuer => c"tls: unknown issuer",
            C::Expired | C::ExpiredContext { .. } => c"tls: certificate expired",
            C::NotValidYet | C::NotValidYetContext { .. } => c"tls: certificate not yet valid",
            C::NotValidForName | C::NotValidForNameContext { .. } => c"tls: hostname mismatch",
            C::Revoked => c"tls: certificate revoked",
            C::BadSignature => c"tls: bad signature",
            _ => c"tls: handshake failed",
        },
        R::AlertReceived(A::CertificateRequired) => c"tls: client certificate required",
        R::AlertReceived(a) if TlsError::is_client_cert_alert(*a) && !t.client_cert => {
            c"tls: client certificate required"
        }
        R::AlertReceived(A::ProtocolVersion | A::InsufficientSecurity) => {
            c"tls: no common version or cipher suite"
        }
        R::AlertReceived(A::HandshakeFailure | A::NoApplicationProtocol | A::UnrecognisedName) => {
            c"tls: handshake failed"
        }
        R::PeerIncompatible(_) => c"tls: no common version or cipher suite",
        R::InvalidMessage(_) | R::InappropriateMessage { .. } => {
            c"tls: the broker does not speak TLS"
        }
        R::NoCertificatesPresented => c"tls: no server certificate",
        _ => c"tls: failed",
    }
}

/// The q error for a configuration the engine refused (the q layer checked types and file presence already).
pub(super) fn config_error(c: &ConfigError) -> QErr {
    match (c.key, c.fault) {
        (Key::CaFile, Fault::NeedsTls) => c"trustStore needs an ssl:// or mqtts:// address",
        (Key::CaDir, Fault::NeedsTls) => c"CApath needs an ssl:// or mqtts:// address",
        (Key::ClientCert, Fault::NeedsTls) => c"keyStore needs an ssl:// or mqtts:// address",
        (Key::PrivateKey, Fault::NeedsTls) => c"privateKey needs an ssl:// or mqtts:// address",
        (Key::PrivateKeyPassword, Fault::NeedsTls) => {
            c"privateKeyPassword needs an ssl:// or mqtts:// address"
        }
        (Key::ServerName, Fault::NeedsTls) => c"sni needs an ssl:// or mqtts:// address",
        (Key::Alpn, Fault::NeedsTls) => c"alpn needs an ssl:// or mqtts:// address",
        (Key::TlsVersion, Fault::NeedsTls) => c"sslVersion needs an ssl:// or mqtts:// address",
        (Key::CipherSuites, Fault::NeedsTls) => {
            c"enabledCipherSuites needs an ssl:// or mqtts:// address"
        }
        (Key::VerifyCertificate, Fault::NeedsTls) => {
            c"enableServerCertAuth needs an ssl:// or mqtts:// address"
        }
        (Key::VerifyHostname, Fault::NeedsTls) => c"verify needs an ssl:// or mqtts:// address",
        (Key::Spool, Fault::Locked) => c"spool locked",
        (Key::Spool, _) => c"spoolDir invalid",
        (Key::UriScheme, _) => c"Invalid protocol scheme",
        (Key::Uri, _) => c"addr invalid",
        (Key::CipherSuites, _) => c"enabledCipherSuites invalid",
        (Key::PrivateKeyPassword, Fault::Missing) => {
            c"privateKeyPassword missing (the key is encrypted)"
        }
        (Key::PrivateKeyPassword, Fault::Unsupported) => {
            c"privateKeyPassword unsupported (decrypt the key)"
        }
        (Key::PrivateKeyPassword, _) => {
            c"privateKeyPassword: wrong password or not an encrypted key"
        }
        (Key::PrivateKey, Fault::Missing) => c"privateKey missing",
        (Key::PrivateKey, Fault::Unsupported) => c"privateKey: unsupported encryption",
        (Key::PrivateKey, _) => c"privateKey invalid",
        (Key::ClientCert, Fault::Missing) => c"keyStore missing",
        (Key::ClientCert, _) => c"keyStore invalid",
        (Key::CaDir, _) => c"CApath invalid",
        (Key::CaFile, _) => c"trustStore invalid",
        (Key::ServerName, _) => c"sni invalid",
        (Key::Alpn, _) => c"alpn invalid",
        (Key::TlsVersion, _) => c"sslVersion invalid",
        (Key::VerifyCertificate | Key::VerifyHostname, _) => c"options",
        (Key::HttpProxy, _) => c"httpProxy invalid",
        (Key::HttpsProxy, _) => c"httpsProxy invalid",
        (Key::ClientId, _) => c"client invalid",
        (Key::KeepAlive, _) => c"keepAliveInterval invalid",
        (Key::Will, _) => c"lastWillTopic invalid",
        (Key::MaxInflight, _) => c"maxInflightMessages invalid",
        (Key::QueueBytes | Key::EventQueueBytes, Fault::TooLarge) => c"queueBytes too large",
        (Key::QueueBytes | Key::QueueMessages | Key::EventQueueBytes, _) => c"queueBytes invalid",
        (Key::TopicFilter, _) => c"topic",
        (Key::MaxPacketSize, _) => c"maximumPacketSize invalid",
        (
            Key::Protocol
            | Key::Username
            | Key::Password
            | Key::ConnectTimeout
            | Key::Backoff
            | Key::Mqtt5
            | Key::Connect,
            _,
        ) => c"options",
    }
}

fn client_error(e: &ClientError) -> QErr {
    match e {
        ClientError::Config(c) => config_error(c),
        ClientError::Connect(e) => connect_error(e),
        ClientError::NotConnected => c"not connected",
        ClientError::Timeout => c"timeout",
    }
}

fn publish_error(e: &PublishError) -> QErr {
    match e {
        PublishError::QueueFull => c"queue full",
        PublishError::NotConnected => c"not connected",
        PublishError::TopicInvalid => c"topic",
        PublishError::TooLarge => c"payload size",
        PublishError::NeedsMqtt5 => c"properties need MQTTVersion 5",
        PublishError::PropertyNotAllowed => c"property not allowed",
    }
}

fn client_error_text(e: &ClientError) -> String {
    match e {
        ClientError::Config(c) => c.to_string(),
        ClientError::Connect(e) => e.to_string(),
        ClientError::NotConnected => "not connected".into(),
        ClientError::Timeout => "timed out waiting for the broker's CONNACK".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// argument conversions (KX's types, and a little more)

fn text_arg<'a>(x: K, ty: QErr) -> Result<&'a str, QErr> {
    let r = arg(x).ok_or(ty)?;
    let b = match r.t() {
        -11 => r.sym().ok_or(ty)?,
        10 | -10 => r.bytes().ok_or(ty)?,
        _ => return Err(ty),
    };
    std::str::from_utf8(b).map_err(|_| c"Invalid UTF8 string")
}

/// `conn`'s address: a symbol or string (several brokers separated by commas, paho's serverURIs), or a
/// list of symbols, one broker each (joined with commas for `Config::uri`).
fn addr_arg(x: K) -> Result<String, QErr> {
    let ty = c"addr type";
    let r = arg(x).ok_or(ty)?;
    if r.t() != k::KS {
        return text_arg(x, ty).map(str::to_string).map_err(|_| ty);
    }
    let n = r.len().ok_or(ty)?;
    if n == 0 {
        return Err(ty);
    }
    let mut uris = String::new();
    for i in 0..n {
        let Some(Val::Sym(b)) = r.item(i) else {
            return Err(ty);
        };
        if i > 0 {
            uris.push(',');
        }
        uris.push_str(std::str::from_utf8(b).map_err(|_| ty)?);
    }
    Ok(uris)
}

fn topic_arg<'a>(x: K) -> Result<&'a str, QErr> {
    text_arg(x, c"topic type")
}

fn payload_arg<'a>(x: K) -> Result<&'a [u8], QErr> {
    match arg(x) {
        Some(r) if matches!(r.t(), 10 | 4 | -10 | -4) => r.bytes().ok_or(c"payload type"),
        _ => Err(c"payload type"),
    }
}

fn qos_arg(x: K) -> Result<QoS, QErr> {
    match arg(x).and_then(|r| r.int()) {
        None => Err(c"qos type"),
        Some(v) => v
            .and_then(|v| u8::try_from(v).ok())
            .and_then(QoS::from_u8)
            .ok_or(c"invalid qos"),
    }
}

fn retain_arg(x: K) -> Result<bool, QErr> {
    match arg(x).and_then(|r| r.int()) {
        Some(Some(v)) => Ok(v != 0),
        _ => Err(c"retained type"),
    }
}

fn handle_arg(x: K) -> Result<i64, QErr> {
    match arg(x).and_then(|r| r.int()) {
        Some(Some(h)) if h >= 0 => Ok(h),
        Some(_) => Err(c"invalid handle"),
        None => Err(c"handle type"),
    }
}

/// Milliseconds for `disconnect`: a number (negative → 0) or `::` (0).
fn timeout_arg(x: K) -> Result<Duration, QErr> {
    let r = arg(x).ok_or(c"timeout type")?;
    if r.t() == k::GENERIC_NULL {
        return Ok(Duration::ZERO);
    }
    match r.int() {
        Some(Some(ms)) => Ok(Duration::from_millis(ms.clamp(0, 3_600_000) as u64)),
        Some(None) => Ok(Duration::ZERO),
        None => Err(c"timeout type"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// connect

fn ensure_init() {
    if !INIT.swap(true, Ordering::SeqCst) {
        qlog::install();
        // SAFETY: registering a plain extern "C" fn; runs once at process exit.
        unsafe { libc::atexit(at_exit) };
    }
}

extern "C" fn at_exit() {
    let _ = catch_unwind(|| {
        let conns = std::mem::take(&mut reg().conns);
        for c in conns {
            close_conn(&c, Duration::ZERO);
        }
    });
}

/// Check the TLS files exist and can be read, so the error names the option.
fn check_files(cfg: &crate::client::Config) -> Result<(), QErr> {
    let t = &cfg.tls;
    let readable = |p: &std::path::Path| std::fs::File::open(p).is_ok();
    if let Some(p) = &t.ca_file {
        if !readable(p) {
            return Err(c"trustStore: cannot read file");
        }
    }
    if let Some(p) = &t.cert_file {
        if !readable(p) {
            return Err(c"keyStore: cannot read file");
        }
    }
    if let Some(p) = &t.key_file {
        if !readable(p) {
            return Err(c"privateKey: cannot read file");
        }
    }
    if let Some(p) = &t.ca_dir {
        if std::fs::read_dir(p).is_err() {
            return Err(c"CApath: cannot read directory");
        }
    }
    Ok(())
}

fn set_last_error(msg: String) {
    reg().last_error = Some(msg);
}

/// Parse, connect, wait for the first CONNACK and register the event fd. `handle` 0 replaces the default
/// connection; otherwise a new handle is allocated.
fn connect(addr: K, client: K, opt: K, default: bool) -> Result<i64, QErr> {
    ensure_init();
    let uris = addr_arg(addr)?;
    let uri = uris.as_str();
    let id = text_arg(client, c"client type").map_err(|e| {
        if e == c"Invalid UTF8 string" {
            c"client type"
        } else {
            e
        }
    })?;
    let opt = arg(opt).ok_or(c"options")?;
    if opt.t() != k::XD && opt.t() != k::XD_SORTED {
        return Err(c"options");
    }
    let spec = opts::parse(uri, id, opt)?;
    // Log lines show the address without a password in it.
    let shown = crate::transport::redacted_uris(uri);
    if !opts::scheme_ok(uri) {
        return Err(c"Invalid protocol scheme");
    }
    if opts::is_tls(uri) {
        check_files(&spec.cfg)?;
    }
    if let Some(l) = spec.log_level {
        qlog::set(l);
    }
    // KX's connX replaces the one connection it has: never two default connections. The same broker and
    // client id keep it (KX's reconnect idiom).
    if default {
        if let Some(r) = rejoin(uri, id, spec.cfg.connect_timeout) {
            return r.map(|()| 0);
        }
    }
    // Several brokers: each may take its connectTimeout before the next is tried.
    let brokers = uri.split(',').count() as u32;
    let timeout = spec
        .cfg
        .connect_timeout
        .saturating_mul(brokers)
        .saturating_add(CONNECT_GRACE);
    let mut client = Client::connect(spec.cfg).map_err(|e| {
        let t = client_error_text(&e);
        info!("conn {shown}: {t}");
        set_last_error(t);
        client_error(&e)
    })?;
    if let Err(e) = client.wait_connected(timeout) {
        let t = client_error_text(&e);
        info!("conn {shown}: {t}");
        set_last_error(t);
        client.disconnect(Duration::ZERO);
        return Err(client_error(&e));
    }
    let fd = client.event_fd();
    let handle = if default {
        0
    } else {
        let mut r = reg();
        let h = r.next_handle;
        r.next_handle += 1;
        h
    };
    let conn = Arc::new(Conn {
        handle,
        client: Mutex::new(Some(client)),
        fd,
        uri: uri.to_string(),
        client_id: id.to_string(),
        rcv_bytes: spec.rcv_bytes,
        rcv_props: spec.rcv_props,
        callback_errors: AtomicU64::new(0),
    });
    // SAFETY: on_events is a plain extern "C" fn; fd stays open until close_conn removes it (sd0x).
    let r = unsafe { native::sd1(fd, on_events) };
    if let Some(e) = k::error_text(r) {
        k::release(r);
        error!("conn: q's sd1 refused the event fd {fd}: {e}");
        close_conn(&conn, Duration::ZERO);
        return Err(c"sd1 failed");
    }
    k::release(r);
    info!("connected to {shown} as {id} (handle {handle}, event fd {fd})");
    reg().conns.push(conn);
    Ok(handle)
}

/// `conn` while a default connection exists. KX programs reconnect from `.z.ts`: `if[not .mqtt.isConnected[];
/// .mqtt.conn[…]]`. For the same broker address and client id the existing connection is kept — its queue,
/// in-flight window, spool and subscriptions; the options of this `conn` are not applied — and `conn`
/// succeeds once it is connected (asked to try at once), or signals `'Failure` after `wait` while it keeps
/// reconnecting and `pub` keeps queueing. A connection that will not reconnect (`autoReconnect 0b`, lost),
/// another address or another client id: the old one is closed — after up to `REPLACE_DRAIN` for what it
/// holds if it is connected — and `None` says to connect anew.
fn rejoin(uri: &str, id: &str, wait: Duration) -> Option<Result<(), QErr>> {
    let old = reg().find(0).cloned()?;
    let (watch, drain) = {
        let g = lock_client(&old);
        match g.as_ref() {
            Some(c) if old.uri == uri && old.client_id == id && c.is_alive() => {
                (Some(c.reconnect_now()), Duration::ZERO)
            }
            Some(c) if c.is_connected() => (None, REPLACE_DRAIN),
            _ => (None, Duration::ZERO),
        }
    };
    let Some(watch) = watch else {
        let old = reg().take(0)?;
        info!("conn: closing the previous default connection (waiting up to {drain:?} for what it holds)");
        close_conn(&old, drain);
        return None;
    };
    if watch.wait_connected(wait) {
        debug!(
            "conn: the default connection to {} is up; kept",
            old.client_id
        );
        return Some(Ok(()));
    }
    let t = format!(
        "not connected within connectTimeout ({wait:?}); the connection keeps reconnecting and pub \
         keeps queueing"
    );
    info!("conn: {t}");
    set_last_error(t);
    Some(Err(c"Failure"))
}

// ---------------------------------------------------------------------------------------------------------
// events → q callbacks

/// A callback call prepared while the client is locked and made after it is released (callbacks may call
/// back into the library: publish, disconnect, …).
enum Pending {
    Rcvd(K, K),
    /// `rcvProperties`: topic, message, properties.
    Rcvdp(K, K, K),
    Sent(Token),
    /// MQTT 5: the token and the reason.
    Failed(Token, K),
    Disconn(K),
    /// A subscription the broker refused after `sub` returned (it was queued while the link was down).
    SubRefused(K),
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

extern "C" fn on_events(fd: i32) -> K {
    let _ = catch_unwind(AssertUnwindSafe(|| drain(fd)));
    std::ptr::null_mut()
}

fn drain(fd: RawFd) {
    let conn = reg().conns.iter().find(|c| c.fd == fd).cloned();
    let Some(conn) = conn else {
        warn!("event on fd {fd}, which belongs to no connection; removing it from q's loop");
        // SAFETY: remove the stale registration without closing an fd we do not own.
        unsafe { native::sd0x(fd, 0) };
        return;
    };
    let mut pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    {
        let guard = lock_client(&conn);
        let Some(client) = guard.as_ref() else {
            return;
        };
        let (rcv_bytes, rcv_props) = (conn.rcv_bytes, conn.rcv_props);
        client.poll_events(EVENT_BATCH, &mut |ev| match ev {
            Event::Message {
                topic,
                payload,
                properties,
                ..
            } => {
                let (t, m) = (
                    k::kvec(topic.as_bytes(), false),
                    k::kvec(payload, rcv_bytes),
                );
                pending.push(if rcv_props {
                    Pending::Rcvdp(t, m, props::received(properties))
                } else {
                    Pending::Rcvd(t, m)
                })
            }
            Event::Delivered { token, qos } => {
                if qos != QoS::AtMostOnce {
                    pending.push(Pending::Sent(token))
                }
            }
            Event::Failed { token, cause, .. } => {
                warn!(
                    "connection {}: message {token} failed: {cause}",
                    conn.handle
                );
                let reason = props::failure_reason(cause);
                pending.push(Pending::Failed(token, k::kvec(reason.as_bytes(), false)))
            }
            Event::ConnectionLost { cause } => {
                let cause = cause.to_string();
                warn!("connection {} lost: {cause}", conn.handle);
                pending.push(Pending::Disconn(k::kvec(cause.as_bytes(), false)))
            }
            Event::Connected { session_present } => {
                info!(
                    "connection {} connected (session present: {session_present})",
                    conn.handle
                )
            }
            Event::Reconnecting { delay, attempt } => info!(
                "connection {}: reconnect attempt {attempt} in {delay:?}",
                conn.handle
            ),
            Event::Subscribed { filter, granted } => match granted {
                Some(q) => debug!("subscribed to {filter} with {q:?}"),
                None => {
                    warn!("the broker refused the subscription to {filter}");
                    pending.push(Pending::SubRefused(k::kvec(filter.as_bytes(), false)))
                }
            },
            Event::Unsubscribed { filter } => debug!("unsubscribed from {filter}"),
        });
    }
    let h = conn.handle;
    for p in pending.drain(..) {
        // SAFETY: k consumes the argument objects; the result is ours to release.
        let r = unsafe {
            let nil: K = std::ptr::null_mut();
            match (p, h) {
                (Pending::Rcvd(t, m), 0) => native::k(0, c".mqtt.msgrcvd".as_ptr(), t, m, nil),
                (Pending::Rcvd(t, m), h) => {
                    native::k(0, c".mqtt.msgrcvdh".as_ptr(), k::kj(h), t, m, nil)
                }
                (Pending::Rcvdp(t, m, p), 0) => {
                    native::k(0, c".mqtt.msgrcvdp".as_ptr(), t, m, p, nil)
                }
                (Pending::Rcvdp(t, m, p), h) => {
                    native::k(0, c".mqtt.msgrcvdph".as_ptr(), k::kj(h), t, m, p, nil)
                }
                (Pending::Failed(tok, r), 0) => {
                    native::k(0, c".mqtt.msgfail".as_ptr(), k::kj(tok as i64), r, nil)
                }
                (Pending::Failed(tok, r), h) => native::k(
                    0,
                    c".mqtt.msgfailh".as_ptr(),
                    k::kj(h),
                    k::kj(tok as i64),
                    r,
                    nil,
                ),
                (Pending::Sent(tok), 0) => {
                    native::k(0, c".mqtt.msgsent".as_ptr(), k::kj(tok as i64), nil)
                }
                (Pending::Sent(tok), h) => native::k(
                    0,
                    c".mqtt.msgsenth".as_ptr(),
                    k::kj(h),
                    k::kj(tok as i64),
                    nil,
                ),
                (Pending::Disconn(c), 0) => native::k(0, c".mqtt.disconn".as_ptr(), c, nil),
                (Pending::Disconn(c), h) => {
                    native::k(0, c".mqtt.disconnh".as_ptr(), k::kj(h), c, nil)
                }
                (Pending::SubRefused(t), 0) => native::k(0, c".mqtt.subrefused".as_ptr(), t, nil),
                (Pending::SubRefused(t), h) => {
                    native::k(0, c".mqtt.subrefusedh".as_ptr(), k::kj(h), t, nil)
                }
            }
        };
        if let Some(e) = k::error_text(r) {
            // Logged for the first few, then every 1000th: a broken callback on a busy stream must not
            // flood stderr. All are counted (`callbackErrors` in .mqtt.stats[]).
            let n = conn.callback_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 10 || n % 1000 == 0 {
                error!("callback on connection {h} signalled '{e}' ({n} callback errors so far)");
            }
        }
        k::release(r);
    }
    PENDING.with(|p| {
        let mut slot = p.borrow_mut();
        if slot.capacity() < pending.capacity() {
            *slot = pending;
        }
    });
}

// ---------------------------------------------------------------------------------------------------------
// operations shared by the KX and handle forms

fn with_client<T>(handle: i64, f: impl FnOnce(&Client) -> Result<T, QErr>) -> Result<T, QErr> {
    let r = reg();
    let conn = r.find(handle).ok_or(c"not connected")?;
    let g = lock_client(conn);
    let client = g.as_ref().ok_or(c"not connected")?;
    f(client)
}

fn do_pub(handle: i64, topic: K, msg: K, qos: K, retain: K) -> Result<K, QErr> {
    let topic = topic_arg(topic)?;
    let msg = payload_arg(msg)?;
    let qos = qos_arg(qos)?;
    let retain = retain_arg(retain)?;
    let tok = with_client(handle, |c| {
        c.publish(topic, msg, qos, retain)
            .map_err(|e| publish_error(&e))
    })?;
    Ok(k::kj(tok as i64))
}

/// `pubp`: `pub` with MQTT 5 properties (a q dictionary, see [`props`]).
fn do_pubp(handle: i64, topic: K, msg: K, qos: K, retain: K, props: K) -> Result<K, QErr> {
    let topic = topic_arg(topic)?;
    let msg = payload_arg(msg)?;
    let qos = qos_arg(qos)?;
    let retain = retain_arg(retain)?;
    let tok = props::with_props(props, |p| {
        with_client(handle, |c| {
            c.publish_with(topic, msg, qos, retain, p)
                .map_err(|e| publish_error(&e))
        })
    })?;
    Ok(k::kj(tok as i64))
}

fn do_sub(handle: i64, topic: K, qos: K) -> Result<K, QErr> {
    let topic = topic_arg(topic)?;
    if reg().find(handle).is_none() {
        return Err(c"not connected");
    }
    // KX's sub leaves the value to paho, whose error this is (pub checks it itself: 'invalid qos).
    let qos = qos_arg(qos).map_err(|e| {
        if e == c"invalid qos" {
            c"Invalid QoS value"
        } else {
            e
        }
    })?;
    let waiter = with_client(handle, |c| {
        c.subscribe_acked(topic, qos).map_err(|e| {
            if let ClientError::Config(m) = &e {
                warn!("sub {topic}: {m}");
            }
            client_error(&e)
        })
    })?;
    // Connected: wait for the SUBACK, holding no lock (KX waits too). Not connected: queued for the next
    // connection; a refusal then calls .mqtt.subrefused.
    if let Some(w) = waiter {
        match w.wait(ACK_TIMEOUT) {
            Ok(Some(_)) => {}
            Ok(None) => {
                warn!("sub {topic}: the broker refused the subscription");
                return Err(c"sub refused");
            }
            Err(e) => {
                warn!("sub {topic}: no SUBACK within {ACK_TIMEOUT:?}");
                return Err(client_error(&e));
            }
        }
    }
    Ok(std::ptr::null_mut())
}

fn do_unsub(handle: i64, topic: K) -> Result<K, QErr> {
    let topic = topic_arg(topic)?;
    let waiter = with_client(handle, |c| {
        c.unsubscribe_acked(topic).map_err(|e| {
            if let ClientError::Config(m) = &e {
                warn!("unsub {topic}: {m}");
            }
            client_error(&e)
        })
    })?;
    if let Some(w) = waiter {
        if let Err(e) = w.wait(ACK_TIMEOUT) {
            warn!("unsub {topic}: no UNSUBACK within {ACK_TIMEOUT:?}");
            return Err(client_error(&e));
        }
    }
    Ok(std::ptr::null_mut())
}

fn do_disconnect(handle: i64, timeout: K) -> Result<K, QErr> {
    let timeout = timeout_arg(timeout)?;
    let conn = reg()
        .take(handle)
        .ok_or(c"No client is currently connected")?;
    close_conn(&conn, timeout);
    Ok(std::ptr::null_mut())
}

fn is_connected(handle: i64) -> bool {
    with_client(handle, |c| Ok(c.is_connected())).unwrap_or(false)
}

thread_local! {
    static TOKENS: RefCell<Vec<Token>> = const { RefCell::new(Vec::new()) };
}

/// The topic(s) of a batch: one for all, or one per message.
enum Topics<'a> {
    One(&'a str),
    Each(KRef<'a>),
}

fn topic_of<'a>(topics: &Topics<'a>, i: usize) -> Result<&'a str, QErr> {
    match topics {
        Topics::One(t) => Ok(t),
        Topics::Each(list) => match list.item(i) {
            Some(Val::Sym(b)) | Some(Val::Chars(b)) => {
                std::str::from_utf8(b).map_err(|_| c"Invalid UTF8 string")
            }
            _ => Err(c"topic type"),
        },
    }
}

fn payload_of<'a>(list: KRef<'a>, i: usize) -> Result<&'a [u8], QErr> {
    list.child(i).and_then(|x| x.bytes()).ok_or(c"payload type")
}

/// `pubbatch` (`props` `Properties::EMPTY`) and `pubbatchp` (the same properties on every message).
fn do_pubbatch(
    handle: i64,
    topic: K,
    msgs: K,
    qos: K,
    retain: K,
    props: Properties<'_>,
) -> Result<K, QErr> {
    let t = arg(topic).ok_or(c"topic type")?;
    let list = arg(msgs).ok_or(c"payload type")?;
    // A list of payloads: a mixed list of char/byte vectors (a single char vector is one message per char
    // in q's eyes; refuse it rather than guess).
    if list.t() != 0 {
        return Err(c"payload type");
    }
    let n = list.len().ok_or(c"payload type")?;
    let topics = match t.t() {
        -11 | 10 | -10 => Topics::One(topic_arg(topic)?),
        11 | 0 => {
            if t.len() != Some(n) {
                return Err(c"length");
            }
            Topics::Each(t)
        }
        _ => return Err(c"topic type"),
    };
    let qos = qos_arg(qos)?;
    let retain = retain_arg(retain)?;
    // Check every item before queueing any, so a type error queues nothing.
    for i in 0..n {
        topic_of(&topics, i)?;
        payload_of(list, i)?;
    }
    let mut tokens = TOKENS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    tokens.clear();
    let res = with_client(handle, |c| {
        let msgs =
            (0..n).filter_map(|i| Some((topic_of(&topics, i).ok()?, payload_of(list, i).ok()?)));
        // All or nothing: on an error none of the batch was queued (q may retry it whole).
        c.publish_batch_with(msgs, qos, retain, props, &mut tokens)
            .map_err(|e| publish_error(&e))
    });
    let out = res.map(|()| k::kjs(&tokens));
    TOKENS.with(|t| *t.borrow_mut() = tokens);
    out
}

fn stats_dict(handle: i64) -> Result<K, QErr> {
    let (stats, cb_errors) = {
        let r = reg();
        match r.find(handle) {
            Some(c) => {
                let g = lock_client(c);
                let s = g.as_ref().map(|cl| cl.stats()).unwrap_or_default();
                (s, c.callback_errors.load(Ordering::Relaxed))
            }
            None => {
                if handle != 0 {
                    return Err(c"invalid handle");
                }
                (crate::client::Stats::default(), 0)
            }
        }
    };
    let s = &stats;
    let last = s
        .last_error
        .as_ref()
        .map(|e| e.to_string())
        .or_else(|| reg().last_error.clone())
        .unwrap_or_default();
    // The counts from the client's table (src/client/stats.rs), then the entries that are not counts.
    let counts = s.counters(cb_errors);
    let mut keys: Vec<&CStr> = counts.iter().map(|(k, _)| *k).collect();
    let mut vals: Vec<K> = counts.iter().map(|(_, v)| k::kj(*v as i64)).collect();
    mqtt5_stats(s, &mut keys, &mut vals);
    keys.push(c"connected");
    vals.push(k::kb(s.connected));
    keys.push(c"broker");
    vals.push(k::kvec(s.broker.as_deref().unwrap_or("").as_bytes(), false));
    keys.push(c"lastError");
    vals.push(k::kvec(last.as_bytes(), false));
    Ok(k::kdict(&keys, &vals))
}

/// The MQTT 5 entries of `.mqtt.stats[]` that are not counts (its counts `failed`, `topicAliased` and
/// `topicAliasBytesSaved` come from the client's table): the limits the broker's CONNACK set — MQTT's
/// defaults where it said nothing (under 3.1.1 it says nothing): receive maximum 65535, topic alias maximum 0,
/// maximum QoS 2, and `0N` for no maximum packet size or server keep-alive; all `0N` before the first
/// connection.
fn mqtt5_stats(s: &crate::client::Stats, keys: &mut Vec<&CStr>, vals: &mut Vec<K>) {
    let srv = s.server.as_ref();
    let null = i64::MIN;
    let said = |v: Option<i64>| k::kj(v.unwrap_or(null));
    let entries: [(&CStr, K); 6] = [
        (
            c"serverReceiveMaximum",
            said(srv.map(|i| i64::from(i.receive_maximum))),
        ),
        (
            c"serverMaximumPacketSize",
            said(srv.and_then(|i| i.maximum_packet_size).map(i64::from)),
        ),
        (
            c"serverTopicAliasMaximum",
            said(srv.map(|i| i64::from(i.topic_alias_maximum))),
        ),
        (c"serverMaximumQos", said(srv.map(|i| i.maximum_qos as i64))),
        (
            c"serverKeepAlive",
            said(srv.and_then(|i| i.server_keep_alive).map(i64::from)),
        ),
        (
            c"assignedClientId",
            k::kvec(
                srv.and_then(|i| i.assigned_client_identifier.as_deref())
                    .unwrap_or_default()
                    .as_bytes(),
                false,
            ),
        ),
    ];
    for (key, v) in entries {
        keys.push(key);
        vals.push(v);
    }
}

// ---------------------------------------------------------------------------------------------------------
// exports: KX's names and arities

/// `connX[addr;clientId;opts]` — connect the default connection (KX).
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn connX(addr: K, client: K, opt: K) -> K {
    guard(|| connect(addr, client, opt, true).map(|_| std::ptr::null_mut()))
}

/// `init[x]` — set up logging and the exit hook (KX's mqtt.q calls it once at load).
///
/// # Safety
/// Called by q.
#[no_mangle]
pub unsafe extern "C" fn init(_x: K) -> K {
    guard(|| {
        ensure_init();
        Ok(std::ptr::null_mut())
    })
}

/// `pub[topic;msg;qos;retain]` → the delivery token (long).
///
/// # Safety
/// Called by q with valid K arguments.
#[export_name = "pub"]
pub unsafe extern "C" fn pub_(topic: K, msg: K, qos: K, retain: K) -> K {
    guard(|| do_pub(0, topic, msg, qos, retain))
}

/// `sub[topic;qos]`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn sub(topic: K, qos: K) -> K {
    guard(|| do_sub(0, topic, qos))
}

/// `unsub[topic]`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn unsub(topic: K) -> K {
    guard(|| do_unsub(0, topic))
}

/// `isConnected[x]` → boolean (argument ignored).
///
/// # Safety
/// Called by q.
#[no_mangle]
pub unsafe extern "C" fn isConnected(_x: K) -> K {
    guard(|| Ok(k::kb(is_connected(0))))
}

/// `disconnect[timeoutMs]`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn disconnect(timeout: K) -> K {
    guard(|| do_disconnect(0, timeout))
}

// ---------------------------------------------------------------------------------------------------------
// exports: additions

/// `connh[addr;clientId;opts]` → a handle (long ≥ 1) for another connection.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn connh(addr: K, client: K, opt: K) -> K {
    guard(|| connect(addr, client, opt, false).map(k::kj))
}

/// `pubh[h;topic;msg;qos;retain]` → token.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubh(h: K, topic: K, msg: K, qos: K, retain: K) -> K {
    guard(|| do_pub(handle_arg(h)?, topic, msg, qos, retain))
}

/// `subh[h;topic;qos]`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn subh(h: K, topic: K, qos: K) -> K {
    guard(|| do_sub(handle_arg(h)?, topic, qos))
}

/// `unsubh[h;topic]`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn unsubh(h: K, topic: K) -> K {
    guard(|| do_unsub(handle_arg(h)?, topic))
}

/// `isConnectedh[h]` → boolean.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn isConnectedh(h: K) -> K {
    guard(|| Ok(k::kb(is_connected(handle_arg(h)?))))
}

/// `disconnecth[h;timeoutMs]`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn disconnecth(h: K, timeout: K) -> K {
    guard(|| do_disconnect(handle_arg(h)?, timeout))
}

/// `pubbatch[topic or topics;payloads;qos;retain]` → tokens (long vector).
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubbatch(topic: K, msgs: K, qos: K, retain: K) -> K {
    guard(|| do_pubbatch(0, topic, msgs, qos, retain, Properties::EMPTY))
}

/// `pubbatchh[h;topic or topics;payloads;qos;retain]` → tokens.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubbatchh(h: K, topic: K, msgs: K, qos: K, retain: K) -> K {
    guard(|| do_pubbatch(handle_arg(h)?, topic, msgs, qos, retain, Properties::EMPTY))
}

/// `stats[x]` → the default connection's counters (a dictionary; argument ignored).
///
/// # Safety
/// Called by q.
#[no_mangle]
pub unsafe extern "C" fn stats(_x: K) -> K {
    guard(|| stats_dict(0))
}

/// `statsh[h]` → a connection's counters.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn statsh(h: K) -> K {
    guard(|| stats_dict(handle_arg(h)?))
}

/// `loglevel[level]` — `off error warn info debug trace` (symbol) or 0–5; `::` only reads. Returns the level.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn loglevel(x: K) -> K {
    guard(|| {
        ensure_init();
        let r = arg(x).ok_or(c"level type")?;
        match r.val() {
            Val::Nil => {}
            Val::Sym(b) => qlog::set(qlog::parse(b).ok_or(c"invalid level")?),
            Val::Int(i) => qlog::set(qlog::from_number(i).ok_or(c"invalid level")?),
            Val::IntNull => return Err(c"invalid level"),
            _ => return Err(c"level type"),
        }
        Ok(k::ksym(qlog::name(qlog::current())))
    })
}

// ---------------------------------------------------------------------------------------------------------
// exports: MQTT 5

/// `pubp[topic;msg;qos;retain;props]` → token: `pub` with MQTT 5 properties (a dictionary, see `props`).
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubp(topic: K, msg: K, qos: K, retain: K, props: K) -> K {
    guard(|| do_pubp(0, topic, msg, qos, retain, props))
}

/// `pubph[h;topic;msg;qos;retain;props]` → token.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubph(h: K, topic: K, msg: K, qos: K, retain: K, props: K) -> K {
    guard(|| do_pubp(handle_arg(h)?, topic, msg, qos, retain, props))
}

/// `pubbatchp[topic or topics;payloads;qos;retain;props]` → tokens; every message with `props`.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubbatchp(topic: K, msgs: K, qos: K, retain: K, props: K) -> K {
    guard(|| props::with_props(props, |p| do_pubbatch(0, topic, msgs, qos, retain, p)))
}

/// `pubbatchph[h;topic or topics;payloads;qos;retain;props]` → tokens.
///
/// # Safety
/// Called by q with valid K arguments.
#[no_mangle]
pub unsafe extern "C" fn pubbatchph(h: K, topic: K, msgs: K, qos: K, retain: K, props: K) -> K {
    guard(|| {
        let h = handle_arg(h)?;
        props::with_props(props, |p| do_pubbatch(h, topic, msgs, qos, retain, p))
    })
}
