//! Store-and-forward spool throughput: messages per second into the disk spool (append) and out of it
//! (read + acknowledge), and bytes written per message, for each sync policy — with a ratio against the
//! ceiling of the same disk: the same bytes written sequentially with plain `write(2)` calls of the same size.
//!
//! `cargo bench --bench spool -- [--quick] [--dir DIR] [--md FILE] [--json FILE]` (benches/run calls it).
//! The spool directory defaults to target/bench/spool-tmp (a real disk, not tmpfs, so the numbers mean
//! something for an SD card's behaviour in shape if not in size).
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qmqtt::spool::{Msg, Spool, SpoolConfig, SyncPolicy};
use qmqtt::QoS;

const TOPIC: &str = "gw/telemetry/t";

struct Row {
    policy: &'static str,
    payload: usize,
    append_mps: f64,
    read_ack_mps: f64,
    bytes_per_msg: f64,
    raw_mps: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let base = PathBuf::from(opt("--dir").unwrap_or_else(|| "target/bench/spool-tmp".into()));
    let n: u64 = if quick { 20_000 } else { 300_000 };
    let mut rows = Vec::new();
    for payload in [64usize, 1024] {
        for (policy, sync) in [
            ("never", SyncPolicy::Never),
            ("interval 1 s", SyncPolicy::Interval(Duration::from_secs(1))),
            ("every batch", SyncPolicy::EveryBatch),
        ] {
            // fsync per batch is slow on real disks: fewer messages keep the run short.
            let n = if matches!(sync, SyncPolicy::EveryBatch) {
                n / 10
            } else {
                n
            };
            rows.push(measure(&base, policy, sync, payload, n));
        }
    }
    let _ = std::fs::remove_dir_all(&base);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "| sync policy | payload | append msg/s | read+ack msg/s | bytes written / msg | append × raw write |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let mut json = String::from("[");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} B | {:.0}k | {:.0}k | {:.1} | {:.2}× |",
            r.policy,
            r.payload,
            r.append_mps / 1e3,
            r.read_ack_mps / 1e3,
            r.bytes_per_msg,
            r.append_mps / r.raw_mps
        );
        let _ = write!(
            json,
            "{}{{\"policy\":\"{}\",\"payload\":{},\"append_msgs_per_s\":{:.0},\"read_ack_msgs_per_s\":{:.0},\
             \"bytes_written_per_msg\":{:.2},\"raw_write_msgs_per_s\":{:.0}}}",
            if i == 0 { "" } else { "," },
            r.policy,
            r.payload,
            r.append_mps,
            r.read_ack_mps,
            r.bytes_per_msg,
            r.raw_mps
        );
    }
    json.push(']');
    print!("{md}");
    if let Some(f) = opt("--md") {
        std::fs::write(f, &md).expect("write --md");
    }
    if let Some(f) = opt("--json") {
        std::fs::write(f, &json).expect("write --json");
    }
}

fn measure(
    base: &std::path::Path,
    policy: &'static str,
    sync: SyncPolicy,
    payload: usize,
    n: u64,
) -> Row {
    let dir = base.join(format!("{}-{payload}", policy.replace(' ', "-")));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = SpoolConfig::new(&dir);
    cfg.sync = sync;
    cfg.budget_bytes = 1 << 30;
    let mut sp = Spool::open(cfg).expect("open spool");
    let body = vec![b'x'; payload];
    // Batches as the driver makes them: up to 64 KiB.
    let per_batch = ((64 << 10) / (payload + TOPIC.len() + 40)).max(1) as u64;

    let t0 = Instant::now();
    let mut done = 0u64;
    while done < n {
        let k = per_batch.min(n - done);
        sp.append_batch((0..k).map(|i| Msg {
            topic: TOPIC,
            payload: &body,
            qos: QoS::AtLeastOnce,
            retain: false,
            tag: done + i,
        }))
        .expect("append");
        done += k;
        let _ = sp.flush(Instant::now()).expect("flush");
    }
    sp.sync().expect("sync");
    let append = t0.elapsed();
    let written = sp.stats().bytes_written;

    let t1 = Instant::now();
    let mut read = 0u64;
    let mut last = 0u64;
    while read < n {
        let got = sp
            .read_batch(per_batch as usize, 64 << 10, |r| last = r.seq)
            .expect("read");
        assert!(got > 0, "spool ran dry at {read} of {n}");
        read += got as u64;
        sp.ack(last).expect("ack");
        let _ = sp.flush(Instant::now()).expect("flush");
    }
    let read_ack = t1.elapsed();
    drop(sp);
    let _ = std::fs::remove_dir_all(&dir);

    // The disk's ceiling for the same bytes in the same write sizes.
    std::fs::create_dir_all(&dir).unwrap();
    let rec = written / n;
    let chunk = vec![b'r'; (rec * per_batch) as usize];
    let mut f = std::fs::File::create(dir.join("raw")).unwrap();
    let t2 = Instant::now();
    let mut w = 0u64;
    while w < n {
        f.write_all(&chunk).unwrap();
        if matches!(sync, SyncPolicy::EveryBatch) {
            f.sync_data().unwrap();
        }
        w += per_batch;
    }
    f.sync_data().unwrap();
    let raw = t2.elapsed();
    let _ = std::fs::remove_dir_all(&dir);

    Row {
        policy,
        payload,
        append_mps: n as f64 / append.as_secs_f64(),
        read_ack_mps: n as f64 / read_ack.as_secs_f64(),
        bytes_per_msg: written as f64 / n as f64,
        raw_mps: w as f64 / raw.as_secs_f64(),
    }
}
