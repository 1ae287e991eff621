//! Why a connection could not be made or was lost, and why a configuration cannot work: typed values from
//! the layer that saw the failure up to the owner — [`ClientError`](crate::client::ClientError), the
//! `ConnectionLost` event and `Stats::last_error` all carry an [`Error`] — in the spirit of rustls' `Error`
//! and quinn's `ConnectionError`.
//!
//! Each kind is worded once, here, in its `Display`: what went wrong and what to change. Consumers map
//! kinds, never words: the q layer to its short q strings (`src/q/mod.rs`, `connect_error`/`config_error`),
//! the `qmqtt` command to advice in its flags (`src/bin/qmqtt/util.rs`, `hint`). To add a cause, add a
//! variant (or a variant of one of the detail enums: [`Timeout`], [`Violation`], [`Doing`], [`Key`]), word
//! it in `Display` and map it in those two places; the compiler lists the matches that need it. The hops'
//! own failures are worded beside their protocol: `transport::proxy::ProxyError`, `transport::ws::WsError`.
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};

use crate::codec::{self, ConnectReturnCode, PacketType, QoS, ReasonCode};
use crate::transport::{proxy::ProxyError, ws::WsError};

/// A failure of the connection (or of the attempt to make one).
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A setting turned out unusable only when connecting (e.g. a TLS server name rustls cannot send).
    Config(ConfigError),
    /// The broker's host name did not resolve (`cause: None`: it resolved to no address).
    Dns {
        host: String,
        cause: Option<IoCause>,
    },
    /// No TCP connection to any address of the host: one attempt per address.
    Tcp {
        host: String,
        attempts: Vec<Attempt>,
    },
    /// A read or write on the connection failed (`handshake`: during the TLS handshake).
    Io {
        peer: Peer,
        op: Op,
        cause: IoCause,
        handshake: bool,
    },
    /// The broker closed the connection (`handshake`: during the TLS handshake).
    Closed { peer: Peer, handshake: bool },
    /// TLS failed: rustls' cause and what the message needs to name the fix.
    Tls(Box<TlsError>),
    /// The HTTP proxy could not be reached or did not open the tunnel (worded in `transport::proxy`).
    Proxy(ProxyError),
    /// The WebSocket upgrade or framing failed, or the broker closed the WebSocket (`transport::ws`).
    WebSocket(WsError),
    /// The broker refused CONNECT. `code` in MQTT 3.1.1's terms (MQTT 5 reason codes it has no name for are
    /// `Other`); MQTT 5: `reason_code` as the broker sent it, `reason` its own words (Reason String) and
    /// `server_reference` the server it points to (Use another server, Server moved), if any.
    Refused {
        code: ConnectReturnCode,
        reason_code: Option<ReasonCode>,
        reason: Option<String>,
        server_reference: Option<String>,
    },
    /// The broker answered an MQTT 5 CONNECT with an MQTT 3.1.1 refusal (`code`): it speaks only MQTT 3.1.1.
    Mqtt311Only { code: ConnectReturnCode },
    /// MQTT 5: the broker closed the connection with DISCONNECT: its reason code, Reason String and Server
    /// Reference.
    Disconnected {
        reason_code: ReasonCode,
        reason: Option<String>,
        server_reference: Option<String>,
    },
    /// The broker broke the protocol.
    Protocol(Violation),
    /// Something did not come in time.
    Timeout(Timeout),
    /// The system refused a resource the connection needs.
    System { doing: Doing, cause: IoCause },
    /// The connection's I/O thread stopped (it exited or panicked).
    Stopped,
    /// The owner disconnected the client before a connection was made.
    LocallyClosed,
}

/// A connect attempt to one address, and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub addr: SocketAddr,
    pub cause: IoCause,
}

/// The other end of a connection: the host as given and the address connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub addr: SocketAddr,
}

/// What the transport was doing when the socket or TLS failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Encrypt,
    Decrypt,
}

/// A TLS failure: rustls' error and the context its message needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsError {
    /// The name the certificate was checked against (SNI / server name or the URI's host).
    pub server_name: String,
    pub cause: rustls::Error,
    /// A client certificate was configured.
    pub client_cert: bool,
    /// Which CAs are trusted, in words (for an unknown issuer).
    pub trust: String,
    /// The refused certificate is self-signed (its issuer is its subject).
    pub self_signed: bool,
    /// rustls refused to start a session at all (before any byte was sent).
    pub setup: bool,
}

/// What did not come in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timeout {
    /// No accepted CONNACK within `connect_timeout` of starting to connect.
    Connect {
        host: String,
        port: u16,
        limit: Duration,
    },
    /// No CONNACK within the response timeout after CONNECT was sent.
    ConnAck,
    /// No PINGRESP within the response timeout.
    PingResp,
    /// The broker took none of the `unsent` bytes owed to it (acknowledgements beyond
    /// `Config::max_unsent_bytes`, so the client stopped reading) for `limit` (the keep-alive).
    Unread { unsent: usize, limit: Duration },
}

/// How the broker broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Bytes that are not valid MQTT (`connecting`: where the CONNACK should have been).
    Malformed {
        cause: codec::Error,
        connecting: bool,
    },
    /// A packet other than CONNACK first.
    BeforeConnAck(PacketType),
    SecondConnAck,
    /// The acknowledgement of the other request kind (`request` was sent with this packet id).
    WrongAck {
        request: PacketType,
        answer: PacketType,
        pkid: u16,
    },
    /// A packet only a client may send.
    ClientOnly(PacketType),
    /// An MQTT 5 packet on an MQTT 3.1/3.1.1 connection.
    Mqtt5Only(PacketType),
    /// MQTT 5: a Topic Alias of 0 or above the Topic Alias Maximum this client sent (`max`).
    TopicAliasInvalid {
        alias: u16,
        max: u16,
    },
    /// MQTT 5: a PUBLISH with an empty topic and a Topic Alias the broker never set on this connection.
    UnknownTopicAlias(u16),
    /// MQTT 5: more QoS 2 messages unreleased than the Receive Maximum this client sent.
    ReceiveMaximumExceeded(u16),
    /// MQTT 5: a packet the client never asked for (AUTH without enhanced authentication).
    Unrequested(PacketType),
}

impl Violation {
    /// The MQTT 5 reason code of the DISCONNECT the client sends for it.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Violation::Malformed {
                cause: codec::Error::PacketTooLarge { .. },
                ..
            } => ReasonCode::PacketTooLarge,
            Violation::Malformed { .. } => ReasonCode::MalformedPacket,
            Violation::TopicAliasInvalid { .. } => ReasonCode::TopicAliasInvalid,
            Violation::ReceiveMaximumExceeded(_) => ReasonCode::ReceiveMaximumExceeded,
            _ => ReasonCode::ProtocolError,
        }
    }
}

/// Why one message was not delivered: its token is reported failed (the connection is unaffected, and the
/// message is not sent again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// The broker refused it: the reason code (0x80 or above) of its PUBACK (QoS 1) or PUBREC (QoS 2), and
    /// its Reason String.
    Refused {
        code: ReasonCode,
        reason: Option<String>,
    },
    /// The PUBLISH would be larger than the broker's Maximum Packet Size.
    TooLarge { size: usize, max: u32 },
    /// Its QoS is above the broker's Maximum QoS.
    QoSNotSupported { qos: QoS, max: QoS },
    /// It is retained and the broker keeps no retained messages (Retain Available 0).
    RetainNotSupported,
    /// It cannot be sent as MQTT (the codec's reason).
    Invalid(codec::Error),
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Refused { code, reason } => {
                write!(f, "the broker refused the message: {code}")?;
                if let Some(r) = reason {
                    write!(f, "; the broker says: {r}")?;
                }
                f.write_str(match code {
                    ReasonCode::NotAuthorized => " (check the broker's access rules for this topic)",
                    ReasonCode::TopicNameInvalid => " (the broker does not accept this topic)",
                    ReasonCode::QuotaExceeded => " (the broker's quota is used up: send less, or later)",
                    ReasonCode::PayloadFormatInvalid => {
                        " (the payload is not what its Payload Format Indicator says: UTF-8)"
                    }
                    ReasonCode::PacketTooLarge => " (send smaller messages)",
                    _ => "",
                })
            }
            DeliveryError::TooLarge { size, max } => write!(
                f,
                "the message is too large for the broker: its PUBLISH is {size} bytes, the broker accepts at \
                 most {max} (its Maximum Packet Size): send a smaller payload or fewer properties"
            ),
            DeliveryError::QoSNotSupported { qos, max } => write!(
                f,
                "the broker supports QoS up to {} (its Maximum QoS), not {}: publish with QoS {} or less",
                *max as u8, *qos as u8, *max as u8
            ),
            DeliveryError::RetainNotSupported => f.write_str(
                "the broker keeps no retained messages (Retain Available 0): publish without retain",
            ),
            DeliveryError::Invalid(e) => write!(f, "the message cannot be sent: {e}"),
        }
    }
}

impl std::error::Error for DeliveryError {}

/// Which system resource could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    CreatePoller,
    CreateWaker,
    CreateEventQueue,
    StartThread,
    WatchSocket,
    /// Registering the socket of the next address to try.
    RegisterSocket(SocketAddr),
}

/// An `io::Error` that can be cloned and compared (by kind, OS code and words), as errors are kept in the
/// stats and handed to several readers.
#[derive(Clone)]
pub struct IoCause(Arc<std::io::Error>);

impl IoCause {
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
    pub fn get_ref(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for IoCause {
    fn from(e: std::io::Error) -> IoCause {
        IoCause(Arc::new(e))
    }
}

impl PartialEq for IoCause {
    fn eq(&self, o: &IoCause) -> bool {
        self.kind() == o.kind()
            && self.0.raw_os_error() == o.0.raw_os_error()
            && self.0.to_string() == o.0.to_string()
    }
}

impl fmt::Debug for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The setting a [`ConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The broker URI's scheme.
    UriScheme,
    /// The rest of the broker URI.
    Uri,
    /// The MQTT version.
    Protocol,
    ClientId,
    Username,
    Password,
    KeepAlive,
    ConnectTimeout,
    MaxInflight,
    QueueBytes,
    QueueMessages,
    EventQueueBytes,
    MaxPacketSize,
    Backoff,
    /// The last will's topic or payload.
    Will,
    /// What CONNECT would carry (lengths and characters the session checks).
    Connect,
    /// A subscription's topic filter.
    TopicFilter,
    /// The TLS cipher suites (and the versions they must serve).
    CipherSuites,
    CaFile,
    CaDir,
    ClientCert,
    PrivateKey,
    PrivateKeyPassword,
    /// The TLS server name (SNI).
    ServerName,
    /// The ALPN protocols.
    Alpn,
    /// The lowest TLS version.
    TlsVersion,
    /// Whether the broker's certificate is verified.
    VerifyCertificate,
    /// Whether the broker's host name is checked against its certificate.
    VerifyHostname,
    /// The HTTP proxy for plain brokers (`httpProxy`, `$http_proxy`).
    HttpProxy,
    /// The HTTP proxy for TLS brokers (`httpsProxy`, `$https_proxy`).
    HttpsProxy,
    Spool,
    /// An MQTT 5 setting (session expiry, receive maximum, topic aliases, user properties, will properties).
    Mqtt5,
}

/// What is wrong with the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its value cannot work.
    Invalid,
    /// It is needed (by another setting) and not given.
    Missing,
    /// What it asks for is not supported.
    Unsupported,
    /// What it names is in use (a spool directory another client owns).
    Locked,
    /// The memory it asks for is more than the machine has, or than the allocator gives.
    TooLarge,
    /// It is a TLS setting and the broker's address is not a TLS one.
    NeedsTls,
}

/// A configuration that cannot work: the setting, what is wrong with it, and the sentence saying so and
/// what to give instead (worded where the problem is found, once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: Key,
    pub fault: Fault,
    problem: String,
}

impl ConfigError {
    pub fn new(key: Key, fault: Fault, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key,
            fault,
            problem: problem.into(),
        }
    }

    /// `key`'s value cannot work: `problem` says why.
    pub fn invalid(key: Key, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(key, Fault::Invalid, problem)
    }

    /// The same problem, said as part of a group of settings (`uri`, `tls`).
    pub fn within(mut self, group: &str) -> ConfigError {
        self.problem = format!("{group}: {}", self.problem);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.host, self.addr)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, e) = (self.addr, &self.cause);
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => write!(
                f,
                "{a} refused the connection ({e}): is the broker running and listening on port {}?",
                a.port()
            ),
            std::io::ErrorKind::TimedOut => {
                write!(
                    f,
                    "{a} did not answer ({e}): check the address and firewalls"
                )
            }
            _ => write!(f, "{a}: {e}"),
        }
    }
}

/// Connect attempts as one phrase (`; `-separated).
pub struct Attempts<'a>(pub &'a [Attempt]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl Op {
    /// "reading from" (the connection to …).
    fn doing(self) -> &'static str {
        match self {
            Op::Read => "reading from",
            Op::Write => "writing to",
            Op::Encrypt => "encrypting data for",
            Op::Decrypt => "decrypting data from",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Malformed { cause, connecting } => {
                write!(f, "the broker sent invalid data: {cause}")?;
                if *connecting {
                    // Garbage instead of a CONNACK is most often another protocol on that port.
                    f.write_str(
                        " (instead of a CONNACK: is this an MQTT port? check the URI's scheme and port)",
                    )?;
                }
                Ok(())
            }
            Violation::BeforeConnAck(t) => write!(
                f,
                "the broker sent {t} before CONNACK (CONNACK must come first: is this an MQTT port?)"
            ),
            Violation::SecondConnAck => f.write_str("the broker sent a second CONNACK"),
            Violation::WrongAck {
                request,
                answer,
                pkid,
            } => write!(f, "the broker answered {request} {pkid} with {answer}"),
            Violation::ClientOnly(t) => {
                write!(f, "the broker sent {t}, which only a client may send")
            }
            Violation::Mqtt5Only(t) => write!(f, "the broker sent {t}, an MQTT 5 packet"),
            Violation::TopicAliasInvalid { alias, max } => write!(
                f,
                "the broker used Topic Alias {alias}, outside 1..={max} (the Topic Alias Maximum this client \
                 sent)"
            ),
            Violation::UnknownTopicAlias(a) => write!(
                f,
                "the broker sent a PUBLISH without topic under Topic Alias {a}, which it never set on this \
                 connection"
            ),
            Violation::Unrequested(t) => write!(
                f,
                "the broker sent {t}, which this client did not ask for (it uses no enhanced authentication)"
            ),
            Violation::ReceiveMaximumExceeded(m) => write!(
                f,
                "the broker sent more than {m} unreleased QoS 2 messages (the Receive Maximum this client \
                 sent)"
            ),
        }
    }
}

/// The CONNACK refusal in words: what the broker said, and what to change.
fn refusal(code: ConnectReturnCode) -> (&'static str, &'static str) {
    match code {
        ConnectReturnCode::BadUsernameOrPassword => {
            ("bad user name or password", "check username and password")
        }
        ConnectReturnCode::NotAuthorized => (
            "not authorized",
            "check the credentials and the broker's access rules",
        ),
        ConnectReturnCode::IdentifierRejected => (
            "client id rejected",
            "use another client id (unique, allowed characters and length)",
        ),
        ConnectReturnCode::ServerUnavailable => {
            ("server unavailable", "retry later or check the broker")
        }
        ConnectReturnCode::UnacceptableProtocolVersion => (
            "unacceptable protocol version",
            "set MQTTVersion to one the broker supports (3 or 4)",
        ),
        ConnectReturnCode::Accepted | ConnectReturnCode::Other(_) => {
            ("refused", "check the broker's log")
        }
    }
}

/// What to change for an MQTT 5 CONNACK refusal.
fn refusal_v5(rc: ReasonCode, server: Option<&str>) -> String {
    use ReasonCode as R;
    let s = match rc {
        R::BadUserNameOrPassword => "check username and password",
        R::NotAuthorized => "check the credentials and the broker's access rules",
        R::ClientIdentifierNotValid => {
            "use another client id (unique, allowed characters and length)"
        }
        R::ServerUnavailable | R::ServerBusy | R::ConnectionRateExceeded => {
            "retry later or check the broker"
        }
        R::Banned => "this client is banned: ask the broker's operator",
        R::UnsupportedProtocolVersion => {
            "the broker does not accept MQTT 5 here: use MQTTVersion 4 (-V mqttv311)"
        }
        R::BadAuthenticationMethod => "the broker wants another authentication method",
        R::QuotaExceeded => "the broker's quota for this client is used up: retry later",
        R::PacketTooLarge => {
            "the CONNECT is larger than the broker accepts: shorten the will, user properties or credentials"
        }
        R::RetainNotSupported => "the broker keeps no retained messages: set lastWillRetain 0",
        R::QoSNotSupported => "the broker does not support the will's QoS: lower lastWillQos",
        R::UseAnotherServer | R::ServerMoved => {
            return match server {
                Some(s) => format!("connect to {s} instead"),
                None => "connect to another server (the broker named none)".into(),
            }
        }
        R::PayloadFormatInvalid => "the will's payload is not UTF-8 as its Payload Format Indicator says",
        R::TopicNameInvalid => "the broker does not accept the will's topic",
        _ => "check the broker's log",
    };
    s.to_string()
}

/// What to do about a broker's DISCONNECT (empty when nothing specific applies).
fn disconnect_advice(rc: ReasonCode) -> &'static str {
    use ReasonCode as R;
    match rc {
        R::SessionTakenOver => {
            "another client connected with the same client id: give each client its own id"
        }
        R::ServerShuttingDown | R::ServerBusy => "the client reconnects when the broker is back",
        R::KeepAliveTimeout => "the link stalled longer than the keep-alive: check the network",
        R::NotAuthorized => "check the broker's access rules",
        R::QuotaExceeded | R::MessageRateTooHigh => "send less, or more slowly",
        R::UseAnotherServer | R::ServerMoved => "connect to the server it points to",
        R::AdministrativeAction => "the broker's operator closed it",
        R::MaximumConnectTime => "the broker limits how long a connection lasts",
        R::MalformedPacket
        | R::ProtocolError
        | R::ReceiveMaximumExceeded
        | R::TopicAliasInvalid
        | R::PacketTooLarge => "the broker found this client breaking MQTT 5: please report it",
        _ => "",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(c) => c.fmt(f),
            Error::Dns {
                host,
                cause: Some(e),
            } => write!(
                f,
                "cannot resolve the broker host '{host}': {e}: check the host name and this machine's DNS"
            ),
            Error::Dns { host, cause: None } => write!(
                f,
                "the broker host '{host}' resolves to no address: check the host name"
            ),
            Error::Tcp { host, attempts } => {
                write!(f, "cannot connect to {host}: {}", Attempts(attempts))
            }
            Error::Io {
                peer,
                op,
                cause,
                handshake: true,
            } => write!(
                f,
                "{} the connection to {peer} failed during the TLS handshake ({cause}): is this port a TLS \
                 listener, and does it accept this client (certificate, TLS version)? The broker's log says \
                 why",
                op.doing()
            ),
            Error::Io {
                peer, op, cause, ..
            } => match cause.kind() {
                // The system's words ("Connection reset by peer") would only say it again.
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => write!(
                    f,
                    "the connection to {peer} was reset while {}",
                    match op {
                        Op::Read | Op::Decrypt => "reading",
                        Op::Write | Op::Encrypt => "writing",
                    }
                ),
                _ => write!(f, "{} the connection to {peer} failed: {cause}", op.doing()),
            },
            Error::Closed {
                peer,
                handshake: true,
            } => write!(
                f,
                "the broker {peer} closed the connection during the TLS handshake: is this port a TLS \
                 listener, and does it accept this client (certificate, TLS version)? The broker's log says \
                 why"
            ),
            Error::Closed { .. } => f.write_str("the broker closed the connection"),
            Error::Tls(t) => t.fmt(f),
            Error::Proxy(p) => p.fmt(f),
            Error::WebSocket(w) => w.fmt(f),
            Error::Refused {
                code,
                reason_code,
                reason,
                server_reference,
            } => {
                match reason_code {
                    Some(rc) => write!(
                        f,
                        "the broker refused the connection: {rc} ({})",
                        refusal_v5(*rc, server_reference.as_deref())
                    )?,
                    None => {
                        let (what, fix) = refusal(*code);
                        write!(f, "the broker refused the connection: {what} ({fix})")?;
                    }
                }
                if let Some(r) = reason {
                    write!(f, "; the broker says: {r}")?;
                }
                match server_reference {
                    Some(s) if reason_code.is_none() => write!(f, "; it points to {s}"),
                    _ => Ok(()),
                }
            }
            Error::Mqtt311Only { code } => write!(
                f,
                "the broker speaks only MQTT 3.1.1: it answered the MQTT 5 CONNECT with the MQTT 3.1.1 \
                 refusal {code}: use MQTTVersion 4 (qmqtt: -V mqttv311)"
            ),
            Error::Disconnected {
                reason_code,
                reason,
                server_reference,
            } => {
                write!(f, "the broker closed the connection: {reason_code}")?;
                if let Some(r) = reason {
                    write!(f, "; the broker says: {r}")?;
                }
                if let Some(s) = server_reference {
                    write!(f, "; it points to {s}")?;
                }
                let advice = disconnect_advice(*reason_code);
                if !advice.is_empty() {
                    write!(f, " ({advice})")?;
                }
                Ok(())
            }
            Error::Protocol(v) => write!(f, "protocol error from the broker: {v}"),
            Error::Timeout(Timeout::Connect { host, port, limit }) => write!(
                f,
                "no MQTT connection to {host}:{port} within the connect timeout ({limit:?}); is the broker up \
                 and reachable? (raise connectTimeout for slow links)"
            ),
            Error::Timeout(Timeout::Unread { unsent, limit }) => write!(
                f,
                "timeout: the broker read nothing for {limit:?} (the keep-alive) while {unsent} bytes owed to \
                 it waited unsent: it sends but does not read (a stalled or misbehaving broker); the \
                 connection is dropped and made again"
            ),
            Error::Timeout(t) => write!(
                f,
                "timeout: the broker did not send {} in time (the link or the broker is stalled; the \
                 connection is dropped and made again)",
                match t {
                    Timeout::PingResp => "PINGRESP",
                    _ => "CONNACK",
                }
            ),
            Error::System { doing, cause } => match doing {
                Doing::WatchSocket => write!(f, "cannot watch the socket: {cause}"),
                Doing::RegisterSocket(a) => {
                    write!(f, "cannot register the socket for {a} with the poller: {cause}")
                }
                d => write!(
                    f,
                    "{}: {cause} (out of file descriptors or memory?)",
                    match d {
                        Doing::CreatePoller => "cannot create the I/O poller",
                        Doing::CreateWaker => "cannot create the I/O waker",
                        Doing::CreateEventQueue => "cannot create the event descriptor",
                        _ => "cannot start the I/O thread",
                    }
                ),
            },
            Error::Stopped => f.write_str("the connection's I/O thread stopped"),
            Error::LocallyClosed => {
                f.write_str("the client was disconnected before the connection was made")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Dns { cause: Some(e), .. } | Error::Io { cause: e, .. } => Some(e.get_ref()),
            Error::System { cause, .. } => Some(cause.get_ref()),
            Error::Tls(t) => Some(&t.cause),
            Error::Proxy(p) => Some(p),
            Error::WebSocket(w) => Some(w),
            _ => None,
        }
    }
}

/// What to tell the user for the client-certificate options (q: `keyStore`/`privateKey`; CLI: `--cert`/`--key`).
const CLIENT_CERT_OPTS: &str = "keyStore/privateKey (--cert/--key)";
/// The CA options (q: `trustStore`/`CApath`; CLI: `--cafile`/`--capath`).
const CA_OPTS: &str = "trustStore/--cafile (or CApath/--capath)";
/// The fix for an unknown issuer.
const CA_TO_SIGNER: &str =
    "trustStore/--cafile to the CA that signed it (or CApath/--capath to a directory holding it)";

/// `DnsName("a.example")` / `IpAddress(127.0.0.1)` (how webpki presents names) → `a.example` / `127.0.0.1`.
fn plain_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .or_else(|| {
            p.strip_prefix("IpAddress(")
                .and_then(|r| r.strip_suffix(')'))
        })
        .unwrap_or(p)
}

fn utc(t: rustls_pki_types::UnixTime) -> String {
    crate::clock::utc(t.as_secs() as i64)
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = &self.server_name;
        let e = &self.cause;
        if self.setup {
            return write!(f, "cannot start TLS with {host}: {e}");
        }
        match e {
            rustls::Error::InvalidCertificate(ce) => {
                write!(f, "TLS handshake with {host} failed: server certificate")?;
                match ce {
                    CertificateError::UnknownIssuer if self.self_signed => write!(
                        f,
                        " is not signed by a trusted CA: set {CA_TO_SIGNER}. It is self-signed (trusted now: \
                         {}); only for testing, certificate verification can be turned off \
                         (enableServerCertAuth=0)",
                        self.trust
                    ),
                    CertificateError::UnknownIssuer => write!(
                        f,
                        " is not signed by a trusted CA: set {CA_TO_SIGNER} (trusted now: {})",
                        self.trust
                    ),
                    CertificateError::Expired => f.write_str(
                        " has expired: renew the broker's certificate, or check this machine's clock",
                    ),
                    CertificateError::ExpiredContext { time, not_after } => write!(
                        f,
                        " has expired (valid until {}, this machine's clock says {}): renew the broker's \
                         certificate, or check this machine's clock",
                        utc(*not_after),
                        utc(*time)
                    ),
                    CertificateError::NotValidYet => f.write_str(
                        " is not valid yet: check this machine's clock (set it with NTP), or the \
                         certificate's start date",
                    ),
                    CertificateError::NotValidYetContext { time, not_before } => write!(
                        f,
                        " is not valid yet (valid from {}, this machine's clock says {}): check this \
                         machine's clock (set it with NTP), or the certificate's start date",
                        utc(*not_before),
                        utc(*time)
                    ),
                    CertificateError::NotValidForName => write!(
                        f,
                        " is not valid for host name '{host}': connect by a name in the certificate, or set \
                         the TLS server name (SNI) to one"
                    ),
                    CertificateError::NotValidForNameContext { presented, .. } => {
                        write!(f, " is not valid for host name '{host}' (it names ")?;
                        if presented.is_empty() {
                            f.write_str("no host")?;
                        }
                        for (i, p) in presented.iter().enumerate() {
                            if i > 0 {
                                f.write_str(", ")?;
                            }
                            f.write_str(plain_name(p))?;
                        }
                        f.write_str(
                            "): connect by a name in the certificate, or set the TLS server name (SNI) to one",
                        )
                    }
                    CertificateError::Revoked => {
                        f.write_str(" has been revoked: the broker needs a new certificate")
                    }
                    CertificateError::BadSignature => f.write_str(
                        "'s signature does not verify: the certificate is corrupt or not issued by the CA it \
                         names",
                    ),
                    CertificateError::InvalidPurpose
                    | CertificateError::InvalidPurposeContext { .. } => f.write_str(
                        " is not meant for TLS servers (extended key usage): the broker needs a server \
                         certificate",
                    ),
                    other => write!(
                        f,
                        " refused ({other:?}): check the broker's certificate and {CA_OPTS}"
                    ),
                }
            }
            rustls::Error::AlertReceived(a) => self.alert(*a, f),
            rustls::Error::PeerIncompatible(p) => write!(
                f,
                "TLS handshake with {host} failed: no TLS version or cipher suite in common with the broker \
                 ({p:?}): check sslVersion and enabledCipherSuites"
            ),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => write!(
                f,
                "TLS with {host} failed: the broker sent something that is not TLS ({e}): is this port a TLS \
                 listener? Use tcp:// for plain MQTT ports (usually 1883), ssl:// for TLS (usually 8883)"
            ),
            rustls::Error::NoCertificatesPresented => {
                write!(f, "TLS handshake with {host} failed: the broker sent no certificate")
            }
            _ => write!(f, "TLS with {host} failed: {e}"),
        }
    }
}

impl TlsError {
    /// The alerts by which a broker refuses (or asks for) a client certificate.
    pub fn is_client_cert_alert(a: AlertDescription) -> bool {
        use AlertDescription as A;
        matches!(
            a,
            A::CertificateRequired
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::DecryptError
        )
    }

    fn alert(&self, a: AlertDescription, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AlertDescription as A;
        let host = &self.server_name;
        match a {
            a if TlsError::is_client_cert_alert(a) && self.client_cert => write!(
                f,
                "TLS with {host} failed: the broker refused the client certificate (alert {a:?}): check that \
                 {CLIENT_CERT_OPTS} hold a valid certificate signed by a CA the broker trusts, and its \
                 matching key"
            ),
            a if TlsError::is_client_cert_alert(a) => write!(
                f,
                "TLS with {host} failed: the broker requires a client certificate (alert {a:?}): set \
                 {CLIENT_CERT_OPTS}"
            ),
            A::HandshakeFailure if !self.client_cert => write!(
                f,
                "TLS handshake with {host} failed: the broker refused the handshake (alert {a:?}): it may \
                 require a client certificate: set {CLIENT_CERT_OPTS}; or it shares no TLS version / cipher \
                 suite with this client: check sslVersion and enabledCipherSuites"
            ),
            A::HandshakeFailure => write!(
                f,
                "TLS handshake with {host} failed: the broker refused the handshake (alert {a:?}): it may \
                 have refused the client certificate: check {CLIENT_CERT_OPTS}; or it shares no TLS version / \
                 cipher suite with this client: check sslVersion and enabledCipherSuites"
            ),
            A::ProtocolVersion | A::InsufficientSecurity => write!(
                f,
                "TLS handshake with {host} failed: no TLS version or cipher suite in common with the broker \
                 (alert {a:?}): check sslVersion and enabledCipherSuites"
            ),
            A::NoApplicationProtocol => write!(
                f,
                "TLS handshake with {host} failed: the broker accepts none of the ALPN protocols offered \
                 (alert {a:?}): check the ALPN option"
            ),
            A::UnrecognisedName => write!(
                f,
                "TLS handshake with {host} failed: the broker does not know the server name '{host}' (alert \
                 {a:?}): set the TLS server name (SNI) to one it serves"
            ),
            _ => write!(f, "TLS with {host} failed: the broker sent alert {a:?}"),
        }
    }
}
