//! rumqttd (crates.io, `tools/env.sh`: `qm_need rumqttd`) as a second broker, started by the tests on
//! 127.0.0.1 with a config they write: one MQTT 3.1.1 and one MQTT 5 listener on free ports, sharing one
//! router (a message crosses between them). Killed when the fixture is dropped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::free_port;
use super::hops::{tools_cache, wait_listening};

/// A running rumqttd.
pub struct Rumqttd {
    dir: tempfile::TempDir,
    /// The MQTT 3.1.1 listener.
    pub v4_port: u16,
    /// The MQTT 5 listener.
    pub v5_port: u16,
    child: Option<Child>,
}

impl Rumqttd {
    pub fn start() -> Rumqttd {
        let mut r = Rumqttd {
            dir: tempfile::tempdir().unwrap(),
            v4_port: 0,
            v5_port: 0,
            child: None,
        };
        // free_port() releases the port before rumqttd binds it: try fresh ports if it exits at start.
        for attempt in 1.. {
            (r.v4_port, r.v5_port) = (free_port(), free_port());
            if r.spawn() {
                break;
            }
            assert!(attempt < 5, "rumqttd would not start: {}", r.log());
        }
        r
    }

    fn spawn(&mut self) -> bool {
        let conf = self.dir.path().join("rumqttd.toml");
        let listener = |v: u8, port: u16| {
            format!(
                "[v{v}.1]\nname = \"v{v}-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 1\n\
                 [v{v}.1.connections]\nconnection_timeout_ms = 10000\nmax_payload_size = 20480\n\
                 max_inflight_count = 100\ndynamic_filters = true\n"
            )
        };
        let text = format!(
            "id = 0\n[router]\nid = 0\nmax_connections = 100\nmax_outgoing_packet_count = 200\n\
             max_segment_size = 1048576\nmax_segment_count = 10\n{}{}",
            listener(4, self.v4_port),
            listener(5, self.v5_port)
        );
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::create(self.dir.path().join("rumqttd.log")).unwrap();
        let mut child = Command::new(Rumqttd::bin())
            .arg("--quiet")
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rumqttd (tools/need rumqttd)");
        for port in [self.v4_port, self.v5_port] {
            if !wait_listening(port, &mut child, "rumqttd", &|| self.log()) {
                return false;
            }
        }
        self.child = Some(child);
        true
    }

    /// Where `tools/env.sh` installs it (`cargo install --root $QMQTT_CACHE/cargo`).
    fn bin() -> PathBuf {
        tools_cache().join("cargo/bin/rumqttd")
    }

    pub fn v4_uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.v4_port)
    }
    pub fn v5_uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.v5_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rumqttd.log")).unwrap_or_default()
    }
}

impl Drop for Rumqttd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
