//! The real components behind the transport's hops, started by the tests on 127.0.0.1: tinyproxy (Debian)
//! as the HTTP proxy — with or without Basic authentication, with `ConnectPort` rules — and aedes (npm,
//! `tests/common/aedes.js`) as a broker with plain, WebSocket and WebSocket-over-TLS listeners. Both are
//! installed by `tools/env.sh` (`qm_need tinyproxy aedes`); each is killed when its fixture is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Certs};

/// User and password of the authenticating proxy.
pub const PROXY_USER: &str = "gw-proxy";
pub const PROXY_PASSWORD: &str = "pr0xy-pass.1";

pub fn wait_listening(port: u16, child: &mut Child, what: &str, log: &dyn Fn() -> String) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// What a [`Tinyproxy`] lets through.
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Require Basic authentication with [`PROXY_USER`] / [`PROXY_PASSWORD`].
    pub auth: bool,
    /// `ConnectPort` rules: only these ports may be tunnelled to (empty: any port).
    pub connect_ports: Vec<u16>,
}

/// A running tinyproxy.
pub struct Tinyproxy {
    dir: tempfile::TempDir,
    pub port: u16,
    pub opts: ProxyOptions,
    child: Option<Child>,
}

impl Tinyproxy {
    pub fn start(opts: ProxyOptions) -> Tinyproxy {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Tinyproxy {
            dir,
            port: 0,
            opts,
            child: None,
        };
        for attempt in 1.. {
            p.port = free_port();
            if p.spawn() {
                break;
            }
            assert!(attempt < 5, "tinyproxy would not start: {}", p.log());
        }
        p
    }

    fn spawn(&mut self) -> bool {
        let d = self.dir.path();
        let mut conf = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 30\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Info\n\
             LogFile \"{}/tinyproxy.log\"\n",
            self.port,
            d.display()
        );
        if unsafe { libc::geteuid() } == 0 {
            conf.push_str("User root\nGroup root\n");
        }
        for p in &self.opts.connect_ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        if self.opts.auth {
            conf.push_str(&format!("BasicAuth {PROXY_USER} {PROXY_PASSWORD}\n"));
        }
        std::fs::write(d.join("tinyproxy.conf"), conf).unwrap();
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(d.join("tinyproxy.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (tools/need tinyproxy)");
        if !wait_listening(self.port, &mut child, "tinyproxy", &|| self.log()) {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// `http://127.0.0.1:PORT` (with the credentials when `auth`; `%`-escaped as URLs need).
    pub fn url(&self) -> String {
        if self.opts.auth {
            self.url_as(PROXY_USER, PROXY_PASSWORD)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`, escaping what a URL cannot hold as is.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let esc = |s: &str| {
            s.replace('%', "%25")
                .replace(' ', "%20")
                .replace('@', "%40")
                .replace(':', "%3A")
        };
        format!(
            "http://{}:{}@127.0.0.1:{}",
            esc(user),
            esc(password),
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// How many CONNECT requests tinyproxy logged (each connection through it makes one).
    pub fn connects(&self) -> usize {
        self.log().matches("Request (file descriptor").count()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where `tools/env.sh` installs the project's tools: `$QMQTT_CACHE` (which it exports), else its default.
pub fn tools_cache() -> PathBuf {
    std::env::var_os("QMQTT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| Path::new(&d).join("qmqtt")))
        .or_else(|| std::env::var_os("HOME").map(|d| Path::new(&d).join(".cache/qmqtt")))
        .expect("HOME is not set: set QMQTT_CACHE to the tools cache (tools/env.sh)")
}

/// Where `tools/env.sh` installs node packages.
fn node_modules() -> PathBuf {
    tools_cache().join("npm/node_modules")
}

/// A running aedes with plain MQTT, WebSocket and WebSocket-over-TLS listeners (`/mqtt`; the TLS one with
/// the test server certificate for localhost).
pub struct Aedes {
    dir: tempfile::TempDir,
    pub certs: Certs,
    pub tcp_port: u16,
    pub ws_port: u16,
    pub wss_port: u16,
    child: Option<Child>,
}

impl Aedes {
    pub fn start() -> Aedes {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(&dir.path().join("certs"));
        let mut a = Aedes {
            dir,
            certs,
            tcp_port: 0,
            ws_port: 0,
            wss_port: 0,
            child: None,
        };
        for attempt in 1.. {
            (a.tcp_port, a.ws_port, a.wss_port) = (free_port(), free_port(), free_port());
            if a.spawn() {
                break;
            }
            assert!(attempt < 5, "aedes would not start: {}", a.log());
        }
        a
    }

    fn spawn(&mut self) -> bool {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/aedes.js");
        let log = std::fs::File::create(self.dir.path().join("aedes.log")).unwrap();
        let mut child = Command::new("node")
            .arg(script)
            .arg(self.tcp_port.to_string())
            .arg(self.ws_port.to_string())
            .arg(self.wss_port.to_string())
            .arg(&self.certs.server_cert)
            .arg(&self.certs.server_key)
            .env("NODE_PATH", node_modules())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("node (tools/need aedes)");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        for port in [self.tcp_port, self.ws_port, self.wss_port] {
            if !wait_listening(port, &mut child, "aedes", &|| self.log()) {
                return false;
            }
        }
        self.child = Some(child);
        true
    }

    pub fn tcp_uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.tcp_port)
    }
    pub fn ws_uri(&self) -> String {
        format!("ws://127.0.0.1:{}/mqtt", self.ws_port)
    }
    /// By name, for the certificate check.
    pub fn wss_uri(&self) -> String {
        format!("wss://localhost:{}/mqtt", self.wss_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("aedes.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports (after [`Aedes::kill`]); aedes keeps no sessions across restarts.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "aedes did not restart: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Aedes {
    fn drop(&mut self) {
        self.kill();
    }
}
