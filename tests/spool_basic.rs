//! Spool behaviour: round trip, order, acknowledgement and segment deletion, restart recovery, the lock,
//! budget policies, errors, and bytes written per message.
use std::path::Path;
use std::time::{Duration, Instant};

use qmqtt::spool::{Msg, Spool, SpoolConfig, SpoolError, SpoolFull, SyncPolicy};
use qmqtt::QoS;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    seq: u64,
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
    tag: u64,
}

fn read_all(sp: &mut Spool) -> Vec<Got> {
    let mut v = Vec::new();
    loop {
        let n = sp
            .read_batch(7, 1 << 20, |r| {
                v.push(Got {
                    seq: r.seq,
                    topic: r.topic.to_string(),
                    payload: r.payload.to_vec(),
                    qos: r.qos,
                    retain: r.retain,
                    tag: r.tag,
                })
            })
            .expect("read");
        if n == 0 {
            return v;
        }
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

fn append_n(sp: &mut Spool, from: u64, n: u64, per_batch: u64, len: usize) {
    let mut i = from;
    while i < from + n {
        let k = per_batch.min(from + n - i);
        let topics: Vec<String> = (i..i + k).map(|j| format!("gw/{j}")).collect();
        let pays: Vec<Vec<u8>> = (i..i + k).map(|j| payload(j, len)).collect();
        let a = sp
            .append_batch((0..k as usize).map(|x| Msg {
                topic: &topics[x],
                payload: &pays[x],
                qos: QoS::AtLeastOnce,
                retain: false,
                tag: i + x as u64,
            }))
            .expect("append");
        assert_eq!(a.count, k);
        i += k;
    }
}

fn seg_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    v.sort();
    v
}

fn cfg(dir: &Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.sync = SyncPolicy::Never;
    c
}

#[test]
fn round_trip_in_order_with_all_fields() {
    let d = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(cfg(d.path())).unwrap();
    let msgs = [
        ("a", &b""[..], QoS::AtMostOnce, false, 10),
        ("a/b/c", &b"hello"[..], QoS::AtLeastOnce, true, 11),
        (
            "ü/topic",
            &[0u8, 255, 7][..],
            QoS::ExactlyOnce,
            false,
            u64::MAX,
        ),
    ];
    let a = sp
        .append_batch(msgs.iter().map(|m| Msg {
            topic: m.0,
            payload: m.1,
            qos: m.2,
            retain: m.3,
            tag: m.4,
        }))
        .unwrap();
    assert_eq!((a.count, a.first_seq, a.last_seq, a.dropped), (3, 1, 3, 0));
    append_n(&mut sp, 4, 100, 9, 64);
    let got = read_all(&mut sp);
    assert_eq!(got.len(), 103);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(got[i].seq, i as u64 + 1);
        assert_eq!(
            (
                got[i].topic.as_str(),
                &got[i].payload[..],
                got[i].qos,
                got[i].retain,
                got[i].tag
            ),
            *m
        );
    }
    for g in &got[3..] {
        assert_eq!(g.topic, format!("gw/{}", g.seq));
        assert_eq!(g.payload, payload(g.seq, 64));
        assert_eq!(g.tag, g.seq);
    }
    // Reading does not consume: nothing more to read, but all still held.
    assert!(read_all(&mut sp).is_empty());
    let st = sp.stats();
    assert_eq!((st.spooled_msgs, st.appended, st.next_seq), (103, 103, 104));
    // Rewind re-reads from the oldest unacknowledged.
    sp.ack(50).unwrap();
    sp.rewind();
    let again = read_all(&mut sp);
    assert_eq!(again.first().unwrap().seq, 51);
    assert_eq!(again.len(), 53);
    // max_bytes bounds a batch (at least one record always).
    sp.rewind();
    let mut n = 0;
    sp.read_batch(100, 150, |_| n += 1).unwrap();
    assert_eq!(n, 2, "two records of 64 + ~5 bytes fit in 150");
}

#[test]
fn ack_deletes_finished_segments_and_restart_resumes() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.segment_bytes = 1024;
    let mut sp = Spool::open(c.clone()).unwrap();
    append_n(&mut sp, 1, 200, 5, 64);
    let segs = seg_files(d.path());
    assert!(segs.len() > 20, "{segs:?}");
    assert_eq!(segs[0], "seg-0000000000000001.log");
    let got = read_all(&mut sp);
    assert_eq!(
        got.iter().map(|g| g.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    sp.ack(57).unwrap();
    let after = seg_files(d.path());
    // Every remaining segment holds something unacknowledged: the first starts at or before 58 and the
    // next after it.
    let firsts: Vec<u64> = after
        .iter()
        .map(|n| u64::from_str_radix(&n[4..20], 16).unwrap())
        .collect();
    assert!(firsts[0] <= 58 && firsts[1] > 58, "{firsts:?}");
    assert_eq!(sp.stats().spooled_msgs, 143);
    assert!(matches!(
        sp.ack(500),
        Err(SpoolError::AckBeyondEnd {
            seq: 500,
            last: 200
        })
    ));
    drop(sp); // writes `acked`

    // Restart: reading resumes at 58.
    let mut sp = Spool::open(c.clone()).unwrap();
    assert_eq!(sp.stats().spooled_msgs, 143);
    let got = read_all(&mut sp);
    assert_eq!(
        got.iter().map(|g| g.seq).collect::<Vec<_>>(),
        (58..=200).collect::<Vec<_>>()
    );
    // New appends continue the sequence.
    append_n(&mut sp, 201, 10, 5, 64);
    let got = read_all(&mut sp);
    assert_eq!(
        got.iter().map(|g| g.seq).collect::<Vec<_>>(),
        (201..=210).collect::<Vec<_>>()
    );
    sp.ack(210).unwrap();
    assert!(
        seg_files(d.path()).is_empty(),
        "all acknowledged: no segments left"
    );
    assert_eq!(sp.stats().spooled_msgs, 0);
    drop(sp);
    let mut sp = Spool::open(c).unwrap();
    assert!(read_all(&mut sp).is_empty());
    let a = sp
        .append_batch([Msg {
            topic: "t",
            payload: b"x",
            qos: QoS::AtMostOnce,
            retain: false,
            tag: 0,
        }])
        .unwrap();
    assert_eq!(
        a.first_seq, 211,
        "sequence numbers never go back below the acknowledged position"
    );
}

#[test]
fn acked_file_is_written_per_interval_not_per_ack() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.ack_interval = Duration::from_secs(10);
    let mut sp = Spool::open(c).unwrap();
    append_n(&mut sp, 1, 100, 10, 8);
    let t0 = Instant::now();
    sp.ack(1).unwrap();
    assert_eq!(sp.flush(t0).unwrap(), None);
    assert_eq!(sp.stats().ack_writes, 1);
    for s in 2..=50 {
        sp.ack(s).unwrap();
        let next = sp.flush(t0 + Duration::from_millis(s)).unwrap();
        assert_eq!(next, Some(t0 + Duration::from_secs(10)));
    }
    assert_eq!(sp.stats().ack_writes, 1);
    assert_eq!(sp.flush(t0 + Duration::from_secs(10)).unwrap(), None);
    assert_eq!(sp.stats().ack_writes, 2);
    let b = std::fs::read(d.path().join("acked")).unwrap();
    assert_eq!(qmqtt::spool::format::decode_ack(&b), Some(50));
}

#[test]
fn second_open_fails_with_a_clear_lock_error() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(cfg(d.path())).unwrap();
    let e = Spool::open(cfg(d.path())).unwrap_err();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&d.path().display().to_string()), "{msg}");
    assert!(msg.contains("another process"), "{msg}");
    drop(sp);
    Spool::open(cfg(d.path())).expect("lock released on drop");
}

/// Dropping a spool unlocks it even while a forked child still shares the lock's open file description (as a
/// process that another thread of the host is starting does between its fork and its exec): a reopen right
/// after succeeds.
#[test]
fn drop_unlocks_while_a_forked_child_shares_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(cfg(d.path())).unwrap();
    // SAFETY: the child only calls async-signal-safe functions (sleep, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::sleep(5);
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed");
    drop(sp);
    let reopened = Spool::open(cfg(d.path()));
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

#[test]
fn drop_oldest_keeps_the_newest_within_budget() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.segment_bytes = 1024;
    c.budget_bytes = 4096;
    let mut sp = Spool::open(c).unwrap();
    append_n(&mut sp, 1, 300, 3, 64);
    let st = sp.stats();
    assert!(st.spooled_bytes <= 4096, "{st:?}");
    assert!(st.dropped_oldest > 0);
    assert_eq!(st.dropped_oldest + st.spooled_msgs, 300, "{st:?}");
    let got = read_all(&mut sp);
    assert_eq!(got.len() as u64, st.spooled_msgs);
    assert_eq!(got.last().unwrap().seq, 300);
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    // Dropping while records are in flight: the reader moves on to what is left.
    sp.rewind();
    let mut first = 0;
    sp.read_batch(1, 1 << 20, |r| first = r.seq).unwrap();
    append_n(&mut sp, 301, 100, 3, 64);
    let got = read_all(&mut sp);
    assert!(got[0].seq > first + 1, "reader skipped dropped records");
    assert_eq!(got.last().unwrap().seq, 400);
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert_eq!(sp.stats().corrupt_records_skipped, 0);
}

#[test]
fn refuse_policy_and_input_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.segment_bytes = 1024;
    c.budget_bytes = 4096;
    c.full = SpoolFull::Refuse;
    let mut sp = Spool::open(c).unwrap();
    let p = [7u8; 64];
    let mut ok = 0u64;
    let e = loop {
        match sp.append_batch((0..3).map(|_| Msg {
            topic: "t/x",
            payload: &p,
            qos: QoS::AtLeastOnce,
            retain: false,
            tag: 0,
        })) {
            Ok(a) => ok += a.count,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, SpoolError::Full { .. }), "{e:?}");
    assert!(e.to_string().contains("budget_bytes"), "{e}");
    let st = sp.stats();
    assert_eq!((st.refused, st.spooled_msgs, st.dropped_oldest), (3, ok, 0));
    // Nothing of the refused batch was written.
    assert_eq!(read_all(&mut sp).len() as u64, ok);
    // Acknowledging frees room.
    sp.ack(ok).unwrap();
    sp.append_batch([Msg {
        topic: "t",
        payload: b"again",
        qos: QoS::AtMostOnce,
        retain: false,
        tag: 0,
    }])
    .unwrap();
    // A batch larger than a segment, a too long topic.
    let big = vec![0u8; 2000];
    let e = sp
        .append_batch([Msg {
            topic: "t",
            payload: &big,
            qos: QoS::AtMostOnce,
            retain: false,
            tag: 0,
        }])
        .unwrap_err();
    assert!(matches!(e, SpoolError::BatchTooLarge { .. }), "{e}");
    let long = "x".repeat(70_000);
    let e = sp
        .append_batch([Msg {
            topic: &long,
            payload: b"",
            qos: QoS::AtMostOnce,
            retain: false,
            tag: 0,
        }])
        .unwrap_err();
    assert!(matches!(e, SpoolError::TopicTooLong { len: 70_000 }), "{e}");
    let got = read_all(&mut sp);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"again");
    // Bad configurations are refused with the field named.
    let mut bad = cfg(d.path());
    bad.budget_bytes = 1000;
    let e = Spool::open(bad).unwrap_err();
    assert!(e.to_string().contains("budget_bytes"), "{e}");
}

#[test]
fn oldest_age_follows_the_oldest_unacknowledged() {
    let d = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(cfg(d.path())).unwrap();
    assert_eq!(sp.stats().oldest_age, None);
    append_n(&mut sp, 1, 5, 5, 10);
    std::thread::sleep(Duration::from_millis(120));
    append_n(&mut sp, 6, 5, 5, 10);
    let age = sp.stats().oldest_age.unwrap();
    assert!(
        age >= Duration::from_millis(120) && age < Duration::from_secs(10),
        "{age:?}"
    );
    sp.ack(5).unwrap();
    let age = sp.stats().oldest_age.unwrap();
    assert!(age < Duration::from_millis(120), "{age:?}");
    sp.ack(10).unwrap();
    assert_eq!(sp.stats().oldest_age, None);
}

#[test]
fn bytes_written_per_64_byte_message() {
    let d = tempfile::tempdir().unwrap();
    let mut c = SpoolConfig::new(d.path()); // default sync policy: Interval(1 s)
    c.segment_bytes = 256 << 10;
    let mut sp = Spool::open(c).unwrap();
    let topic = "gw/0001/temp/aux"; // 16 bytes
    let p = [0x5au8; 64];
    let n = 20_000u64;
    let t0 = Instant::now();
    for _ in 0..n / 100 {
        sp.append_batch((0..100).map(|_| Msg {
            topic,
            payload: &p,
            qos: QoS::AtLeastOnce,
            retain: false,
            tag: 0,
        }))
        .unwrap();
        sp.flush(Instant::now()).unwrap();
    }
    // Drain: read and ack in batches, flushing each turn as the driver would.
    let mut total = 0;
    loop {
        let mut last = 0;
        let k = sp.read_batch(100, 1 << 20, |r| last = r.seq).unwrap();
        if k == 0 {
            break;
        }
        total += k;
        sp.ack(last).unwrap();
        sp.flush(Instant::now()).unwrap();
    }
    sp.sync().unwrap();
    let st = sp.stats();
    let per = st.bytes_written as f64 / n as f64;
    println!(
        "spool: {n} messages (topic 16 B, payload 64 B) in {:?}: {} bytes written = {per:.2} bytes/message \
         (record {} B: header 40 + topic + payload); {} record writes, {} acked-file writes, {} syncs",
        t0.elapsed(),
        st.bytes_written,
        st.record_bytes_written / n,
        st.record_writes,
        st.ack_writes,
        st.syncs
    );
    assert_eq!(total as u64, n);
    assert_eq!(st.record_bytes_written, n * (40 + 16 + 64));
    assert_eq!(st.record_writes, n / 100, "one write per batch");
    assert!(per < 121.0, "{per}");
    assert!(
        st.ack_writes <= 2 + t0.elapsed().as_secs(),
        "acked file at most once per second: {st:?}"
    );
    assert!(seg_files(d.path()).is_empty());
}

#[test]
fn sync_policies_sync_when_they_say() {
    let one = |sp: &mut Spool| {
        sp.append_batch([Msg {
            topic: "s",
            payload: b"1",
            qos: QoS::AtLeastOnce,
            retain: false,
            tag: 0,
        }])
        .unwrap();
    };
    // EveryBatch: a data sync per batch (plus the directory for the new segment).
    let d = tempfile::tempdir().unwrap();
    let mut c = SpoolConfig::new(d.path());
    c.sync = SyncPolicy::EveryBatch;
    let mut sp = Spool::open(c).unwrap();
    for _ in 0..10 {
        one(&mut sp);
    }
    assert_eq!(sp.stats().syncs, 11, "{:?}", sp.stats());
    // Interval: nothing until the interval has passed since the first unsynced write; flush says when.
    let d = tempfile::tempdir().unwrap();
    let mut c = SpoolConfig::new(d.path());
    c.sync = SyncPolicy::Interval(Duration::from_secs(5));
    let mut sp = Spool::open(c).unwrap();
    let t0 = Instant::now();
    for _ in 0..10 {
        one(&mut sp);
    }
    let next = sp
        .flush(Instant::now())
        .unwrap()
        .expect("a sync is pending");
    assert!(next > t0 + Duration::from_secs(4) && next <= Instant::now() + Duration::from_secs(5));
    assert_eq!(sp.stats().syncs, 0);
    assert_eq!(sp.flush(next).unwrap(), None);
    assert_eq!(sp.stats().syncs, 2, "data and directory, once");
    // Never: no syncs at all, also not on close.
    let d = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(cfg(d.path())).unwrap();
    for _ in 0..10 {
        one(&mut sp);
    }
    assert_eq!(
        sp.flush(Instant::now() + Duration::from_secs(3600))
            .unwrap(),
        None
    );
    sp.ack(10).unwrap();
    sp.sync().unwrap();
    assert_eq!(sp.stats().syncs, 0);
}

#[test]
fn damaged_acked_file_means_resend_not_loss() {
    let d = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(cfg(d.path())).unwrap();
    append_n(&mut sp, 1, 20, 5, 16);
    sp.ack(12).unwrap();
    sp.close().unwrap();
    let p = d.path().join("acked");
    let mut b = std::fs::read(&p).unwrap();
    b[10] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let mut sp = Spool::open(cfg(d.path())).unwrap();
    let got = read_all(&mut sp);
    // The one segment (1..=20) is still there: everything in it is offered again (at least once).
    assert_eq!(
        got.iter().map(|g| g.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
}

#[test]
fn damage_in_the_open_segment_is_skipped_and_appends_move_on() {
    let d = tempfile::tempdir().unwrap();
    let mut sp = Spool::open(cfg(d.path())).unwrap();
    append_n(&mut sp, 1, 10, 10, 20); // records of 40 + 4..5 + 20 bytes
    let seg = d.path().join(&seg_files(d.path())[0]);
    let mut b = std::fs::read(&seg).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x40; // inside record 5 or 6
    std::fs::write(&seg, &b).unwrap();
    let got = read_all(&mut sp);
    let k = got.len() as u64;
    assert!((4..=6).contains(&k), "{k}");
    assert_eq!(
        got.iter().map(|g| g.seq).collect::<Vec<_>>(),
        (1..=k).collect::<Vec<_>>()
    );
    append_n(&mut sp, 11, 5, 5, 20);
    assert_eq!(
        seg_files(d.path()).len(),
        2,
        "appends went to a new segment, not behind the damage"
    );
    let got = read_all(&mut sp);
    assert_eq!(
        got.iter().map(|g| g.seq).collect::<Vec<_>>(),
        (11..=15).collect::<Vec<_>>()
    );
    let st = sp.stats();
    assert_eq!(
        (st.corrupt_regions, st.corrupt_records_skipped),
        (1, 10 - k),
        "{st:?}"
    );
}
