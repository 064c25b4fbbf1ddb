//! Per-thread scratch buffers that a nested use cannot find borrowed.

use std::cell::RefCell;
use std::thread::LocalKey;

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
