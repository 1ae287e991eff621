//! Small pieces shared by the subcommands: waiting on file descriptors with `poll(2)`, turning engine error
//! text into advice about *this command's* flags, and the stderr logger behind `-d`.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qmqtt::client::ClientError;

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

/// Advice in terms of this command's flags for an engine or transport error text (empty when nothing
/// specific applies). Matching is on a normalised form (lower case, no spaces or punctuation), so both
/// rustls' `UnknownIssuer` and prose like "unknown issuer" are recognised.
pub fn hint(msg: &str) -> &'static str {
    let n: String = msg
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let has = |k: &str| n.contains(k);
    if has("unknownissuer") || has("unknownca") || has("notsignedbyatrusted") {
        "unknown issuer: the broker's certificate is not signed by a CA this client trusts; pass the CA \
         certificate that signed it with --cafile FILE (or --capath DIR)"
    } else if has("notvalidforname") || has("hostname") || has("namemismatch") {
        "the broker's certificate is not for this host name: connect with a name the certificate lists (-h), \
         or set --sni NAME, or skip the host name check with --insecure"
    } else if has("notvalidyet") {
        "the broker's certificate is not valid yet: check the clock on this machine and on the broker"
    } else if has("expired") {
        "the broker's certificate has expired: renew it on the broker (or check this machine's clock)"
    } else if has("certificaterequired") || has("badcertificate") || has("handshakefailure") {
        "the broker rejected the TLS handshake, most often because it requires a client certificate: pass \
         --cert FILE --key FILE (signed by a CA the broker trusts)"
    } else if has("corruptmessage")
        || has("invalidcontenttype")
        || has("notls")
        || has("wrongversion")
    {
        "the port did not speak TLS: is it the broker's plain MQTT port? drop the TLS flags or use its TLS \
         port (often 8883)"
    } else if has("notauthori")
        || has("badusernameorpassword")
        || has("badusername")
        || has("password")
    {
        "the broker refused the credentials: check -u USER and -P PASS (and the broker's ACL)"
    } else if has("identifierrejected") || has("clientid") {
        "the broker rejected the client id: choose another with -i ID"
    } else if has("connectionrefused") {
        "nothing accepts connections there: check -h HOST and -p PORT (or -L URL) and that the broker runs"
    } else if has("unacceptableprotocol") {
        "the broker does not speak MQTT 3.1.1"
    } else {
        ""
    }
}

/// A connect failure as one or two lines: what happened, then the advice.
pub fn describe_connect_error(uri: &str, e: &ClientError) -> String {
    let what = match e {
        ClientError::Config(m) => format!("bad configuration: {m}"),
        ClientError::Connect(m) => format!("cannot connect to {uri}: {m}"),
        ClientError::NotConnected => format!("not connected to {uri}"),
        ClientError::Timeout => format!(
            "no answer (CONNACK) from {uri} in time: is the broker up, and is this its MQTT port \
             (TLS or plain as the flags say)?"
        ),
    };
    with_hint(what)
}

/// `what`, followed by the hint for it on its own line when there is one.
pub fn with_hint(what: String) -> String {
    match hint(&what) {
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
        assert!(hint("invalid peer certificate: UnknownIssuer").contains("--cafile"));
        assert!(hint("TLS: unknown issuer (set ca_file)").contains("unknown issuer"));
        assert!(hint("InvalidCertificate(NotValidForName)").contains("--insecure"));
        assert!(hint("refused: NotAuthorized").contains("-u USER"));
        assert!(hint("received fatal alert: CertificateRequired").contains("--cert"));
        assert_eq!(hint("all good"), "");
    }
}
