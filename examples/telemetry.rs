//! Publish sensor telemetry from plain Rust with qmqtt's client — no q needed.
//!
//! ```text
//! cargo run --release --example telemetry -- [URI] [MESSAGES_PER_SEC] [SECONDS] [QOS] [CA_FILE]
//! cargo run --release --example telemetry -- tcp://127.0.0.1:1883 1000 10 1
//! cargo run --release --example telemetry -- ssl://broker.local:8883 100 60 1 /etc/ssl/my-ca.pem
//! ```
//!
//! The loop only copies readings into the client's bounded queue (`publish` never waits on the network); the
//! client's I/O thread batches, sends, retries and reconnects. Events (acknowledgements, connection changes)
//! are drained from the event queue between readings, as a real gateway loop would. At the end it prints
//! the client's counters and the measured cost of a `publish` call.
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Config, Event, PublishError};
use qmqtt::QoS;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let uri = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "tcp://127.0.0.1:1883".into());
    let rate: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let qos = args
        .get(4)
        .and_then(|s| s.parse().ok())
        .and_then(QoS::from_u8)
        .unwrap_or(QoS::AtLeastOnce);

    let mut cfg = Config::new(uri.clone(), format!("telemetry-{}", std::process::id()));
    cfg.keep_alive = Duration::from_secs(30);
    cfg.connect_timeout = Duration::from_secs(10);
    if let Some(ca) = args.get(5) {
        cfg.tls.ca_file = Some(ca.into());
    }
    let mut client = match Client::connect(cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telemetry: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = client.wait_connected(Duration::from_secs(10)) {
        eprintln!("telemetry: cannot connect to {uri}: {e}");
        std::process::exit(1);
    }
    println!("connected to {uri}; publishing {rate}/s for {secs}s at {qos:?}");

    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut next = start;
    let mut payload = String::with_capacity(128);
    let (mut sent, mut full, mut acked, mut publish_time) = (0u64, 0u64, 0u64, Duration::ZERO);
    let mut seq = 0u64;
    while Instant::now() < end {
        // One reading per sensor; the payload is built into a reused buffer.
        for sensor in 0..4 {
            payload.clear();
            use std::fmt::Write;
            let t = start.elapsed().as_millis();
            let _ = write!(
                payload,
                r#"{{"seq":{seq},"sensor":{sensor},"t_ms":{t},"temp":{:.2}}}"#,
                20.0 + (seq % 100) as f64 / 10.0
            );
            let topic = match sensor {
                0 => "site/gw1/temp/0",
                1 => "site/gw1/temp/1",
                2 => "site/gw1/temp/2",
                _ => "site/gw1/temp/3",
            };
            let t0 = Instant::now();
            match client.publish(topic, payload.as_bytes(), qos, false) {
                Ok(_) => sent += 1,
                Err(PublishError::QueueFull) => full += 1,
                Err(e) => {
                    eprintln!("telemetry: publish refused: {e}");
                    break;
                }
            }
            publish_time += t0.elapsed();
            seq += 1;
        }
        client.poll_events(1000, &mut |e| match e {
            Event::Delivered { .. } => acked += 1,
            Event::ConnectionLost { cause } => eprintln!("telemetry: connection lost: {cause}"),
            Event::Reconnecting { delay, attempt } => {
                eprintln!("telemetry: reconnect attempt {attempt} in {delay:?}")
            }
            Event::Connected { .. } => eprintln!("telemetry: connected"),
            _ => {}
        });
        next += period * 4;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    client.disconnect(Duration::from_secs(10));
    client.poll_events(usize::MAX, &mut |e| {
        if let Event::Delivered { .. } = e {
            acked += 1
        }
    });
    let st = client.stats();
    println!(
        "published {sent} (queue full {full}), acknowledged {acked}; publish call: {:?} average",
        publish_time / sent.max(1) as u32
    );
    println!("stats: {st:?}");
}
