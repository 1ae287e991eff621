//! Power-cut simulation: thousands of spools written, then damaged the way a power cut (or a failing card)
//! leaves them — the last segment truncated at a random offset, random bytes of its tail garbled, garbage
//! appended, an older segment garbled or cut short — then reopened. Every intact record before the damage
//! must come back, no damaged record may be delivered, and nothing may panic.
//!
//! Deterministic (seeded splitmix64); a failure prints its case seed. `SPOOL_POWERCUT_CASES` sets the count
//! (default 3000).
use std::path::{Path, PathBuf};

use qmqtt::spool::format::{decode_header, HDR};
use qmqtt::spool::{Msg, Spool, SpoolConfig, SyncPolicy};
use qmqtt::QoS;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// In `lo..hi` (hi > lo).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    seq: u64,
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
    tag: u64,
}

/// Where each record sits: (segment path, start, end).
fn layout(dir: &Path) -> Vec<(PathBuf, u64, u64, u64)> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for p in segs {
        let b = std::fs::read(&p).unwrap();
        let mut off = 0usize;
        while off < b.len() {
            let h = decode_header(&b[off..off + HDR]).expect("undamaged spool parses");
            out.push((p.clone(), h.seq, off as u64, off as u64 + h.total()));
            off += h.total() as usize;
        }
    }
    out
}

fn read_all(sp: &mut Spool) -> Vec<Rec> {
    let mut v = Vec::new();
    while sp
        .read_batch(5, 4096, |r| {
            v.push(Rec {
                seq: r.seq,
                topic: r.topic.to_string(),
                payload: r.payload.to_vec(),
                qos: r.qos,
                retain: r.retain,
                tag: r.tag,
            })
        })
        .unwrap()
        > 0
    {}
    v
}

fn base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn one_case(seed: u64) {
    let mut r = Rng(seed);
    let td = tempfile::tempdir_in(base()).unwrap();
    let mut cfg = SpoolConfig::new(td.path());
    cfg.sync = SyncPolicy::Never;
    cfg.segment_bytes = r.range(1024, 4096);
    let n = r.range(1, 120);
    let mut recs = Vec::new();
    for seq in 1..=n {
        let tl = r.range(0, 24) as usize;
        let pl = r.range(0, 200) as usize;
        recs.push(Rec {
            seq,
            topic: (0..tl)
                .map(|_| (b'a' + r.range(0, 26) as u8) as char)
                .collect(),
            payload: (0..pl).map(|_| r.next() as u8).collect(),
            qos: QoS::from_u8(r.range(0, 3) as u8).unwrap(),
            retain: r.range(0, 2) == 1,
            tag: r.next(),
        });
    }
    let mut sp = Spool::open(cfg.clone()).unwrap();
    let mut i = 0;
    while i < recs.len() {
        let mut k = (r.range(1, 6) as usize).min(recs.len() - i);
        let size = |b: &[Rec]| {
            b.iter()
                .map(|m| 40 + m.topic.len() + m.payload.len())
                .sum::<usize>() as u64
        };
        while size(&recs[i..i + k]) > cfg.segment_bytes {
            k -= 1;
        }
        let batch = &recs[i..i + k];
        let a = sp
            .append_batch(batch.iter().map(|m| Msg {
                topic: &m.topic,
                payload: &m.payload,
                qos: m.qos,
                retain: m.retain,
                tag: m.tag,
            }))
            .unwrap();
        assert_eq!(a.first_seq, batch[0].seq);
        i += batch.len();
    }
    let acked = if r.range(0, 3) == 0 {
        r.range(0, n + 1)
    } else {
        0
    };
    sp.ack(acked).unwrap();
    drop(sp);

    let lay = layout(td.path());
    let mut segs: Vec<PathBuf> = lay.iter().map(|l| l.0.clone()).collect();
    segs.dedup();
    if segs.is_empty() {
        return; // everything acknowledged
    }
    let last = segs.last().unwrap().clone();
    let mode = r.range(0, 6);
    let sealed = mode >= 4 && segs.len() >= 2;
    let target = if sealed {
        segs[r.range(0, segs.len() as u64 - 1) as usize].clone()
    } else {
        last
    };
    let mut bytes = std::fs::read(&target).unwrap();
    let len = bytes.len() as u64;
    // First damaged byte offset.
    let mut damage = len;
    let truncate = |bytes: &mut Vec<u8>, at: u64| bytes.truncate(at as usize);
    match (mode, sealed) {
        (0, _) | (5, true) => {
            let at = r.range(0, len);
            truncate(&mut bytes, at);
            damage = at;
        }
        (1, _) | (4, true) | (4, false) | (5, false) => {
            let from = r.range(0, len);
            for _ in 0..r.range(1, 5) {
                let at = r.range(from, len);
                bytes[at as usize] ^= r.range(1, 256) as u8;
                damage = damage.min(at);
            }
        }
        (2, _) => {
            let at = r.range(0, len);
            truncate(&mut bytes, at);
            damage = at;
            if at > 0 {
                let f = r.range(0, at);
                bytes[f as usize] ^= r.range(1, 256) as u8;
                damage = f;
            }
        }
        _ => {
            // Garbage (random or zeros, as a file system may leave) after the last record.
            let zeros = r.range(0, 2) == 0;
            for _ in 0..r.range(1, 300) {
                bytes.push(if zeros { 0 } else { r.next() as u8 });
            }
        }
    }
    std::fs::write(&target, &bytes).unwrap();

    let expect: Vec<Rec> = lay
        .iter()
        .filter(|(p, seq, _, end)| *seq > acked && !(*p == target && *end > damage))
        .map(|(_, seq, _, _)| recs[*seq as usize - 1].clone())
        .collect();
    let lost = lay
        .iter()
        .filter(|(p, seq, _, end)| *seq > acked && *p == target && *end > damage)
        .count() as u64;

    let mut sp = Spool::open(cfg.clone()).unwrap();
    let got = read_all(&mut sp);
    assert_eq!(
        got, expect,
        "seed {seed}: mode {mode} sealed {sealed} damage at {damage} of {len}"
    );
    let st = sp.stats();
    if sealed {
        assert_eq!(st.corrupt_records_skipped, lost, "seed {seed}");
    } else {
        // Exactly the bytes after the last intact record were cut off.
        let valid_end = lay
            .iter()
            .filter(|(p, _, _, end)| *p == target && *end <= damage)
            .map(|l| l.3)
            .max()
            .unwrap_or(0);
        let cut = bytes.len() as u64 - valid_end;
        assert_eq!(st.truncated_bytes, cut, "seed {seed}: {st:?}");
        assert_eq!(st.corrupt_regions, (cut > 0) as u64, "seed {seed}: {st:?}");
    }
    // The spool goes on: new records follow, survive a reopen with the recovered ones.
    let a = sp
        .append_batch([Msg {
            topic: "after",
            payload: b"x",
            qos: QoS::AtLeastOnce,
            retain: false,
            tag: 1,
        }])
        .unwrap();
    assert!(
        a.first_seq > expect.last().map_or(acked, |e| e.seq),
        "seed {seed}"
    );
    drop(sp);
    let mut sp = Spool::open(cfg).unwrap();
    let got = read_all(&mut sp);
    assert_eq!(got.len(), expect.len() + 1, "seed {seed}");
    assert_eq!(&got[..expect.len()], &expect[..], "seed {seed}");
    assert_eq!(got.last().unwrap().topic, "after", "seed {seed}");
    if !sealed {
        assert_eq!(
            sp.stats().corrupt_regions,
            0,
            "seed {seed}: the damaged tail was cut off for good"
        );
    }
}

#[test]
fn power_cut_damage_is_recovered_and_never_delivered() {
    let cases: u64 = std::env::var("SPOOL_POWERCUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    for case in 0..cases {
        let seed = 0x5eed_0000 + case;
        let res = std::panic::catch_unwind(|| one_case(seed));
        if let Err(e) = res {
            eprintln!("power-cut case failed: seed {seed:#x}");
            std::panic::resume_unwind(e);
        }
    }
}

/// Segment files of pure garbage (or a valid prefix then garbage, or headers with absurd lengths) and a
/// garbage `acked` file: opening and reading never panics and never delivers anything that was not written.
#[test]
fn garbage_files_never_panic_or_deliver() {
    for case in 0..500u64 {
        let mut r = Rng(0xbad_0000 + case);
        let td = tempfile::tempdir_in(base()).unwrap();
        let nseg = r.range(1, 4);
        let mut first = r.range(1, 1000);
        for _ in 0..nseg {
            let mut b: Vec<u8> = Vec::new();
            match r.range(0, 3) {
                0 => {}
                1 => {
                    // A plausible header (right magic and seq) with random lengths.
                    b.extend_from_slice(b"QSR1");
                    b.extend_from_slice(&(r.next() as u32).to_le_bytes());
                    b.extend_from_slice(&(r.next() as u32).to_le_bytes());
                    b.extend_from_slice(&(r.next() as u16).to_le_bytes());
                    b.extend_from_slice(&[r.range(0, 8) as u8, 0]);
                    b.extend_from_slice(&first.to_le_bytes());
                    b.extend_from_slice(&[0u8; 16]);
                }
                _ => b.extend_from_slice(b"QSR1"),
            }
            for _ in 0..r.range(0, 3000) {
                b.push(r.next() as u8);
            }
            std::fs::write(td.path().join(format!("seg-{first:016x}.log")), &b).unwrap();
            first += r.range(1, 100);
        }
        if r.range(0, 2) == 0 {
            let g: Vec<u8> = (0..r.range(0, 40)).map(|_| r.next() as u8).collect();
            std::fs::write(td.path().join("acked"), g).unwrap();
        }
        let mut c = SpoolConfig::new(td.path());
        c.sync = SyncPolicy::Never;
        c.segment_bytes = 1024;
        let mut sp = Spool::open(c).unwrap_or_else(|e| panic!("case {case}: {e}"));
        let got = read_all(&mut sp);
        assert!(got.is_empty(), "case {case}: delivered garbage {got:?}");
        let _ = sp.stats();
        let a = sp
            .append_batch([Msg {
                topic: "ok",
                payload: b"1",
                qos: QoS::AtMostOnce,
                retain: false,
                tag: 0,
            }])
            .unwrap();
        let got = read_all(&mut sp);
        assert_eq!(got.len(), 1, "case {case}");
        assert_eq!(got[0].seq, a.first_seq);
    }
}
