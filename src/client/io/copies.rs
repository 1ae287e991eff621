//! Copies of the queued QoS 1/2 messages in flight, kept with a spool so that a stop can spool what the
//! broker has not acknowledged (see [`InflightCopies`]).
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use super::tx::Staged;
use crate::client::queue::HDR;
use crate::client::stats::Counters;
use crate::session::Token;

/// Copies of the queued QoS 1/2 messages in the session's window (with a spool only), so that a stop
/// while they are unacknowledged (the broker unreachable) can put them in the spool instead of losing them.
/// Records as in the publish queue, in the order handed to the session; acknowledged ones are dropped from
/// the front at once and from the middle by an in-place compaction. Memory: the window's messages, at
/// most twice over.
#[derive(Default)]
pub(super) struct InflightCopies {
    buf: Vec<u8>,
    /// Start of the first record in `buf`.
    head: usize,
    /// (token, record length, acknowledged).
    idx: VecDeque<(Token, usize, bool)>,
    /// Bytes of acknowledged records still in `buf`.
    done_bytes: usize,
}

impl InflightCopies {
    pub fn push(&mut self, token: Token, record: &[u8]) {
        self.buf.extend_from_slice(record);
        self.idx.push_back((token, record.len(), false));
    }

    pub fn done(&mut self, token: Token) {
        // Acknowledgements come mostly in order: the record is near the front.
        let Some(e) = self.idx.iter_mut().find(|e| e.0 == token && !e.2) else {
            return;
        };
        e.2 = true;
        self.done_bytes += e.1;
        while let Some(&(_, len, true)) = self.idx.front() {
            self.idx.pop_front();
            self.head += len;
            self.done_bytes -= len;
        }
        if self.idx.is_empty() {
            self.buf.clear();
            self.head = 0;
        } else if self.head + self.done_bytes > (self.buf.len() - self.head).max(4096) {
            self.compact();
        }
    }

    /// The unacknowledged records go back in front of `staged` (they are older than anything there) and
    /// count as queued again; the window is given up (the thread is stopping).
    pub fn unsend(&mut self, staged: &mut Staged, ctr: &Counters) {
        self.compact();
        if self.buf.is_empty() {
            return;
        }
        ctr.queued.fetch_add(self.idx.len() as u64, Relaxed);
        let hdrs = (self.idx.len() * HDR) as u64;
        ctr.queued_bytes
            .fetch_add(self.buf.len() as u64 - hdrs, Relaxed);
        self.buf.extend_from_slice(&staged.buf[staged.off..]);
        std::mem::swap(&mut self.buf, &mut staged.buf);
        staged.off = 0;
        self.buf.clear();
        self.idx.clear();
        ctr.inflight.store(0, Relaxed);
    }

    /// Move the unacknowledged records to the front of `buf` (in place, no allocation).
    fn compact(&mut self) {
        let (mut from, mut to) = (self.head, 0);
        self.idx.retain(|&(_, len, done)| {
            if !done {
                self.buf.copy_within(from..from + len, to);
                to += len;
            }
            from += len;
            !done
        });
        self.buf.truncate(to);
        self.head = 0;
        self.done_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(c: &InflightCopies) -> Vec<(Token, Vec<u8>)> {
        let mut pos = c.head;
        c.idx
            .iter()
            .filter_map(|&(t, len, done)| {
                let r = c.buf[pos..pos + len].to_vec();
                pos += len;
                (!done).then_some((t, r))
            })
            .collect()
    }

    #[test]
    fn inflight_copies_keep_the_unacknowledged_in_order() {
        let mut c = InflightCopies::default();
        let rec = |i: u8| vec![i; 3000];
        for t in 1..=5u64 {
            c.push(t, &rec(t as u8));
        }
        c.done(2);
        c.done(1); // front pops 1 and 2
        assert_eq!(c.head, 6000);
        c.done(4);
        c.done(42); // unknown: ignored
        assert_eq!(tokens(&c), vec![(3, rec(3)), (5, rec(5))]);
        c.push(6, &rec(6));
        c.compact();
        assert_eq!((c.head, c.buf.len()), (0, 9000));
        assert_eq!(tokens(&c), vec![(3, rec(3)), (5, rec(5)), (6, rec(6))]);
        for t in [3, 5, 6] {
            c.done(t);
        }
        assert!(c.buf.is_empty() && c.idx.is_empty());
        // A long in-order stream never holds more than the window (here 2) plus garbage below the bound.
        for t in 100..10_000u64 {
            c.push(t, &[1u8; 100]);
            if t >= 101 {
                c.done(t - 1);
            }
            assert!(c.buf.len() <= 8192 + 200, "{}", c.buf.len());
        }
    }
}
