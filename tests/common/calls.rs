//! Whether a call waited, counted rather than timed: the calling thread's voluntary context switches around
//! each call (`getrusage(RUSAGE_THREAD)`). A call that never gave up the CPU did not sleep on a lock, a
//! blocking syscall or the network, however long a loaded machine (or qemu) took to run it; one that lost
//! the CPU to the scheduler (an involuntary switch) says nothing about qmqtt. Wall-clock figures are kept
//! for the report only.
//!
//! Include with `#[path = "common/calls.rs"] mod calls;`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// This thread's (voluntary, involuntary) context switches.
fn ctx_switches() -> (i64, i64) {
    // SAFETY: getrusage only fills the struct passed to it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (ru.ru_nvcsw as i64, ru.ru_nivcsw as i64)
}

/// This thread's voluntary context switches so far: the times it waited for something.
pub fn voluntary_switches() -> i64 {
    ctx_switches().0
}

/// Calls made through [`Calls::call`]: how many, how many blocked, and (for reports) the slowest ones.
#[derive(Default, Debug)]
pub struct Calls {
    pub calls: u64,
    /// Calls that gave up the CPU voluntarily: they waited for something.
    pub blocked: u64,
    /// The slowest call, and the slowest one the scheduler did not preempt (reports only).
    pub max: Duration,
    pub max_running: Duration,
    pub over_1ms: u64,
}

impl Calls {
    pub fn call<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let (v0, i0) = ctx_switches();
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed();
        let (v1, i1) = ctx_switches();
        self.calls += 1;
        self.max = self.max.max(dt);
        if i1 == i0 {
            self.max_running = self.max_running.max(dt);
        }
        if v1 > v0 {
            self.blocked += 1;
        }
        if dt > Duration::from_millis(1) {
            self.over_1ms += 1;
        }
        r
    }

    /// Fewer than one call in a thousand blocked, beyond one per wake-up of the I/O thread while the calls
    /// ran (`io_wakeups`, the difference of `Stats::wakeups`): a publish may wait briefly for the queue's lock
    /// while the I/O thread holds it (it takes it when it wakes, not per message); never a wait on the
    /// network. Not under qemu-user (`QMQTT_TEST_RUNNER`, targets/test), whose own locks
    /// (translating code) make any thread wait.
    pub fn assert_rarely_blocked(&self, what: &str, io_wakeups: u64) {
        if std::env::var_os("QMQTT_TEST_RUNNER").is_some() {
            eprintln!("{what}: {self:?} (emulated: waits not asserted)");
            return;
        }
        assert!(
            self.blocked <= self.calls / 1000 + io_wakeups,
            "{what}: {} of {} calls blocked, {io_wakeups} I/O thread wake-ups: {self:?}",
            self.blocked,
            self.calls
        );
    }
}
