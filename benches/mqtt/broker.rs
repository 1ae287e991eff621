//! The one local mosquitto every contender talks to: generated CA and server certificate (rcgen), a TLS
//! listener for the publishers and a plain TCP listener for the counting subscriber, both on 127.0.0.1
//! free ports, with the broker's queue and in-flight limits lifted so that the broker never drops.
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A running broker; killed on drop.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub tls_port: u16,
    pub tcp_port: u16,
    child: Option<Child>,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn certs(dir: &std::path::Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    p.distinguished_name
        .push(DnType::CommonName, "qmqtt bench CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(err)?;
    let w = |name: &str, data: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    };
    Ok((
        w("ca.pem", ca.pem())?,
        w("server.pem", cert.pem())?,
        w("server.key", key.serialize_pem())?,
    ))
}

impl Broker {
    pub fn start() -> Result<Broker, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let (ca, cert, key) = certs(dir.path())?;
        let tls_port = free_port()?;
        let tcp_port = free_port()?;
        let root = unsafe { libc::geteuid() } == 0;
        let d = dir.path().display();
        // Limits lifted: unlimited queues (0) and in-flight towards the subscriber; no Nagle delay on the
        // broker's sends, so that latency measures the publishers, not the broker's socket.
        let conf = format!(
            "{user}per_listener_settings false\nallow_anonymous true\npersistence false\n\
             log_dest file {d}/mosquitto.log\nlog_type error\nlog_type warning\n\
             max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\nmax_inflight_bytes 0\n\
             memory_limit 0\nset_tcp_nodelay true\n\
             listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             listener {tcp_port} 127.0.0.1\n",
            user = if root { "user root\n" } else { "" },
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("writing mosquitto.conf: {e}"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start mosquitto ({e}): apt-get install mosquitto"))?;
        let b = Broker {
            dir,
            ca,
            tls_port,
            tcp_port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [tls_port, tcp_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("mosquitto did not listen on {port}: {}", b.log()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(b)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
