//! Store-and-forward: a bounded, crash-safe spool of outgoing messages on local storage (an SD card).
//!
//! A gateway can lose its uplink for hours, or its power. Telemetry published meanwhile must not be lost:
//! when the driver's bounded in-memory publish queue cannot hold it, the oldest queued messages go to this
//! spool, and leave it in order once the broker is reachable again — also after the process or the gateway
//! restarted.
//!
//! # Files (in [`SpoolConfig::dir`])
//!
//! * `seg-<16 hex digits>.log` — append-only segments, named by the sequence number of their first record.
//!   Each record carries a header with a magic, its lengths, its sequence number, the append time, an opaque
//!   tag and a CRC-32C over header and body (layout in [`format`](mod@format)). Sequence numbers start at 1 and are
//!   contiguous. A segment is closed when the next batch would take it past [`SpoolConfig::segment_bytes`].
//! * `acked` — the highest sequence number known delivered (20 bytes, checksummed), replaced atomically
//!   (`acked.tmp` + rename). Segments whose records are all acknowledged are deleted.
//! * `lock` — held with `flock(LOCK_EX | LOCK_NB)` while a [`Spool`] is open: one owner per directory; a
//!   second one gets [`SpoolError::Locked`].
//!
//! # Crash safety
//!
//! A power cut can leave the last segment with a torn or garbled tail. [`Spool::open`] scans the last segment
//! and truncates it at the first invalid record; every intact record before it is kept. Damage found later
//! while reading (only possible in an older segment written with [`SyncPolicy::Never`], or by outside
//! interference) skips the rest of that segment. Damaged records are never delivered, and are counted
//! ([`SpoolStats::corrupt_regions`], [`SpoolStats::corrupt_records_skipped`]). A failed or partial write
//! (disk full, I/O error) is cut off again at once, so the spool never holds garbage between good records.
//!
//! # Durability and the sync policy
//!
//! A record is safe from a *process* crash (kill -9, panic, OOM) as soon as [`Spool::append_batch`] returns
//! `Ok`: it is in the kernel's page cache. Safety from a *power cut* needs `fdatasync`, which costs SD-card
//! wear (each sync programs at least one flash page, and the card's internal erase blocks amplify small
//! writes) and latency. [`SyncPolicy`] is the trade-off:
//!
//! | policy | power-cut loss window | syncs |
//! |---|---|---|
//! | `EveryBatch` | nothing acknowledged by `append_batch` | one per batch (+ directory on a new segment) |
//! | `Interval(d)` (default 1 s) | at most `d` of appends (plus the page being written) | at most one per `d` |
//! | `Never` | what the kernel had not written back (Linux: `dirty_expire`, ~30 s) | none |
//!
//! The `acked` file is written at most once per [`SpoolConfig::ack_interval`] (default 1 s) while messages
//! are being acknowledged, never per message: losing it only causes re-delivery (duplicates), never loss.
//!
//! # Delivery semantics
//!
//! * **At least once, across restarts.** A message is removed only after the driver [`ack`](Spool::ack)s it.
//!   A message the broker acknowledged but whose acknowledgement was not yet recorded in `acked` when the
//!   process died is sent again after the restart. Nothing appended (and synced, see above) is lost, except
//!   by the budget policy ([`SpoolFull::DropOldest`]) — counted in [`SpoolStats::dropped_oldest`].
//! * **Order.** Records are read in append order. The driver spills the *oldest* in-memory messages into the
//!   spool, so everything in the spool is older than everything in memory; with `drain_rate: None` spooled
//!   messages leave before newer in-memory ones (strict publish order). With a `drain_rate` see below.
//! * **Drain rate.** After a long outage a gateway may hold hours of backlog. With
//!   [`SpoolConfig::drain_rate`] `= Some(r)` the backlog leaves at most `r` messages per second (token bucket,
//!   burst of one second's worth) so a reconnecting fleet does not flood the broker, and live data keeps
//!   flowing beside it: each send turn the backlog gets window room first, up to its tokens, live messages
//!   the rest. Each stream stays in order; a live message may overtake older spooled ones. The rule is
//!   implemented sans-I/O in [`DrainScheduler`] (fed `now`).
//!
//! # Bounds
//!
//! Disk: [`SpoolConfig::budget_bytes`] (segment files, including acknowledged records of a not yet deleted
//! segment). Memory: one write buffer as large as the largest batch (≤ `segment_bytes`), and two read buffers
//! of [`READ_CHUNK`] bytes, each grown to the largest record read (≤ `segment_bytes`). No allocation per
//! message once the buffers have grown.
//!
//! # How the driver uses it
//!
//! (`client/io/spool.rs`; when it spills and how it splits the window is the client module's
//! "Store-and-forward" section.)
//!
//! 1. **Open** in `Client::connect` on the caller's thread (so [`SpoolError::Locked`] or a bad directory is
//!    reported at once), then move the [`Spool`] into the I/O thread (it is `Send`); only that thread uses it.
//! 2. **Spill**: [`append_batch`](Spool::append_batch) the *oldest* in-memory messages, up to 64 KiB (one
//!    send batch, at most `segment_bytes`) per append, tag = their token. On `Ok` they leave memory; on
//!    `Err` (spool full with `Refuse`, disk full) they stay there and the spill is retried a second later.
//! 3. **Send**: [`DrainScheduler::plan`] with the free window room and the backlog ([`Spool::unread`]);
//!    [`read_batch`](Spool::read_batch) `from_spool` records into the session (remembering packet → seq,
//!    [`AckTracker::sent`]), then `from_live` from memory.
//! 4. **Acks**: on PUBACK (QoS 1) / PUBCOMP (QoS 2) of a spooled message, or once a spooled QoS 0 message is
//!    written to the socket: [`AckTracker::complete`]`(seq)`, and when it returns `Some(a)`,
//!    [`Spool::ack`]`(a)`. Acks are cumulative and idempotent; acks below the current position are ignored.
//!    The tag of a record appended by *this* process (seq ≥ the [`Spool::next_seq`] seen at open) is its
//!    token: report `Delivered { token }` as usual; records from a previous run carry stale tokens — count
//!    them in stats instead.
//! 5. **Connection lost**: nothing — the session keeps spooled QoS 1/2 messages in its window and resends
//!    them on reconnect. ([`Spool::rewind`] is for a reader that drops what it had in flight.)
//! 6. **Every loop iteration**: [`Spool::flush`]`(now)`; add the deadline it returns to the poll timeout.
//!    Report [`Spool::stats`] in the client's stats.
pub mod drain;
pub mod format;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::codec::QoS;
pub use drain::{AckTracker, DrainPlan, DrainScheduler, TokenBucket};
use format::{Header, HDR};

/// Bytes read from a segment at a time.
pub const READ_CHUNK: usize = 64 << 10;
/// Smallest accepted [`SpoolConfig::segment_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// What [`Spool::append_batch`] does when a batch does not fit in [`SpoolConfig::budget_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpoolFull {
    /// Delete whole oldest segments (unsent messages in them are counted in
    /// [`SpoolStats::dropped_oldest`]). Telemetry: the newest data matters most. Also applied when the disk
    /// itself is full (ENOSPC) and older segments can be freed.
    #[default]
    DropOldest,
    /// Refuse the batch with [`SpoolError::Full`] (counted in [`SpoolStats::refused`]); the caller decides.
    Refuse,
}

/// When appended data and the acknowledged position are forced to storage (`fdatasync`). See the module
/// docs for the SD-wear / loss-window trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync every batch before [`Spool::append_batch`] returns: nothing acknowledged is lost by a power cut;
    /// most wear.
    EveryBatch,
    /// Sync at most once per interval, from [`Spool::flush`] (and when a segment is closed).
    Interval(Duration),
    /// Never sync; the kernel writes back when it likes. Safe against process crashes only.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> SyncPolicy {
        SyncPolicy::Interval(Duration::from_secs(1))
    }
}

/// Configuration of a [`Spool`]. Build with [`SpoolConfig::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The spool's own directory (created if missing). One owner at a time (lock file).
    pub dir: PathBuf,
    /// Disk bound: total bytes of segment files. Default 64 MiB. Must be ≥ 2 × `segment_bytes`.
    pub budget_bytes: u64,
    /// What to do when a batch does not fit in the budget. Default [`SpoolFull::DropOldest`].
    pub full: SpoolFull,
    /// Default [`SyncPolicy::Interval`] of 1 s.
    pub sync: SyncPolicy,
    /// Segment size: the unit of deletion (acknowledged, or dropped by `DropOldest`) and the largest batch.
    /// Default 4 MiB; at least [`MIN_SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// Backlog drain rate in messages per second; `None` (default): as fast as the window allows, in strict
    /// publish order. See [`DrainScheduler`].
    pub drain_rate: Option<u32>,
    /// The `acked` file is rewritten at most this often while acknowledgements arrive. Default 1 s. (A crash
    /// re-sends at most this much of acknowledged backlog.)
    pub ack_interval: Duration,
}

impl SpoolConfig {
    /// Defaults for a spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            budget_bytes: 64 << 20,
            full: SpoolFull::DropOldest,
            sync: SyncPolicy::default(),
            segment_bytes: 4 << 20,
            drain_rate: None,
            ack_interval: Duration::from_secs(1),
        }
    }

    fn validate(&self) -> Result<(), SpoolError> {
        if self.segment_bytes < MIN_SEGMENT_BYTES || self.segment_bytes > u32::MAX as u64 {
            return Err(SpoolError::Config(format!(
                "spool segment_bytes {} is out of range: use {MIN_SEGMENT_BYTES} to {} (default 4 MiB)",
                self.segment_bytes,
                u32::MAX
            )));
        }
        if self.budget_bytes < 2 * self.segment_bytes {
            return Err(SpoolError::Config(format!(
                "spool budget_bytes {} is less than 2 x segment_bytes ({}): raise the budget or lower segment_bytes",
                self.budget_bytes, self.segment_bytes
            )));
        }
        if self.drain_rate == Some(0) {
            return Err(SpoolError::Config(
                "spool drain_rate 0 would never drain the backlog: use None (unlimited) or at least 1 msg/s".into(),
            ));
        }
        Ok(())
    }
}

/// Why a spool operation failed. Each message says what was wrong and what to do.
#[derive(Debug)]
pub enum SpoolError {
    /// The configuration is unusable (message names the field).
    Config(String),
    /// Another process (or another `Spool` in this one) has the directory open.
    Locked { dir: PathBuf },
    /// The batch does not fit in the budget ([`SpoolFull::Refuse`], or larger than the budget could ever
    /// make room for). Nothing of the batch was written.
    Full { needed: u64, held: u64, budget: u64 },
    /// The filesystem is full (ENOSPC). Nothing of the batch was written.
    DiskFull { path: PathBuf },
    /// The batch encodes to more than `segment_bytes`. Nothing was written: pass smaller batches.
    BatchTooLarge { bytes: u64, limit: u64 },
    /// A topic longer than 65535 bytes. Nothing of the batch was written.
    TopicTooLong { len: usize },
    /// `ack(seq)` beyond the last appended record: a driver bug.
    AckBeyondEnd { seq: u64, last: u64 },
    /// Any other I/O failure: `op` on `path`.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Config(m) => f.write_str(m),
            SpoolError::Locked { dir } => write!(
                f,
                "spool directory {} is locked: another process (or another open spool) owns it; stop that \
                 one or configure a different spool directory",
                dir.display()
            ),
            SpoolError::Full { needed, held, budget } => write!(
                f,
                "spool full: a batch of {needed} bytes does not fit ({held} of {budget} bytes held); wait for \
                 the backlog to drain, raise budget_bytes, or use the DropOldest policy"
            ),
            SpoolError::DiskFull { path } => write!(
                f,
                "no space left on the device holding {}: free space on that filesystem or lower the spool's \
                 budget_bytes",
                path.display()
            ),
            SpoolError::BatchTooLarge { bytes, limit } => write!(
                f,
                "spool batch of {bytes} bytes exceeds segment_bytes ({limit}): append smaller batches or raise \
                 segment_bytes"
            ),
            SpoolError::TopicTooLong { len } => {
                write!(f, "topic of {len} bytes is longer than MQTT allows (65535)")
            }
            SpoolError::AckBeyondEnd { seq, last } => {
                write!(f, "spool ack of seq {seq} beyond the last appended record {last}")
            }
            SpoolError::Io { op, path, source } => {
                write!(f, "spool: {op} {} failed: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> SpoolError {
    if matches!(
        source.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) {
        return SpoolError::DiskFull {
            path: path.to_path_buf(),
        };
    }
    SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A message to append.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    /// Opaque to the spool, returned by [`Spool::read_batch`] (the driver's token).
    pub tag: u64,
}

/// A record handed out by [`Spool::read_batch`], borrowed from the spool's read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    /// Wall-clock append time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub tag: u64,
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
}

/// What [`Spool::append_batch`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Messages appended (all of the batch).
    pub count: u64,
    /// Sequence numbers `first_seq..=last_seq` (both 0 for an empty batch).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Unsent messages dropped to make room ([`SpoolFull::DropOldest`]).
    pub dropped: u64,
}

/// Counters of a spool. "now" values describe the present; the others are monotonic since `open`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Unacknowledged messages held, now.
    pub spooled_msgs: u64,
    /// Bytes of segment files, now (what the budget bounds).
    pub spooled_bytes: u64,
    /// Segment files, now.
    pub segments: u64,
    /// Age of the oldest unacknowledged message, now: wall clock minus its append time (0 if the clock went
    /// back, e.g. a gateway without RTC that set its clock after boot).
    pub oldest_age: Option<Duration>,
    /// Highest acknowledged sequence number, and the next one to be assigned, now.
    pub acked_seq: u64,
    pub next_seq: u64,
    /// Messages appended.
    pub appended: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Unsent messages deleted by [`SpoolFull::DropOldest`].
    pub dropped_oldest: u64,
    /// Messages refused ([`SpoolFull::Refuse`], or no room could be made).
    pub refused: u64,
    /// Appends that failed with ENOSPC.
    pub disk_full: u64,
    /// All bytes written: records plus `acked` files.
    pub bytes_written: u64,
    /// Bytes of records written (of `bytes_written`).
    pub record_bytes_written: u64,
    /// `write(2)` calls for records, `acked` file replacements, `fdatasync`/`fsync` calls.
    pub record_writes: u64,
    pub ack_writes: u64,
    pub syncs: u64,
    /// fsync failures (data may not be durable; logged).
    pub sync_errors: u64,
    /// Places where damage was found and skipped (including a torn tail cut off at open).
    pub corrupt_regions: u64,
    /// Records known lost to damage (their sequence numbers were skipped).
    pub corrupt_records_skipped: u64,
    /// Bytes cut off the last segment at open.
    pub truncated_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    first: u64,
    len: u64,
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:016x}.log")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// One step of a [`Cursor`].
enum Step {
    /// A valid record; its bytes are `cursor.buf[start..][..h.total()]`.
    Record { h: Header, start: usize },
    /// Caught up with the end of the spool.
    End,
    /// Damage at byte `at` of segment `seg`; the rest of that segment is skipped.
    Corrupt { seg: u64, at: u64, last: bool },
    /// Sequence numbers lost to damage were skipped.
    Gap(u64),
}

/// A reading position in the segment chain, with its own buffer and file handle.
struct Cursor {
    seg: Option<u64>,
    off: u64,
    /// Sequence number the record at `off` must have.
    expect: u64,
    /// Records below this are skipped (not handed out).
    target: u64,
    file: Option<File>,
    buf: Vec<u8>,
    buf_off: u64,
    /// (off, expect, target) before the last record handed out, for `unread`.
    prev: (u64, u64, u64),
}

impl Cursor {
    fn new() -> Cursor {
        Cursor {
            seg: None,
            off: 0,
            expect: 0,
            target: 0,
            file: None,
            buf: Vec::new(),
            buf_off: 0,
            prev: (0, 0, 0),
        }
    }

    /// Position at the first record with seq ≥ `target`.
    fn seek(&mut self, target: u64) {
        self.seg = None;
        self.target = target;
        self.file = None;
        self.buf.clear();
    }

    fn enter(&mut self, s: &Seg) {
        self.seg = Some(s.first);
        self.off = 0;
        self.expect = s.first;
        self.file = None;
        self.buf.clear();
        self.buf_off = 0;
    }

    /// Skip to the end of the current segment; returns whether it is the last one.
    fn skip_segment(&mut self, segs: &VecDeque<Seg>) -> bool {
        let Some(f) = self.seg else { return false };
        match segs.binary_search_by_key(&f, |s| s.first) {
            Ok(i) => {
                self.off = segs[i].len;
                i + 1 == segs.len()
            }
            Err(_) => false,
        }
    }

    /// Drop the file handle if it is segment `first`'s (about to be deleted).
    fn release(&mut self, first: u64) {
        if self.seg == Some(first) {
            self.file = None;
        }
    }

    fn unread(&mut self) {
        (self.off, self.expect, self.target) = self.prev;
    }

    /// Make `buf` hold `[off, off + need)`; `Ok(false)` if the segment ends before that.
    fn fill(&mut self, dir: &Path, seg: &Seg, need: usize) -> io::Result<bool> {
        let off = self.off;
        if off + need as u64 > seg.len {
            return Ok(false);
        }
        if off >= self.buf_off && off + need as u64 <= self.buf_off + self.buf.len() as u64 {
            return Ok(true);
        }
        if self.file.is_none() {
            self.file = Some(File::open(dir.join(seg_name(seg.first)))?);
        }
        let want = (need.max(READ_CHUNK) as u64).min(seg.len - off) as usize;
        self.buf.clear();
        self.buf.resize(want, 0);
        self.buf_off = off;
        let f = self.file.as_ref().expect("opened above");
        match f.read_exact_at(&mut self.buf, off) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.buf.clear();
                Ok(false)
            }
            Err(e) => {
                self.buf.clear();
                Err(e)
            }
        }
    }

    fn step(&mut self, dir: &Path, segs: &VecDeque<Seg>) -> io::Result<Step> {
        loop {
            let idx = match self.seg.map(|f| segs.binary_search_by_key(&f, |s| s.first)) {
                Some(Ok(i)) => i,
                Some(Err(_)) => {
                    // Our segment was deleted (acknowledged or dropped): go on from the oldest left.
                    self.target = self.target.max(self.expect);
                    self.seg = None;
                    continue;
                }
                None => {
                    if segs.is_empty() {
                        return Ok(Step::End);
                    }
                    let i = segs
                        .partition_point(|s| s.first <= self.target)
                        .saturating_sub(1);
                    self.enter(&segs[i]);
                    i
                }
            };
            let seg = segs[idx];
            let last = idx + 1 == segs.len();
            if self.off >= seg.len {
                if last {
                    return Ok(Step::End);
                }
                let next = segs[idx + 1];
                let from = self.expect.max(self.target);
                self.enter(&next);
                if next.first > from {
                    return Ok(Step::Gap(next.first - from));
                }
                continue;
            }
            let at = self.off;
            let corrupt = Step::Corrupt {
                seg: seg.first,
                at,
                last,
            };
            let ok = match self.fill(dir, &seg, HDR) {
                Ok(ok) => ok,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if !ok {
                self.off = seg.len;
                return Ok(corrupt);
            }
            let s = (self.off - self.buf_off) as usize;
            let h = match format::decode_header(&self.buf[s..s + HDR]) {
                Ok(h) if h.seq == self.expect => h,
                _ => {
                    self.off = seg.len;
                    return Ok(corrupt);
                }
            };
            let total = match usize::try_from(h.total()) {
                Ok(t) if h.total() <= seg.len - self.off => t,
                _ => {
                    self.off = seg.len;
                    return Ok(corrupt);
                }
            };
            if !self.fill(dir, &seg, total)? {
                self.off = seg.len;
                return Ok(corrupt);
            }
            let s = (self.off - self.buf_off) as usize;
            if format::verify(&h, &self.buf[s..s + total]).is_err() {
                self.off = seg.len;
                return Ok(corrupt);
            }
            self.prev = (self.off, self.expect, self.target);
            self.off += total as u64;
            self.expect += 1;
            if h.seq < self.target {
                continue;
            }
            self.target = self.expect;
            return Ok(Step::Record { h, start: s });
        }
    }
}

/// An open spool. See the module docs.
pub struct Spool {
    cfg: SpoolConfig,
    dir: File,
    /// Holds the directory's `flock`; unlocked explicitly on drop.
    lock: File,
    segs: VecDeque<Seg>,
    /// Writer for the last segment; `None`: the next append starts a new segment.
    active: Option<File>,
    next_seq: u64,
    acked: u64,
    acked_written: u64,
    total_bytes: u64,
    wbuf: Vec<u8>,
    rd: Cursor,
    ackc: Cursor,
    /// (seq, time_ms) of the oldest unacknowledged record, as last found.
    oldest: Option<(u64, u64)>,
    unsynced_since: Option<Instant>,
    dir_dirty: bool,
    last_ack_write: Option<Instant>,
    st: SpoolStats,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.cfg.dir)
            .field("segments", &self.segs.len())
            .field("next_seq", &self.next_seq)
            .field("acked", &self.acked)
            .finish()
    }
}

impl Spool {
    /// Open (or create) the spool in `cfg.dir`: take the lock, read `acked`, recover the last segment
    /// (cutting off a torn tail), delete fully acknowledged segments. Reading starts at the oldest
    /// unacknowledged record.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        cfg.validate()?;
        let d = cfg.dir.clone();
        fs::create_dir_all(&d).map_err(|e| io_err("create directory", &d, e))?;
        let lock_path = d.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        // SAFETY: flock on a file descriptor we own and keep open.
        let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(SpoolError::Locked { dir: d });
            }
            return Err(io_err("lock (flock)", &lock_path, e));
        }
        let dir = File::open(&d).map_err(|e| io_err("open directory", &d, e))?;

        // Acknowledged position.
        let ack_path = d.join("acked");
        let acked = match fs::read(&ack_path) {
            Ok(b) => format::decode_ack(&b).unwrap_or_else(|| {
                log::warn!(
                    "spool {}: the acked file is damaged; re-sending from the oldest record",
                    d.display()
                );
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &ack_path, e)),
        };
        let _ = fs::remove_file(d.join("acked.tmp"));

        // Segments.
        let mut segs = Vec::new();
        for ent in fs::read_dir(&d).map_err(|e| io_err("list", &d, e))? {
            let ent = ent.map_err(|e| io_err("list", &d, e))?;
            let name = ent.file_name();
            let Some(first) = name.to_str().and_then(parse_seg_name) else {
                continue;
            };
            let len = ent
                .metadata()
                .map_err(|e| io_err("stat", &ent.path(), e))?
                .len();
            segs.push(Seg { first, len });
        }
        segs.sort_by_key(|s| s.first);

        let mut sp = Spool {
            dir,
            lock,
            segs: segs.into_iter().collect(),
            active: None,
            next_seq: 1,
            acked,
            acked_written: acked,
            total_bytes: 0,
            wbuf: Vec::new(),
            rd: Cursor::new(),
            ackc: Cursor::new(),
            oldest: None,
            unsynced_since: None,
            dir_dirty: false,
            last_ack_write: None,
            st: SpoolStats::default(),
            cfg,
        };
        sp.recover_last()?;
        // Empty segments carry nothing.
        let mut i = 0;
        while i + 1 < sp.segs.len() {
            if sp.segs[i].len == 0 {
                let s = sp.segs.remove(i).expect("index checked");
                sp.unlink(s.first)?;
            } else {
                i += 1;
            }
        }
        sp.total_bytes = sp.segs.iter().map(|s| s.len).sum();
        sp.gc()?;
        sp.rd.seek(sp.acked + 1);
        sp.ackc.seek(sp.acked + 1);
        Ok(sp)
    }

    /// Validate the last segment, cut it at the first invalid record, set `next_seq`.
    fn recover_last(&mut self) -> Result<(), SpoolError> {
        let mut end_seq = 1;
        while let Some(&last) = self.segs.back() {
            let mut c = Cursor::new();
            c.enter(&last);
            let mut valid_end = 0;
            loop {
                match c.step(&self.cfg.dir, &self.segs) {
                    Ok(Step::Record { .. }) => valid_end = c.off,
                    Ok(Step::End) => break,
                    Ok(Step::Corrupt { .. }) => break,
                    Ok(Step::Gap(_)) => break,
                    Err(e) => {
                        return Err(io_err("read", &self.cfg.dir.join(seg_name(last.first)), e))
                    }
                }
            }
            let records = c.expect - last.first;
            let path = self.cfg.dir.join(seg_name(last.first));
            if valid_end < last.len {
                log::warn!(
                    "spool {}: cutting a damaged tail of {} bytes off {} ({} intact records kept)",
                    self.cfg.dir.display(),
                    last.len - valid_end,
                    path.display(),
                    records
                );
                self.st.corrupt_regions += 1;
                self.st.truncated_bytes += last.len - valid_end;
            }
            end_seq = last.first + records;
            if records == 0 {
                self.segs.pop_back();
                self.unlink(last.first)?;
                continue;
            }
            if valid_end < last.len {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err("open", &path, e))?;
                f.set_len(valid_end)
                    .map_err(|e| io_err("truncate", &path, e))?;
                f.sync_all().map_err(|e| io_err("fsync", &path, e))?;
                self.segs.back_mut().expect("non-empty").len = valid_end;
            }
            break;
        }
        self.next_seq = end_seq.max(self.acked + 1).max(1);
        Ok(())
    }

    fn unlink(&mut self, first: u64) -> Result<(), SpoolError> {
        // Close our own handles first, or the space is not freed until the readers move on.
        self.rd.release(first);
        self.ackc.release(first);
        let p = self.cfg.dir.join(seg_name(first));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("delete", &p, e)),
        }
        self.dir_changed();
        Ok(())
    }

    /// Delete segments whose records are all acknowledged.
    fn gc(&mut self) -> Result<(), SpoolError> {
        while let Some(s) = self.segs.front().copied() {
            let last_seq = match self.segs.get(1) {
                Some(n) => n.first - 1,
                None => self.next_seq - 1,
            };
            if last_seq > self.acked {
                break;
            }
            if self.segs.len() == 1 {
                self.active = None;
            }
            self.unlink(s.first)?;
            self.segs.pop_front();
            self.total_bytes -= s.len;
        }
        Ok(())
    }

    /// Delete the oldest segment to make room; returns unsent messages dropped.
    fn drop_oldest(&mut self) -> Result<u64, SpoolError> {
        let Some(s) = self.segs.front().copied() else {
            return Ok(0);
        };
        let end = match self.segs.get(1) {
            Some(n) => n.first,
            None => self.next_seq,
        };
        let from = s.first.max(self.acked + 1);
        let dropped = end.saturating_sub(from);
        if self.segs.len() == 1 {
            self.active = None;
        }
        self.unlink(s.first)?;
        self.segs.pop_front();
        self.total_bytes -= s.len;
        if end > 0 && end - 1 > self.acked {
            self.acked = end - 1;
        }
        self.st.dropped_oldest += dropped;
        if dropped > 0 {
            log::warn!(
                "spool {}: budget full, dropped {dropped} oldest unsent messages",
                self.cfg.dir.display()
            );
        }
        Ok(dropped)
    }

    /// Append a batch of messages with one `write(2)`: all of them, or (on error) none.
    ///
    /// Applies the budget policy first ([`SpoolFull`]). Errors: [`SpoolError::Full`] (`Refuse`, or no room
    /// can be made), [`SpoolError::DiskFull`] (ENOSPC and no older segment left to free), [`SpoolError::
    /// BatchTooLarge`], [`SpoolError::TopicTooLong`], [`SpoolError::Io`]. After any error the spool is
    /// consistent and usable; the batch's messages are still the caller's to handle. An `fdatasync` failure
    /// (with [`SyncPolicy::EveryBatch`]) does not fail the append (the data is written): it is logged and
    /// counted in [`SpoolStats::sync_errors`].
    pub fn append_batch<'a, I>(&mut self, msgs: I) -> Result<Appended, SpoolError>
    where
        I: IntoIterator<Item = Msg<'a>>,
    {
        let limit = self.cfg.segment_bytes;
        let first_seq = self.next_seq;
        let time_ms = now_ms();
        self.wbuf.clear();
        let mut seq = first_seq;
        for m in msgs {
            if m.topic.len() > u16::MAX as usize {
                self.wbuf.clear();
                return Err(SpoolError::TopicTooLong { len: m.topic.len() });
            }
            let total = HDR as u64 + m.topic.len() as u64 + m.payload.len() as u64;
            if self.wbuf.len() as u64 + total > limit {
                let bytes = self.wbuf.len() as u64 + total;
                self.wbuf.clear();
                return Err(SpoolError::BatchTooLarge { bytes, limit });
            }
            format::encode(
                &mut self.wbuf,
                seq,
                time_ms,
                m.tag,
                m.qos as u8,
                m.retain,
                m.topic,
                m.payload,
            );
            seq += 1;
        }
        let count = seq - first_seq;
        if count == 0 {
            return Ok(Appended::default());
        }
        let need = self.wbuf.len() as u64;
        let roll = match (&self.active, self.segs.back()) {
            (Some(_), Some(s)) => s.len + need > limit,
            _ => true,
        };
        // Budget.
        let mut dropped = 0;
        while self.total_bytes + need > self.cfg.budget_bytes {
            // Without a roll the active (last) segment is being appended to and cannot be dropped.
            let deletable = if roll {
                self.segs.len()
            } else {
                self.segs.len().saturating_sub(1)
            };
            if self.cfg.full == SpoolFull::Refuse || deletable == 0 {
                self.st.refused += count;
                return Err(SpoolError::Full {
                    needed: need,
                    held: self.total_bytes,
                    budget: self.cfg.budget_bytes,
                });
            }
            dropped += self.drop_oldest()?;
        }
        loop {
            match self.write_batch(roll, first_seq) {
                Ok(()) => break,
                Err(SpoolError::DiskFull { path }) => {
                    self.st.disk_full += 1;
                    let deletable = if roll || self.active.is_none() {
                        self.segs.len()
                    } else {
                        self.segs.len().saturating_sub(1)
                    };
                    if self.cfg.full == SpoolFull::DropOldest && deletable > 0 {
                        dropped += self.drop_oldest()?;
                        continue;
                    }
                    self.st.refused += count;
                    return Err(SpoolError::DiskFull { path });
                }
                Err(e) => return Err(e),
            }
        }
        self.next_seq = seq;
        self.st.appended += count;
        self.unsynced_since.get_or_insert_with(Instant::now);
        if self.cfg.sync == SyncPolicy::EveryBatch {
            self.sync_data();
        }
        Ok(Appended {
            count,
            first_seq,
            last_seq: seq - 1,
            dropped,
        })
    }

    /// Write `wbuf` to the active segment (or a new one), cutting off any partial write on failure.
    fn write_batch(&mut self, roll: bool, first_seq: u64) -> Result<(), SpoolError> {
        let roll = roll || self.active.is_none();
        if roll {
            if self.active.is_some() && self.cfg.sync != SyncPolicy::Never {
                // Close the old segment durably (it will not be written again).
                self.sync_data();
            }
            self.active = None;
            let path = self.cfg.dir.join(seg_name(first_seq));
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io_err("create", &path, e))?;
            self.dir_changed();
            self.active = Some(f);
            self.segs.push_back(Seg {
                first: first_seq,
                len: 0,
            });
        }
        let seg = *self.segs.back().expect("active segment exists");
        let f = self.active.as_ref().expect("active segment open");
        self.st.record_writes += 1;
        match f.write_all_at(&self.wbuf, seg.len) {
            Ok(()) => {
                let n = self.wbuf.len() as u64;
                self.segs.back_mut().expect("active").len += n;
                self.total_bytes += n;
                self.st.bytes_written += n;
                self.st.record_bytes_written += n;
                Ok(())
            }
            Err(e) => {
                let path = self.cfg.dir.join(seg_name(seg.first));
                // Cut off whatever part was written, so no partial record sits between good ones.
                if let Err(te) = f.set_len(seg.len) {
                    log::error!(
                        "spool: cannot cut a failed write off {}: {te}",
                        path.display()
                    );
                    // Never append after it again: the next batch starts a new segment.
                    self.active = None;
                }
                if seg.len == 0 {
                    self.segs.pop_back();
                    self.active = None;
                    let _ = self.unlink(seg.first);
                }
                Err(io_err("write", &path, e))
            }
        }
    }

    /// A file was created, renamed or deleted: the directory needs an fsync (per the sync policy).
    fn dir_changed(&mut self) {
        self.dir_dirty = true;
        self.unsynced_since.get_or_insert_with(Instant::now);
    }

    fn sync_data(&mut self) {
        if self.unsynced_since.take().is_some() {
            if let Some(f) = &self.active {
                self.st.syncs += 1;
                if let Err(e) = f.sync_data() {
                    self.st.sync_errors += 1;
                    log::error!("spool {}: fdatasync failed: {e}", self.cfg.dir.display());
                }
            }
        }
        if self.dir_dirty {
            self.dir_dirty = false;
            self.st.syncs += 1;
            if let Err(e) = self.dir.sync_all() {
                self.st.sync_errors += 1;
                log::error!(
                    "spool {}: fsync of the directory failed: {e}",
                    self.cfg.dir.display()
                );
            }
        }
    }

    /// Hand up to `max_msgs` records (and, after the first, no more than `max_bytes` of topic + payload) to
    /// `f`, in order, starting after the last one handed out (or at the oldest unacknowledged after
    /// [`Spool::open`] / [`Spool::rewind`]). They stay in the spool until [`Spool::ack`]ed. Returns how many.
    /// Damaged records are skipped and counted, never handed out.
    pub fn read_batch(
        &mut self,
        max_msgs: usize,
        max_bytes: usize,
        mut f: impl FnMut(Record<'_>),
    ) -> Result<usize, SpoolError> {
        let mut n = 0;
        let mut bytes = 0usize;
        while n < max_msgs {
            let step = match self.rd.step(&self.cfg.dir, &self.segs) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    // A bad block: skip the rest of that segment rather than stall the spool forever.
                    let last = self.rd.skip_segment(&self.segs);
                    log::error!(
                        "spool {}: read error ({e}); skipping the rest of the segment",
                        self.cfg.dir.display()
                    );
                    Step::Corrupt {
                        seg: self.rd.seg.unwrap_or(0),
                        at: self.rd.off,
                        last,
                    }
                }
                Err(e) => return Err(io_err("read", &self.cfg.dir, e)),
            };
            match step {
                Step::Record { h, start } => {
                    let size = (h.topic_len as usize).saturating_add(h.payload_len as usize);
                    if n > 0 && bytes.saturating_add(size) > max_bytes {
                        self.rd.unread();
                        break;
                    }
                    let b = &self.rd.buf[start..start + h.total() as usize];
                    let t_end = HDR + h.topic_len as usize;
                    let topic = std::str::from_utf8(&b[HDR..t_end]).unwrap_or_default();
                    f(Record {
                        seq: h.seq,
                        time_ms: h.time_ms,
                        tag: h.tag,
                        topic,
                        payload: &b[t_end..],
                        qos: QoS::from_u8(h.qos).unwrap_or(QoS::AtMostOnce),
                        retain: h.retain,
                    });
                    n += 1;
                    bytes = bytes.saturating_add(size);
                }
                Step::End => break,
                Step::Gap(lost) => {
                    self.st.corrupt_records_skipped += lost;
                    log::warn!(
                        "spool {}: {lost} damaged records skipped",
                        self.cfg.dir.display()
                    );
                }
                Step::Corrupt { seg, at, last } => {
                    self.st.corrupt_regions += 1;
                    log::warn!(
                        "spool {}: damaged record at byte {at} of {}; skipping the rest of it",
                        self.cfg.dir.display(),
                        seg_name(seg)
                    );
                    if last {
                        // Never append behind damage: start a new segment.
                        self.active = None;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Start reading again at the oldest unacknowledged record (after a lost connection whose in-flight
    /// messages will not be retransmitted by the session).
    pub fn rewind(&mut self) {
        self.rd.seek(self.acked + 1);
    }

    /// Everything up to and including `seq` was delivered. Advances the acknowledged position (written to
    /// `acked` by [`Spool::flush`]) and deletes segments that are fully acknowledged. Acks at or below the
    /// current position are ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq >= self.next_seq {
            return Err(SpoolError::AckBeyondEnd {
                seq,
                last: self.next_seq - 1,
            });
        }
        if seq <= self.acked {
            return Ok(());
        }
        let floor = self.floor();
        self.st.acked += seq - floor.max(self.acked);
        self.acked = seq;
        self.gc()
    }

    /// Highest sequence number that is acknowledged or no longer held.
    fn floor(&self) -> u64 {
        match self.segs.front() {
            Some(s) => self.acked.max(s.first - 1),
            None => self.next_seq - 1,
        }
    }

    /// Messages held and not yet acknowledged.
    pub fn len(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.floor())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence number the next appended message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest acknowledged (or dropped) sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Messages not yet handed out by [`Spool::read_batch`] (the backlog for [`DrainScheduler::plan`]).
    pub fn unread(&self) -> u64 {
        let pos = match self.rd.seg {
            Some(_) => self.rd.expect.max(self.rd.target),
            None => self.rd.target,
        };
        self.next_seq.saturating_sub(pos.max(self.floor() + 1))
    }

    /// Do what is due at `now`: write the `acked` file (at most once per [`SpoolConfig::ack_interval`]) and,
    /// with [`SyncPolicy::Interval`], sync appended data. Returns when to call again, if something is
    /// pending. Call it every loop iteration of the driver.
    pub fn flush(&mut self, now: Instant) -> Result<Option<Instant>, SpoolError> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.acked != self.acked_written {
            let due = self
                .last_ack_write
                .map_or(now, |t| t + self.cfg.ack_interval);
            if now >= due {
                self.write_ack(now)?;
            } else {
                at(due);
            }
        }
        if let SyncPolicy::Interval(d) = self.cfg.sync {
            if let Some(since) = self.unsynced_since {
                if now >= since + d {
                    self.sync_data();
                } else {
                    at(since + d);
                }
            }
        }
        Ok(next)
    }

    /// Write everything out now: the `acked` file and (unless [`SyncPolicy::Never`]) an `fdatasync`.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.acked != self.acked_written {
            self.write_ack(Instant::now())?;
        }
        if self.cfg.sync != SyncPolicy::Never {
            self.sync_data();
        }
        Ok(())
    }

    fn write_ack(&mut self, now: Instant) -> Result<(), SpoolError> {
        // Also on failure: retry after the interval, not on every call.
        self.last_ack_write = Some(now);
        let tmp = self.cfg.dir.join("acked.tmp");
        let path = self.cfg.dir.join("acked");
        let b = format::encode_ack(self.acked);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&b).map_err(|e| io_err("write", &tmp, e))?;
        if self.cfg.sync != SyncPolicy::Never {
            self.st.syncs += 1;
            f.sync_data().map_err(|e| io_err("fdatasync", &tmp, e))?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| io_err("rename to acked", &tmp, e))?;
        self.dir_changed();
        if self.cfg.sync == SyncPolicy::EveryBatch {
            self.sync_data();
        }
        self.st.ack_writes += 1;
        self.st.bytes_written += b.len() as u64;
        self.acked_written = self.acked;
        Ok(())
    }

    /// Age and sequence number of the oldest unacknowledged record (reads its header if not known).
    fn oldest(&mut self) -> Option<(u64, u64)> {
        let want = self.floor() + 1;
        if want >= self.next_seq {
            return None;
        }
        if let Some(o) = self.oldest {
            if o.0 == want {
                return Some(o);
            }
        }
        if self.ackc.target > want {
            self.ackc.seek(want);
        } else {
            self.ackc.target = want;
        }
        loop {
            match self.ackc.step(&self.cfg.dir, &self.segs) {
                Ok(Step::Record { h, .. }) => {
                    self.ackc.unread();
                    self.oldest = Some((h.seq, h.time_ms));
                    return self.oldest;
                }
                Ok(Step::Gap(_)) | Ok(Step::Corrupt { .. }) => continue,
                Ok(Step::End) | Err(_) => return None,
            }
        }
    }

    /// Current counters.
    pub fn stats(&mut self) -> SpoolStats {
        let oldest_age = self
            .oldest()
            .map(|(_, t)| Duration::from_millis(now_ms().saturating_sub(t)));
        SpoolStats {
            spooled_msgs: self.len(),
            spooled_bytes: self.total_bytes,
            segments: self.segs.len() as u64,
            oldest_age,
            acked_seq: self.acked,
            next_seq: self.next_seq,
            ..self.st.clone()
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// A [`DrainScheduler`] for this spool's `drain_rate`.
    pub fn drain_scheduler(&self) -> DrainScheduler {
        DrainScheduler::new(self.cfg.drain_rate)
    }

    /// Write the acknowledged position and sync (see [`Spool::sync`]), then release the lock.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.sync()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            log::warn!("spool {}: on close: {e}", self.cfg.dir.display());
        }
        // Unlock explicitly rather than by closing: a process another thread of the host is starting shares
        // the lock's open file description from its fork until its exec, and would keep the directory
        // locked meanwhile (a reopen then failed with `Locked`, seen in the tests under load).
        // SAFETY: flock on the descriptor this Spool owns; it stays open until after this call.
        unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_UN) };
    }
}
