//! A counting global allocator for the "no allocation on the hot path" and bounded-memory tests. A test
//! binary opts in with `#[global_allocator] static A: common::alloc::Counting = common::alloc::Counting;`
//! and reads [`thread_allocs`] (this thread's allocations: other threads of the engine don't disturb it),
//! [`all_allocs`] (every thread's; for a binary holding a single test), or the heap bytes live now and at
//! their peak ([`live_bytes`], [`peak_bytes`], [`reset_peak`]): what the code holds, whatever the system
//! allocator keeps resident besides.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting;

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
}
static ALL: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn count() {
    // try_with: the thread local may already be gone while a thread exits.
    let _ = THREAD.try_with(|c| c.set(c.get() + 1));
    ALL.fetch_add(1, Ordering::Relaxed);
}

fn grew(n: usize) {
    let live = LIVE.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n as u64, Ordering::Relaxed);
}

// SAFETY: forwards unchanged to the system allocator; counting allocates nothing (a const-initialised
// thread local and an atomic).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        shrank(l.size());
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            // Counted as the new block arriving before the old one goes: both exist during the copy.
            grew(n);
            shrank(l.size());
        }
        q
    }
}

/// Allocations (and reallocations) made by the calling thread so far.
pub fn thread_allocs() -> u64 {
    THREAD.with(|c| c.get())
}

/// Allocations (and reallocations) made by every thread so far.
pub fn all_allocs() -> u64 {
    ALL.load(Ordering::Relaxed)
}

/// Heap bytes allocated and not yet freed, every thread's.
pub fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// The most heap bytes live at once since the last [`reset_peak`] (or the start).
pub fn peak_bytes() -> u64 {
    PEAK.load(Ordering::Relaxed)
}

/// Start a new peak from what is live now; returns that.
pub fn reset_peak() -> u64 {
    let live = live_bytes();
    PEAK.store(live, Ordering::Relaxed);
    live
}
