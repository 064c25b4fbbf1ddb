//! Per-thread scratch buffers that a nested use cannot find borrowed.

use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    /// Each thread's buffer of weight rows decoded to f32, shared by the
    /// kernels that decode a few rows at a time ([`with_decoded_rows`]).
    static DECODED_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` values of this thread's buffer of decoded weight rows
/// (their contents left from earlier use: `f` writes before it reads), or
/// of a fresh one where that buffer is in use further up the stack.
pub(crate) fn with_decoded_rows<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_thread_buffer(&DECODED_ROWS, |rows| {
        if rows.len() < len {
            rows.resize(len, 0.0);
        }
        f(&mut rows[..len])
    })
}

/// Runs `f` on this thread's buffer in `key`, or on a fresh one where that
/// buffer is in use further up this thread's stack: a decoding callback
/// may run rayon work, and rayon may hand this thread another task that
/// wants the same buffer while it waits.
pub(crate) fn with_thread_buffer<T: Default, R>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut T::default()),
    })
}
