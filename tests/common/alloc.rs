//! A counting global allocator for the "no allocation on the hot path" tests. A test binary opts in with
//! `#[global_allocator] static A: common::alloc::Counting = common::alloc::Counting;` and reads
//! [`thread_allocs`] (this thread's allocations: other threads of the engine don't disturb it) or
//! [`all_allocs`] (every thread's; for a binary holding a single test).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting;

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
}
static ALL: AtomicU64 = AtomicU64::new(0);

fn count() {
    // try_with: the thread local may already be gone while a thread exits.
    let _ = THREAD.try_with(|c| c.set(c.get() + 1));
    ALL.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: forwards unchanged to the system allocator; counting allocates nothing (a const-initialised
// thread local and an atomic).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
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
