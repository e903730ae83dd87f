//! Running a library's attach hook under a time limit.
//!
//! A synchronous hook that hangs cannot be cancelled. It therefore runs on a
//! thread of its own; the transaction waits at most the time limit and then
//! abandons it, without holding anything a reader needs. The abandoned
//! thread is listed in `status().stuck_attaches` until it returns; if it
//! ever does, the instance it made is detached at once and never served.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckAttach {
    /// The loadable whose hook is stuck.
    pub loadable: String,
    /// The name of the thread running it.
    pub thread: String,
    /// When the transaction gave up on it.
    pub since: SystemTime,
    id: u64,
}

/// The registry's list of abandoned attach threads.
#[derive(Debug, Default)]
pub(crate) struct StuckAttaches {
    list: Mutex<Vec<StuckAttach>>,
    next_id: AtomicU64,
}

impl StuckAttaches {
    pub(crate) fn snapshot(&self) -> Vec<StuckAttach> {
        self.list.lock().clone()
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
    let thread_name = format!("verdant-attach-{loadable}-{id}");
    let (finisher, waiter) = hand_off::<AttachOutcome<I>>();

    let thread_library = library.clone();
    let context = env.context.clone();
    let runtime = env.runtime.clone();
    let stuck = env.stuck.clone();
    let thread_hook = panic_hook.clone();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
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
                stuck.list.lock().retain(|s| s.id != id);
                if let Ok(instance) = late {
                    tracing::warn!(thread = %std::thread::current().name().unwrap_or("?"), "an abandoned attach hook returned late; detaching its instance");
                    if let Err(panic) = instance.retire() {
                        thread_hook.report(&panic, "detach (of an attach hook that returned after its time limit)");
                    }
                }
            }
            drop(thread_library);
        })
        .map_err(|e| LoadError::Thread { source: Arc::new(e) })?;

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
        tracing::error!(thread = %thread_name, limit = ?env.timeout, "attach hook timed out; thread abandoned");
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
