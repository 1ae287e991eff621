//! Shared test fixture: generated certificates and a real mosquitto on 127.0.0.1.
//!
//! `Broker::start` writes a mosquitto.conf into its own temporary directory with four listeners on free
//! loopback ports — plain TCP, TLS, mutual TLS, and TCP with a password file — and waits until they accept.
//! `Certs` holds a CA, a server certificate for `localhost`/127.0.0.1/::1, a client certificate, and the bad
//! ones the TLS tests need (another CA, an expired, a not-yet-valid and a wrong-host server certificate).
//! Everything stays on loopback; the broker is killed when the fixture is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod alloc;
pub mod client;
pub mod fake;
pub mod hops;
pub mod proxy;
pub mod rumqttd;
pub mod session;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    SanType,
};

/// User and password accepted on the `auth` listener.
pub const USER: &str = "gateway";
pub const PASSWORD: &str = "s3cret-pw";

/// The `qmqtt` command under test. When `$QMQTT_TEST_RUNNER` is set (targets/test sets it to qemu-user for
/// ARM builds), the binary is started through it, so the same tests run on every target.
pub fn qmqtt_cmd() -> Command {
    let bin = env!("CARGO_BIN_EXE_qmqtt");
    match std::env::var("QMQTT_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => {
            let mut words = r.split_whitespace();
            let mut c = Command::new(words.next().unwrap());
            c.args(words).arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}

/// How many times slower than native this run's code is: `$QMQTT_TEST_SLOWDOWN` (targets/test sets 10 for
/// ARM builds under qemu-user; 1 when unset). Bounds that are wall-clock times — how long a call, a detection or
/// a recovery may take, how long to wait for something — are multiplied by it; counts, orders and lower bounds
/// never are.
pub fn slowdown() -> u32 {
    std::env::var("QMQTT_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &u32| n >= 1)
        .unwrap_or(1)
}

/// A time bound made for native speed, scaled by [`slowdown`].
pub fn slow(d: Duration) -> Duration {
    d * slowdown()
}

/// Start `qmqtt ARGS` in the background: stdin and stdout as given, stderr piped (for the test to read).
pub fn qmqtt_spawn<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    stdin: Stdio,
    stdout: Stdio,
) -> Child {
    qmqtt_cmd()
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qmqtt")
}

/// Run `qmqtt ARGS` with `input` on stdin, collecting its output; kill it and fail the test when it runs
/// longer than `limit`.
pub fn qmqtt_run(args: &[&str], input: &[u8], limit: Duration) -> std::process::Output {
    use std::io::Write;
    let mut child = qmqtt_spawn(args, Stdio::piped(), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || read_all(out));
    let re = std::thread::spawn(move || read_all(err));
    let status = wait_timeout(&mut child, limit, &format!("qmqtt {args:?}"));
    w.join().unwrap();
    std::process::Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

/// Wait for `child` at most `t`; kill it and fail the test when it overstays.
pub fn wait_timeout(child: &mut Child, t: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything `r` yields until its end (or an error).
pub fn read_all(mut r: impl std::io::Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// Run `cmd` to its end with its output collected, for at most `limit`: `None` when it overstayed (it was
/// killed). mosquitto's clients reconnect for ever on some failures, so no test runs one without a bound.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt-get install mosquitto-clients)"));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || read_all(out));
    let re = std::thread::spawn(move || read_all(err));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (ro.join().unwrap(), re.join().unwrap());
    status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// Run `mosquitto_pub -h HOST -p PORT ARGS` to its end; fail the test, with its stderr, unless it succeeds
/// within 30 s.
pub fn mosquitto_pub(host: &str, port: impl ToString, args: &[&str]) {
    let port = port.to_string();
    let o = run_limited(
        Command::new("mosquitto_pub")
            .args(["-h", host, "-p", &port])
            .args(args),
        Duration::from_secs(30),
    );
    let o =
        o.unwrap_or_else(|| panic!("mosquitto_pub -h {host} -p {port} {args:?}: no exit in 30 s"));
    assert!(
        o.status.success(),
        "mosquitto_pub -h {host} -p {port} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
/// A port free on 127.0.0.1 now, below the kernel's ephemeral range: a broker killed and restarted on its
/// ports must find them free again, and an outgoing connection's local port (any test's, any process's)
/// is always taken from the ephemeral range (`Address already in use` otherwise, seen under load).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_lo: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral_lo.clamp(12_000, 65_535));
    // Start where this process's clock and id point, so that parallel test binaries spread out.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..(hi - lo) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = lo + (seed.wrapping_add(n.wrapping_mul(7_919))) % (hi - lo);
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn make_ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn leaf(
    ca: &Ca,
    cn: &str,
    dns: &[&str],
    ips: &[IpAddr],
    validity: Option<(time_ymd, time_ymd)>,
) -> (String, String) {
    let mut p =
        CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    for ip in ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    if let Some(((y1, m1, d1), (y2, m2, d2))) = validity {
        p.not_before = rcgen::date_time_ymd(y1, m1, d1);
        p.not_after = rcgen::date_time_ymd(y2, m2, d2);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[allow(non_camel_case_types)]
type time_ymd = (i32, u8, u8);

/// Certificate files written into `dir`.
#[derive(Clone, Debug)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the broker uses.
    pub other_ca: PathBuf,
    /// Server certificates signed by `ca` but unusable: expired, not yet valid, for another host.
    pub expired_cert: PathBuf,
    pub future_cert: PathBuf,
    pub wronghost_cert: PathBuf,
    /// A self-signed server certificate for localhost (its key is `selfsigned_key`).
    pub selfsigned_cert: PathBuf,
    pub selfsigned_key: PathBuf,
    /// One key shared by the bad server certificates above.
    pub bad_keys: [PathBuf; 3],
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let w = |name: &str, data: &str| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let ca = make_ca("qmqtt test CA");
        let other = make_ca("qmqtt other CA");
        let local_ips = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let (sc, sk) = leaf(&ca, "localhost", &["localhost"], &local_ips, None);
        let (cc, ck) = leaf(&ca, "qmqtt-client", &[], &[], None);
        let (ec, ek) = leaf(
            &ca,
            "localhost",
            &["localhost"],
            &local_ips,
            Some(((2020, 1, 1), (2021, 1, 1))),
        );
        let (fc, fk) = leaf(
            &ca,
            "localhost",
            &["localhost"],
            &local_ips,
            Some(((2090, 1, 1), (2091, 1, 1))),
        );
        let (wc, wk) = leaf(&ca, "elsewhere.example", &["elsewhere.example"], &[], None);
        // Self-signed: its own CA, not the test CA.
        let selfca = make_ca("localhost");
        let (ssc, ssk) = leaf(&selfca, "localhost", &["localhost"], &local_ips, None);
        Certs {
            dir: dir.to_path_buf(),
            ca: w("ca.pem", &ca.cert.pem()),
            server_cert: w("server.pem", &sc),
            server_key: w("server.key", &sk),
            client_cert: w("client.pem", &cc),
            client_key: w("client.key", &ck),
            other_ca: w("other-ca.pem", &other.cert.pem()),
            expired_cert: w("expired.pem", &ec),
            future_cert: w("future.pem", &fc),
            wronghost_cert: w("wronghost.pem", &wc),
            selfsigned_cert: w("selfsigned.pem", &ssc),
            selfsigned_key: w("selfsigned.key", &ssk),
            bad_keys: [
                w("expired.key", &ek),
                w("future.key", &fk),
                w("wronghost.key", &wk),
            ],
        }
    }
}

/// Options for [`Broker::start_with`].
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// Keep sessions and queued messages on disk across restarts (`persistence true`).
    pub persistence: bool,
    /// Serve this certificate/key on the TLS listener instead of the good server certificate.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// Extra lines appended to mosquitto.conf.
    pub extra: String,
    /// MQTT 5 limits a client must keep to (mosquitto disconnects one that does not): Receive Maximum 2
    /// (`max_inflight_messages`), Maximum Packet Size 256, Server Keep Alive 10 s, and Topic Alias Maximum
    /// 2 on the plain and TLS listeners.
    pub mqtt5_limits: bool,
    /// Lines for the plain TCP listener (e.g. an `acl_file`).
    pub tcp_extra: String,
}

/// A running mosquitto with its own directory, ports and certificates.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub certs: Certs,
    /// Plain TCP, anonymous.
    pub tcp_port: u16,
    /// TLS with the server certificate, anonymous.
    pub tls_port: u16,
    /// TLS requiring a client certificate signed by the test CA.
    pub mtls_port: u16,
    /// Plain TCP requiring USER / PASSWORD.
    pub auth_port: u16,
    pub opts: BrokerOptions,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    pub fn start_with(opts: BrokerOptions) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(&dir.path().join("certs"));
        let mut b = Broker {
            certs,
            tcp_port: 0,
            tls_port: 0,
            mtls_port: 0,
            auth_port: 0,
            opts,
            dir,
            child: None,
        };
        // free_port() releases the port before mosquitto binds it, so another test may take it first:
        // try again on fresh ports when mosquitto exits at start.
        for attempt in 1.. {
            (b.tcp_port, b.tls_port, b.mtls_port, b.auth_port) =
                (free_port(), free_port(), free_port(), free_port());
            b.write_config();
            if b.spawn() {
                break;
            }
            assert!(attempt < 5, "mosquitto would not start: {}", b.log());
        }
        b
    }

    pub fn tcp_uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.tcp_port)
    }
    /// TLS URI by name, so that host name verification has something to check.
    pub fn tls_uri(&self) -> String {
        format!("ssl://localhost:{}", self.tls_port)
    }
    pub fn mtls_uri(&self) -> String {
        format!("ssl://localhost:{}", self.mtls_port)
    }
    pub fn auth_uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.auth_port)
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let c = &self.certs;
        let passwd = d.join("passwd");
        std::fs::write(&passwd, "").unwrap();
        let st = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .arg(USER)
            .arg(PASSWORD)
            .status()
            .expect("mosquitto_passwd (apt-get install mosquitto)");
        assert!(st.success());
        let (tls_cert, tls_key) = self
            .opts
            .tls_cert
            .clone()
            .unwrap_or((c.server_cert.clone(), c.server_key.clone()));
        let root = unsafe { libc::geteuid() } == 0;
        let conf = format!(
            "{user}per_listener_settings true\n\
             persistence {persist}\npersistence_location {dir}/\nautosave_interval 1\n\
             log_dest file {dir}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n\
             max_queued_messages 1000000\n{limits}\
             listener {tcp} 127.0.0.1\nallow_anonymous true\n{alias}{tcp_extra}\
             listener {tls} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {tc}\nkeyfile {tk}\n{alias}\
             listener {mtls} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {sc}\nkeyfile {sk}\n\
             require_certificate true\n\
             listener {auth} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n{extra}\n",
            user = if root { "user root\n" } else { "" },
            persist = self.opts.persistence,
            dir = d.display(),
            tcp = self.tcp_port,
            tls = self.tls_port,
            mtls = self.mtls_port,
            auth = self.auth_port,
            ca = c.ca.display(),
            tc = tls_cert.display(),
            tk = tls_key.display(),
            sc = c.server_cert.display(),
            sk = c.server_key.display(),
            pw = passwd.display(),
            extra = self.opts.extra,
            limits = if self.opts.mqtt5_limits {
                "max_inflight_messages 2\nmax_packet_size 256\nmax_keepalive 10\n"
            } else {
                "max_inflight_messages 0\n"
            },
            alias = if self.opts.mqtt5_limits {
                "max_topic_alias 2\n"
            } else {
                ""
            },
            tcp_extra = self.opts.tcp_extra,
        );
        std::fs::write(d.join("mosquitto.conf"), conf).unwrap();
    }

    /// Start mosquitto and wait until every listener accepts. False when it exited first (a port was taken).
    fn spawn(&mut self) -> bool {
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [self.tcp_port, self.tls_port, self.mtls_port, self.auth_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if child.try_wait().ok().flatten().is_some() {
                    return false;
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on {port}: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Listening ports could belong to another test's broker if ours died binding them.
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// The broker's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// SIGTERM and wait: a clean stop (persistence is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// SIGKILL and wait: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports with the same files.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "mosquitto did not restart on its ports: {}",
            self.log()
        );
    }

    /// Freeze (SIGSTOP) / thaw (SIGCONT) the broker: connections stay open but nothing is answered.
    pub fn freeze(&self) {
        unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) };
    }
    pub fn thaw(&self) {
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// `mosquitto_sub` in the background, collecting lines (with `-v`: "topic payload").
pub struct Sub {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    /// Subscribe to `topic` at `qos` on the broker's plain listener; returns once the subscription is active
    /// (checked by publishing a marker on `<topic-root>/$ready` style probe is not portable, so we wait for
    /// the broker to log the subscription).
    pub fn start(broker: &Broker, topic: &str, qos: u8, extra: &[&str]) -> Sub {
        let id = format!("sub-{}", free_port());
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.tcp_port.to_string(),
                "-t",
                topic,
            ])
            .args(["-q", &qos.to_string(), "-i", &id])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l2, r2) = (lines.clone(), ready.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    // Probes only say the subscription is live; they are never recorded.
                    Ok(l) if l.ends_with("__probe") => {
                        r2.store(true, std::sync::atomic::Ordering::SeqCst)
                    }
                    Ok(l) => l2.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        // Wait until the subscriber's connection is visible to the broker: publish probes until one arrives.
        let probe = topic
            .trim_end_matches('#')
            .trim_end_matches('/')
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sub = Sub { child, lines };
        if !topic.contains('+') && (topic.ends_with('#') || !topic.contains('#')) {
            let probe_topic = if topic.ends_with('#') {
                format!("{probe}/__probe")
            } else {
                probe
            };
            loop {
                run_limited(
                    Command::new("mosquitto_pub")
                        .args(["-h", "127.0.0.1", "-p", &broker.tcp_port.to_string()])
                        .args(["-t", &probe_topic, "-m", "__probe", "-q", "1"]),
                    Duration::from_secs(10),
                );
                if ready.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto_sub did not start receiving"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        sub
    }

    /// Wait until `n` lines have arrived or `timeout` passes; returns the count seen.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.lines.lock().unwrap().len();
            if c >= n || Instant::now() >= deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
