//! Background tasks for library code: [`spawn`], and cancelling them at
//! detach with [`abort_all`].
//!
//! Plain `tokio::spawn` works in library code (methods and handlers run
//! inside the host's runtime context), but the task it starts is polled by a
//! host worker thread that never entered the *library's* copy of the tokio
//! context: a task that touches a timer or tokio I/O panics with "there is
//! no reactor running" ([`docs::boundary`](crate::docs::boundary) §2). [`spawn`] wraps the task so that
//! each poll enters the host's runtime, and ties it to its version:
//!
//! - the task keeps its version's library loaded while it runs (its code and
//!   statics stay valid even after the version was replaced and detached);
//! - it is listed in the version's task set, so the detach hook can cancel
//!   every task the version started with [`abort_all`]. Tasks the detach
//!   hook leaves alone run to completion: nothing they were doing is lost.
//!
//! A panic inside a task ends that task only; tokio's task harness, compiled
//! into the library, catches it there and reports it to the task's
//! `JoinHandle` as a `JoinError`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::task::{AbortHandle, JoinHandle};

use crate::library::task_set::TaskSet;

/// The tasks this library copy started that have not ended yet. Each copy of
/// a library has its own ([`docs::boundary`](crate::docs::boundary) §7), so this is per version.
/// A task can end before [`spawn`] records it: see [`TaskSet`].
#[cfg(not(verdant_loom))]
static TASKS: TaskSet<AbortHandle> = TaskSet::new();
// loom's mutex has no `const` constructor; nothing touches this static in a
// model run (`scripts/loom`), the models build their own set.
#[cfg(verdant_loom)]
static TASKS: std::sync::LazyLock<TaskSet<AbortHandle>> = std::sync::LazyLock::new(TaskSet::new);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Spawns a background task from library code, on the host's runtime.
///
/// Unlike plain `tokio::spawn`, the task may use tokio timers and I/O, it
/// keeps its version's library loaded while it runs, and the version's
/// detach hook can cancel it with [`abort_all`]. In the host (outside a
/// loaded library) it is `tokio::spawn` with bookkeeping.
///
/// # Panics
///
/// Like `tokio::spawn`, when there is no runtime: the registry was built
/// outside a tokio runtime and without `Builder::runtime`, and the caller is
/// not inside one either.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let task = verdant_loadable::spawn(async {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///     "refreshed"
/// });
/// assert_eq!(task.await.unwrap(), "refreshed");
/// # }
/// ```
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let task = Task { future, id, _keep_alive: crate::library::runtime_link::keep_alive() };
    let handle = match crate::library::runtime_link::runtime() {
        Some(runtime) => runtime.spawn(task),
        None => tokio::spawn(task),
    };
    TASKS.record(id, handle.abort_handle());
    handle
}

/// Cancels every task this library copy started with [`spawn`] that is
/// still running, and returns how many there were. Meant for a detach hook:
/// a background loop (a cache refresher, a poller) must stop when its
/// version goes away, or it keeps running beside the next version.
///
/// A cancelled task stops at its next `.await`.
///
/// ```
/// struct Refresher;
/// impl Refresher {
///     fn detach(&mut self) {
///         let cancelled = verdant_loadable::task::abort_all();
///         tracing::info!(cancelled, "background tasks stopped");
///     }
/// }
/// ```
pub fn abort_all() -> usize {
    // Entries stay until each task's drop removes them: a cancelled task is
    // still running until it reaches its next `.await`.
    let running = TASKS.running_handles();
    for task in &running {
        task.abort();
    }
    running.len()
}

/// How many tasks started with [`spawn`] by this library copy are still
/// running.
///
/// ```
/// assert_eq!(verdant_loadable::task::running(), 0);
/// ```
pub fn running() -> usize {
    TASKS.running()
}

/// A task of [`spawn`]: enters the host runtime around each poll, and leaves
/// the task set when it ends (completed, cancelled or panicked).
///
/// Pinning: `future` is structurally pinned; it is never moved.
struct Task<F> {
    future: F,
    id: u64,
    /// Dropped last (fields drop in declaration order): the library stays
    /// loaded while the future's own drop runs.
    _keep_alive: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl<F: Future> Future for Task<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned (see the type's docs).
        let future = unsafe { self.map_unchecked_mut(|task| &mut task.future) };
        crate::library::runtime_link::with_runtime(|| future.poll(cx))
    }
}

impl<F> Drop for Task<F> {
    fn drop(&mut self) {
        TASKS.ended(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_are_counted_while_they_run_and_abort_all_stops_them() {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let finite = spawn(async move {
            let _ = wait.await;
            "done"
        });
        let endless = spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(running(), 2);
        let _ = release.send(());
        assert_eq!(finite.await.expect("finite task"), "done");
        assert_eq!(abort_all(), 1, "only the endless task was still running");
        assert!(endless.await.expect_err("aborted").is_cancelled());
        assert_eq!(running(), 0, "every entry left the set");
        // A task that ends before `spawn` records it leaves no entry behind.
        for _ in 0..100 {
            let _ = spawn(async {}).await;
        }
        assert_eq!(running(), 0);
    }
}
