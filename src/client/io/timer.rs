//! The driver's deadlines in one table (the shape of quinn-proto's `TimerTable`): each [`Timer`] is set to
//! an instant or stopped; the poll loop sleeps until the earliest one (or the session's own deadline) and
//! asks which have expired. Nothing else in the driver keeps an `Option<Instant>`.
use std::time::Instant;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The connection attempt gives up (`connect_timeout` after it started).
    Connect,
    /// The next reconnect attempt (backoff).
    Reconnect,
    /// `disconnect`'s deadline: stop draining, send DISCONNECT, exit.
    Stop,
    /// Come back to a lingering stream of publishes (`Config::linger`) without being woken.
    Linger,
    /// Reading waits for the broker to take what is owed to it and it has taken nothing since this was set:
    /// at expiry (keep-alive) the connection is dropped (see the `rx` module).
    Unread,
    /// `Spool::flush` is due (its sync policy).
    SpoolFlush,
    /// Disconnected with messages queued: spill them all.
    SpoolSpill,
    /// A spool operation failed: no new attempt before then.
    SpoolRetry,
    /// The drain rate has a token for the backlog again.
    SpoolDrain,
}

const COUNT: usize = Timer::SpoolDrain as usize + 1;

#[derive(Debug, Default)]
pub(super) struct TimerTable {
    at: [Option<Instant>; COUNT],
}

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.at[t as usize] = Some(at);
    }

    /// Set `t` unless it is already due sooner.
    pub fn set_earliest(&mut self, t: Timer, at: Instant) {
        let slot = &mut self.at[t as usize];
        *slot = Some(slot.map_or(at, |s| s.min(at)));
    }

    /// Set or stop.
    pub fn put(&mut self, t: Timer, at: Option<Instant>) {
        self.at[t as usize] = at;
    }

    pub fn stop(&mut self, t: Timer) {
        self.at[t as usize] = None;
    }

    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t as usize]
    }

    pub fn is_set(&self, t: Timer) -> bool {
        self.at[t as usize].is_some()
    }

    /// Set and due.
    pub fn is_expired(&self, t: Timer, now: Instant) -> bool {
        self.at[t as usize].is_some_and(|at| now >= at)
    }

    /// Not set, or due.
    pub fn is_clear(&self, t: Timer, now: Instant) -> bool {
        self.at[t as usize].is_none_or(|at| now >= at)
    }

    /// If `t` is due, stop it and say so.
    pub fn take_expired(&mut self, t: Timer, now: Instant) -> bool {
        let due = self.is_expired(t, now);
        if due {
            self.stop(t);
        }
        due
    }

    /// The earliest deadline among the timers `counts` accepts.
    pub fn earliest(&self, counts: impl Fn(Timer) -> bool) -> Option<Instant> {
        ALL.iter()
            .filter(|&&t| counts(t))
            .filter_map(|&t| self.at[t as usize])
            .min()
    }
}

const ALL: [Timer; COUNT] = [
    Timer::Connect,
    Timer::Reconnect,
    Timer::Stop,
    Timer::Linger,
    Timer::Unread,
    Timer::SpoolFlush,
    Timer::SpoolSpill,
    Timer::SpoolRetry,
    Timer::SpoolDrain,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_and_expiry() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut t = TimerTable::default();
        assert_eq!(t.earliest(|_| true), None);
        t.set(Timer::Reconnect, s(5));
        t.set(Timer::SpoolDrain, s(2));
        t.set_earliest(Timer::Stop, s(9));
        t.set_earliest(Timer::Stop, s(7));
        t.set_earliest(Timer::Stop, s(8));
        assert_eq!(t.get(Timer::Stop), Some(s(7)));
        assert_eq!(t.earliest(|_| true), Some(s(2)));
        assert_eq!(t.earliest(|x| x != Timer::SpoolDrain), Some(s(5)));
        assert!(!t.is_expired(Timer::Reconnect, s(4)) && t.is_expired(Timer::Reconnect, s(5)));
        assert!(t.is_clear(Timer::Connect, s(0)) && !t.is_clear(Timer::Reconnect, s(4)));
        assert!(!t.take_expired(Timer::Reconnect, s(4)));
        assert!(t.take_expired(Timer::Reconnect, s(6)));
        assert!(!t.is_set(Timer::Reconnect));
        t.put(Timer::Linger, None);
        assert_eq!(t.earliest(|_| true), Some(s(2)));
    }
}
