//! [`Conn`]: one non-blocking connection to the broker — a mio `TcpStream`, optionally through an HTTP
//! proxy's tunnel, optionally wrapped in a rustls `ClientConnection`, optionally carrying MQTT in WebSocket
//! frames — with a plaintext send buffer that is reused across writes.
//!
//! The hops come up in order on the one socket: TCP (to the proxy when there is one), the proxy's `CONNECT`
//! (request written raw, its answer read raw; bytes past it are kept for the next layer), the TLS handshake
//! with the broker inside the tunnel, the WebSocket upgrade inside TLS; [`Conn::is_established`] is true
//! once all are done. A reconnect is a new `Conn`, so it goes through every hop again.
//!
//! Writes only append to the send buffer. [`Conn::flush`] hands the whole buffer to rustls in one call, so
//! that rustls cuts it into full-size records (16 KiB) rather than one record per MQTT packet, and writes the
//! records with vectored writes until the socket would block. The buffer keeps its capacity, so once warm a
//! write does not allocate (rustls allocates one buffer per record it encrypts). Over a WebSocket, a flush
//! frames everything queued into a second reused buffer (one masked frame per 64 KiB), and the frames read
//! are taken apart in place in the caller's receive buffer: still no allocation per message.
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{ClientConnection, ProtocolVersion};
use rustls_pki_types::ServerName;

use super::proxy::{Choice, ProxyError, ProxyName, Tunnel};
use super::tls::{tls_failure, trust_description, ErrCtx};
use super::ws::{Closed, Deframer, Framer, Upgrade, WsError};
use super::{Endpoint, TlsInfo, TlsOptions};
use crate::error::{Attempt, ConfigError, Doing, Error, Key, Op, Peer, TlsError};

/// Upper bound on the plaintext one [`Conn::read`] call appends; a caller on edge-triggered readiness calls
/// `read` again until it returns `Ok(0)`.
pub const MAX_READ_PER_CALL: usize = 1 << 20;
/// How much room a plain TCP read offers at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The send buffer keeps up to this much capacity once empty (a burst larger than this is freed after it
/// has been sent, so a backlog does not pin memory).
pub const SEND_BUFFER_KEEP: usize = 256 * 1024;

/// Counters of socket system calls and bytes (TLS bytes for TLS connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// `write`/`writev` calls that wrote something.
    pub socket_writes: u64,
    pub bytes_written: u64,
    /// `read` calls that returned data.
    pub socket_reads: u64,
    pub bytes_read: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("proxy", &self.proxy)
            .field("tls", &self.tls.is_some())
            .field("websocket", &self.ws.is_some())
            .field("established", &self.is_established())
            .field("pending", &self.pending())
            .field("closed", &self.closed)
            .finish()
    }
}

/// The socket seen through the counters.
struct Counted<'a> {
    sock: &'a mut TcpStream,
    stats: &'a mut IoStats,
}

/// `sendmsg(2)` with `MSG_NOSIGNAL`: a write to a connection the peer has closed returns `EPIPE` instead of
/// raising SIGPIPE. A library cannot rely on the host ignoring SIGPIPE (Rust programs do; q and other C hosts
/// may not), and `writev(2)` — what `write_vectored` on a socket is — has no way to say it.
fn send_nosignal(sock: &TcpStream, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero msghdr is valid (no name, no control data); the iovecs point into `bufs`
    // (`IoSlice` is ABI-compatible with `iovec` on Unix) and outlive the call.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    m.msg_iovlen = bufs.len().min(1024) as _;
    // SAFETY: a valid socket descriptor and message header.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = send_nosignal(self.sock, bufs)?;
        self.stats.socket_writes += 1;
        self.stats.bytes_written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        if n > 0 {
            self.stats.socket_reads += 1;
            self.stats.bytes_read += n as u64;
        }
        Ok(n)
    }
}

/// A non-blocking connection: mio TCP, optionally wrapped in rustls. Register it with a `mio::Poll` for
/// READABLE | WRITABLE — preferably with [`Conn::register`], which lets the connection fall over to the next
/// resolved address when a connect attempt fails; registering [`Conn::socket`] yourself works too, but then
/// only the first address that accepts the connect call is tried.
pub struct Conn {
    sock: TcpStream,
    addr: SocketAddr,
    /// Every resolved address; `next` is the first not yet tried.
    addrs: Vec<SocketAddr>,
    next: usize,
    /// The TCP handshake completed (a `Cell` so that `is_established(&self)` can record it).
    tcp_up: Cell<bool>,
    tls: Option<ClientConnection>,
    /// Host name for messages / the name the certificate is checked against.
    server_name: String,
    client_cert: bool,
    /// Which CAs are trusted, for messages.
    trust: String,
    /// Plaintext queued by `write`; `out[out_pos..]` is not yet handed to rustls / the socket.
    out: Vec<u8>,
    out_pos: usize,
    /// Plaintext handed to rustls whose TLS records are not yet fully written (an estimate).
    tls_queued: usize,
    closed: bool,
    /// The last [`Conn::read`] stopped because the socket would block (see [`Conn::drained`]).
    drained: bool,
    registration: Option<(Registry, Token)>,
    /// Earlier connect failures, for the error when every address fails.
    failures: Vec<Attempt>,
    stats: IoStats,
    /// The proxy the socket goes to, if any, and its answer once the tunnel is open.
    proxy: Option<ProxyName>,
    proxy_answer: Option<String>,
    /// The `CONNECT` hop while the proxy's answer is awaited.
    tunnel: Option<Tunnel>,
    /// Bytes for the socket itself, ahead of everything else (the `CONNECT` request); `raw_out[raw_pos..]`
    /// is unsent.
    raw_out: Vec<u8>,
    raw_pos: usize,
    /// Bytes read past the proxy's answer: the layer above reads them before the socket.
    pre: Vec<u8>,
    ws: Option<Box<Ws>>,
}

/// The WebSocket layer of a connection.
struct Ws {
    /// Until the broker's `101` came.
    upgrade: Option<Upgrade>,
    request_queued: bool,
    /// The broker's answer (status line and subprotocol), for `qmqtt check`.
    answer: Option<String>,
    framer: Framer,
    deframer: Deframer,
    /// Frames (and first the upgrade request) for TLS / the socket; `wire[wire_pos..]` not yet handed on.
    wire: Vec<u8>,
    wire_pos: usize,
    /// The broker's close frame, once it came.
    closed: Option<Closed>,
}

/// Empty `buf` once all of it is sent (keeping at most [`SEND_BUFFER_KEEP`] of capacity), or move the
/// unsent part `buf[*pos..]` to its start.
fn compact(buf: &mut Vec<u8>, pos: &mut usize) {
    if *pos == buf.len() {
        buf.clear();
        *pos = 0;
        if buf.capacity() > SEND_BUFFER_KEEP {
            buf.shrink_to(SEND_BUFFER_KEEP);
        }
    } else if *pos > 0 {
        buf.drain(..*pos);
        *pos = 0;
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// The addresses of `host` (`getaddrinfo`: blocks, and cannot be interrupted).
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

fn proxy_name(c: &Choice) -> ProxyName {
    ProxyName {
        addr: c.proxy.to_string(),
        source: c.source,
    }
}

fn attempt(addr: SocketAddr, e: io::Error) -> Attempt {
    Attempt {
        addr,
        cause: e.into(),
    }
}

impl Conn {
    /// Resolve and start a non-blocking connect (the TCP handshake completes later; `is_established` tells).
    /// For `ws://` / `wss://` endpoints the WebSocket upgrade follows by itself.
    ///
    /// Name resolution (`ToSocketAddrs`) blocks: call this on the I/O thread, not on q's main thread.
    /// `tls` is the configuration from [`super::tls_config`] and the options it was built from (for the
    /// server name); `None` for plain TCP.
    pub fn connect(
        ep: &Endpoint,
        tls: Option<(Arc<rustls::ClientConfig>, &TlsOptions)>,
    ) -> Result<Conn, Error> {
        Conn::connect_via(ep, None, tls)
    }

    /// As [`Conn::connect`], through the HTTP proxy `proxy` when given: the socket goes to the proxy (only its
    /// name is resolved here; the proxy resolves the broker's), which is asked to `CONNECT` to the broker.
    pub fn connect_via(
        ep: &Endpoint,
        proxy: Option<&Choice>,
        tls: Option<(Arc<rustls::ClientConfig>, &TlsOptions)>,
    ) -> Result<Conn, Error> {
        let (host, port) = Conn::lookup_name(ep, proxy);
        let addrs = resolve(host, port).map_err(|e| Conn::lookup_failed(ep, proxy, Some(e)))?;
        if addrs.is_empty() && proxy.is_some() {
            return Err(Conn::lookup_failed(ep, proxy, None));
        }
        Conn::start(ep, &addrs, proxy, tls)
    }

    /// The host name and port a connection to `ep` looks up: the proxy's when `proxy` is given (the proxy
    /// resolves the broker's), else the broker's.
    pub fn lookup_name<'a>(ep: &'a Endpoint, proxy: Option<&'a Choice>) -> (&'a str, u16) {
        match proxy {
            Some(c) => (c.proxy.host.as_str(), c.proxy.port),
            None => (ep.host.as_str(), ep.port),
        }
    }

    /// The error for a lookup of [`Conn::lookup_name`] that failed with `cause` (`None`: no address): the
    /// proxy's name when `proxy` is given, else the broker's.
    pub fn lookup_failed(ep: &Endpoint, proxy: Option<&Choice>, cause: Option<io::Error>) -> Error {
        let cause = cause.map(Into::into);
        match proxy {
            Some(c) => Error::Proxy(ProxyError::Dns {
                proxy: proxy_name(c),
                cause,
            }),
            None => Error::Dns {
                host: ep.host.clone(),
                cause,
            },
        }
    }

    /// As [`Conn::connect_via`], with the addresses of [`Conn::lookup_name`] already resolved (e.g. by
    /// [`resolve`] on a thread of its own, so that a stuck name lookup cannot hold the caller).
    pub fn connect_resolved(
        ep: &Endpoint,
        proxy: Option<&Choice>,
        addrs: &[SocketAddr],
        tls: Option<(Arc<rustls::ClientConfig>, &TlsOptions)>,
    ) -> Result<Conn, Error> {
        Conn::start(ep, addrs, proxy, tls)
    }

    /// Connect to `addrs` (the proxy's when `proxy` is given) and set up the hops.
    fn start(
        ep: &Endpoint,
        addrs: &[SocketAddr],
        proxy: Option<&Choice>,
        tls: Option<(Arc<rustls::ClientConfig>, &TlsOptions)>,
    ) -> Result<Conn, Error> {
        let name = proxy.map(proxy_name);
        let mut c = match Conn::connect_addrs(addrs, &ep.host, tls) {
            Ok(c) => c,
            Err(Error::Tcp { attempts, .. }) if name.is_some() => {
                return Err(Error::Proxy(ProxyError::Tcp {
                    proxy: name.unwrap_or_else(|| unreachable!()),
                    attempts,
                }))
            }
            Err(e) => return Err(e),
        };
        if let Some(choice) = proxy {
            let t = Tunnel::new(choice, &ep.host, ep.port);
            c.raw_out.extend_from_slice(t.request());
            c.tunnel = Some(t);
            c.proxy = name;
        }
        if ep.scheme.websocket() {
            let upgrade = Upgrade::new(&ep.host, ep.port, ep.scheme.default_port(), &ep.path)
                .map_err(Error::WebSocket)?;
            c.ws = Some(Box::new(Ws {
                upgrade: Some(upgrade),
                request_queued: false,
                answer: None,
                framer: Framer::default(),
                deframer: Deframer::default(),
                wire: Vec::new(),
                wire_pos: 0,
                closed: None,
            }));
        }
        Ok(c)
    }

    /// Start a non-blocking connect to the first of `addrs` that accepts one; later addresses are tried when
    /// it fails (see [`Conn::register`]). `host` is the name the TLS certificate is checked against unless
    /// `TlsOptions::server_name` is set.
    pub fn connect_addrs(
        addrs: &[SocketAddr],
        host: &str,
        tls: Option<(Arc<rustls::ClientConfig>, &TlsOptions)>,
    ) -> Result<Conn, Error> {
        let (tls, server_name, client_cert, trust) = match tls {
            None => (None, host.to_string(), false, String::new()),
            Some((cfg, opts)) => {
                let name = opts.server_name.clone().unwrap_or_else(|| host.to_string());
                let sn = ServerName::try_from(name.clone()).map_err(|_| {
                    ConfigError::invalid(
                        Key::ServerName,
                        format!(
                            "'{name}' is not a valid TLS server name: give a DNS name or an IP address"
                        ),
                    )
                })?;
                let c = ClientConnection::new(cfg, sn).map_err(|e| {
                    Error::Tls(Box::new(TlsError {
                        server_name: name.clone(),
                        cause: e,
                        client_cert: opts.cert_file.is_some(),
                        trust: String::new(),
                        self_signed: false,
                        setup: true,
                    }))
                })?;
                let trust = if opts.verify_certificate {
                    trust_description(opts)
                } else {
                    "any certificate (verification is off)".to_string()
                };
                (Some(c), name, opts.cert_file.is_some(), trust)
            }
        };
        let mut failures = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            match TcpStream::connect(addr) {
                Ok(sock) => {
                    // We coalesce writes ourselves; Nagle would only delay the flushes.
                    let _ = sock.set_nodelay(true);
                    return Ok(Conn {
                        sock,
                        addr,
                        addrs: addrs.to_vec(),
                        next: i + 1,
                        tcp_up: Cell::new(false),
                        tls,
                        server_name,
                        client_cert,
                        trust,
                        out: Vec::new(),
                        out_pos: 0,
                        tls_queued: 0,
                        closed: false,
                        drained: false,
                        registration: None,
                        failures,
                        stats: IoStats::default(),
                        proxy: None,
                        proxy_answer: None,
                        tunnel: None,
                        raw_out: Vec::new(),
                        raw_pos: 0,
                        pre: Vec::new(),
                        ws: None,
                    });
                }
                Err(e) => {
                    log::debug!("connect to {addr} failed at once: {e}");
                    failures.push(attempt(addr, e));
                }
            }
        }
        Err(if failures.is_empty() {
            Error::Dns {
                host: host.to_string(),
                cause: None,
            }
        } else {
            Error::Tcp {
                host: host.to_string(),
                attempts: failures,
            }
        })
    }

    /// Register the socket with `registry` for READABLE | WRITABLE under `token`. When a connect attempt
    /// fails, the connection then moves on to the next resolved address by itself (re-registering the new
    /// socket under the same token).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.registration = Some((registry.try_clone()?, token));
        Ok(())
    }

    /// Undo [`Conn::register`] (dropping the `Conn` closes the socket, which deregisters it as well).
    pub fn deregister(&mut self) -> io::Result<()> {
        if let Some((reg, _)) = self.registration.take() {
            reg.deregister(&mut self.sock)?;
        }
        Ok(())
    }

    /// The socket to register with mio.
    pub fn socket(&mut self) -> &mut mio::net::TcpStream {
        &mut self.sock
    }

    /// The address connected (or being connected) to.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connected, the proxy's tunnel open, the TLS handshake and the WebSocket upgrade complete (each
    /// where there is one): MQTT bytes may flow.
    pub fn is_established(&self) -> bool {
        self.stream_ready() && self.ws.as_ref().is_none_or(|w| w.upgrade.is_none())
    }

    /// Up to TLS: bytes written now go to the broker (for a WebSocket, the upgrade request).
    fn stream_ready(&self) -> bool {
        if !self.tcp_up.get() {
            if self.sock.peer_addr().is_err() {
                return false;
            }
            self.tcp_up.set(true);
        }
        self.tunnel.is_none() && self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
    }

    /// The TLS handshake is under way (and not waiting for the proxy).
    fn in_handshake(&self) -> bool {
        self.tunnel.is_none() && self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Has the TCP connect completed? Detects a failed connect and moves to the next address if possible
    /// (`Ok(false)`: still connecting).
    fn poll_connect(&mut self) -> Result<bool, Error> {
        if self.tcp_up.get() {
            return Ok(true);
        }
        let err = match self.sock.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => match self.sock.peer_addr() {
                Ok(_) => {
                    self.tcp_up.set(true);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => e,
            },
        };
        self.fail_over(err)?;
        Ok(false)
    }

    /// The current connect attempt failed with `e`: start the next address (when registered through
    /// [`Conn::register`]) or report every failure.
    fn fail_over(&mut self, e: io::Error) -> Result<(), Error> {
        log::debug!("connect to {} failed: {e}", self.addr);
        self.failures.push(attempt(self.addr, e));
        if let Some((reg, token)) = &self.registration {
            while self.next < self.addrs.len() {
                let addr = self.addrs[self.next];
                self.next += 1;
                match TcpStream::connect(addr) {
                    Ok(mut s) => {
                        log::info!("connect to {} failed; trying {addr}", self.addr);
                        let _ = reg.deregister(&mut self.sock);
                        reg.register(&mut s, *token, Interest::READABLE | Interest::WRITABLE)
                            .map_err(|e| Error::System {
                                doing: Doing::RegisterSocket(addr),
                                cause: e.into(),
                            })?;
                        let _ = s.set_nodelay(true);
                        self.sock = s;
                        self.addr = addr;
                        return Ok(());
                    }
                    Err(e2) => self.failures.push(attempt(addr, e2)),
                }
            }
        }
        let attempts = std::mem::take(&mut self.failures);
        Err(match &self.proxy {
            Some(p) => Error::Proxy(ProxyError::Tcp {
                proxy: p.clone(),
                attempts,
            }),
            None => Error::Tcp {
                host: self.server_name.clone(),
                attempts,
            },
        })
    }

    fn peer_of(&self) -> Peer {
        Peer {
            host: match (&self.proxy, self.tunnel.is_some()) {
                (Some(p), true) => format!("the proxy {}", p.addr),
                (Some(_), false) => format!("{} (through the proxy)", self.server_name),
                _ => self.server_name.clone(),
            },
            addr: self.addr,
        }
    }

    fn io_error(&self, e: io::Error, op: Op) -> Error {
        // A reset instead of the hop's answer says the same as a close: that peer does not speak it.
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) && (self.tunnel.is_some()
            || (self.stream_ready() && self.ws.as_ref().is_some_and(|w| w.upgrade.is_some())))
        {
            return self.closed_error();
        }
        Error::Io {
            peer: self.peer_of(),
            op,
            cause: e.into(),
            handshake: self.in_handshake(),
        }
    }

    fn closed_error(&self) -> Error {
        if let Some(t) = &self.tunnel {
            return Error::Proxy(t.closed());
        }
        if let Some(w) = &self.ws {
            if let Some(c) = &w.closed {
                return Error::WebSocket(WsError::Closed(c.clone()));
            }
            if let Some(u) = &w.upgrade {
                return Error::WebSocket(WsError::NotWebSocket {
                    target: u.target().to_string(),
                    why: "it closed (or reset) the connection without answering the upgrade".into(),
                });
            }
        }
        Error::Closed {
            peer: self.peer_of(),
            handshake: false,
        }
    }

    fn tls_error(&mut self, e: rustls::Error) -> Error {
        // Send the alert rustls queued, if the socket takes it; the error is what matters.
        if let Some(t) = self.tls.as_mut() {
            let _ = t.write_tls(&mut Counted {
                sock: &mut self.sock,
                stats: &mut self.stats,
            });
        }
        tls_failure(
            e,
            &ErrCtx {
                server_name: &self.server_name,
                client_cert: self.client_cert,
                trust: &self.trust,
            },
        )
    }

    /// Read whatever is available; append plaintext to `out`. `Ok(0)` with nothing more: would block.
    /// `Err(Error::Closed)` on EOF (or a TLS close_notify), after any data before it was returned.
    ///
    /// Reads until the socket would block, but appends at most [`MAX_READ_PER_CALL`] bytes per call: with
    /// edge-triggered readiness, call again until `Ok(0)`. For TLS, also sends what the handshake needs and,
    /// once it completes, the plaintext queued before it.
    pub fn read(&mut self, out: &mut Vec<u8>) -> Result<usize, Error> {
        if self.closed {
            return Err(self.closed_error());
        }
        if !self.poll_connect()? {
            return Ok(0);
        }
        if self.tunnel.is_some() {
            if !self.read_tunnel()? {
                return Ok(0);
            }
            // The tunnel is open: the TLS handshake (or the WebSocket upgrade) starts now.
            self.flush()?;
        }
        let start = out.len();
        self.drained = false;
        if self.tls.is_none() {
            self.read_tcp(out, start)?;
        } else {
            self.read_tls(out, start)?;
        }
        if self.ws.is_some() {
            self.read_ws(out, start)?;
        }
        let wants = self.tls.as_ref().is_some_and(|t| t.wants_write())
            || self.ws.as_ref().is_some_and(|w| w.wire_pos < w.wire.len())
            || (self.out_pos < self.out.len() && self.is_established());
        if wants && !self.closed {
            self.flush()?;
        }
        let got = out.len() - start;
        if got == 0 && self.closed {
            return Err(self.closed_error());
        }
        Ok(got)
    }

    /// Read the proxy's answer to `CONNECT`. `Ok(true)`: the tunnel is open; `Ok(false)`: not yet.
    fn read_tunnel(&mut self) -> Result<bool, Error> {
        let mut buf = [0u8; 1024];
        loop {
            let r = Counted {
                sock: &mut self.sock,
                stats: &mut self.stats,
            }
            .read(&mut buf);
            let n = match r {
                Ok(0) => {
                    self.closed = true;
                    return Err(self.closed_error());
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e, Op::Read)),
            };
            let Some(t) = self.tunnel.as_mut() else {
                return Ok(true);
            };
            match t.feed(&buf[..n]) {
                Ok(None) => {}
                Ok(Some(used)) => {
                    self.pre.extend_from_slice(&buf[used..n]);
                    let status = t.status_line().to_string();
                    log::debug!("{}: {status}", t.proxy());
                    self.proxy_answer = Some(status);
                    self.tunnel = None;
                    return Ok(true);
                }
                Err(e) => {
                    self.closed = true;
                    return Err(Error::Proxy(e));
                }
            }
        }
    }

    /// The WebSocket layer of a read: the upgrade's answer, then frames, both out of `out[start..]`.
    fn read_ws(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), Error> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(());
        };
        if let Some(up) = ws.upgrade.as_mut() {
            match up.feed(&out[start..]) {
                Ok(None) => {
                    out.truncate(start);
                    return Ok(());
                }
                Ok(Some(n)) => {
                    out.drain(start..start + n);
                    ws.answer = Some(up.answer());
                    ws.upgrade = None;
                }
                Err(e) => {
                    self.closed = true;
                    return Err(Error::WebSocket(e));
                }
            }
        }
        match ws.deframer.unframe(out, start) {
            Ok(None) => {}
            Ok(Some(c)) => {
                log::debug!("{c}");
                // Answer the close (echoing its code) and end the stream.
                let _ = ws.framer.close(c.code, &mut ws.wire);
                ws.closed = Some(c);
                let _ = self.flush();
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                self.closed = true;
                return Ok(());
            }
            Err(e) => {
                self.closed = true;
                return Err(Error::WebSocket(e));
            }
        }
        if let Some(p) = ws.deframer.take_pong() {
            ws.framer
                .pong(p.payload(), &mut ws.wire)
                .map_err(Error::WebSocket)?;
        }
        Ok(())
    }

    fn read_tcp(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), Error> {
        if !self.pre.is_empty() {
            out.extend_from_slice(&self.pre);
            self.pre.clear();
        }
        while out.len() - start < MAX_READ_PER_CALL {
            let at = out.len();
            out.resize(at + READ_CHUNK, 0);
            let r = Counted {
                sock: &mut self.sock,
                stats: &mut self.stats,
            }
            .read(&mut out[at..]);
            match r {
                Ok(0) => {
                    out.truncate(at);
                    self.closed = true;
                    break;
                }
                Ok(n) => out.truncate(at + n),
                Err(e) => {
                    out.truncate(at);
                    if would_block(&e) {
                        self.drained = true;
                        break;
                    }
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(self.io_error(e, Op::Read));
                    }
                }
            }
        }
        Ok(())
    }

    fn read_tls(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), Error> {
        while out.len() - start < MAX_READ_PER_CALL {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            let mut eof = false;
            let r = if self.pre.is_empty() {
                tls.read_tls(&mut Counted {
                    sock: &mut self.sock,
                    stats: &mut self.stats,
                })
            } else {
                let r = tls.read_tls(&mut &self.pre[..]);
                if let Ok(n) = r {
                    self.pre.drain(..n);
                }
                r
            };
            match r {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if would_block(&e) => {
                    self.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e, Op::Read)),
            }
            let st = match tls.process_new_packets() {
                Ok(st) => st,
                Err(e) => return Err(self.tls_error(e)),
            };
            let n = st.plaintext_bytes_to_read();
            if n > 0 {
                let at = out.len();
                out.resize(at + n, 0);
                if let Err(e) = tls.reader().read_exact(&mut out[at..]) {
                    out.truncate(at);
                    return Err(self.io_error(e, Op::Decrypt));
                }
            }
            if st.peer_has_closed() || eof {
                if eof && tls.is_handshaking() {
                    return Err(Error::Closed {
                        peer: self.peer_of(),
                        handshake: true,
                    });
                }
                self.closed = true;
                break;
            }
        }
        Ok(())
    }

    /// Queue plaintext for sending (encrypted into TLS records for TLS). Does not block.
    ///
    /// Copies into a buffer that keeps its capacity; nothing is encrypted or sent until [`Conn::flush`].
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.closed {
            return Err(self.closed_error());
        }
        self.out.extend_from_slice(data);
        Ok(())
    }

    /// Like [`Conn::write`] but takes the bytes out of `data` (leaving it empty): when nothing is queued the
    /// two buffers are swapped instead of copied.
    pub fn write_owned(&mut self, data: &mut Vec<u8>) -> Result<(), Error> {
        if self.closed {
            return Err(self.closed_error());
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            std::mem::swap(&mut self.out, data);
        } else {
            self.out.extend_from_slice(data);
            data.clear();
        }
        Ok(())
    }

    /// Push queued bytes to the socket. `Ok(true)` when everything is out, `Ok(false)` when the socket
    /// would block (wait for WRITABLE).
    ///
    /// Also `Ok(false)` while the TCP connect is in progress. Plaintext queued before the connection is
    /// established (proxy tunnel, TLS handshake, WebSocket upgrade) stays queued (`Ok(true)` once what the
    /// hops need is out; [`Conn::pending`] still counts it) and goes out from the `read`/`flush` after.
    pub fn flush(&mut self) -> Result<bool, Error> {
        if self.closed {
            return Err(self.closed_error());
        }
        if !self.poll_connect()? {
            return Ok(false);
        }
        if !self.flush_raw()? {
            return Ok(false);
        }
        if self.tunnel.is_some() {
            // Nothing else may go before the proxy's answer.
            return Ok(true);
        }
        let ready = self.stream_ready();
        let Some(ws) = self.ws.as_mut() else {
            let mut buf = std::mem::take(&mut self.out);
            let mut pos = self.out_pos;
            let r = self.push(&buf, &mut pos);
            compact(&mut buf, &mut pos);
            (self.out, self.out_pos) = (buf, pos);
            return r;
        };
        if ready {
            if let Some(up) = &ws.upgrade {
                if !ws.request_queued {
                    ws.wire.extend_from_slice(up.request());
                    ws.request_queued = true;
                }
            } else if self.out_pos < self.out.len() {
                ws.framer
                    .data(&self.out[self.out_pos..], &mut ws.wire)
                    .map_err(Error::WebSocket)?;
                self.out_pos = self.out.len();
                compact(&mut self.out, &mut self.out_pos);
            }
        }
        let mut buf = std::mem::take(&mut ws.wire);
        let mut pos = ws.wire_pos;
        let r = self.push(&buf, &mut pos);
        compact(&mut buf, &mut pos);
        if let Some(ws) = self.ws.as_mut() {
            (ws.wire, ws.wire_pos) = (buf, pos);
        }
        r
    }

    /// Write `raw_out` (bytes for the socket itself: the `CONNECT` request). `Ok(false)`: would block.
    fn flush_raw(&mut self) -> Result<bool, Error> {
        while self.raw_pos < self.raw_out.len() {
            let r = Counted {
                sock: &mut self.sock,
                stats: &mut self.stats,
            }
            .write(&self.raw_out[self.raw_pos..]);
            match r {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "socket took no bytes");
                    return Err(self.io_error(e, Op::Write));
                }
                Ok(n) => self.raw_pos += n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e, Op::Write)),
            }
        }
        if self.raw_pos > 0 {
            // The request holds the proxy credentials: keep nothing of it.
            zeroize::Zeroize::zeroize(&mut self.raw_out);
            self.raw_pos = 0;
        }
        Ok(true)
    }

    /// Push the stream's bytes `buf[*pos..]` (MQTT, or WebSocket frames) to the socket, through TLS when
    /// there is TLS (which also sends what its handshake needs; plaintext waits for the handshake).
    fn push(&mut self, buf: &[u8], pos: &mut usize) -> Result<bool, Error> {
        if self.tls.is_none() {
            while *pos < buf.len() {
                let r = Counted {
                    sock: &mut self.sock,
                    stats: &mut self.stats,
                }
                .write(&buf[*pos..]);
                match r {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::WriteZero, "socket took no bytes");
                        return Err(self.io_error(e, Op::Write));
                    }
                    Ok(n) => *pos += n,
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_error(e, Op::Write)),
                }
            }
            return Ok(true);
        }
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(true);
            };
            let mut moved = 0;
            if !tls.is_handshaking() && *pos < buf.len() {
                // One call for everything queued: rustls makes full-size records of it (up to its buffer
                // limit; the rest follows once records are written).
                match tls.writer().write(&buf[*pos..]) {
                    Ok(n) => {
                        moved = n;
                        *pos += n;
                        self.tls_queued += n;
                    }
                    Err(e) => return Err(self.io_error(e, Op::Encrypt)),
                }
            }
            if tls.wants_write() {
                match tls.write_tls(&mut Counted {
                    sock: &mut self.sock,
                    stats: &mut self.stats,
                }) {
                    Ok(n) => self.tls_queued = self.tls_queued.saturating_sub(n),
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_error(e, Op::Write)),
                }
            } else {
                self.tls_queued = 0;
                if moved == 0 {
                    return Ok(true);
                }
            }
        }
    }

    /// End the connection politely: for TLS, queue a close_notify alert; then push what the socket takes
    /// without blocking and shut down the sending side. Afterwards `read`, `write` and `flush` return
    /// `Closed`. Dropping the `Conn` closes the socket in any case.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        if let Some(w) = self.ws.as_mut() {
            if w.upgrade.is_none() {
                let _ = w.framer.close(Some(1000), &mut w.wire);
            }
        }
        if let Some(t) = self.tls.as_mut() {
            if self.tunnel.is_none() {
                t.send_close_notify();
            }
        }
        if self.tcp_up.get() {
            let _ = self.flush();
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
        }
        self.closed = true;
    }

    /// Acknowledge what was received at once rather than after the delayed-ACK timeout (Linux: TCP_QUICKACK;
    /// elsewhere nothing). For a client that reads without sending: a broker with Nagle's algorithm on
    /// (mosquitto's default) holds its next small packets until this ACK, 40 ms or more otherwise.
    pub fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: a valid socket descriptor and a c_int option value of the size given.
            unsafe {
                libc::setsockopt(
                    self.sock.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// The last [`Conn::read`] read the socket until it would block: calling again before the next readiness
    /// event would only cost a syscall that finds nothing (one per wake-up saved on a stream of small
    /// acknowledgements).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Bytes queued and not yet written to the socket (plaintext, WebSocket frames, TLS records, the proxy
    /// request). For TLS the part already encrypted is an estimate (plaintext size, without record overhead).
    pub fn pending(&self) -> usize {
        let plain = self.out.len() - self.out_pos
            + (self.raw_out.len() - self.raw_pos)
            + self.ws.as_ref().map_or(0, |w| w.wire.len() - w.wire_pos);
        let tls = match &self.tls {
            Some(t) if t.wants_write() => self.tls_queued.max(1),
            _ => 0,
        };
        plain + tls
    }

    /// Socket call and byte counters since the connection started.
    pub fn io_stats(&self) -> IoStats {
        self.stats
    }

    /// The hops below MQTT once they are up, for `qmqtt check`: the proxy and its answer to `CONNECT`, the
    /// broker's answer to the WebSocket upgrade.
    pub fn hops(&self) -> Hops {
        Hops {
            proxy: self.proxy.clone().zip(self.proxy_answer.clone()),
            websocket: self.ws.as_ref().and_then(|w| w.answer.clone()),
        }
    }

    /// Negotiated TLS facts for `qmqtt check`: version, suite, ALPN, peer chain (DER). `None` for plain TCP
    /// and before the handshake completes.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let t = self.tls.as_ref()?;
        if t.is_handshaking() {
            return None;
        }
        let version = match t.protocol_version()? {
            ProtocolVersion::TLSv1_2 => "TLS 1.2".to_string(),
            ProtocolVersion::TLSv1_3 => "TLS 1.3".to_string(),
            v => format!("{v:?}"),
        };
        let cipher_suite = t
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        Some(TlsInfo {
            version,
            cipher_suite,
            alpn: t.alpn_protocol().map(|p| p.to_vec()),
            peer_chain: t
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.to_vec()).collect())
                .unwrap_or_default(),
        })
    }
}

/// What [`Conn::hops`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hops {
    /// The proxy (where it is, where it was set) and its status line, e.g. `HTTP/1.1 200 Connection
    /// established`.
    pub proxy: Option<(ProxyName, String)>,
    /// The broker's upgrade answer, e.g. `HTTP/1.1 101 Switching Protocols (subprotocol mqtt)`.
    pub websocket: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn conn_can_move_to_the_io_thread() {
        fn send<T: Send>() {}
        send::<super::Conn>();
    }
}
