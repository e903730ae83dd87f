//! One attached version of a loadable, and its retirement.
//!
//! Invariants:
//! - A `Version` is created only by a successful attach; its instance is
//!   detached exactly once, by [`Retirement`], after the last `Arc<Version>`
//!   (the slot's, a pin's, or an uncommitted transaction's) is dropped.
//! - Drop order inside a version: host proxy, then the library's instance
//!   (detach + drop, in the library, under its panic guard), then the
//!   library itself. The proxy points into the instance and the instance's
//!   code lives in the library.
//! - The detach never runs on the thread that dropped the last pin (often a
//!   request): it is handed to one background thread per registry, which
//!   contains a panic of any job and goes on with the next.

use std::any::Any;
use std::mem::ManuallyDrop;
use std::sync::{mpsc, Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::descriptor::Instance;
use crate::loader::{FileStamp, LoadedLibrary};
use crate::report::VersionInfo;
use crate::runtime_watch::RuntimeWatch;
use crate::{Interface, ProxyContext};
use verdant_loadable::__private::PanicHook;

/// What is known about a version after it stopped serving. In JSON:
/// `{"state": "detached"}`, `{"state": "panicked", "message": "..."}`.
///
/// ```
/// let json = serde_json::to_string(&verdant::DetachState::Panicked("boom".into())).unwrap();
/// assert_eq!(json, r#"{"state":"panicked","message":"boom"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "message", rename_all = "snake_case")]
pub enum DetachState {
    /// Still pinned by calls in flight, or queued for detach.
    Pending,
    /// The detach hook ran and returned.
    Detached,
    /// The detach hook or the instance's drop panicked; the panic was
    /// contained in the library.
    Panicked(String),
}

/// Shared bookkeeping of a version, kept after the version itself is gone.
#[derive(Debug)]
pub(crate) struct VersionMeta {
    pub info: VersionInfo,
    pub copy: std::path::PathBuf,
    /// The artifact's stamp when it was last found to hold this version's
    /// bytes: a reload that finds the same stamp does not read the file.
    pub stamp: Mutex<Option<FileStamp>>,
    pub retired_at: Mutex<Option<SystemTime>>,
    pub detach: Mutex<DetachState>,
    /// The version's library while anything keeps it loaded (set once
    /// attached): for the count of its running tasks.
    pub library: std::sync::OnceLock<Weak<LibraryKeepAlive>>,
    /// How many of the version's strong references are held to *serve* it
    /// rather than by a call or request: the HTTP pipeline's snapshots, the
    /// routing pin of `axum::mount` (see [`ServingPin`]). `in_flight` in
    /// `status()` is the strong count less these.
    pub serving_pins: std::sync::atomic::AtomicUsize,
}

impl VersionMeta {
    /// How many `verdant_loadable::spawn` tasks of this version are still running
    /// (0 once its library is no longer loaded).
    pub(crate) fn tasks_running(&self) -> usize {
        self.library.get().and_then(Weak::upgrade).map_or(0, |library| library.tasks_running())
    }
}

/// A pin of a version that serves it rather than being a call or a request:
/// it keeps the version attached like any pin, but `status()` does not
/// count it in flight ([`VersionMeta::serving_pins`]).
///
/// Wrap the pin (a [`Pinned`](crate::Pinned)) right after taking it. Pins
/// are taken only of the serving version, and `in_flight` is reported for
/// retired ones, whose serving pins are only ever dropped: the count goes
/// down after the pin itself is dropped, so it never counts one as a
/// request, even for a moment.
pub(crate) struct ServingPin<P> {
    pin: Option<P>,
    meta: Arc<VersionMeta>,
}

impl<P> ServingPin<P> {
    pub(crate) fn new(pin: P, meta: Arc<VersionMeta>) -> Self {
        meta.serving_pins.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ServingPin { pin: Some(pin), meta }
    }
}

impl<P> std::ops::Deref for ServingPin<P> {
    type Target = P;

    fn deref(&self) -> &P {
        match &self.pin {
            Some(pin) => pin,
            // Taken only in `drop`.
            None => unreachable!("a ServingPin holds its pin until dropped"),
        }
    }
}

impl<P> Drop for ServingPin<P> {
    fn drop(&mut self) {
        drop(self.pin.take());
        self.meta.serving_pins.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The background thread that detaches versions (one per registry).
#[derive(Clone)]
pub(crate) struct Retirement {
    jobs: mpsc::Sender<Job>,
}

impl Retirement {
    /// Starts the thread; it ends when the registry and every version that
    /// holds a sender are gone.
    pub(crate) fn start() -> std::io::Result<Retirement> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("verdant-retire".to_owned()).spawn(move || {
            for job in queue {
                run_contained(job);
            }
        })?;
        Ok(Retirement { jobs })
    }

    pub(crate) fn submit(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // The thread is gone (process teardown): detach inline.
            job();
        }
    }
}

/// Runs one retirement job; a panic in it is logged and ends only that job.
///
/// Library code inside a job is already guarded library-side, but host code
/// can still panic (a `Drop` of something the version held). Without this,
/// one such panic would end the retirement thread, and every later detach
/// would run inline on whichever request dropped the last pin.
fn run_contained(job: Job) {
    // AssertUnwindSafe: the job is consumed here and never seen again; what
    // it shares (a version's `VersionMeta`) sits behind parking_lot locks,
    // which do not poison, and a detach job that panicked before recording
    // its result leaves the version `Pending`, which is what status() should
    // then say.
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<not a string>");
        tracing::error!(
            panic = message,
            "a retirement job panicked in host code; it was abandoned and the retirement thread goes on (please report this as a verdant bug)"
        );
    }
}

/// Keeps a library mapped for what the library itself holds or hands out:
/// its `verdant_loadable::spawn` tasks and the routers it returns. The library gets
/// only a `Weak` to it (see `runtime.rs`); the version and each task or
/// router hold strong references.
///
/// When the last keep-alive is dropped, no library code of this copy can
/// run again: the copy's link to the host runtime is released (its handle
/// would otherwise keep the runtime's driver alive for ever) and the watch
/// on that runtime stops. The last reference may be dropped by a thread
/// that is still running library code (a task ending on a worker thread),
/// so both, and the final drop of the library, are handed to the
/// retirement thread.
pub(crate) struct LibraryKeepAlive {
    library: Option<Arc<LoadedLibrary>>,
    retirement: Retirement,
    watch: Option<RuntimeWatch>,
}

impl LibraryKeepAlive {
    pub(crate) fn new(library: Arc<LoadedLibrary>, retirement: Retirement, watch: RuntimeWatch) -> Self {
        LibraryKeepAlive { library: Some(library), retirement, watch: Some(watch) }
    }

    /// `verdant_loadable::task::running()` of the library's own copy (verdant's
    /// code, which cannot panic: it only reads a map under a lock whose
    /// poisoning it ignores).
    fn tasks_running(&self) -> usize {
        self.library.as_ref().map_or(0, |library| (library.descriptor().tasks_running)())
    }
}

impl std::fmt::Debug for LibraryKeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibraryKeepAlive").finish_non_exhaustive()
    }
}

impl Drop for LibraryKeepAlive {
    // Not model-checked (scripts/loom): nothing here races. Drop runs once,
    // `take` makes the job single, and the job runs exactly once, on the
    // retirement thread or inline if that thread is gone (`submit`).
    fn drop(&mut self) {
        let Some(library) = self.library.take() else { return };
        let watch = self.watch.take();
        self.retirement.submit(Box::new(move || {
            // The library's own code; it catches what it runs.
            (library.descriptor().release_host_link)();
            drop(watch);
            drop(library);
        }));
    }
}

/// An attached version, as the slot and the pins hold it.
pub(crate) struct Version<I: Interface + ?Sized> {
    proxy: ManuallyDrop<Box<I>>,
    instance: ManuallyDrop<Box<dyn Instance<I>>>,
    library: ManuallyDrop<Arc<LoadedLibrary>>,
    keep_alive: ManuallyDrop<Arc<LibraryKeepAlive>>,
    meta: Arc<VersionMeta>,
    retirement: Retirement,
    /// Reports this version's panics (the proxy's context has a clone).
    panic_hook: PanicHook,
}

impl<I: Interface + ?Sized> Version<I> {
    /// Wraps an attached instance. The proxy gets a weak reference to the
    /// version itself, so that what it hands out (a router, say) can pin the
    /// version per request without keeping it alive forever.
    pub(crate) fn new(
        instance: Box<dyn Instance<I>>,
        library: Arc<LoadedLibrary>,
        keep_alive: Arc<LibraryKeepAlive>,
        meta: Arc<VersionMeta>,
        retirement: Retirement,
        name: Arc<str>,
        panic_hook: PanicHook,
    ) -> Arc<Self> {
        Arc::new_cyclic(|version: &Weak<Version<I>>| {
            let version: Weak<dyn Any + Send + Sync> = version.clone();
            let context = ProxyContext::new(name, version, keep_alive.clone(), panic_hook.clone());
            let boundary: *const I::Boundary = instance.boundary();
            // SAFETY: the boundary object lives inside `instance`, which this
            // version drops only after the proxy (see Drop).
            let proxy = unsafe { I::proxy(boundary, context) };
            Version {
                proxy: ManuallyDrop::new(proxy),
                instance: ManuallyDrop::new(instance),
                library: ManuallyDrop::new(library),
                keep_alive: ManuallyDrop::new(keep_alive),
                meta,
                retirement,
                panic_hook,
            }
        })
    }

    pub(crate) fn proxy(&self) -> &I {
        &self.proxy
    }

    pub(crate) fn meta(&self) -> &Arc<VersionMeta> {
        &self.meta
    }

    /// Where this version's panics are reported.
    pub(crate) fn panic_hook(&self) -> &PanicHook {
        &self.panic_hook
    }
}

impl<I: Interface + ?Sized> Drop for Version<I> {
    fn drop(&mut self) {
        // SAFETY: each field is taken exactly once, here, and never used
        // again; the proxy goes first because it points into the instance.
        let (instance, library, keep_alive) = unsafe {
            ManuallyDrop::drop(&mut self.proxy);
            (
                ManuallyDrop::take(&mut self.instance),
                ManuallyDrop::take(&mut self.library),
                ManuallyDrop::take(&mut self.keep_alive),
            )
        };
        let meta = self.meta.clone();
        let panic_hook = self.panic_hook.clone();
        self.retirement.submit(Box::new(move || {
            let _span = tracing::info_span!("detach", package = %meta.info.package, generation = meta.info.generation)
                .entered();
            let state = match instance.retire() {
                Ok(()) => {
                    tracing::info!("detached");
                    DetachState::Detached
                }
                Err(panic) => {
                    panic_hook.report(&panic, "detach");
                    DetachState::Panicked(panic.message().to_owned())
                }
            };
            *meta.detach.lock() = state;
            drop(keep_alive);
            drop(library);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a job submitted now runs: the name of its thread, or that it
    /// never ran.
    fn where_next_job_runs(retirement: &Retirement) -> String {
        let (sender, receiver) = mpsc::channel();
        retirement.submit(Box::new(move || {
            let thread = std::thread::current().name().unwrap_or("<unnamed>").to_owned();
            let _ = sender.send(thread);
        }));
        // The job either runs (inline or on the thread) or is dropped with
        // its sender, so this cannot wait forever.
        receiver.recv().unwrap_or_else(|_| "nowhere: dropped with the queue of a dead thread".to_owned())
    }

    #[test]
    fn retirement_thread_survives_a_panicking_job() {
        let retirement = Retirement::start().expect("start the retirement thread");
        assert_eq!(where_next_job_runs(&retirement), "verdant-retire");

        retirement.submit(Box::new(|| panic!("a host-side drop panicked")));

        // The next detach still runs on the retirement thread, not inline
        // on the thread that dropped the last pin (a request).
        for _ in 0..3 {
            assert_eq!(where_next_job_runs(&retirement), "verdant-retire");
        }
    }
}
