//! The synchronisation primitives of the model-checked protocols
//! ([`crate::handoff`]): std's in every ordinary build, loom's when built with
//! `--cfg verdant_loom` (`scripts/loom`), so that loom can explore every
//! interleaving of the protocol's own code. A custom cfg rather than
//! `--cfg loom`: tokio and others change behaviour under that one.
//!
//! Only what the protocols use is here; the rest of the crate uses std (or
//! parking_lot) directly and is not modelled.

#[cfg(not(verdant_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(verdant_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: a panic elsewhere while it was held
/// leaves the protected state consistent in every use here.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A channel for exactly one message: its single send never blocks.
pub(crate) mod oneshot {
    use std::time::Duration;

    #[cfg(not(verdant_loom))]
    pub(crate) type Sender<T> = std::sync::mpsc::SyncSender<T>;
    #[cfg(not(verdant_loom))]
    pub(crate) type Receiver<T> = std::sync::mpsc::Receiver<T>;
    #[cfg(verdant_loom)]
    pub(crate) type Sender<T> = loom::sync::mpsc::Sender<T>;
    #[cfg(verdant_loom)]
    pub(crate) type Receiver<T> = loom::sync::mpsc::Receiver<T>;

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        #[cfg(not(verdant_loom))]
        return std::sync::mpsc::sync_channel(1);
        // loom has no bounded channel; with one message it makes no
        // difference.
        #[cfg(verdant_loom)]
        return loom::sync::mpsc::channel();
    }

    /// Waits at most `timeout` for the message; `None` when it did not come
    /// (or the sender is gone).
    ///
    /// Under loom, which has no clock, the wait is a single look: the message
    /// is there or not, depending on the interleaving. Every timeout, of any
    /// length, is thus explored as expiring at any point of the sender's
    /// progress.
    pub(crate) fn recv_timeout<T>(receiver: &Receiver<T>, timeout: Duration) -> Option<T> {
        #[cfg(not(verdant_loom))]
        return receiver.recv_timeout(timeout).ok();
        #[cfg(verdant_loom)]
        {
            let _ = timeout;
            receiver.try_recv().ok()
        }
    }
}
