//! The contenders, each run in its own process (`mqtt --contender NAME ...`): connect over TLS, idle, then
//! publish `count` messages of `size` bytes at QoS `qos` (as fast as possible, or at `rate` per second),
//! wait until the library says they are out (QoS 0) or acknowledged (QoS 1), and print one `RESULT` line
//! with the time stamps (CLOCK_MONOTONIC ns, comparable with the subscriber's) and the process's memory.
//! Every contender speaks MQTT 3.1.1 except the `-v5` ones (and `qmqtt-v5-noalias`), the same clients over
//! MQTT 5 (issue 13).
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::now_ns;
use crate::sub::{connect_packet, fixed_header, publish_packet};

/// Names of every contender, in table order.
pub const ALL: &[&str] = &[
    "qmqtt",
    "qmqtt-lean",
    "qmqtt-cli",
    "paho",
    "rumqttc",
    "mosquitto_pub",
    "raw",
    "q",
    "q-batch",
    "qmqtt-v5",
    "qmqtt-v5-noalias",
    "qmqtt-cli-v5",
    "paho-v5",
    "rumqttc-v5",
    "mosquitto_pub-v5",
];

/// The MQTT 5 contenders and the MQTT 3.1.1 form of the same client, in table order. qmqtt-v5 uses topic
/// aliases (the client's default under MQTT 5: one alias replaces the topic after its first use);
/// qmqtt-v5-noalias turns them off. paho, rumqttc and mosquitto_pub send the topic in every PUBLISH (none of
/// them assigns aliases by itself).
pub const V5: &[(&str, &str)] = &[
    ("qmqtt-v5", "qmqtt"),
    ("qmqtt-v5-noalias", "qmqtt"),
    ("qmqtt-cli-v5", "qmqtt-cli"),
    ("paho-v5", "paho"),
    ("rumqttc-v5", "rumqttc"),
    ("mosquitto_pub-v5", "mosquitto_pub"),
];

/// The MQTT 3.1.1 form of an MQTT 5 contender (`None`: the contender speaks MQTT 3.1.1).
pub fn v311_form(contender: &str) -> Option<&'static str> {
    V5.iter().find(|(c, _)| *c == contender).map(|(_, f)| *f)
}

/// Contenders that can stamp a send time into each payload (latency runs).
pub const LATENCY: &[&str] = &["qmqtt", "qmqtt-lean", "paho", "rumqttc", "raw"];

/// One contender run, as passed on the command line.
#[derive(Debug, Clone)]
pub struct Job {
    pub contender: String,
    pub port: u16,
    pub ca: PathBuf,
    pub topic: String,
    pub qos: u8,
    pub size: usize,
    pub count: u64,
    /// Messages per second; 0 = as fast as possible.
    pub rate: u64,
    pub id: String,
    pub idle_ms: u64,
    /// Stamp the send time (CLOCK_MONOTONIC ns, little endian) into the first 8 payload bytes.
    pub stamp: bool,
    pub qmqtt_bin: Option<PathBuf>,
}

impl Job {
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--contender".into(),
            self.contender.clone(),
            format!("port={}", self.port),
            format!("ca={}", self.ca.display()),
            format!("topic={}", self.topic),
            format!("qos={}", self.qos),
            format!("size={}", self.size),
            format!("count={}", self.count),
            format!("rate={}", self.rate),
            format!("id={}", self.id),
            format!("idle_ms={}", self.idle_ms),
            format!("stamp={}", self.stamp as u8),
        ];
        if let Some(b) = &self.qmqtt_bin {
            a.push(format!("qmqtt_bin={}", b.display()));
        }
        a
    }

    pub fn from_args(args: &[String]) -> Result<Job, String> {
        let mut j = Job {
            contender: args.first().cloned().ok_or("--contender needs a name")?,
            port: 0,
            ca: PathBuf::new(),
            topic: String::new(),
            qos: 0,
            size: 64,
            count: 0,
            rate: 0,
            id: "bench".into(),
            idle_ms: 200,
            stamp: false,
            qmqtt_bin: None,
        };
        for a in &args[1..] {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("contender argument '{a}' is not key=value"))?;
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v}: not a number"))
            };
            match k {
                "port" => j.port = num()? as u16,
                "ca" => j.ca = v.into(),
                "topic" => j.topic = v.into(),
                "qos" => j.qos = num()? as u8,
                "size" => j.size = num()? as usize,
                "count" => j.count = num()?,
                "rate" => j.rate = num()?,
                "id" => j.id = v.into(),
                "idle_ms" => j.idle_ms = num()?,
                "stamp" => j.stamp = num()? != 0,
                "qmqtt_bin" => j.qmqtt_bin = Some(v.into()),
                _ => return Err(format!("unknown contender argument '{k}'")),
            }
        }
        if j.size < 8 && j.stamp {
            return Err("latency runs need payloads of at least 8 bytes".into());
        }
        Ok(j)
    }
}

/// What a contender reports (printed as `RESULT k=v ...`).
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub base_kb: u64,
    pub idle_kb: u64,
    pub load_kb: u64,
    pub hwm_kb: u64,
    pub t_start: u64,
    pub t_done: u64,
    /// Set when the work was done by another process (mosquitto_pub, qmqtt pub): its peak RSS and CPU.
    pub ext_maxrss_kb: u64,
    pub ext_cpu_us: u64,
    /// qmqtt only, from `Client::stats`: socket writes, I/O-thread wake-ups, bytes written (plaintext),
    /// PUBLISHes sent with a topic alias (MQTT 5).
    pub writes: u64,
    pub wakeups: u64,
    pub bytes_out: u64,
    pub aliased: u64,
}

impl Outcome {
    pub fn line(&self) -> String {
        format!(
            "RESULT base_kb={} idle_kb={} load_kb={} hwm_kb={} t_start={} t_done={} ext_maxrss_kb={} ext_cpu_us={} \
             writes={} wakeups={} bytes_out={} aliased={}",
            self.base_kb, self.idle_kb, self.load_kb, self.hwm_kb, self.t_start, self.t_done,
            self.ext_maxrss_kb, self.ext_cpu_us, self.writes, self.wakeups, self.bytes_out, self.aliased
        )
    }
    pub fn parse(out: &str) -> Option<Outcome> {
        let line = out.lines().find(|l| l.starts_with("RESULT "))?;
        let mut o = Outcome::default();
        for kv in line.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "base_kb" => o.base_kb = v,
                "idle_kb" => o.idle_kb = v,
                "load_kb" => o.load_kb = v,
                "hwm_kb" => o.hwm_kb = v,
                "t_start" => o.t_start = v,
                "t_done" => o.t_done = v,
                "ext_maxrss_kb" => o.ext_maxrss_kb = v,
                "ext_cpu_us" => o.ext_cpu_us = v,
                "writes" => o.writes = v,
                "wakeups" => o.wakeups = v,
                "bytes_out" => o.bytes_out = v,
                "aliased" => o.aliased = v,
                _ => {}
            }
        }
        Some(o)
    }
}

/// (VmRSS, VmHWM) of this process in KiB.
pub fn rss_kb() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Paces a run at a fixed rate (messages due by now are sent; otherwise sleep until the next is due).
struct Pacer {
    period: u64,
    next: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            period: 1_000_000_000u64.checked_div(rate).unwrap_or(0),
            next: now_ns(),
        }
    }
    /// Block until the next message is due.
    fn wait(&mut self) {
        if self.period == 0 {
            return;
        }
        let now = now_ns();
        if self.next > now + 20_000 {
            std::thread::sleep(Duration::from_nanos(self.next - now));
        }
        self.next += self.period;
    }
}

fn stamp(payload: &mut [u8], on: bool) {
    if on {
        payload[..8].copy_from_slice(&now_ns().to_le_bytes());
    }
}

fn idle(job: &Job, o: &mut Outcome) {
    std::thread::sleep(Duration::from_millis(job.idle_ms));
    o.idle_kb = rss_kb().0;
}

fn finish(o: &mut Outcome) {
    let (rss, hwm) = rss_kb();
    o.load_kb = rss;
    o.hwm_kb = hwm;
}

pub fn run(job: &Job) -> Result<Outcome, String> {
    let mut o = Outcome {
        base_kb: rss_kb().0,
        ..Outcome::default()
    };
    match job.contender.as_str() {
        "qmqtt" | "qmqtt-lean" | "qmqtt-v5" | "qmqtt-v5-noalias" => qmqtt(job, &mut o)?,
        "paho" | "paho-v5" => paho(job, &mut o)?,
        "rumqttc" => rumqttc(job, &mut o)?,
        "rumqttc-v5" => rumqttc_v5(job, &mut o)?,
        "raw" => raw(job, &mut o)?,
        "mosquitto_pub" | "mosquitto_pub-v5" => external(job, &mut o)?,
        "qmqtt-cli" | "qmqtt-cli-v5" | "q" | "q-batch" => external(job, &mut o)?,
        c => {
            return Err(format!(
                "unknown contender '{c}' (known: {})",
                ALL.join(", ")
            ))
        }
    }
    Ok(o)
}

fn deadline(job: &Job) -> Instant {
    Instant::now() + Duration::from_secs(120 + job.count / 2000)
}

// ---------------------------------------------------------------------------------------------------------
// qmqtt: the engine's Rust API, one `publish` call per message (as the q layer does).

fn qmqtt(job: &Job, o: &mut Outcome) -> Result<(), String> {
    use qmqtt::{Client, Config, Event, PublishError, QoS};
    let mut cfg = Config::new(format!("ssl://localhost:{}", job.port), job.id.clone());
    cfg.tls.ca_file = Some(job.ca.clone());
    cfg.max_inflight = 100;
    cfg.reconnect = false;
    // Tuning experiments without a rebuild: QMQTT_BENCH_LINGER_US sets Config::linger,
    // QMQTT_BENCH_ACK_INTERVAL_US Config::ack_interval.
    let env_us = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros)
    };
    if let Some(d) = env_us("QMQTT_BENCH_LINGER_US") {
        cfg.linger = d;
    }
    if let Some(d) = env_us("QMQTT_BENCH_ACK_INTERVAL_US") {
        cfg.ack_interval = d;
    }
    if job.contender == "qmqtt-lean" {
        // A gateway-sized configuration: 256 KiB publish queue, 64 KiB event queue.
        cfg.queue_bytes = 256 << 10;
        cfg.event_queue_bytes = 64 << 10;
    }
    if v311_form(&job.contender).is_some() {
        cfg.protocol = qmqtt::codec::Protocol::V5;
        if job.contender == "qmqtt-v5-noalias" {
            cfg.mqtt5.topic_aliases = 0;
        }
    }
    let qos = match job.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let mut c = Client::connect(cfg).map_err(|e| format!("qmqtt connect: {e}"))?;
    c.wait_connected(Duration::from_secs(10))
        .map_err(|e| format!("qmqtt connect: {e}"))?;
    idle(job, o);
    let mut payload = vec![b'x'; job.size];
    let mut delivered = 0u64;
    let mut drain = |c: &Client| {
        c.poll_events(usize::MAX, &mut |ev| {
            if let Event::Delivered { .. } = ev {
                delivered += 1
            }
        });
    };
    let end = deadline(job);
    let mut pacer = Pacer::new(job.rate);
    o.t_start = now_ns();
    for i in 0..job.count {
        pacer.wait();
        stamp(&mut payload, job.stamp);
        loop {
            match c.publish(&job.topic, &payload, qos, false) {
                Ok(_) => break,
                Err(PublishError::QueueFull) => {
                    // Block until the queue has drained to half (paho's producer blocks on a token,
                    // rumqttc's on its channel; none of them spins).
                    drain(&c);
                    match c.wait_for_room(Duration::from_secs(1)) {
                        Ok(()) | Err(PublishError::QueueFull) => {}
                        Err(e) => return Err(format!("qmqtt publish: {e}")),
                    }
                    if Instant::now() > end {
                        return Err("qmqtt: publish queue stayed full".into());
                    }
                }
                Err(e) => return Err(format!("qmqtt publish: {e}")),
            }
        }
        if i % 512 == 511 {
            drain(&c);
        }
    }
    loop {
        drain(&c);
        let s = c.stats();
        let done = if job.qos == 0 { s.sent } else { s.acked };
        if done >= job.count {
            break;
        }
        if Instant::now() > end {
            return Err(format!(
                "qmqtt: only {done} of {} done (stats {s:?})",
                job.count
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    o.t_done = now_ns();
    finish(o);
    let s = c.stats();
    (o.writes, o.wakeups, o.bytes_out, o.aliased) =
        (s.socket_writes, s.wakeups, s.bytes_out, s.topic_aliased);
    c.disconnect(Duration::from_secs(30));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// paho-mqtt: the async client (paho C underneath), in-flight window 100, tokens collected and awaited;
// paho-v5: the same over MQTT 5 (created and connected with MQTT_VERSION_5, clean start).

fn paho(job: &Job, o: &mut Outcome) -> Result<(), String> {
    use paho_mqtt as mqtt;
    let e = |e: mqtt::Error| format!("paho: {e}");
    let v5 = v311_form(&job.contender).is_some();
    let mut create = mqtt::CreateOptionsBuilder::new();
    if v5 {
        create = create.mqtt_version(mqtt::MQTT_VERSION_5);
    }
    let cli = create
        .server_uri(format!("ssl://localhost:{}", job.port))
        .client_id(&job.id)
        .persistence(None)
        // paho C refuses new publishes beyond this many queued commands ("Max buffered messages"), even
        // while connected; the token bound below keeps us under it.
        .max_buffered_messages(20_000)
        .create_client()
        .map_err(e)?;
    let ssl = mqtt::SslOptionsBuilder::new()
        .trust_store(&job.ca)
        .map_err(e)?
        .finalize();
    let mut conn = if v5 {
        let mut b = mqtt::ConnectOptionsBuilder::new_v5();
        b.clean_start(true);
        b
    } else {
        let mut b = mqtt::ConnectOptionsBuilder::new();
        b.clean_session(true);
        b
    };
    let conn = conn
        .ssl_options(ssl)
        .keep_alive_interval(Duration::from_secs(60))
        .max_inflight(100)
        .finalize();
    cli.connect(conn).wait().map_err(e)?;
    idle(job, o);
    let mut payload = vec![b'x'; job.size];
    let mut tokens = VecDeque::with_capacity(10_000);
    let mut pacer = Pacer::new(job.rate);
    o.t_start = now_ns();
    for _ in 0..job.count {
        pacer.wait();
        stamp(&mut payload, job.stamp);
        let msg = mqtt::Message::new(job.topic.as_str(), payload.as_slice(), job.qos as i32);
        tokens.push_back(cli.publish(msg));
        while tokens.len() >= 10_000 {
            if let Some(t) = tokens.pop_front() {
                t.wait().map_err(e)?;
            }
        }
    }
    for t in tokens.drain(..) {
        t.wait().map_err(e)?;
    }
    o.t_done = now_ns();
    finish(o);
    cli.disconnect(None).wait().map_err(e)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// rumqttc: AsyncClient + EventLoop on a current-thread tokio runtime, in-flight 100, rustls (ring);
// rumqttc-v5: the same with its MQTT 5 client.

pub fn rustls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One rumqttc run on a current-thread tokio runtime, for its MQTT 3.1.1 client (`rumqttc`) and its MQTT 5
/// client (`rumqttc::v5`): the same API over distinct types, so a macro rather than a generic. `client` and
/// `qos` name the modules, the block sets the options that differ between the two (`opts` is in scope).
macro_rules! rumqttc_run {
    ($job:expr, $o:expr, client = $($m:ident)::+, qos = $($q:ident)::+, |$opts:ident| $set:block) => {{
        use $($m)::+::{AsyncClient, ConnectionError, Event, Incoming, MqttOptions};
        use $($q)::+::QoS;
        use rumqttc::{Outgoing, TlsConfiguration, Transport};
        let (job, o): (&Job, &mut Outcome) = ($job, $o);
        let tls = rustls_config(&job.ca)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        rt.block_on(async {
            let mut $opts = MqttOptions::new(job.id.clone(), "localhost", job.port);
            $opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
            $opts.set_keep_alive(Duration::from_secs(60));
            $set
            let (client, mut ev) = AsyncClient::new($opts, 1000);
            let e = |e: ConnectionError| format!("{}: {e}", job.contender);
            loop {
                if let Event::Incoming(Incoming::ConnAck(_)) = ev.poll().await.map_err(e)? {
                    break;
                }
            }
            idle(job, o);
            let qos = if job.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let (topic, count, size, rate, stamp_on) =
                (job.topic.clone(), job.count, job.size, job.rate, job.stamp);
            o.t_start = now_ns();
            let publisher = tokio::spawn(async move {
                let mut payload = vec![b'x'; size];
                let period = 1_000_000_000u64.checked_div(rate).unwrap_or(0);
                let mut next = now_ns();
                for _ in 0..count {
                    if period > 0 {
                        let now = now_ns();
                        if next > now + 20_000 {
                            tokio::time::sleep(Duration::from_nanos(next - now)).await;
                        }
                        next += period;
                    }
                    stamp(&mut payload, stamp_on);
                    if client
                        .publish(topic.as_str(), qos, false, payload.clone())
                        .await
                        .is_err()
                    {
                        return client;
                    }
                }
                client
            });
            let mut done = 0u64;
            while done < job.count {
                match ev.poll().await.map_err(e)? {
                    Event::Outgoing(Outgoing::Publish(_)) if job.qos == 0 => done += 1,
                    Event::Incoming(Incoming::PubAck(_)) if job.qos == 1 => done += 1,
                    _ => {}
                }
            }
            o.t_done = now_ns();
            finish(o);
            let client = publisher
                .await
                .map_err(|e| format!("{} publisher: {e}", job.contender))?;
            let _ = client.disconnect().await;
            loop {
                match ev.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            Ok::<(), String>(())
        })
    }};
}

fn rumqttc(job: &Job, o: &mut Outcome) -> Result<(), String> {
    rumqttc_run!(job, o, client = rumqttc, qos = rumqttc, |opts| {
        opts.set_inflight(100);
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
    })
}

/// rumqttc-v5: its MQTT 5 client, in-flight at most 100 (lower if the broker's Receive Maximum says so),
/// clean start; no topic aliases (rumqttc uses one only when the caller puts it in the PUBLISH's properties).
fn rumqttc_v5(job: &Job, o: &mut Outcome) -> Result<(), String> {
    rumqttc_run!(
        job,
        o,
        client = rumqttc::v5,
        qos = rumqttc::v5::mqttbytes,
        |opts| {
            opts.set_outgoing_inflight_upper_limit(100);
            opts.set_clean_start(true);
            opts.set_max_packet_size(Some(1 << 20));
        }
    )
}

// ---------------------------------------------------------------------------------------------------------
// raw blast: pre-encoded PUBLISH packets over one rustls (ring) connection, blocking socket, records of up
// to 16 KiB. QoS 1 keeps a window of 100 and reads PUBACKs whenever the window is full.

fn raw(job: &Job, o: &mut Outcome) -> Result<(), String> {
    let cfg = rustls_config(&job.ca)?;
    let name = rustls_pki_types::ServerName::try_from("localhost")
        .map_err(|e| e.to_string())?
        .to_owned();
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| format!("raw: {e}"))?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", job.port))
        .map_err(|e| format!("raw: connect: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(&connect_packet(&job.id))
        .map_err(|e| format!("raw: CONNECT: {e}"))?;
    tls.flush().map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack)
        .map_err(|e| format!("raw: CONNACK: {e}"))?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(format!("raw: CONNACK refused: {connack:?}"));
    }
    idle(job, o);
    let payload = vec![b'x'; job.size];
    let (template, pid_at, payload_at) = publish_packet(&job.topic, &payload, job.qos);
    // Up to 64 KiB of plaintext per write: rustls cuts it into 16 KiB records and writes them in one go.
    let per_batch = (64 * 1024 / template.len()).max(1);
    let mut batch = Vec::with_capacity(template.len() * per_batch);
    let mut acks = vec![0u8; 64 * 1024];
    let mut ack_have = 0usize;
    let mut inflight = 0u64;
    let mut sent = 0u64;
    let mut pid: u16 = 0;
    let mut pacer = Pacer::new(job.rate);
    o.t_start = now_ns();
    while sent < job.count || inflight > 0 {
        while sent < job.count && batch.len() / template.len() < per_batch && inflight < 100 {
            pacer.wait();
            let at = batch.len();
            batch.extend_from_slice(&template);
            if job.qos > 0 {
                pid = if pid == u16::MAX { 1 } else { pid + 1 };
                batch[at + pid_at..at + pid_at + 2].copy_from_slice(&pid.to_be_bytes());
                inflight += 1;
            }
            if job.stamp {
                stamp(&mut batch[at + payload_at..], true);
            }
            sent += 1;
            if job.rate > 0 {
                break;
            }
        }
        if !batch.is_empty() {
            raw_write(&mut tls, &batch)?;
            batch.clear();
        }
        if job.qos > 0 && (inflight >= 100 || (sent == job.count && inflight > 0)) {
            // Window full (or draining at the end): read whatever acknowledgements are there.
            let n = tls
                .read(&mut acks[ack_have..])
                .map_err(|e| format!("raw: read: {e}"))?;
            if n == 0 {
                return Err("raw: broker closed the connection".into());
            }
            ack_have += n;
            let mut at = 0;
            while let Some((first, len, hl)) = fixed_header(&acks[at..ack_have]) {
                if ack_have - at < hl + len {
                    break;
                }
                if first == 0x40 {
                    inflight -= 1;
                }
                at += hl + len;
            }
            acks.copy_within(at..ack_have, 0);
            ack_have -= at;
        }
    }
    o.t_done = now_ns();
    finish(o);
    let _ = tls.write_all(&[0xe0, 0]);
    let _ = tls.flush();
    Ok(())
}

/// Hand plaintext to rustls and push every resulting TLS record to the socket.
fn raw_write(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: &[u8],
) -> Result<(), String> {
    let mut buf = buf;
    while !buf.is_empty() {
        let n = tls
            .conn
            .writer()
            .write(buf)
            .map_err(|e| format!("raw: {e}"))?;
        buf = &buf[n..];
        while tls.conn.wants_write() {
            tls.conn
                .write_tls(&mut tls.sock)
                .map_err(|e| format!("raw: write: {e}"))?;
        }
    }
    Ok(())
}

/// The environment variable holding the command of a q-layer contender (`q`, `q-batch`), if it is one.
pub fn q_bench_var(contender: &str) -> Option<&'static str> {
    match contender {
        "q" => Some("QMQTT_Q_BENCH"),
        "q-batch" => Some("QMQTT_Q_BATCH_BENCH"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// External publishers: mosquitto_pub -l (stdin lines) and `qmqtt pub --repeat N --size S` (the -v5 forms
// with `-V mqttv5`), run as a child of this process; their peak RSS and CPU come from wait4's rusage.

fn external(job: &Job, o: &mut Outcome) -> Result<(), String> {
    let port = job.port.to_string();
    let qos = job.qos.to_string();
    let mut cmd;
    let lines = job.contender.starts_with("mosquitto_pub");
    let uri = format!("ssl://localhost:{port}");
    if lines {
        cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "localhost", "-p", &port, "--cafile"])
            .arg(&job.ca)
            .args([
                "-t", &job.topic, "-q", &qos, "-i", &job.id, "-M", "100", "-l",
            ]);
    } else if let Some(var) = q_bench_var(&job.contender) {
        // The q layer's hook: a command (e.g. the libe host harness running a q publisher) given in
        // QMQTT_Q_BENCH (q: one `.mqtt.pub` per message) or QMQTT_Q_BATCH_BENCH (q-batch: `.mqtt.pubbatch`),
        // called with these options; it publishes `--count` messages and exits when they are out (QoS 0) or
        // acknowledged (QoS 1). It may print its own `RESULT t_start=NS t_done=NS` (CLOCK_MONOTONIC) to
        // exclude its start-up; otherwise process start and exit are the clock. benches/run sets both to
        // tests/qhost/qbench when the host harness can be built. The command is split at white space.
        let spec = std::env::var(var).map_err(|_| format!("{} needs {var}", job.contender))?;
        let mut words = spec.split_whitespace();
        cmd = Command::new(words.next().ok_or(format!("{var} is empty"))?);
        cmd.args(words)
            .args(["--uri", &uri, "--cafile"])
            .arg(&job.ca)
            .args(["--topic", &job.topic, "--qos", &qos, "--id", &job.id])
            .args(["--count", &job.count.to_string(), "--size"])
            .arg(job.size.to_string());
    } else {
        let bin = job
            .qmqtt_bin
            .as_ref()
            .ok_or("qmqtt-cli needs the qmqtt binary (cargo build --release --bin qmqtt)")?;
        cmd = Command::new(bin);
        // Flags as mosquitto_pub (TLS is on with --cafile).
        cmd.args(["pub", "-h", "localhost", "-p", &port, "--cafile"])
            .arg(&job.ca)
            .args(["-t", &job.topic, "-q", &qos, "-i", &job.id])
            .args(["--repeat", &job.count.to_string(), "--size"])
            .arg(job.size.to_string());
    }
    if v311_form(&job.contender).is_some() {
        cmd.args(["-V", "mqttv5"]);
    }
    cmd.stdin(if lines { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = if lines {
        let mut line = vec![b'x'; job.size];
        line.push(b'\n');
        line.repeat(job.count as usize)
    } else {
        Vec::new()
    };
    o.t_start = now_ns();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let writer = child.stdin.take().map(|mut stdin| {
        std::thread::spawn(move || {
            // Give mosquitto_pub its TLS handshake before the clock matters, then feed every line.
            std::thread::sleep(Duration::from_millis(300));
            let t = now_ns();
            let _ = stdin.write_all(&input);
            t
        })
    });
    let stdout = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        })
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let (status, ru) = crate::wait_rusage(child.id(), deadline(job))?;
    o.t_done = now_ns();
    let own = stdout
        .and_then(|t| t.join().ok())
        .and_then(|t| Outcome::parse(&t));
    if let Some(own) = own.filter(|r| r.t_start > 0 && r.t_done > 0) {
        o.t_start = own.t_start;
        o.t_done = own.t_done;
    }
    if let Some(w) = writer {
        o.t_start = w.join().map_err(|_| "stdin writer panicked")?;
    }
    o.ext_maxrss_kb = ru.maxrss_kb;
    o.ext_cpu_us = ru.cpu_us;
    if status != 0 {
        return Err(format!(
            "{} exited with status {status}: {}",
            job.contender,
            err.trim()
        ));
    }
    finish(o);
    Ok(())
}
