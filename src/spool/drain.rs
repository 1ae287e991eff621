//! Sans-I/O helpers for the driver: the drain-rate token bucket, the rule that splits each send turn between
//! the spool backlog and live messages, and the tracker that turns per-message completions into the
//! cumulative acknowledgement [`Spool::ack`](super::Spool::ack) takes. No clocks: the caller passes `now`.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`. Fed `now` by the caller.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    interval: Duration,
    burst: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl TokenBucket {
    /// `rate` ≥ 1 tokens per second (0 is taken as 1), at most `burst` ≥ 1 held. Starts full.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        let rate = rate.max(1);
        TokenBucket {
            interval: Duration::from_nanos(1_000_000_000 / rate as u64)
                .max(Duration::from_nanos(1)),
            burst: burst.max(1),
            tokens: burst.max(1),
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let last = match self.last {
            None => {
                self.last = Some(now);
                return;
            }
            Some(l) => l,
        };
        if self.tokens >= self.burst {
            self.last = Some(now);
            return;
        }
        let elapsed = now.saturating_duration_since(last);
        let n = elapsed.as_nanos() / self.interval.as_nanos();
        if n == 0 {
            return;
        }
        let room = (self.burst - self.tokens) as u128;
        if n >= room {
            self.tokens = self.burst;
            self.last = Some(now);
        } else {
            self.tokens += n as u32;
            // Keep the fractional remainder: advance by whole intervals only.
            self.last = Some(last + self.interval * n as u32);
        }
    }

    /// Take up to `want` tokens; returns how many were taken.
    pub fn take(&mut self, now: Instant, want: u32) -> u32 {
        self.refill(now);
        let n = want.min(self.tokens);
        self.tokens -= n;
        n
    }

    /// When the next token will be available, if none is now.
    pub fn next_token_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        if self.tokens > 0 {
            None
        } else {
            Some(self.last.unwrap_or(now) + self.interval)
        }
    }
}

/// How many messages to send this turn from each source; see [`DrainScheduler::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// Take this many from the spool ([`Spool::read_batch`](super::Spool::read_batch)) first…
    pub from_spool: usize,
    /// …then this many from the in-memory queue.
    pub from_live: usize,
    /// Backlog is waiting for the rate limiter: plan again at this time (arm a timer).
    pub wake_at: Option<Instant>,
}

/// The rule that splits each send turn between the spool backlog and live (in-memory) messages.
///
/// * `drain_rate: None` — **strict publish order**: while the spool holds unsent messages, live messages wait
///   (they are newer); the backlog goes as fast as the in-flight window allows.
/// * `drain_rate: Some(r)` — **rate-limited backlog, live flows**: the backlog leaves at most `r` messages per
///   second (bursts of up to `r`, i.e. one second's worth); within that allowance it has priority for window
///   room; live messages use the rest of the room. Each stream stays in publish order; a live message may
///   overtake older spooled ones (never the reverse).
#[derive(Debug, Clone)]
pub struct DrainScheduler {
    bucket: Option<TokenBucket>,
}

impl DrainScheduler {
    /// From [`SpoolConfig::drain_rate`](super::SpoolConfig::drain_rate).
    pub fn new(drain_rate: Option<u32>) -> DrainScheduler {
        DrainScheduler {
            bucket: drain_rate.map(|r| TokenBucket::new(r, r.max(1))),
        }
    }

    /// Plan one send turn. `room`: messages the in-flight window (or the socket budget) takes now;
    /// `backlog`: unsent messages in the spool (not counting those already read and in flight);
    /// `live`: messages in the in-memory queue. Tokens are consumed for `from_spool`; if the spool then yields
    /// fewer, call [`DrainScheduler::refund`].
    pub fn plan(&mut self, now: Instant, room: usize, backlog: u64, live: usize) -> DrainPlan {
        let want = (room as u64).min(backlog) as usize;
        match &mut self.bucket {
            None => {
                if backlog > 0 {
                    DrainPlan {
                        from_spool: want,
                        from_live: 0,
                        wake_at: None,
                    }
                } else {
                    DrainPlan {
                        from_spool: 0,
                        from_live: room.min(live),
                        wake_at: None,
                    }
                }
            }
            Some(b) => {
                let got = b.take(now, want.min(u32::MAX as usize) as u32) as usize;
                let wake_at = if (got as u64) < backlog && got < room {
                    b.next_token_at(now)
                } else {
                    None
                };
                DrainPlan {
                    from_spool: got,
                    from_live: (room - got).min(live),
                    wake_at,
                }
            }
        }
    }

    /// Give back `n` tokens taken by [`DrainScheduler::plan`] but not used (the spool yielded fewer).
    pub fn refund(&mut self, n: usize) {
        if let Some(b) = &mut self.bucket {
            b.tokens = (b.tokens as usize + n).min(b.burst as usize) as u32;
        }
    }
}

/// Turns completions of individual spooled messages (in any order) into the cumulative acknowledgement
/// [`Spool::ack`](super::Spool::ack) wants: the highest `seq` such that it and every message read before it
/// are complete.
///
/// Record each spooled message when it is handed to the session ([`AckTracker::sent`], in read order), and
/// its completion ([`AckTracker::complete`]: PUBACK for QoS 1, PUBCOMP for QoS 2, written to the socket for
/// QoS 0). Memory: messages are kept as runs — consecutive completed messages share one entry — so it is
/// bounded by the messages in flight, also while one the broker never acknowledges holds the prefix back
/// and QoS 0 messages keep completing behind it. The capacity given to `new` (the in-flight window plus the
/// QoS 0 messages in one write) is allocated once.
#[derive(Debug, Clone)]
pub struct AckTracker {
    /// In read order: a run of consecutive messages (`first..=last`, `n` of them), complete or not; an
    /// incomplete run is one message.
    pending: VecDeque<Run>,
    /// Messages in `pending`.
    messages: usize,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    first: u64,
    last: u64,
    n: usize,
    done: bool,
}

impl AckTracker {
    pub fn new(capacity: usize) -> AckTracker {
        AckTracker {
            pending: VecDeque::with_capacity(capacity),
            messages: 0,
        }
    }
    /// A spooled message was handed to the session. Sequence numbers must increase.
    pub fn sent(&mut self, seq: u64) {
        debug_assert!(self.pending.back().is_none_or(|r| r.last < seq));
        self.pending.push_back(Run {
            first: seq,
            last: seq,
            n: 1,
            done: false,
        });
        self.messages += 1;
    }
    /// `seq` completed. Returns `Some(ack)` when the contiguous completed prefix grew: pass it to
    /// [`Spool::ack`](super::Spool::ack). Unknown sequence numbers are ignored.
    pub fn complete(&mut self, seq: u64) -> Option<u64> {
        let i = self
            .pending
            .partition_point(|r| r.first <= seq)
            .checked_sub(1)?;
        let r = &mut self.pending[i];
        if r.done || r.first != seq {
            return None;
        }
        r.done = true;
        // Merge with completed neighbours: runs stay as few as the incomplete messages between them.
        let mut i = i;
        if self.pending.get(i + 1).is_some_and(|n| n.done) {
            let next = self.pending.remove(i + 1).unwrap_or_else(|| unreachable!());
            self.pending[i].last = next.last;
            self.pending[i].n += next.n;
        }
        if i > 0 && self.pending[i - 1].done {
            let cur = self.pending.remove(i).unwrap_or_else(|| unreachable!());
            i -= 1;
            self.pending[i].last = cur.last;
            self.pending[i].n += cur.n;
        }
        match self.pending.front() {
            Some(r) if r.done => {
                let r = self.pending.pop_front().unwrap_or_else(|| unreachable!());
                self.messages -= r.n;
                Some(r.last)
            }
            _ => None,
        }
    }
    /// Messages sent and not yet part of the acknowledged prefix.
    pub fn len(&self) -> usize {
        self.messages
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    /// Forget everything (after [`Spool::rewind`](super::Spool::rewind) on a lost connection).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.messages = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        assert_eq!(b.take(t0, 100), 5);
        assert_eq!(b.take(t0, 1), 0);
        assert_eq!(b.next_token_at(t0), Some(t0 + Duration::from_millis(100)));
        assert_eq!(b.take(t0 + Duration::from_millis(99), 1), 0);
        assert_eq!(b.take(t0 + Duration::from_millis(250), 10), 2);
        // remainder 50 ms kept: one more at 300 ms
        assert_eq!(b.take(t0 + Duration::from_millis(300), 10), 1);
        // long idle: capped at burst
        assert_eq!(b.take(t0 + Duration::from_secs(100), 100), 5);
        // over 10 s at most ~100 + burst
        let mut total = 0;
        let start = t0 + Duration::from_secs(100);
        for ms in 0..10_000u64 {
            total += b.take(start + Duration::from_millis(ms), 1000);
        }
        assert!((99..=101).contains(&total), "{total}");
    }

    #[test]
    fn scheduler_rules() {
        let t0 = Instant::now();
        let mut s = DrainScheduler::new(None);
        assert_eq!(
            s.plan(t0, 10, 3, 50),
            DrainPlan {
                from_spool: 3,
                from_live: 0,
                wake_at: None
            }
        );
        assert_eq!(
            s.plan(t0, 10, 0, 50),
            DrainPlan {
                from_spool: 0,
                from_live: 10,
                wake_at: None
            }
        );
        let mut s = DrainScheduler::new(Some(4));
        let p = s.plan(t0, 10, 100, 50);
        assert_eq!((p.from_spool, p.from_live), (4, 6));
        let p = s.plan(t0, 10, 96, 50);
        assert_eq!((p.from_spool, p.from_live), (0, 10));
        assert_eq!(p.wake_at, Some(t0 + Duration::from_millis(250)));
        s.refund(2);
        let p = s.plan(t0, 10, 96, 0);
        assert_eq!((p.from_spool, p.from_live), (2, 0));
    }

    #[test]
    fn tracker_out_of_order() {
        let mut t = AckTracker::new(8);
        for s in [5, 6, 7, 9] {
            t.sent(s);
        }
        assert_eq!(t.complete(6), None);
        assert_eq!(t.complete(5), Some(6));
        assert_eq!(t.complete(42), None);
        assert_eq!(t.complete(9), None);
        assert_eq!(t.complete(7), Some(9));
        assert!(t.is_empty());
    }

    #[test]
    fn tracker_memory_is_bounded_behind_a_message_never_acknowledged() {
        let mut t = AckTracker::new(8);
        t.sent(1); // QoS 1, never acknowledged
        for s in 2..1_000_000 {
            t.sent(s); // QoS 0: complete once written
            assert_eq!(t.complete(s), None);
        }
        assert_eq!(t.len(), 999_999);
        assert_eq!(
            t.pending.len(),
            2,
            "one run for the stuck message, one for the rest"
        );
        assert!(t.pending.capacity() <= 8);
        assert_eq!(t.complete(1), Some(999_999));
        assert_eq!((t.is_empty(), t.len()), (true, 0));
    }
}
