//! Boundary shim, library side: the link from a loaded library to its host.
//!
//! Every `static` of every crate linked into a library is a fresh copy per
//! loaded version (BOUNDARY.md §7), tokio's thread-local runtime context
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
//! Cost: entering clones the runtime handle (one atomic increment and
//! decrement on a counter shared by every thread); the handle benchmark
//! (`scripts/bench`) measures it as part of each call.

use std::any::Any;
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

/// Enters the host's runtime for the life of the guard, so that library code
/// polled or called from any host thread finds a runtime. `None` in the host
/// itself, or when the registry has no runtime.
#[inline]
pub(crate) fn enter() -> Option<EnterGuard<'static>> {
    LINK.get().and_then(|link| link.runtime.as_ref()).map(Handle::enter)
}

/// A keep-alive of this library copy (`None` in the host, or once its
/// version is gone and no task holds one).
pub(crate) fn keep_alive() -> Option<Arc<dyn Any + Send + Sync>> {
    LINK.get().and_then(|link| link.keep_alive.upgrade())
}
