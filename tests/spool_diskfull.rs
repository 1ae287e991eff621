//! Disk full (ENOSPC) on a 1 MiB tmpfs of the test's own: the spool reports a clear error and stays
//! consistent (Refuse), or frees its oldest segments and goes on (DropOldest). Needs root to mount; skipped
//! with a message otherwise.
use std::path::{Path, PathBuf};
use std::process::Command;

use qmqtt::spool::{Msg, Spool, SpoolConfig, SpoolError, SpoolFull, SyncPolicy};
use qmqtt::QoS;

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: disk-full test needs root to mount a small tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match st {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("SKIPPED: disk-full test could not mount a tmpfs ({other:?})");
                None
            }
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn cfg(dir: &Path, full: SpoolFull) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.budget_bytes = 16 << 20; // far more than the 1 MiB file system: the disk fills first
    c.segment_bytes = 128 << 10;
    c.full = full;
    c.sync = SyncPolicy::EveryBatch;
    c
}

fn batch(sp: &mut Spool, first: u64, n: u64) -> Result<qmqtt::spool::Appended, SpoolError> {
    let p = [0xa5u8; 1000];
    let topics: Vec<String> = (first..first + n).map(|s| format!("df/{s}")).collect();
    sp.append_batch((0..n as usize).map(|i| Msg {
        topic: &topics[i],
        payload: &p,
        qos: QoS::AtLeastOnce,
        retain: false,
        tag: first + i as u64,
    }))
}

fn read_seqs(sp: &mut Spool) -> Vec<u64> {
    let mut v = Vec::new();
    while sp.read_batch(100, 1 << 20, |r| v.push(r.seq)).unwrap() > 0 {}
    v
}

#[test]
fn disk_full_with_refuse_is_a_clear_error_and_nothing_is_damaged() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let mut sp = Spool::open(cfg(&fs.path(), SpoolFull::Refuse)).unwrap();
    let mut stored = 0u64;
    let err = loop {
        match batch(&mut sp, stored + 1, 7) {
            Ok(a) => stored = a.last_seq,
            Err(e) => break e,
        }
        assert!(stored < 10_000, "a 1 MiB file system never filled up");
    };
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no space left") && msg.contains(&fs.path().display().to_string()),
        "{msg}"
    );
    println!("disk full after {stored} messages: {msg}");
    let st = sp.stats();
    assert!(st.disk_full >= 1);
    assert_eq!((st.refused, st.dropped_oldest), (7, 0));
    // A second attempt fails the same way, no crash, no partial record left behind.
    assert!(matches!(
        batch(&mut sp, stored + 1, 7),
        Err(SpoolError::DiskFull { .. })
    ));
    assert_eq!(read_seqs(&mut sp), (1..=stored).collect::<Vec<_>>());
    // Delivering frees space; appending works again.
    sp.ack(stored / 2).unwrap();
    let a =
        batch(&mut sp, stored + 1, 7).expect("room again after acknowledged segments were deleted");
    assert_eq!(a.first_seq, stored + 1);
    drop(sp);
    // Reopen: everything unacknowledged is intact.
    let mut sp = Spool::open(cfg(&fs.path(), SpoolFull::Refuse)).unwrap();
    assert_eq!(
        read_seqs(&mut sp),
        (stored / 2 + 1..=stored + 7).collect::<Vec<_>>()
    );
    let st = sp.stats();
    assert_eq!((st.corrupt_regions, st.truncated_bytes), (0, 0));
}

#[test]
fn disk_full_with_drop_oldest_frees_old_segments_and_goes_on() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let mut sp = Spool::open(cfg(&fs.path(), SpoolFull::DropOldest)).unwrap();
    let total = 3000u64; // ~3 MiB into 1 MiB
    let mut s = 1;
    while s <= total {
        let a =
            batch(&mut sp, s, 7.min(total - s + 1)).expect("DropOldest makes room on a full disk");
        s = a.last_seq + 1;
    }
    let st = sp.stats();
    println!("{st:?}");
    assert!(st.disk_full >= 1 && st.dropped_oldest > 0, "{st:?}");
    assert_eq!(st.dropped_oldest + st.spooled_msgs, total);
    let seqs = read_seqs(&mut sp);
    assert_eq!(*seqs.last().unwrap(), total);
    assert_eq!(
        seqs,
        (total - seqs.len() as u64 + 1..=total).collect::<Vec<_>>()
    );
}
