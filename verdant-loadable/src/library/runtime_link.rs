//! Boundary shim, library side: the link from a loaded library to its host.
//!
//! Every `static` of every crate linked into a library is a fresh copy per
//! loaded version ([`docs::boundary`](crate::docs::boundary) §7), tokio's thread-local runtime context
//! included: library code polled by a host worker thread finds *its* copy of
//! that context empty, and `tokio::time::sleep`, tokio I/O or `tokio::spawn`
//! panic with "there is no reactor running" (§2). The attach entry point
//! therefore stores what the host hands over — its runtime [`Handle`] and a
//! keep-alive of the library mapping — in this module's [`LINK`], once per
//! library copy, and every library-side guard calls [`enter`] before it runs
//! user code.
//!
//! In the host process itself (`LINK` is never set there) every function here
//! is a no-op: host code already runs inside its own runtime context.
//!
//! # Entering once per thread
//!
//! `Handle::enter` clones the runtime handle into the thread-local context
//! and the guard's drop puts the previous one back: an atomic increment and
//! decrement on one counter shared by every thread. Done around every call
//! it cost 17 ns per call on one thread and 66 ns on two threads contending
//! for that cache line (`scripts/bench`, `call/verdant_get_call_runtime`),
//! more than the rest of the call. So [`enter`] enters *for good*: the first
//! time library code runs on a thread, it enters the runtime and forgets the
//! guard, and marks the thread; later calls on that thread read the mark and
//! do nothing.
//!
//! Why that is sound and equivalent:
//! - The context is the *library copy's* thread-local; host code never sees
//!   it. Every guard of this library copy would enter the same handle (one
//!   runtime per copy, fixed at attach), so a thread that entered it for
//!   good is in exactly the state each call would have set up.
//! - tokio checks that guards are dropped in the reverse order of creation.
//!   A forgotten guard is never dropped, so it sits below every later guard
//!   and breaks no order — provided no *other* guard of this copy is alive
//!   on the thread when it is made. Hence: if the thread is already in some
//!   runtime context of this copy (library code entered one itself, or an
//!   outer guard of ours is live), [`enter`] falls back to a scoped guard
//!   and tries again next time.
//! - Only threads that are polling a tokio task enter for good (the host
//!   tells, through [`HostLink::on_runtime_thread`], with its own tokio's
//!   `task::try_id`): such a thread is owned by a runtime (a worker, a
//!   blocking-pool thread, the thread driving a current-thread runtime) and
//!   ends with it, and tokio's thread-local destructor then drops the handle
//!   clone the forgotten guard left. Any other thread (the registry's
//!   retirement thread, a plain `std::thread` calling a sync method, a
//!   thread inside `block_on`) enters around each call, so it never keeps a
//!   runtime alive; it pays one entry per call (the cost measured above).
//!   One case still keeps a handle until its thread exits: a thread that
//!   drives a current-thread runtime, shuts it down and keeps running.
//!
//! # Releasing the link, and a runtime that is gone
//!
//! A handle keeps its whole runtime alive (driver, I/O descriptors, timer
//! wheel), so the link must not hold one for ever: the library copy's
//! statics live as long as the mapping, which is usually the process.
//! When the last keep-alive of the library copy is dropped, no library code
//! of it can run any more, and the host calls [`release`] (through the
//! descriptor), which drops the handle. A registry that builds a runtime,
//! attaches, revokes and shuts the runtime down therefore leaves nothing of
//! that runtime behind.
//!
//! The runtime a version was attached with can also be shut down while the
//! version still serves (a host that creates a runtime per test, or shuts
//! down in the wrong order). tokio calls in library code would then panic
//! with "no reactor running" or "being shutdown", far from the cause. The
//! host watches the runtime (a task whose drop, at the runtime's shutdown,
//! sets [`HostLink::runtime_gone`]), and every guarded call into the library
//! fails at once with [`RUNTIME_GONE`] instead of running library code
//! ([`runtime_gone`]).

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use tokio::runtime::Handle;

use crate::library::guard::ThreadState;

/// What a library copy knows about its host.
pub(crate) struct HostLink {
    /// The runtime library code runs in (the registry's, see
    /// `Builder::runtime`); `None` once [`release`]d, or when the registry
    /// has none.
    pub runtime: Mutex<Option<Handle>>,
    /// Whether `runtime` held a handle at attach: guarded calls then enter
    /// it. Fixed at attach, so the hot path reads it without the lock;
    /// after [`release`] the slow path finds the handle gone and just runs.
    pub enter: bool,
    /// Set by the host when that runtime was shut down.
    pub runtime_gone: Arc<AtomicBool>,
    /// Whether the calling thread is a thread of a tokio runtime, asked of
    /// the host's tokio (the library's own thread-locals cannot tell).
    pub on_runtime_thread: fn() -> bool,
    /// Upgrades to a keep-alive of this library copy (tasks of
    /// [`crate::spawn`] hold one). Weak: a static never drops, and a
    /// strong reference here would keep the library mapped forever.
    pub keep_alive: Weak<dyn Any + Send + Sync>,
}

/// Set once per library copy, by its attach entry point.
static LINK: OnceLock<HostLink> = OnceLock::new();

/// What a guarded call returns, as a panic record, when the runtime its
/// version was attached with has been shut down.
pub const RUNTIME_GONE: &str =
    "the tokio runtime this version was attached with has been shut down, so its library code \
     cannot run (its timers, I/O and tasks would find no reactor); reload the loadable from a live runtime \
     (Builder::runtime) or stop calling it before the runtime shuts down";

/// Called by the attach entry point. A library copy attaches once (every
/// load is a fresh copy), so a second call keeps the first link.
pub(crate) fn install(link: HostLink) {
    let _ = LINK.set(link);
}

/// Drops this library copy's runtime handle. The host calls it (through the
/// descriptor) once the last keep-alive of the copy is gone, so no library
/// code of this copy runs any more. Never panics: dropping a handle runs
/// tokio's code, which is guarded here.
pub fn release() {
    if let Some(link) = LINK.get() {
        let runtime = link.runtime.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Err(panic) = crate::boundary::catch(move || drop(runtime)) {
            crate::library::guard::report(&panic, &"releasing the library's runtime handle");
        }
    }
}

/// Whether the runtime of this library copy was shut down (always `false`
/// in the host itself and for a registry without a runtime).
#[inline]
pub(crate) fn runtime_gone() -> bool {
    LINK.get().is_some_and(|link| link.runtime_gone.load(Ordering::Acquire))
}

/// The runtime handle, while linked.
pub(crate) fn runtime() -> Option<Handle> {
    LINK.get()?.runtime.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Runs `f` where library code finds the host's runtime (see
/// [`with_runtime_on`]), looking this thread's guard state up itself.
#[inline]
pub(crate) fn with_runtime<R>(f: impl FnOnce() -> R) -> R {
    crate::library::guard::with_thread(|thread| with_runtime_on(thread, f))
}

/// Runs `f` where library code finds the host's runtime: on a thread that
/// entered it for good, or when there is nothing to enter, directly;
/// otherwise inside a scoped entry (or, on a runtime thread, after entering
/// for good). In the host itself, when the registry has no runtime, or after
/// [`release`], `f` just runs. `thread` is this thread's guard state (`None`
/// only if its thread-local is gone: then it enters around the call).
///
/// The common cases decide without a lock or a write: whether the copy was
/// linked with a runtime is fixed at attach ([`HostLink::enter`]), and
/// whether this thread entered it for good is a flag of its own.
#[inline]
pub(crate) fn with_runtime_on<R>(thread: Option<&ThreadState>, f: impl FnOnce() -> R) -> R {
    if thread.is_some_and(|thread| thread.entered_runtime.get()) || !LINK.get().is_some_and(|link| link.enter) {
        return f();
    }
    enter_then(thread, f)
}

#[cold]
fn enter_then<R>(thread: Option<&ThreadState>, f: impl FnOnce() -> R) -> R {
    let Some(link) = LINK.get() else { return f() };
    // `None` once released: no library code of this copy runs any more
    // but cleanup, which needs no runtime.
    let Some(runtime) = runtime() else { return f() };
    // A guard of this copy live on this thread (library code entered a
    // runtime itself, or an outer guard of ours): a forgotten guard made now
    // would sit above it and break tokio's drop order.
    let inside = Handle::try_current().is_ok();
    if let Some(thread) = thread.filter(|_| !inside && (link.on_runtime_thread)()) {
        thread.entered_runtime.set(true);
        // The guard borrows `runtime` only in its type; what it keeps is
        // its own handle clone in tokio's thread-local, dropped when this
        // runtime thread exits.
        std::mem::forget(runtime.enter());
        return f();
    }
    let _guard = runtime.enter();
    f()
}

/// A keep-alive of this library copy (`None` in the host, or once its
/// version is gone and no task holds one).
pub(crate) fn keep_alive() -> Option<Arc<dyn Any + Send + Sync>> {
    LINK.get().and_then(|link| link.keep_alive.upgrade())
}
