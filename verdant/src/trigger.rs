//! Serialising and coalescing reload triggers.
//!
//! One worker thread per registry runs reloads, one at a time. A trigger
//! (a `reload` call or a SIGPIPE) is queued; when the worker becomes free it
//! takes *everything* queued as one batch and runs one transaction over the
//! union of the batch's loadables. So however many triggers arrive while a
//! reload runs, they cause at most one follow-up reload, and that follow-up
//! starts after the last of them arrived: the newest build is never missed.
//! Every caller in a batch receives that transaction's result. The registry
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

    /// Blocks until there is work; `None` on shutdown.
    fn next_batch(&self) -> Option<Vec<Request>> {
        let mut queue = self.queue.lock();
        while queue.pending.is_empty() && !queue.shutdown {
            self.wake.wait(&mut queue);
        }
        if queue.shutdown {
            None
        } else {
            Some(std::mem::take(&mut queue.pending))
        }
    }
}

/// Starts the reload worker. It holds the registry weakly and ends when the
/// registry is dropped.
pub(crate) fn start_worker(coordinator: Arc<Coordinator>, registry: Weak<Inner>) -> std::io::Result<()> {
    std::thread::Builder::new().name("verdant-reload".to_owned()).spawn(move || {
        while let Some(batch) = coordinator.next_batch() {
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
