//! Running a library's attach hook under a time limit.
//!
//! A synchronous hook that hangs cannot be cancelled. It therefore runs on a
//! thread of its own; the transaction waits at most the time limit and then
//! abandons it, without holding anything a reader needs. The abandoned
//! thread is listed in `status().stuck_attaches` until it returns; if it
//! ever does, the instance it made is detached at once and never served.
//! The thread is kept for the next attach once its hook has returned
//! (`Worker`): a hung one never gets another.
//!
//! The hand-off between the thread and the transaction is
//! [`crate::handoff`]: whichever side comes second — the waiter giving up or
//! the hook finishing — decides, and the outcome reaches exactly one of them
//! (model-checked with loom).

use std::any::Any;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::descriptor::{AttachArgs, AttachFailure, AttachOutcome, Instance};
use crate::error::LoadError;
use crate::handoff::hand_off;
use crate::loader::LoadedLibrary;
use crate::panic_report::PanicSink;
use crate::Interface;
use verdant_loadable::__private::PanicHook;

/// An attach hook that exceeded the time limit and has not returned yet.
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// for stuck in verdant.status().stuck_attaches {
///     eprintln!("attach of {} stuck on thread {}", stuck.loadable, stuck.thread);
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StuckAttach {
    /// The loadable whose hook is stuck.
    pub loadable: String,
    /// The name of the thread running it.
    pub thread: String,
    /// When the transaction gave up on it.
    #[serde(serialize_with = "crate::serialize::time")]
    pub since: SystemTime,
    #[serde(skip)]
    id: u64,
}

/// An attach hook that returned after its transaction gave up on it: its
/// loadable's reload had already failed ([`LoadError::AttachTimedOut`]), so
/// the instance it made, if any, was detached at once and never served.
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// for late in verdant.status().late_attaches {
///     eprintln!("{} ({}) attached too late: {}", late.loadable, late.library, late.result);
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LateAttach {
    /// The loadable.
    pub loadable: String,
    /// The library's package name and version (`"shop-lib 0.1.1"`).
    pub library: String,
    /// The name of the thread that ran the hook.
    pub thread: String,
    /// When the transaction gave up on it.
    #[serde(serialize_with = "crate::serialize::time")]
    pub abandoned_at: SystemTime,
    /// When the hook returned.
    #[serde(serialize_with = "crate::serialize::time")]
    pub returned_at: SystemTime,
    /// What the hook returned, and what became of its instance.
    pub result: LateResult,
}

/// What a late attach hook returned ([`LateAttach::result`]). In JSON:
/// `{"result": "detach_panicked", "message": "..."}`.
///
/// ```
/// let result = verdant::LateResult::AttachFailed("no database".into());
/// assert_eq!(result.to_string(), "the hook returned an error: no database");
/// let json = serde_json::to_string(&result).unwrap();
/// assert_eq!(json, r#"{"result":"attach_failed","message":"no database"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "message", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LateResult {
    /// It attached; the instance was detached at once.
    Detached,
    /// It attached; detaching the instance panicked (contained).
    DetachPanicked(String),
    /// The hook returned an error.
    AttachFailed(String),
    /// The hook panicked (contained).
    AttachPanicked(String),
}

impl std::fmt::Display for LateResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LateResult::Detached => f.write_str("attached, then detached at once"),
            LateResult::DetachPanicked(message) => write!(f, "attached, then its detach panicked: {message}"),
            LateResult::AttachFailed(message) => write!(f, "the hook returned an error: {message}"),
            LateResult::AttachPanicked(message) => write!(f, "the hook panicked: {message}"),
        }
    }
}

/// How many late attaches `status()` keeps.
const LATE_KEPT: usize = 8;

/// The registry's list of abandoned attach threads, and of those that
/// returned late.
#[derive(Debug, Default)]
pub(crate) struct StuckAttaches {
    list: Mutex<Vec<StuckAttach>>,
    late: Mutex<Vec<LateAttach>>,
    next_id: AtomicU64,
}

impl StuckAttaches {
    pub(crate) fn snapshot(&self) -> Vec<StuckAttach> {
        self.list.lock().clone()
    }

    pub(crate) fn late(&self) -> Vec<LateAttach> {
        self.late.lock().clone()
    }

    /// Moves stuck attach `id` to the late list with `result`.
    fn returned_late(&self, id: u64, library: String, result: LateResult) {
        let abandoned = {
            let mut list = self.list.lock();
            let at = list.iter().position(|s| s.id == id);
            at.map(|at| list.remove(at))
        };
        let Some(stuck) = abandoned else { return };
        let mut late = self.late.lock();
        late.push(LateAttach {
            loadable: stuck.loadable,
            library,
            thread: stuck.thread,
            abandoned_at: stuck.since,
            returned_at: SystemTime::now(),
            result,
        });
        let excess = late.len().saturating_sub(LATE_KEPT);
        late.drain(..excess);
    }
}

/// Everything an attach needs from the registry.
#[derive(Clone)]
pub(crate) struct AttachEnv {
    pub context: Arc<dyn Any + Send + Sync>,
    pub runtime: Option<tokio::runtime::Handle>,
    pub timeout: Duration,
    pub stuck: Arc<StuckAttaches>,
    /// Where the panic reports of the version go.
    pub panics: Arc<PanicSink>,
}

/// One attach: what a [`Worker`] runs.
type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs attach hooks, one after another, for every registry
/// of the process.
///
/// Starting a thread took 0.15 ms of a 1-1.5 ms release reload, so the
/// thread that ran an attach waits for the next one instead of ending. The
/// hook still runs on a thread of its own, which the transaction can abandon
/// at its time limit: a worker is taken out of [`IDLE`] for the whole of a
/// job and put back only once the job has returned, hook, late clean-up and
/// all. So a worker whose hook hangs is never given another job, and the
/// next attach starts a new worker; one whose hook returns after the limit
/// is reused once it has disposed of the late instance. At most one worker
/// waits in [`IDLE`]; others (attaches of several registries at once) end
/// when they are done.
///
/// What a hook leaves in its thread's thread-locals now lives until the
/// worker ends (with the process, usually) instead of until the hook returns;
/// the library stays mapped in both cases (docs/boundary.md §4).
struct Worker {
    name: String,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The worker waiting for the next attach, if any.
static IDLE: Mutex<Option<Worker>> = Mutex::new(None);

/// Numbers worker threads (their names) across the process.
static WORKER_SEQUENCE: AtomicU64 = AtomicU64::new(1);

impl Worker {
    /// Takes the idle worker, or starts one.
    fn idle_or_new() -> Result<Worker, LoadError> {
        if let Some(worker) = IDLE.lock().take() {
            return Ok(worker);
        }
        let name = format!("verdant-attach-{}", WORKER_SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let (jobs, incoming) = std::sync::mpsc::channel::<Job>();
        let worker = Worker { name: name.clone(), jobs };
        let own = worker.jobs.clone();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Invariant: while a job runs, no one else holds a sender of
                // this worker (`own` aside), so no other job can queue behind
                // a hook that hangs.
                while let Ok(job) = incoming.recv() {
                    job();
                    let mut idle = IDLE.lock();
                    if idle.is_some() {
                        return; // another worker waits already
                    }
                    *idle = Some(Worker { name: name.clone(), jobs: own.clone() });
                }
            })
            .map_err(|e| LoadError::Thread { source: Arc::new(e) })?;
        Ok(worker)
    }

    /// Hands `job` to this worker; it is dropped with this handle, so the
    /// worker holds the only other sender (its own, for [`IDLE`]).
    fn run(self, job: Job) -> Result<(), LoadError> {
        // The worker ends only after dropping its receiver, which it does
        // only once it is out of `IDLE` and holds no job: a handle taken
        // from `IDLE` always reaches a live worker.
        self.jobs.send(job).map_err(|_| LoadError::Thread {
            source: Arc::new(std::io::Error::other(format!("the attach thread {} has ended", self.name))),
        })
    }
}

/// Runs the attach entry point of `library` for interface `I`.
///
/// `keep_alive` is what the library may hold to stay mapped (see
/// `AttachArgs::keep_alive`); `panic_hook` is the version's reporter, which
/// the library keeps, and which reports a panic of the hook itself.
pub(crate) fn attach<I: Interface + ?Sized>(
    library: &Arc<LoadedLibrary>,
    env: &AttachEnv,
    loadable: &str,
    keep_alive: Arc<dyn Any + Send + Sync>,
    runtime_gone: Arc<std::sync::atomic::AtomicBool>,
    panic_hook: PanicHook,
) -> Result<Box<dyn Instance<I>>, LoadError> {
    let id = env.stuck.next_id.fetch_add(1, Ordering::Relaxed);
    let worker = Worker::idle_or_new()?;
    let thread_name = worker.name.clone();
    let (finisher, waiter) = hand_off::<AttachOutcome<I>>();

    let thread_library = library.clone();
    let context = env.context.clone();
    let runtime = env.runtime.clone();
    let stuck = env.stuck.clone();
    let thread_hook = panic_hook.clone();
    worker.run(Box::new(move || {
        let args = AttachArgs {
            context: Arc::as_ptr(&context).cast::<()>(),
            runtime,
            runtime_gone,
            on_runtime_thread: verdant_loadable::__private::on_runtime_thread,
            logging: &verdant_loadable::__private::HOST_LOGGING,
            keep_alive,
            panic_hook: thread_hook.clone(),
        };
        let mut outcome = MaybeUninit::<AttachOutcome<I>>::uninit();
        // SAFETY: the fingerprints (checked before this step) show that
        // the library's interface is `I` and its context type is the
        // registry's, which `context` holds alive for the call; the entry
        // point initialises `outcome` and never unwinds (it catches
        // panics inside the library).
        let outcome = unsafe {
            (thread_library.descriptor().attach)(&args, outcome.as_mut_ptr().cast());
            outcome.assume_init()
        };
        if let Some(late) = finisher.finish(outcome) {
            let identity = thread_library.identity();
            let library = format!("{} {}", identity.package, identity.package_version);
            let result = match late {
                Ok(instance) => {
                    tracing::warn!(thread = %std::thread::current().name().unwrap_or("?"), "an abandoned attach hook returned late; detaching its instance");
                    match instance.retire() {
                        Ok(()) => LateResult::Detached,
                        Err(panic) => {
                            thread_hook.report(&panic, "detach (of an attach hook that returned after its time limit)");
                            LateResult::DetachPanicked(panic.message().to_owned())
                        }
                    }
                }
                Err(AttachFailure::Failed(message)) => LateResult::AttachFailed(message),
                Err(AttachFailure::Panicked(panic)) => {
                    thread_hook.report(&panic, "attach (returned after its time limit)");
                    LateResult::AttachPanicked(panic.message().to_owned())
                }
            };
            stuck.returned_late(id, library, result);
        }
        drop(thread_library);
    }))?;

    // The stuck-list entry is pushed before the thread can see `Abandoned`,
    // so its removal by a late thread always finds it.
    let outcome = waiter.wait(env.timeout, || {
        env.stuck.list.lock().push(StuckAttach {
            loadable: loadable.to_owned(),
            thread: thread_name.clone(),
            since: SystemTime::now(),
            id,
        });
    });
    let Some(outcome) = outcome else {
        // The failure itself is logged once, with the reload's report.
        tracing::debug!(thread = %thread_name, limit = ?env.timeout, "attach hook timed out; thread abandoned");
        return Err(LoadError::AttachTimedOut { limit: env.timeout, thread: thread_name });
    };
    outcome.map_err(|failure| match failure {
        AttachFailure::Failed(message) => LoadError::AttachFailed { message },
        AttachFailure::Panicked(panic) => {
            // The panic's report; the reload's failure is logged on its own.
            panic_hook.report(&panic, "attach");
            LoadError::AttachPanicked { message: panic.message().to_owned() }
        }
    })
}
