//! Serialising and coalescing reload triggers.
//!
//! One worker thread per registry runs reloads, one at a time. A trigger
//! (a `reload` call or a SIGPIPE) is queued; when the worker becomes free it
//! takes *everything* queued as one batch and runs one transaction over the
//! union of the batch's loadables. So however many triggers arrive while a
//! reload runs, they cause at most one follow-up reload, and that follow-up
//! starts after the last of them arrived: the newest build is never missed.
//! Every caller in a batch receives that transaction's result.
//!
//! A blocking call (`reload_blocking`) that finds the worker idle and
//! nothing queued runs its transaction on its own thread instead
//! ([`Coordinator::run_here`]): handing it to the worker and the result back
//! woke two sleeping threads, 40-180 µs of a release reload. While it runs,
//! the worker takes no batch, so triggers arriving meanwhile still make one
//! follow-up reload, which starts after the last of them. The registry
//! logs it once and records it for `status()` and the metrics
//! (`Inner::finish`), which is where a signal's result shows; for a batch
//! with a signal, the result is also sent to systemd as the reload's end
//! ([`crate::systemd`]).

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Weak};

use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::registry::Inner;
use crate::report::{ReloadReport, Trigger};

/// Where a transaction's result goes.
pub(crate) enum Waiter {
    Async(tokio::sync::oneshot::Sender<Result<ReloadReport, Error>>),
    Blocking(mpsc::SyncSender<Result<ReloadReport, Error>>),
    /// Fire and forget (signals); the result is only logged.
    Nobody,
}

impl Waiter {
    fn send(self, result: Result<ReloadReport, Error>) {
        // A caller that stopped waiting (dropped future) is not an error.
        match self {
            Waiter::Async(sender) => {
                let _ = sender.send(result);
            }
            Waiter::Blocking(sender) => {
                let _ = sender.send(result);
            }
            Waiter::Nobody => {}
        }
    }
}

/// One queued trigger.
pub(crate) struct Request {
    pub names: Vec<Arc<str>>,
    pub trigger: Trigger,
    pub waiter: Waiter,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Request>,
    shutdown: bool,
    /// A transaction runs: the worker's batch, or a blocking caller's own
    /// ([`Coordinator::run_here`]). At most one at a time; the worker takes
    /// no batch while it is set.
    running: bool,
}

/// The queue between triggers and the reload worker.
#[derive(Default)]
pub(crate) struct Coordinator {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Coordinator {
    pub(crate) fn submit(&self, request: Request) {
        self.submit_then(request, || {});
    }

    /// [`submit`](Self::submit), running `queued` once the request is in
    /// the queue but before the worker can take it (under the queue's lock,
    /// so `queued` must be short and must not submit). What `queued` records
    /// is thus visible before the reload starts. Not run when the request
    /// is refused (shutdown).
    pub(crate) fn submit_then(&self, request: Request, queued: impl FnOnce()) {
        let mut queue = self.queue.lock();
        if queue.shutdown {
            drop(queue);
            request.waiter.send(Err(Error::Revoked));
            return;
        }
        queue.pending.push(request);
        queued();
        self.wake.notify_one();
    }

    pub(crate) fn shutdown(&self) {
        let pending = {
            let mut queue = self.queue.lock();
            queue.shutdown = true;
            std::mem::take(&mut queue.pending)
        };
        self.wake.notify_all();
        for request in pending {
            request.waiter.send(Err(Error::Revoked));
        }
    }

    /// Blocks until there is work and no transaction runs; `None` on
    /// shutdown. The batch taken counts as running until
    /// [`finished`](Self::finished).
    fn next_batch(&self) -> Option<Vec<Request>> {
        let mut queue = self.queue.lock();
        while (queue.pending.is_empty() || queue.running) && !queue.shutdown {
            self.wake.wait(&mut queue);
        }
        if queue.shutdown {
            None
        } else {
            queue.running = true;
            Some(std::mem::take(&mut queue.pending))
        }
    }

    /// The worker's batch is done.
    fn finished(&self) {
        self.queue.lock().running = false;
        self.wake.notify_all();
    }

    /// If no transaction runs and nothing is queued, marks one as running
    /// on the calling thread until the returned guard is dropped (the
    /// worker waits for it), and returns the guard; otherwise `None`, and
    /// the caller queues its request as usual. `Err(Revoked)` after
    /// shutdown.
    pub(crate) fn run_here(&self) -> Result<Option<RunningHere<'_>>, Error> {
        let mut queue = self.queue.lock();
        if queue.shutdown {
            return Err(Error::Revoked);
        }
        if queue.running || !queue.pending.is_empty() {
            return Ok(None);
        }
        queue.running = true;
        Ok(Some(RunningHere { coordinator: self }))
    }
}

/// A transaction running on a caller's thread ([`Coordinator::run_here`]),
/// or the worker's batch; dropped (also by a panic), it lets the worker take
/// what was queued meanwhile.
pub(crate) struct RunningHere<'a> {
    coordinator: &'a Coordinator,
}

impl Drop for RunningHere<'_> {
    fn drop(&mut self) {
        self.coordinator.finished();
    }
}

/// Starts the reload worker. It holds the registry weakly and ends when the
/// registry is dropped.
pub(crate) fn start_worker(coordinator: Arc<Coordinator>, registry: Weak<Inner>) -> std::io::Result<()> {
    std::thread::Builder::new().name("verdant-reload".to_owned()).spawn(move || {
        while let Some(batch) = coordinator.next_batch() {
            // However this batch ends (`continue` too), the next may start.
            let _finished = RunningHere { coordinator: &coordinator };
            let Some(inner) = registry.upgrade() else {
                for request in batch {
                    request.waiter.send(Err(Error::Revoked));
                }
                return;
            };
            let names: BTreeSet<Arc<str>> = batch.iter().flat_map(|r| r.names.iter().cloned()).collect();
            // The report names the newest trigger of the batch (the one
            // that arrived last, as the systemd notification below does):
            // the reload serves it, and the ones before it merely waited.
            let Some(trigger) = batch.last().map(|r| r.trigger) else { continue };
            // A signal in the batch may be systemd's `ReloadSignal`: tell it
            // the reload starts (now, after the signal) and how it ended.
            let signal = batch.iter().rev().find_map(|r| match r.trigger {
                Trigger::Signal { sender } => Some(sender),
                _ => None,
            });
            let notify = signal.filter(|_| crate::systemd::reload_notifications(inner.systemd));
            if let Some(sender) = notify {
                crate::systemd::notify_reloading(sender);
            }
            // The copies' background work (debug sections, the next spare
            // file) waits until the callers have their result.
            let held = crate::loader::hold_background();
            let result = inner.run_reload(&names, trigger, batch.len());
            if notify.is_some() {
                crate::systemd::notify_reloaded(&result, inner.generation.load(std::sync::atomic::Ordering::Acquire));
            }
            for request in batch {
                request.waiter.send(result.clone());
            }
            drop(held);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request { names: Vec::new(), trigger: Trigger::Call, waiter: Waiter::Nobody }
    }

    #[test]
    fn a_caller_runs_its_transaction_only_when_nothing_runs_or_waits() {
        let coordinator = Coordinator::default();
        let here = coordinator.run_here().expect("not shut down").expect("idle: runs here");
        assert!(coordinator.run_here().expect("not shut down").is_none(), "two transactions at once");
        drop(here);
        coordinator.submit(request());
        assert!(coordinator.run_here().expect("not shut down").is_none(), "ran ahead of a queued request");
        let batch = coordinator.next_batch().expect("the queued request");
        assert_eq!(batch.len(), 1);
        assert!(coordinator.run_here().expect("not shut down").is_none(), "ran beside the worker's batch");
        coordinator.finished();
        assert!(coordinator.run_here().expect("not shut down").is_some(), "idle again");
        coordinator.shutdown();
        assert!(matches!(coordinator.run_here(), Err(Error::Revoked)));
    }

    #[test]
    fn the_worker_waits_for_a_transaction_running_on_a_caller_and_takes_all_that_came_meanwhile() {
        let coordinator = Arc::new(Coordinator::default());
        let here = coordinator.run_here().expect("not shut down").expect("idle");
        let worker = {
            let coordinator = coordinator.clone();
            std::thread::spawn(move || coordinator.next_batch().map(|batch| batch.len()))
        };
        for _ in 0..3 {
            coordinator.submit(request());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!worker.is_finished(), "the worker took a batch while a caller's transaction ran");
        drop(here);
        assert_eq!(worker.join().expect("worker"), Some(3), "the requests that came meanwhile are one batch");
    }
}
