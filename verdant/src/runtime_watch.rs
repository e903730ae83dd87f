//! Watching the runtime a version was attached with.
//!
//! A version's library code runs in the registry's tokio runtime (its link,
//! `verdant-loadable`'s `runtime_link.rs`). If that runtime is shut down
//! while the version still serves, every tokio call in library code would
//! panic far from the cause. A [`RuntimeWatch`] is a task on that runtime
//! whose only job is to be dropped: tokio drops every task when a runtime
//! shuts down, and the drop sets the flag the library checks before each
//! guarded call (which then fails with a message that names the cause).
//! When the version's library is released, the watch is stopped so that no
//! task is left behind per reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// One version's watch on its runtime.
pub(crate) struct RuntimeWatch {
    /// Set once the runtime was shut down (handed to the library).
    gone: Arc<AtomicBool>,
    /// Ends the watching task.
    stop: Option<Arc<Notify>>,
}

/// Sets the flag when the watching task is dropped: at the runtime's
/// shutdown, or when the watch is stopped (the library is released then,
/// so no guarded call reads the flag any more).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl RuntimeWatch {
    /// Starts watching `runtime`; without one there is nothing to watch and
    /// the flag never changes.
    pub(crate) fn start(runtime: Option<&tokio::runtime::Handle>) -> Self {
        let gone = Arc::new(AtomicBool::new(false));
        let Some(runtime) = runtime else { return RuntimeWatch { gone, stop: None } };
        let stop = Arc::new(Notify::new());
        let (flag, notified) = (SetOnDrop(gone.clone()), stop.clone());
        // A runtime already shut down drops the task at once: the flag is
        // set before the library is ever called.
        drop(runtime.spawn(async move {
            let _flag = flag;
            notified.notified().await;
        }));
        RuntimeWatch { gone, stop: Some(stop) }
    }

    /// The flag the library reads before each guarded call.
    pub(crate) fn gone(&self) -> Arc<AtomicBool> {
        self.gone.clone()
    }
}

impl Drop for RuntimeWatch {
    fn drop(&mut self) {
        // `notify_one` stores a permit if the task has not polled yet.
        if let Some(stop) = self.stop.take() {
            stop.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_set_when_the_runtime_shuts_down_and_not_before() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let watch = RuntimeWatch::start(Some(runtime.handle()));
        let gone = watch.gone();
        runtime.block_on(tokio::task::yield_now());
        assert!(!gone.load(Ordering::Acquire), "the runtime is alive");
        drop(runtime);
        assert!(gone.load(Ordering::Acquire), "shutting the runtime down drops the watching task");
    }

    #[test]
    fn stopping_the_watch_ends_its_task() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let watch = RuntimeWatch::start(Some(runtime.handle()));
        let gone = watch.gone();
        drop(watch);
        runtime.block_on(async {
            while !gone.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(runtime.metrics().num_alive_tasks(), 0, "no task is left behind");
    }
}
