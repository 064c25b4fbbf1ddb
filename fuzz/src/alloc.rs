//! A counting global allocator: the heap an input may use is bounded.
//!
//! While an input runs, the allocator knows the live heap bytes at its start
//! (the baseline) and its bound. An allocation that would take the input's
//! share of the heap above the bound is not made: the allocator writes what
//! was asked for to stderr and aborts, and the supervisor saves the input as
//! an over-allocation. Checking before allocating means an absurd request
//! (a count of 2^40 read from a file) is caught without touching memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The global allocator of the fuzzer binary.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static BASE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The heap bound of an input of `len` bytes: 64 MiB, or 64 bytes per input
/// byte when that is more. Readers legitimately expand what they read (a
/// Q2_K tensor dequantizes to 12 times its size, a Parquet page decompresses,
/// metadata values become enums), but never by more than that.
pub fn bound_for(len: usize) -> usize {
    (64usize << 20).max(len.saturating_mul(64))
}

/// Starts counting an input's heap against `limit` bytes.
pub fn arm(limit: usize) {
    BASE.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    LIMIT.store(limit, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Stops counting; returns the input's peak heap above the baseline.
pub fn disarm() -> usize {
    ARMED.store(false, Ordering::SeqCst);
    PEAK.load(Ordering::SeqCst)
}

/// Checks that `extra` more bytes keep the input within its bound, then counts them.
fn grow(extra: usize) {
    let live = LIVE.fetch_add(extra, Ordering::SeqCst).saturating_add(extra);
    if ARMED.load(Ordering::Relaxed) {
        let used = live.saturating_sub(BASE.load(Ordering::Relaxed));
        PEAK.fetch_max(used, Ordering::Relaxed);
        let limit = LIMIT.load(Ordering::Relaxed);
        if used > limit {
            over(extra, used, limit);
        }
    }
}

/// Reports an over-allocation without allocating, then aborts.
fn over(request: usize, used: usize, limit: usize) -> ! {
    let mut buf = [0u8; 256];
    let mut n = 0;
    for part in [
        Part::Text("subprune-fuzz: over-allocation: a request of "),
        Part::Num(request),
        Part::Text(" bytes would bring the input's heap to "),
        Part::Num(used),
        Part::Text(" bytes, above its bound of "),
        Part::Num(limit),
        Part::Text(" bytes\n"),
    ] {
        n = part.write(&mut buf, n);
    }
    // SAFETY: writes initialised bytes of a live stack buffer to stderr, then aborts.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::abort();
    }
}

/// A piece of the over-allocation message.
enum Part {
    Text(&'static str),
    Num(usize),
}

impl Part {
    /// Appends the part at `at` in `buf`; returns the new end.
    fn write(&self, buf: &mut [u8], mut at: usize) -> usize {
        let mut digits = [0u8; 20];
        let bytes: &[u8] = match self {
            Part::Text(s) => s.as_bytes(),
            Part::Num(v) => {
                let (mut v, mut i) = (*v, digits.len());
                loop {
                    i -= 1;
                    digits[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                &digits[i..]
            }
        };
        for &b in bytes {
            if at < buf.len() {
                buf[at] = b;
                at += 1;
            }
        }
        at
    }
}

// SAFETY: every method forwards to `System` with the caller's layout; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            grow(new_size - old);
        }
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::SeqCst);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::SeqCst);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bound_is_64_mib_or_64_bytes_per_input_byte() {
        assert_eq!(super::bound_for(0), 64 << 20);
        assert_eq!(super::bound_for(1 << 20), 64 << 20);
        assert_eq!(super::bound_for(2 << 20), 128 << 20);
    }
}
