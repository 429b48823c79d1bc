//! Locks that survive a panicking holder.
//!
//! The few mutexes left (the `/sessions` answer board, the watcher registry, a cache's
//! snapshot slot) guard data that is valid after any panic in between (whole values are
//! swapped in), so a poisoned lock is taken over rather than propagated. This is the one
//! place that says so.
//!
//! Owns poison recovery. Must not be used to hold a lock across an await or per datagram.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking over a lock poisoned by a panicked holder.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
