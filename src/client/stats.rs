//! The statistics of a connection, listed once: the table in `stats!` (below) defines [`Stats`], the atomic
//! [`Counters`] the threads increment (relaxed adds, no lock, no allocation), the copy of the counters into a
//! `Stats`, and [`Stats::counters`], the ordered (name, value) list `.mqtt.stats[]` is built from. Adding a
//! statistic means adding its row (and its increments).
//!
//! Rows of the table, in the order of `.mqtt.stats[]` (and of `Stats`' fields):
//! * `field: KIND => c"qName"` (or `=> _` for no entry in the list): a counter behind a field of `Stats`.
//!   KIND is `count` (`u64`, an `AtomicU64`), `flag` (`bool`, an `AtomicBool`), `nanos` (a `Duration`, an
//!   `AtomicU64` of nanoseconds), `since_ms` (a `u64` age in ms; the `AtomicU64` holds the wall-clock time in
//!   ms since the epoch, 0 for none) or `hot` (a `count` the owner's threads change on every publish: alone
//!   on its cache line, so that the I/O thread's counters beside it do not move that line between the cores
//!   for every message). Only `count`, `hot` and `since_ms` rows can have a name.
//! * `sum c"qName" = [field, …]`: a list entry only, the sum of counters (e.g. `dropped`, all drops).
//! * `host c"qName"`: a list entry only, whose value the caller keeps (q's `callbackErrors`).
//! * `field: other TYPE`: a field of `Stats` that is not a counter (the last error as a typed value, the
//!   broker's CONNACK, strings): written by hand under a lock in `Client::stats`, and not in the list; the q
//!   layer adds its entries (`connected`, the MQTT 5 limits, `broker`, `lastError`) after the list by hand,
//!   as they are not counts (`connected` is a `flag` row for the same reason).
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::error::Error;
use crate::session::ServerInfo;

/// Reads the table row by row (a tt-muncher: rows of different shapes), collecting `Stats`' fields, the
/// counters, the loads and the list's entries; the loads and the entries are closures so that each is whole
/// in the expansion that wrote it.
macro_rules! stats {
    (@ty count) => { u64 };
    (@ty hot) => { u64 };
    (@ty flag) => { bool };
    (@ty nanos) => { Duration };
    (@ty since_ms) => { u64 };
    (@atomic flag) => { AtomicBool };
    (@atomic hot) => { OwnLine };
    (@atomic $kind:ident) => { AtomicU64 };
    (@load count, $a:expr) => { $a.load(Relaxed) };
    (@load hot, $a:expr) => { $a.load(Relaxed) };
    (@load flag, $a:expr) => { $a.load(Relaxed) };
    (@load nanos, $a:expr) => { Duration::from_nanos($a.load(Relaxed)) };
    (@load since_ms, $a:expr) => {
        match $a.load(Relaxed) {
            0 => 0,
            t => crate::clock::now_ms().saturating_sub(t),
        }
    };
    // Only counts and ages have a name in the list (the q dictionary's longs).
    (@named count) => {};
    (@named hot) => {};
    (@named since_ms) => {};
    (@unit $x:tt) => { () };

    // Rows.
    (@rows [$($s:tt)*] [$($c:tt)*] [$($l:tt)*] [$($q:tt)*]
        sum $key:literal = [$($part:ident),+ $(,)?], $($rest:tt)*) => {
        stats!(@rows [$($s)*] [$($c)*] [$($l)*]
            [$($q)* ($key, |s: &Stats, _host: u64| 0 $(+ s.$part)+)] $($rest)*);
    };
    (@rows [$($s:tt)*] [$($c:tt)*] [$($l:tt)*] [$($q:tt)*] host $key:literal, $($rest:tt)*) => {
        stats!(@rows [$($s)*] [$($c)*] [$($l)*]
            [$($q)* ($key, |_s: &Stats, host: u64| host)] $($rest)*);
    };
    (@rows [$($s:tt)*] [$($c:tt)*] [$($l:tt)*] [$($q:tt)*]
        $(#[$m:meta])* $field:ident: other $ty:ty, $($rest:tt)*) => {
        stats!(@rows [$($s)* $(#[$m])* pub $field: $ty,] [$($c)*] [$($l)*] [$($q)*] $($rest)*);
    };
    (@rows [$($s:tt)*] [$($c:tt)*] [$($l:tt)*] [$($q:tt)*]
        $(#[$m:meta])* $field:ident: $kind:ident => _, $($rest:tt)*) => {
        stats!(@rows
            [$($s)* $(#[$m])* pub $field: stats!(@ty $kind),]
            [$($c)* pub $field: stats!(@atomic $kind),]
            [$($l)* (|c: &Counters, s: &mut Stats| s.$field = stats!(@load $kind, c.$field))]
            [$($q)*] $($rest)*);
    };
    (@rows [$($s:tt)*] [$($c:tt)*] [$($l:tt)*] [$($q:tt)*]
        $(#[$m:meta])* $field:ident: $kind:ident => $key:literal, $($rest:tt)*) => {
        stats!(@named $kind);
        stats!(@rows
            [$($s)* $(#[$m])* pub $field: stats!(@ty $kind),]
            [$($c)* pub $field: stats!(@atomic $kind),]
            [$($l)* (|c: &Counters, s: &mut Stats| s.$field = stats!(@load $kind, c.$field))]
            [$($q)* ($key, |s: &Stats, _host: u64| s.$field)] $($rest)*);
    };

    // The end of the table.
    (@rows [$($s:tt)*] [$($c:tt)*] [$($l:tt)*] [$(($key:literal, $get:expr))*]) => {
        /// Counters of one connection (monotonic unless said otherwise).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Stats {
            $($s)*
        }

        /// The counters behind [`Stats`]: atomics, readable without any lock (see the module doc for what
        /// each kind of row holds).
        #[derive(Default)]
        pub(crate) struct Counters {
            $($c)*
        }

        impl Counters {
            /// Copy every counter into `s` (its `other` fields are left as they are).
            pub(crate) fn load_into(&self, s: &mut Stats) {
                $(($l)(self, s);)*
            }
        }

        impl Stats {
            /// The counts in the order and under the names of `.mqtt.stats[]`, where they come first;
            /// `host` is the value of the `host` row (q's `callbackErrors`, a count the q layer keeps).
            pub fn counters(&self, host: u64) -> [(&'static CStr, u64); [$(stats!(@unit $key)),*].len()] {
                [$(($key, ($get)(self, host))),*]
            }
        }
    };
    ($($rows:tt)*) => { stats!(@rows [] [] [] [] $($rows)*); };
}

/// An `AtomicU64` alone on its cache line (two lines: neighbouring lines are fetched in pairs on x86).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct OwnLine(AtomicU64);

impl std::ops::Deref for OwnLine {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

stats! {
    /// Messages / bytes (topic + payload) waiting in the publish queue now, including those taken by the
    /// I/O thread and not yet accepted by the session (e.g. waiting for a reconnect).
    queued: hot => c"queued",
    queued_bytes: hot => c"queuedBytes",
    /// QoS 1/2 messages sent and not yet acknowledged, now.
    inflight: count => c"inflight",
    /// Messages handed to the session and written (QoS 0: sent and forgotten; QoS 1/2: sent at least once).
    sent: count => c"sent",
    /// QoS 1/2 messages acknowledged (PUBACK / PUBCOMP).
    acked: count => c"acked",
    sum c"dropped" = [dropped_oldest, dropped_newest, refused_full, dropped_incoming, dropped_oversize],
    /// Publish-queue overflow under `FullPolicy::DropOldest` / `DropNewest` / `Error`.
    dropped_oldest: count => c"droppedOldest",
    dropped_newest: count => c"droppedNewest",
    refused_full: count => c"refusedFull",
    /// Received messages dropped because they can never fit in the event queue (larger than
    /// `event_queue_bytes`). A merely full queue pauses reading instead (`rx_paused`).
    dropped_incoming: count => c"droppedIncoming",
    /// Incoming messages over `max_packet_size` read past, discarded and acknowledged (MQTT 3.1.1/3.1; the
    /// connection stays up).
    dropped_oversize: count => c"droppedTooLarge",
    /// Times reading from the broker paused because the event queue had no room for the next message.
    rx_paused: count => c"rxPaused",
    /// Total time reading was paused (pauses that have ended; see `rx_paused_now`).
    rx_paused_time: nanos => _,
    /// Reading is paused now (waiting for the owner to drain events).
    rx_paused_now: flag => _,
    /// Messages received from the broker.
    received: count => c"received",
    /// Successful reconnections after a lost connection.
    reconnects: count => c"reconnects",
    /// MQTT bytes read / written (plaintext, before TLS).
    bytes_in: count => c"bytesIn",
    bytes_out: count => c"bytesOut",
    host c"callbackErrors",
    /// Times the I/O thread woke up (for spotting busy loops: an idle connection wakes only for
    /// keep-alive).
    wakeups: count => c"wakeups",
    /// Socket writes (`write`/`writev` calls that wrote something); `sent / socket_writes` is the batching.
    socket_writes: count => c"socketWrites",
    /// Disk spool (all 0 without `Config::spool`). Messages / bytes of segment files held now (not yet
    /// acknowledged by the broker), including a previous run's backlog.
    spooled: count => c"spooled",
    spooled_bytes: count => c"spooledBytes",
    /// Age of the oldest message in the spool now, in milliseconds (0 when the spool is empty).
    spool_oldest_age_ms: since_ms => c"spoolOldestAgeMs",
    /// Messages moved from the publish queue into the spool.
    spilled: count => c"spilled",
    sum c"spoolDropped" = [spool_dropped_oldest, spool_refused, spool_disk_full],
    /// Spooled messages lost to the spool's budget (`SpoolFull::DropOldest` deleted unsent ones), refused by
    /// it (`SpoolFull::Refuse`, or no room could be made; they stayed in the publish queue, whose
    /// `full_policy` then applied), and appends that hit a full disk.
    spool_dropped_oldest: count => _,
    spool_refused: count => _,
    spool_disk_full: count => _,
    /// Bytes written to the spool's files (records and acknowledgement files): the storage wear.
    spool_bytes_written: count => c"spoolBytesWritten",
    /// Spooled messages of a previous run delivered by this one (their tokens belong to the old process, so
    /// no `Delivered` event is emitted for them).
    spool_delivered_previous: count => _,
    /// The last spool failure (disk full, I/O error), in words.
    last_spool_error: other Option<String>,
    /// Subscriptions the broker refused (SUBACK failure), or the session could not send.
    sub_refused: count => c"subRefused",
    /// Messages reported [`Event::Failed`](super::Event::Failed) (refused by the broker, or beyond its
    /// limits).
    failed: count => c"failed",
    /// MQTT 5: PUBLISHes sent with a topic alias instead of their topic, and the topic bytes that saved.
    topic_aliased: count => c"topicAliased",
    topic_alias_bytes_saved: count => c"topicAliasBytesSaved",
    connected: flag => _,
    /// The last connection failure.
    last_error: other Option<Error>,
    /// What the broker's CONNACK of the current (or last) connection said: the negotiated limits (receive
    /// maximum, maximum packet size, topic alias maximum, maximum QoS…), assigned client id, server
    /// keep-alive. `None` before the first connection.
    server: other Option<ServerInfo>,
    /// The broker of the current (or last) connection, as `scheme://host:port` — one of `Config::uri`'s list.
    /// `None` before the first connection.
    broker: other Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_copy_and_list_in_order() {
        let c = Counters::default();
        c.queued.store(1, Relaxed);
        c.dropped_oldest.store(2, Relaxed);
        c.dropped_oversize.store(3, Relaxed);
        c.spool_disk_full.store(4, Relaxed);
        c.rx_paused_time.store(5_000, Relaxed);
        c.connected.store(true, Relaxed);
        let mut s = Stats::default();
        c.load_into(&mut s);
        assert_eq!((s.queued, s.dropped_oldest, s.dropped_oversize), (1, 2, 3));
        assert_eq!(s.rx_paused_time, Duration::from_micros(5));
        assert!(s.connected);
        assert_eq!(s.spool_oldest_age_ms, 0);
        let list = s.counters(7);
        let names: Vec<&str> = list.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "queued",
                "queuedBytes",
                "inflight",
                "sent",
                "acked",
                "dropped",
                "droppedOldest",
                "droppedNewest",
                "refusedFull",
                "droppedIncoming",
                "droppedTooLarge",
                "rxPaused",
                "received",
                "reconnects",
                "bytesIn",
                "bytesOut",
                "callbackErrors",
                "wakeups",
                "socketWrites",
                "spooled",
                "spooledBytes",
                "spoolOldestAgeMs",
                "spilled",
                "spoolDropped",
                "spoolBytesWritten",
                "subRefused",
                "failed",
                "topicAliased",
                "topicAliasBytesSaved",
            ]
        );
        let get = |n: &str| list.iter().find(|(k, _)| k.to_str() == Ok(n)).unwrap().1;
        assert_eq!(get("queued"), 1);
        assert_eq!(get("dropped"), 5);
        assert_eq!(get("droppedTooLarge"), 3);
        assert_eq!(get("spoolDropped"), 4);
        assert_eq!(get("callbackErrors"), 7);
    }
}
