//! The attach time-limit hand-off ([`crate::attach`]): a worker thread
//! produces one outcome; a waiter waits for it at most a time limit.
//!
//! Whichever side comes second — the waiter giving up or the worker
//! finishing — decides, under one `Mutex<Attempt>`. The waiter marks
//! `Abandoned` only while the attempt is `Running`; the worker sends its
//! outcome only while nobody abandoned it, otherwise it gets the outcome back
//! to clean up itself. So the outcome reaches exactly one party, never none,
//! and the waiter never waits past the limit for a worker that has not
//! finished (after `Finished` the message is already on its way, and its send
//! never blocks).
//!
//! # Model check
//!
//! `scripts/loom` runs this module's code itself, with loom's mutex and
//! channel, over every interleaving of one worker and one waiter (about 17
//! executions). loom has no clock, so the timed wait is modelled as one look
//! at the channel: the message is there or not, depending on the
//! interleaving — a time limit of any length, expiring at any point of the
//! worker's progress, including "finished just after the deadline".
//! Checked, for every interleaving:
//!
//! - the outcome reaches exactly one party: the waiter, or the worker as its
//!   own to retire — never none (lost in the channel), never both;
//! - the waiter returns: a blocking receive after `Finished` always has a
//!   message (loom reports a deadlock otherwise), and a worker that never
//!   finishes is abandoned;
//! - the entry `attach` records in the stuck list while abandoning is there
//!   before the late worker removes it, so none is left behind.
//!
//! Not covered: the real waiting time and its clock; what `attach` does
//! around the protocol (running the hook, retiring the late instance, the
//! stuck list's own lock, which the model replaces by a mutex of its own);
//! a worker that panics before finishing (its sender is dropped:
//! `recv_timeout` returns at once and the waiter abandons — std behaviour that
//! loom's channel does not model).

use std::time::Duration;

use crate::sync::{lock, oneshot, Arc, Mutex};

#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Running,
    Finished,
    Abandoned,
}

/// Starts a hand-off: the worker's half and the waiter's half.
pub(crate) fn hand_off<T>() -> (Finisher<T>, Waiter<T>) {
    let state = Arc::new(Mutex::new(Attempt::Running));
    let (sender, receiver) = oneshot::channel();
    (Finisher { state: state.clone(), sender }, Waiter { state, receiver })
}

/// The worker's half.
pub(crate) struct Finisher<T> {
    state: Arc<Mutex<Attempt>>,
    sender: oneshot::Sender<T>,
}

impl<T> Finisher<T> {
    /// Hands `outcome` to the waiter, or, if the waiter gave up, returns it:
    /// it is then the caller's to dispose of.
    pub(crate) fn finish(self, outcome: T) -> Option<T> {
        let mut state = lock(&self.state);
        if *state == Attempt::Abandoned {
            return Some(outcome);
        }
        *state = Attempt::Finished;
        // The receiver is alive: the waiter either waits or will see
        // `Finished` and receive.
        let _ = self.sender.send(outcome);
        None
    }
}

/// The waiter's half.
pub(crate) struct Waiter<T> {
    state: Arc<Mutex<Attempt>>,
    receiver: oneshot::Receiver<T>,
}

impl<T> Waiter<T> {
    /// Waits at most `timeout` for the outcome. `None`: the worker was
    /// abandoned (it will dispose of its outcome itself); `on_abandon` ran
    /// just before, while the worker could not yet finish — so what it
    /// records is in place before the worker can see `Abandoned`.
    pub(crate) fn wait(self, timeout: Duration, on_abandon: impl FnOnce()) -> Option<T> {
        if let Some(outcome) = oneshot::recv_timeout(&self.receiver, timeout) {
            return Some(outcome);
        }
        let mut state = lock(&self.state);
        if *state == Attempt::Running {
            *state = Attempt::Abandoned;
            on_abandon();
            return None;
        }
        drop(state);
        // Finished just after the deadline: the outcome is in the channel.
        self.receiver.recv().ok()
    }
}

#[cfg(all(test, verdant_loom))]
mod loom_models {
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    use super::*;

    /// The worker finishes at any point relative to the waiter's deadline
    /// (the wait is one look under loom). Checks: the outcome reaches
    /// exactly one party; the waiter returns (loom reports a deadlock
    /// otherwise); the stuck-list entry the waiter records on abandoning is
    /// gone once the late worker cleaned up, as `attach` does it.
    #[test]
    fn loom_outcome_reaches_exactly_one_party() {
        loom::model(|| {
            // The registry's stuck list, as `attach` keeps it.
            let stuck = Arc::new(Mutex::new(Vec::<u32>::new()));
            let (finisher, waiter) = hand_off::<u32>();
            let worker = {
                let stuck = stuck.clone();
                thread::spawn(move || match finisher.finish(7) {
                    None => false,
                    Some(late) => {
                        assert_eq!(late, 7);
                        // As `attach` does: leave the stuck list (then retire
                        // the late instance).
                        stuck.lock().unwrap().retain(|&id| id != 1);
                        true
                    }
                })
            };
            let received = waiter.wait(Duration::from_secs(1), || {
                stuck.lock().unwrap().push(1);
            });
            let waiter_got_it = received.is_some();
            assert!(received.is_none_or(|outcome| outcome == 7));
            let worker_kept_it = worker.join().unwrap();
            assert!(
                waiter_got_it ^ worker_kept_it,
                "outcome delivered to the waiter: {waiter_got_it}, kept by the worker: {worker_kept_it}"
            );
            assert!(stuck.lock().unwrap().is_empty(), "stuck-list entry left behind");
        });
    }

    /// A worker that never finishes: the waiter still returns, abandoning it.
    #[test]
    fn loom_waiter_returns_when_worker_hangs() {
        loom::model(|| {
            let (finisher, waiter) = hand_off::<()>();
            assert!(waiter.wait(Duration::from_secs(1), || {}).is_none());
            drop(finisher);
        });
    }
}
