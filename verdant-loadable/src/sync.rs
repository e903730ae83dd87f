//! The synchronisation primitives of the model-checked protocol
//! ([`crate::library::task_set`]): std's in every ordinary build, loom's when
//! built with `--cfg verdant_loom` (`scripts/loom`). A custom cfg rather than
//! `--cfg loom`: tokio and others change behaviour under that one.

#[cfg(not(verdant_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(verdant_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: a panic elsewhere while it was held
/// leaves the protected state consistent in every use here.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
