//! Small pieces shared by the subcommands: waiting on file descriptors with `poll(2)`, advice in *this
//! command's* flags for each kind of failure, and the stderr logger behind `-d`.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qmqtt::client::ClientError;
use qmqtt::codec::{ConnectReturnCode, ReasonCode};
use qmqtt::error::{Attempts, ConfigError, Error, Key, TlsError};

/// Wait until one of `fds` is readable or `timeout` passes (`None`: no limit). Returns which are readable
/// (hang-up and errors count as readable, so that the next read reports them). EINTR returns early.
pub fn wait_readable<const N: usize>(fds: [RawFd; N], timeout: Option<Duration>) -> [bool; N] {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = match timeout {
        None => -1,
        // Round up so that a short timeout does not spin at 0 ms.
        Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `pfds` is a valid array of N pollfd structs that outlives the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, ms) };
    if n <= 0 {
        return [false; N];
    }
    pfds.map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}

/// SIGINT and SIGTERM as a readable file descriptor (signalfd), so that the commands can stop cleanly —
/// drain, disconnect, print their summary — from the same `poll(2)` that waits for events and input.
/// Create it before the client's I/O thread starts: the blocked mask is inherited, so the signals reach
/// only this fd. When signalfd is unavailable the signals keep their default action (fd is -1, which
/// `poll` ignores).
pub struct Signals {
    fd: RawFd,
}

impl Signals {
    pub fn block() -> Signals {
        // SAFETY: plain libc calls on a local, initialised sigset; the fd is owned by the returned value.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Signals { fd: -1 };
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
            Signals { fd }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Consume pending signals; true when there was at least one. Never blocks.
    pub fn take(&self) -> bool {
        if self.fd < 0 {
            return false;
        }
        let mut got = false;
        let mut buf = [0u8; 128]; // sizeof(struct signalfd_siginfo)
        loop {
            // SAFETY: reading into a local buffer of the stated length from our own non-blocking fd.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return got;
            }
            got = true;
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// A client started for a command, and what the command needs around it.
pub struct Started {
    pub client: qmqtt::Client,
    /// SIGINT / SIGTERM, blocked before the I/O thread existed (so that it inherits the mask).
    pub sig: Signals,
    pub uri: String,
    /// How long to wait for the first connection: the connect timeout and a second.
    pub wait: Duration,
}

/// Block the signals and start the client for `qmqtt CMD`; a configuration it refuses is reported as
/// `qmqtt CMD: …` and gives exit code 1.
pub fn start_client(cmd: &str, cfg: qmqtt::Config) -> Result<Started, i32> {
    let uri = cfg.uri.clone();
    let wait = cfg.connect_timeout + Duration::from_secs(1);
    let sig = Signals::block();
    match qmqtt::Client::connect(cfg) {
        Ok(client) => Ok(Started {
            client,
            sig,
            uri,
            wait,
        }),
        Err(e) => {
            errln!("qmqtt {cmd}: {}", describe_connect_error(&uri, &e));
            Err(1)
        }
    }
}

/// Why the first connection was not made.
pub enum FirstConnect {
    Failed(ClientError),
    Interrupted,
}

/// Wait for the first CONNACK (or failure) for up to `total`, in short steps so that SIGINT / SIGTERM
/// (blocked, waiting on `sig`) still end the wait.
pub fn wait_first_connection(
    c: &qmqtt::Client,
    total: Duration,
    sig: &Signals,
) -> Result<(), FirstConnect> {
    let deadline = Instant::now() + total;
    let r = loop {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        match c.wait_connected(step) {
            Err(ClientError::Timeout) if Instant::now() < deadline => {
                if sig.take() {
                    break Err(FirstConnect::Interrupted);
                }
            }
            Err(e) => break Err(FirstConnect::Failed(e)),
            Ok(()) => break Ok(()),
        }
    };
    first_connect_done();
    r
}

/// Time left until `deadline` (`None`: forever), at least zero.
pub fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

const HINT_UNKNOWN_ISSUER: &str =
    "unknown issuer: the broker's certificate is not signed by a CA this \
    client trusts; pass the CA certificate that signed it with --cafile FILE (or --capath DIR)";
const HINT_NAME: &str =
    "the broker's certificate is not for this host name: connect with a name the \
    certificate lists (-h), or set --sni NAME, or skip the host name check with --insecure";
const HINT_NOT_YET: &str =
    "the broker's certificate is not valid yet: check the clock on this machine and on the broker";
const HINT_EXPIRED: &str =
    "the broker's certificate has expired: renew it on the broker (or check this machine's clock)";
const HINT_CLIENT_CERT: &str =
    "the broker rejected the TLS handshake, most often because it requires a \
    client certificate: pass --cert FILE --key FILE (signed by a CA the broker trusts)";
const HINT_NOT_TLS: &str =
    "the port did not speak TLS: is it the broker's plain MQTT port? drop the TLS \
    flags or use its TLS port (often 8883)";
const HINT_CREDENTIALS: &str =
    "the broker refused the credentials: check -u USER and -P PASS (and the broker's ACL)";
const HINT_CLIENT_ID: &str = "the broker rejected the client id: choose another with -i ID";
const HINT_CLIENT_ID_TAKEN: &str =
    "another client connected with the same client id: give each its own with -i ID";
const HINT_NOTHING_THERE: &str =
    "nothing accepts connections there: check -h HOST and -p PORT (or -L URL) \
    and that the broker runs";

const HINT_PROXY_FLAG: &str = "give the proxy as --proxy http://[USER:PASS@]HOST:PORT";

/// Advice in terms of this command's flags for a connection failure (empty when nothing specific applies).
pub fn hint(e: &Error) -> &'static str {
    use qmqtt::transport::{proxy::ProxyError as P, ws::WsError as W};
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    match e {
        Error::Config(c) => config_hint(c),
        Error::Proxy(p) => match p {
            P::AuthRequired { sent: false, .. } => {
                "the proxy wants a user and password: --proxy http://USER:PASS@HOST:PORT"
            }
            P::AuthRequired { sent: true, .. } => "check the user and password in --proxy",
            P::Refused { .. } => {
                "the proxy does not let CONNECT through to this port: ask for it to be allowed, or reach \
                 the broker on port 443 (-L wss://HOST/mqtt or mqtts://HOST:443)"
            }
            P::NotHttp { .. } | P::Closed { .. } | P::Url { .. } => HINT_PROXY_FLAG,
            P::Dns { .. } | P::Tcp { .. } => {
                "nothing answers as the proxy: check --proxy (or $https_proxy/$http_proxy) and that the \
                 proxy runs"
            }
        },
        Error::WebSocket(W::Refused { .. }) => {
            "give the broker's WebSocket path in the URL: -L ws://HOST:PORT/PATH (default /mqtt)"
        }
        Error::WebSocket(W::NotWebSocket { .. }) => {
            "is that port the broker's WebSocket listener? -L ws://… for plain, wss://… for TLS"
        }
        Error::Tcp { attempts, .. }
            if attempts
                .iter()
                .any(|a| a.cause.kind() == std::io::ErrorKind::ConnectionRefused) =>
        {
            HINT_NOTHING_THERE
        }
        Error::Tls(t) if !t.setup => match &t.cause {
            R::InvalidCertificate(C::UnknownIssuer) => HINT_UNKNOWN_ISSUER,
            R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                HINT_NAME
            }
            R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => HINT_NOT_YET,
            R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => HINT_EXPIRED,
            R::AlertReceived(a) if TlsError::is_client_cert_alert(*a) => HINT_CLIENT_CERT,
            R::AlertReceived(A::HandshakeFailure) => HINT_CLIENT_CERT,
            R::InvalidMessage(_) | R::InappropriateMessage { .. } => HINT_NOT_TLS,
            _ => "",
        },
        Error::Mqtt311Only { .. } => {
            "the broker speaks MQTT 3.1.1 only: drop -V 5 (or use -V mqttv311)"
        }
        Error::Disconnected {
            reason_code: ReasonCode::SessionTakenOver,
            ..
        } => HINT_CLIENT_ID_TAKEN,
        Error::Refused {
            reason_code: Some(ReasonCode::UnsupportedProtocolVersion),
            ..
        } => "the broker refuses MQTT 5 here: drop -V 5 (or use -V mqttv311)",
        Error::Refused { code, .. } => match code {
            ConnectReturnCode::BadUsernameOrPassword | ConnectReturnCode::NotAuthorized => {
                HINT_CREDENTIALS
            }
            ConnectReturnCode::IdentifierRejected => HINT_CLIENT_ID,
            ConnectReturnCode::UnacceptableProtocolVersion => {
                "the broker does not speak MQTT 3.1.1"
            }
            _ => "",
        },
        _ => "",
    }
}

/// Advice for a configuration error.
pub fn config_hint(c: &ConfigError) -> &'static str {
    match (c.key, c.fault) {
        (Key::ClientId, _) => HINT_CLIENT_ID,
        (Key::Password, _) => HINT_CREDENTIALS,
        (Key::HttpProxy | Key::HttpsProxy, _) => HINT_PROXY_FLAG,
        _ => "",
    }
}

/// A connect failure as one or two lines: what happened, then the advice.
pub fn describe_connect_error(uri: &str, e: &ClientError) -> String {
    match e {
        ClientError::Config(c) => with_hint(format!("bad configuration: {c}"), config_hint(c)),
        // The attempts name each address; "cannot connect to" is said once, with the URI.
        ClientError::Connect(e @ Error::Tcp { attempts, .. }) => with_hint(
            format!("cannot connect to {uri}: {}", Attempts(attempts)),
            hint(e),
        ),
        ClientError::Connect(e) => with_hint(format!("cannot connect to {uri}: {e}"), hint(e)),
        ClientError::NotConnected => format!("not connected to {uri}"),
        ClientError::Timeout => format!(
            "no answer (CONNACK) from {uri} in time: is the broker up, and is this its MQTT port \
             (TLS or plain as the flags say)?"
        ),
    }
}

/// Advice for any client error.
pub fn client_hint(e: &ClientError) -> &'static str {
    match e {
        ClientError::Config(c) => config_hint(c),
        ClientError::Connect(e) => hint(e),
        ClientError::NotConnected | ClientError::Timeout => "",
    }
}

/// `what`, followed by `hint` on its own line when there is one.
pub fn with_hint(what: String, hint: &str) -> String {
    match hint {
        "" => what,
        h => format!("{what}\n  hint: {h}"),
    }
}

/// Set while the first connection is being made: the command itself reports that failure (with advice in
/// its own flags), so the driver's error records about it would only say the same thing twice.
static FIRST_CONNECT: AtomicBool = AtomicBool::new(true);

/// The first connection is up (or given up): from now on the driver's errors are shown as they come.
pub fn first_connect_done() {
    FIRST_CONNECT.store(false, Ordering::Relaxed);
}

/// The `log` backend of the binary: one line per record on stderr, with seconds since start.
pub struct StderrLogger {
    start: Instant,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
            && !(m.level() == log::Level::Error
                && log::max_level() < log::LevelFilter::Debug
                && m.target().starts_with("qmqtt::client")
                && FIRST_CONNECT.load(Ordering::Relaxed))
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let t = self.start.elapsed();
            errln!(
                "[{:>4}.{:03} {:<5} {}] {}",
                t.as_secs(),
                t.subsec_millis(),
                r.level(),
                r.target(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

/// Install the logger: `debug` shows everything down to debug, otherwise warnings and errors only.
pub fn init_logger(debug: bool) {
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let logger = Box::leak(Box::new(StderrLogger {
        start: Instant::now(),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_flags() {
        let refused = |code| Error::Refused {
            code,
            reason_code: None,
            reason: None,
            server_reference: None,
        };
        assert!(hint(&refused(ConnectReturnCode::NotAuthorized)).contains("-u USER"));
        assert!(hint(&refused(ConnectReturnCode::IdentifierRejected)).contains("-i ID"));
        assert_eq!(hint(&refused(ConnectReturnCode::Other(9))), "");
        // A URI typo is not a TLS problem.
        let typo = qmqtt::transport::Endpoint::parse("mqtt://bad host").unwrap_err();
        assert_eq!(config_hint(&typo), "");
    }
}
