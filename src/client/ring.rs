//! A fixed-capacity FIFO of variable-length records in one byte buffer, used by the publish queue and the
//! event queue.
//!
//! Records are written back to back and may wrap around the end of the buffer (a record is then split in
//! two pieces), so no space is lost to fragmentation: `free()` bytes are exactly what can be pushed. Readers
//! copy records out ([`ByteRing::peek`], [`ByteRing::copy_front`]) rather than borrow them, which is what both
//! users want anyway: they copy a batch under their lock and work on it after releasing the lock.
//!
//! The buffer is allocated once, zeroed by the allocator (large zeroed allocations are fresh pages, which cost
//! no resident memory until touched), and positions reset to 0 whenever the ring empties, so a ring that is
//! drained promptly only ever touches its first pages.
//!
//! The size comes from the user: it is allocated fallibly and at most the machine's physical memory
//! ([`ByteRing::new`] returns `None` otherwise), since a failed allocation aborts the process (q with it).

/// FIFO of byte records with a hard capacity.
pub(crate) struct ByteRing {
    buf: Vec<u8>,
    /// Read position.
    head: usize,
    /// Bytes stored.
    len: usize,
    /// Records stored.
    count: usize,
}

impl ByteRing {
    /// A ring holding at most `cap` bytes. The memory is reserved now; pages are touched on use. `None` when
    /// `cap` is more than the machine's physical memory or the allocator refuses it.
    pub(crate) fn new(cap: usize) -> Option<ByteRing> {
        Some(ByteRing {
            buf: zeroed(cap)?,
            head: 0,
            len: 0,
            count: 0,
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn count(&self) -> usize {
        self.count
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub(crate) fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Append one record made of `parts` (concatenated). The caller has checked that it fits.
    pub(crate) fn push(&mut self, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(total <= self.free());
        if total > self.free() {
            return;
        }
        let cap = self.buf.len();
        let mut pos = self.head + self.len;
        if pos >= cap {
            pos -= cap;
        }
        for p in parts {
            let first = p.len().min(cap - pos);
            self.buf[pos..pos + first].copy_from_slice(&p[..first]);
            if first < p.len() {
                let rest = p.len() - first;
                self.buf[..rest].copy_from_slice(&p[first..]);
                pos = rest;
            } else {
                pos += first;
                if pos == cap {
                    pos = 0;
                }
            }
        }
        self.len += total;
        self.count += 1;
    }

    /// Copy `out.len()` bytes starting `off` bytes after the read position (must be stored bytes).
    pub(crate) fn peek(&self, off: usize, out: &mut [u8]) {
        debug_assert!(off + out.len() <= self.len);
        let cap = self.buf.len();
        let mut pos = self.head + off;
        if pos >= cap {
            pos -= cap;
        }
        let first = out.len().min(cap - pos);
        out[..first].copy_from_slice(&self.buf[pos..pos + first]);
        if first < out.len() {
            let rest = out.len() - first;
            out[first..].copy_from_slice(&self.buf[..rest]);
        }
    }

    /// Overwrite stored bytes starting `off` bytes after the read position (e.g. a record's header).
    pub(crate) fn poke(&mut self, off: usize, data: &[u8]) {
        debug_assert!(off + data.len() <= self.len);
        let cap = self.buf.len();
        let mut pos = self.head + off;
        if pos >= cap {
            pos -= cap;
        }
        let first = data.len().min(cap - pos);
        self.buf[pos..pos + first].copy_from_slice(&data[..first]);
        if first < data.len() {
            self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        }
    }

    /// Append the first `n` stored bytes to `out` (without consuming them).
    pub(crate) fn copy_front(&self, n: usize, out: &mut Vec<u8>) {
        debug_assert!(n <= self.len);
        let cap = self.buf.len();
        let first = n.min(cap - self.head);
        out.extend_from_slice(&self.buf[self.head..self.head + first]);
        if first < n {
            out.extend_from_slice(&self.buf[..n - first]);
        }
    }

    /// Remove the first `bytes` bytes, which hold `records` whole records.
    pub(crate) fn consume(&mut self, bytes: usize, records: usize) {
        debug_assert!(bytes <= self.len && records <= self.count);
        self.len -= bytes.min(self.len);
        self.count -= records.min(self.count);
        if self.count == 0 || self.len == 0 {
            self.head = 0;
            self.len = 0;
            self.count = 0;
        } else {
            self.head += bytes;
            if self.head >= self.buf.len() {
                self.head -= self.buf.len();
            }
        }
    }
}

/// `n` zeroed bytes (fresh pages, not resident until touched), or `None` when `n` is more than the machine's
/// physical memory or the allocator cannot give it — where `vec![0; n]` would abort.
fn zeroed(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    if n > physical_memory() {
        return None;
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: `layout` has a non-zero size; a non-null result is `n` zeroed (so initialised) bytes from the
    // global allocator with the alignment of `u8`, which is what a `Vec<u8>` of length and capacity `n` owns.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

/// The machine's physical memory in bytes (`usize::MAX` where the system does not say).
pub(crate) fn physical_memory() -> usize {
    // SAFETY: sysconf takes no pointers.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || size <= 0 {
        return usize::MAX;
    }
    (pages as usize).saturating_mul(size as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_records_and_reads_them_back() {
        let mut r = ByteRing::new(10).unwrap();
        r.push(&[b"abc", b"de"]);
        r.push(&[b"fgh"]);
        assert_eq!((r.len(), r.count(), r.free()), (8, 2, 2));
        r.consume(5, 1);
        // 2 bytes left at the end, then the record wraps.
        r.push(&[b"ijklm"]);
        assert_eq!(r.free(), 2);
        let mut out = Vec::new();
        r.copy_front(8, &mut out);
        assert_eq!(out, b"fghijklm");
        let mut p = [0u8; 4];
        r.peek(2, &mut p);
        assert_eq!(&p, b"hijk");
        r.consume(3, 1);
        r.consume(5, 1);
        assert!(r.is_empty());
        assert_eq!(r.free(), 10);
    }

    #[test]
    fn exact_fill_and_reset() {
        let mut r = ByteRing::new(4).unwrap();
        r.push(&[b"ab", b"cd"]);
        assert_eq!(r.free(), 0);
        r.consume(4, 1);
        r.push(&[b"wxyz"]);
        let mut out = Vec::new();
        r.copy_front(4, &mut out);
        assert_eq!(out, b"wxyz");
    }
}

#[cfg(test)]
mod alloc_tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_machine_are_refused_not_aborted() {
        assert!(ByteRing::new(usize::MAX).is_none());
        // A 32-bit process on a host with more memory than its address space (qemu-arm here) may get 2 GiB.
        if physical_memory() <= isize::MAX as usize {
            assert!(ByteRing::new(isize::MAX as usize).is_none());
        }
        assert!(ByteRing::new(physical_memory().saturating_add(1)).is_none());
        assert_eq!(ByteRing::new(1 << 20).map(|r| r.capacity()), Some(1 << 20));
    }
}
