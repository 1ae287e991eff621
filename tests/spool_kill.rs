//! kill -9 in the middle of appending: a child process (this test binary re-executed) appends numbered
//! records in a loop and is SIGKILLed at a random moment; the spool is reopened and must hold every record
//! up to at least the last batch the child reported complete, with contiguous sequence numbers and intact
//! contents. Several rounds, acknowledging part of the backlog in between (as a restarted gateway would).
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qmqtt::spool::{Msg, Spool, SpoolConfig};
use qmqtt::QoS;

const ENV: &str = "QMQTT_SPOOL_KILL_CHILD_DIR";
const BATCH: u64 = 200;

fn cfg(dir: &Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.segment_bytes = 64 << 10;
    c.budget_bytes = 1 << 30;
    c
}

fn payload(seq: u64, out: &mut [u8; 64]) {
    out[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in out[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(7).wrapping_add(i as u8);
    }
}

/// The child: appends batches of numbered records forever, reporting each completed batch on stdout.
#[test]
fn kill9_child_writer() {
    let Some(dir) = std::env::var_os(ENV) else {
        return; // only as the child of kill9_mid_append_recovers_every_complete_batch
    };
    let mut sp = Spool::open(cfg(Path::new(&dir))).expect("child opens the spool");
    let mut topics: Vec<String> = Vec::new();
    let mut pays = vec![[0u8; 64]; BATCH as usize];
    loop {
        let first = sp.next_seq();
        topics.clear();
        for i in 0..BATCH {
            topics.push(format!("k/{}", first + i));
            payload(first + i, &mut pays[i as usize]);
        }
        let a = sp
            .append_batch((0..BATCH as usize).map(|i| Msg {
                topic: &topics[i],
                payload: &pays[i],
                qos: QoS::AtLeastOnce,
                retain: false,
                tag: first + i as u64,
            }))
            .expect("append");
        assert_eq!(a.first_seq, first);
        let _ = sp.flush(std::time::Instant::now());
        println!("appended {}", a.last_seq);
    }
}

#[test]
fn kill9_mid_append_recovers_every_complete_batch() {
    let td = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = 0u64;
    let mut seed = 0x1234_5678_9abc_def0u64;
    for round in 0..8 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill9_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV, td.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reported = Arc::new(AtomicU64::new(0));
        let out = child.stdout.take().unwrap();
        let rep = reported.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("appended ").and_then(|n| n.parse().ok()) {
                    rep.store(n, Ordering::SeqCst);
                }
            }
        });
        // Let it write a while (at least one batch), then kill at a pseudo-random moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while reported.load(Ordering::SeqCst) <= acked {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the writer exited before its first batch: {st}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the writer reported no batch in 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 60_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let reported = reported.load(Ordering::SeqCst);

        let mut sp = Spool::open(cfg(td.path())).expect("reopen after kill -9");
        let mut next = acked + 1;
        let mut bad = 0;
        let mut expect_pay = [0u8; 64];
        loop {
            let n = sp
                .read_batch(1000, 1 << 20, |r| {
                    payload(r.seq, &mut expect_pay);
                    if r.seq != next
                        || r.tag != r.seq
                        || r.payload != expect_pay
                        || r.topic != format!("k/{}", r.seq)
                    {
                        bad += 1;
                    }
                    next = r.seq + 1;
                })
                .unwrap();
            if n == 0 {
                break;
            }
        }
        let st = sp.stats();
        let last = next - 1;
        println!(
            "round {round}: child reported {reported}, recovered up to {last} (torn tail cut: {} bytes)",
            st.truncated_bytes
        );
        assert_eq!(bad, 0, "round {round}: records out of sequence or damaged");
        assert!(
            last >= reported,
            "round {round}: lost records: reported {reported}, recovered {last}"
        );
        assert_eq!(st.corrupt_records_skipped, 0);
        assert_eq!(st.next_seq, last + 1);
        // Acknowledge about half of the backlog, then let the next child go on.
        acked = acked + (last - acked) / 2;
        sp.ack(acked).unwrap();
        sp.close().unwrap();
    }
}
