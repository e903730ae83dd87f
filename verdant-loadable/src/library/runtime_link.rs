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
//! - What it keeps: one handle clone per thread that ran this library copy,
//!   released by tokio's thread-local destructor when the thread exits (such
//!   destructors already keep the library mapped, [`docs::boundary`](crate::docs::boundary) §4).

use std::any::Any;
use std::cell::Cell;
use std::sync::{Arc, OnceLock, Weak};

use tokio::runtime::{EnterGuard, Handle};

/// What a library copy knows about its host.
pub(crate) struct HostLink {
    /// The runtime library code runs in (the registry's, see
    /// `Builder::runtime`).
    pub runtime: Option<Handle>,
    /// Upgrades to a keep-alive of this library copy (tasks of
    /// [`crate::task::spawn`] hold one). Weak: a static never drops, and a
    /// strong reference here would keep the library mapped forever.
    pub keep_alive: Weak<dyn Any + Send + Sync>,
}

/// Set once per library copy, by its attach entry point.
static LINK: OnceLock<HostLink> = OnceLock::new();

/// Called by the attach entry point. A library copy attaches once (every
/// load is a fresh copy), so a second call keeps the first link.
pub(crate) fn install(link: HostLink) {
    let _ = LINK.set(link);
}

/// The host link, when this code runs inside a loaded library.
pub(crate) fn link() -> Option<&'static HostLink> {
    LINK.get()
}

thread_local! {
    /// Whether this thread entered the host runtime for good (see the module
    /// docs). Const-initialised without a destructor: readable at any time,
    /// even during thread teardown.
    static ENTERED_FOR_GOOD: Cell<bool> = const { Cell::new(false) };
}

/// Makes sure library code on this thread finds the host's runtime, so that
/// library code polled or called from any host thread finds one. Returns a
/// guard only when the thread could not enter for good; keep it for the
/// duration of the library code. `None` in the host itself, when the
/// registry has no runtime, or when the thread already entered for good.
#[inline]
pub(crate) fn enter() -> Option<EnterGuard<'static>> {
    let runtime = LINK.get()?.runtime.as_ref()?;
    if ENTERED_FOR_GOOD.with(Cell::get) {
        return None;
    }
    enter_first_time(runtime)
}

#[cold]
fn enter_first_time(runtime: &'static Handle) -> Option<EnterGuard<'static>> {
    if Handle::try_current().is_ok() {
        // A guard of this copy is live on this thread: a forgotten guard
        // made now would sit above it and break tokio's drop order.
        return Some(runtime.enter());
    }
    std::mem::forget(runtime.enter());
    ENTERED_FOR_GOOD.with(|entered| entered.set(true));
    None
}

/// A keep-alive of this library copy (`None` in the host, or once its
/// version is gone and no task holds one).
pub(crate) fn keep_alive() -> Option<Arc<dyn Any + Send + Sync>> {
    LINK.get().and_then(|link| link.keep_alive.upgrade())
}
