//! The panic guards (library side): [`catch`], [`call`] and
//! [`guard_future`], public as `verdant_loadable::boundary`, whose docs
//! explain why they must be compiled into the library. Used by the attach
//! entry and the instance's retirement (`export.rs`), the boundary trait the
//! interface macro generates, and the router and body wrappers
//! (`router.rs`).
//!
//! Also the library copy's panic hook ([`install_panic_hook`]), which
//! records where a panic happened for the guard that catches it and
//! reports panics no guard catches, and [`report`], through which
//! library-side guards report what they cannot return to the host.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Once, OnceLock};
use std::task::{Context, Poll};

use crate::library::runtime_link;
use crate::panic::{Panic, PanicHook};

thread_local! {
    /// What the hook [`install_panic_hook`] sets recorded about the last
    /// panic on this thread that a guard was going to catch (its location
    /// and backtrace), taken by [`catch`].
    static LAST_PANIC: RefCell<Option<Recorded>> = const { RefCell::new(None) };
    /// What every guarded call reads and writes on its thread, in one
    /// thread-local: in a `dlopen`ed library each thread-local access is a
    /// call to `__tls_get_addr`, and this path runs on every call into
    /// library code (issue 11: three lookups per call were a sixth of a
    /// call's time). Const-initialised without a destructor, so readable
    /// even during thread teardown.
    static THREAD: ThreadState = const { ThreadState { guards: Cell::new(0), entered_runtime: Cell::new(false) } };
}

/// The per-thread state of this library copy's guards (see [`THREAD`]).
pub(crate) struct ThreadState {
    /// How many [`catch`] calls are running on this thread: a panic raised
    /// while it is above zero unwinds into one of them.
    guards: Cell<u32>,
    /// Whether this thread entered the host runtime for good
    /// (`runtime_link.rs`, "Entering once per thread").
    pub(crate) entered_runtime: Cell<bool>,
}

/// Runs `body` with this thread's [`ThreadState`], or `None` if the
/// thread-local can no longer be reached (never expected: it has no
/// destructor; handled rather than assumed).
#[inline]
pub(crate) fn with_thread<R>(body: impl FnOnce(Option<&ThreadState>) -> R) -> R {
    let state = THREAD.try_with(|state| state as *const ThreadState).ok();
    // SAFETY: the pointer comes from this thread's own `THREAD`, a
    // thread-local without destructor: its storage stays valid until the
    // thread exits, and this call runs on this thread. The reference lives
    // only for `body` (its lifetime is the closure's argument's), and
    // `ThreadState` is `!Sync` (it holds `Cell`s), so it cannot reach
    // another thread.
    body(state.map(|state| unsafe { &*state }))
}

/// The location and backtrace of a panic, as the hook saw it.
struct Recorded {
    location: Option<String>,
    backtrace: Option<String>,
}

/// Where this library copy reports panics: the host's hook for the version
/// this copy was attached as (set once, at attach; every load is a fresh
/// copy). Unset in the host's own copy of this crate, and in a library that
/// was never attached.
static HOST_HOOK: OnceLock<PanicHook> = OnceLock::new();

/// What a panic payload that is neither a `&str` nor a `String` reads as.
const NON_STRING_PAYLOAD: &str = "<non-string panic payload>";

/// Installs this library copy's panic hook and hands it the host's
/// [`PanicHook`]. Called by the attach entry point, first thing, once per
/// library copy.
///
/// The hook replaces the default one (which printed every panic to stderr
/// as `thread '<unnamed>' panicked at ...`, before and regardless of any
/// report) and decides by where the panic will end:
///
/// - **a guard will catch it** (a [`catch`] is running on this thread): it
///   only records the location and, when `RUST_BACKTRACE` asks for one, the
///   backtrace, for [`catch`] to put into the [`Panic`]; whoever consumes
///   that value reports it, once (see [`PanicHook`]), so nothing is printed
///   here;
/// - **no guard will** (a thread or a task the library started, a
///   destructor at thread exit): it reports the panic to the host right
///   away, through the host's hook, as a panic "outside any guard". Verdant
///   does not contain such a panic: it ends that thread, or that task (its
///   `JoinHandle` gets the error), as it would in any program; the report
///   is all the host learns of it;
/// - **no host hook** (this crate running outside a loaded library, as in
///   its own tests): the previous hook runs, by default std's message on
///   stderr.
///
/// A panic that library code catches itself (its own `catch_unwind` inside
/// a guarded call) is recorded and never reported, as it never reaches a
/// guard.
pub(crate) fn install_panic_hook(host: PanicHook) {
    let _ = HOST_HOOK.set(host);
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
            // `try_with`: during thread teardown a slot may be gone, and a
            // panic here (inside the panic hook) would abort the process.
            if THREAD.try_with(|thread| thread.guards.get()).unwrap_or(0) > 0 {
                let recorded = Recorded { location, backtrace: capture_backtrace() };
                let _ = LAST_PANIC.try_with(|last| {
                    if let Ok(mut last) = last.try_borrow_mut() {
                        *last = Some(recorded);
                    }
                });
            } else if let Some(host) = HOST_HOOK.get() {
                let message = info.payload_as_str().unwrap_or(NON_STRING_PAYLOAD).to_owned();
                let panic = Panic::located(message, location, capture_backtrace());
                host.report(&panic, UNGUARDED_SITE);
            } else {
                previous(info);
            }
        }));
    });
}

/// The site of a panic raised outside any guard.
const UNGUARDED_SITE: &str =
    "outside any guard (a thread or task of the library's): not contained by Verdant, it ends that thread or task";

/// Reports a panic that a library-side guard caught and cannot hand to the
/// host as a value (a response body that fails mid-stream, a drop): through
/// the host's hook when this copy has one, else as a `tracing` error (this
/// crate running in the host itself). `site` says where.
pub(crate) fn report(panic: &Panic, site: &dyn fmt::Display) {
    match HOST_HOOK.get() {
        Some(host) => host.report(panic, &site.to_string()),
        None => tracing::error!(panic = %panic, "{site}: a library panic was caught and contained"),
    }
}

/// The backtrace of the panic being raised, when the environment asks for
/// one (`RUST_LIB_BACKTRACE`/`RUST_BACKTRACE`, read by this copy of `std`).
/// Trimmed like std's short backtrace unless `RUST_BACKTRACE=full`.
fn capture_backtrace() -> Option<String> {
    let backtrace = Backtrace::capture();
    if backtrace.status() != BacktraceStatus::Captured {
        return None;
    }
    let text = backtrace.to_string();
    static FULL: OnceLock<bool> = OnceLock::new();
    let full = *FULL.get_or_init(|| {
        let full = |name: &str| std::env::var_os(name).is_some_and(|value| value == "full");
        full("RUST_LIB_BACKTRACE") || full("RUST_BACKTRACE")
    });
    Some(if full { text } else { short_backtrace(&text) })
}

/// The frames of a rendered backtrace between the panic machinery and the
/// `catch_unwind` that catches the panic (or the start of the thread), as
/// std's default hook prints them without `RUST_BACKTRACE=full`.
fn short_backtrace(full: &str) -> String {
    // A frame starts with a line `   N: symbol`; its `at file:line` lines follow.
    let mut frames: Vec<String> = Vec::new();
    for line in full.lines() {
        let trimmed = line.trim_start();
        let header =
            trimmed.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(frame) if !header => {
                frame.push('\n');
                frame.push_str(line);
            }
            _ => frames.push(line.to_owned()),
        }
    }
    let symbol = |frame: &String| frame.lines().next().unwrap_or_default().to_owned();
    let start = frames.iter().rposition(|f| symbol(f).contains("__rust_end_short_backtrace")).map_or(0, |i| i + 1);
    // The guard's frames: by symbol, or by file for frames that inlining
    // left with a short name (`{async_block#0}`, `do_call<..>`).
    let guard = |frame: &String| {
        let symbol = symbol(frame);
        symbol.contains("verdant_loadable::library::guard::")
            || symbol.contains("__rust_begin_short_backtrace")
            || frame.lines().skip(1).any(|at| at.contains("verdant-loadable") && at.contains("src/library/guard.rs"))
    };
    let end = frames[start..].iter().position(guard).map_or(frames.len(), |i| start + i);
    let mut short = frames[start..end].join("\n");
    short.push_str(
        "\nnote: frames of the panic machinery and of Verdant's guard are left out; RUST_BACKTRACE=full shows them",
    );
    short
}

/// The [`Panic`] record of a caught payload, with the location and backtrace
/// the hook recorded on this thread.
fn panic_from_payload(payload: &(dyn Any + Send)) -> Panic {
    let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        NON_STRING_PAYLOAD.to_owned()
    };
    // `try_with`: during thread teardown the slot may be gone, and a panic
    // here (outside `catch_unwind`) would abort the process.
    let recorded =
        LAST_PANIC.try_with(|last| last.try_borrow_mut().ok().and_then(|mut last| last.take())).ok().flatten();
    let (location, backtrace) = recorded.map_or((None, None), |r| (r.location, r.backtrace));
    Panic::located(message, location, backtrace)
}

/// Counts a running [`catch`] on this thread while it lives.
struct Guarding<'a>(Option<&'a ThreadState>);

impl<'a> Guarding<'a> {
    #[inline]
    fn enter(thread: Option<&'a ThreadState>) -> Guarding<'a> {
        if let Some(thread) = thread {
            thread.guards.set(thread.guards.get().saturating_add(1));
        }
        Guarding(thread)
    }
}

impl Drop for Guarding<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(thread) = self.0 {
            thread.guards.set(thread.guards.get().saturating_sub(1));
        }
    }
}

/// [`catch`] with this thread's state already looked up.
#[inline]
fn guarded<R>(thread: Option<&ThreadState>, f: impl FnOnce() -> R) -> Result<R, Panic> {
    let _guarding = Guarding::enter(thread);
    catch_unwind(AssertUnwindSafe(f)).map_err(caught)
}

/// What a caught payload becomes; out of line, so that the guarded path
/// itself stays small enough to inline into each boundary method.
#[cold]
#[inline(never)]
fn caught(payload: Box<dyn Any + Send>) -> Panic {
    let panic = panic_from_payload(&*payload);
    // The payload was allocated by this copy of std; drop it here, still
    // inside the library, and guard against a payload whose Drop panics.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    panic
}

/// Runs `f`, turning a panic into a [`Panic`] value.
///
/// Call this only from code compiled into the library (generic code
/// instantiated there, as the macros do): it must run with the library's own
/// `std` to recognise the library's panics. Unwind safety is asserted because
/// loadables are stateless by contract: a panicked call leaves nothing behind
/// that a later call relies on.
///
/// In a loaded library, a panic caught here is not printed by the library's
/// panic hook: it is reported once, by whoever consumes the returned
/// [`Panic`] (see [`PanicHook`]).
///
/// ```
/// assert_eq!(verdant_loadable::boundary::catch(|| 2 + 2), Ok(4));
/// ```
#[inline]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    with_thread(|thread| guarded(thread, f))
}

/// Runs `f` inside the host's runtime context and turns a panic into a
/// [`Panic`]: the guard around every interface method, poll and body frame.
/// Library side only, like [`catch`].
///
/// When the runtime this library copy was attached with has been shut down,
/// `f` does not run and the result is a [`Panic`] that says so
/// ([`docs::boundary`](crate::docs::boundary) §2): library code would only
/// fail further in, with tokio's "no reactor running".
///
/// ```
/// assert_eq!(verdant_loadable::boundary::call(|| "served"), Ok("served"));
/// ```
#[inline]
pub fn call<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    with_thread(|thread| {
        if runtime_link::runtime_gone() {
            return Err(runtime_gone());
        }
        guarded(thread, || runtime_link::with_runtime_on(thread, f))
    })
}

#[cold]
#[inline(never)]
fn runtime_gone() -> Panic {
    Panic::new(runtime_link::RUNTIME_GONE)
}

/// Like [`call`], but runs `f` even after the runtime was shut down: for
/// detach hooks and drops, which must run exactly once whatever happened.
#[inline]
pub(crate) fn cleanup<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    with_thread(|thread| guarded(thread, || runtime_link::with_runtime_on(thread, f)))
}

/// A future made by a library, as the host receives it: every poll and the
/// final drop run library code under [`guard_future`]'s guard, and a panic
/// in any of them arrives as `Err(Panic)`.
pub type BoundaryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Panic>> + Send + 'a>>;

/// Wraps the future `make` returns so that creating it, every poll of it and
/// dropping it run inside the host's runtime context and under [`catch`].
///
/// Call it in library code (the generated boundary of an `async` interface
/// method does); the host then polls the result through its vtable, so the
/// guard runs with the library's `std`. After a panic the inner future is
/// dropped (under the guard) and never polled again.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let future = verdant_loadable::boundary::guard_future(|| async { panic!("sold out") });
/// let error: verdant_loadable::boundary::Panic = future.await.unwrap_err();
/// assert_eq!(error.message(), "sold out");
/// # });
/// ```
pub fn guard_future<'a, F>(make: impl FnOnce() -> F) -> BoundaryFuture<'a, F::Output>
where
    F: Future + Send + 'a,
{
    // Boxed under the guard, where it is made: made first and boxed after,
    // the future (a router's holds the whole request) was copied three more
    // times on its way (out of the guard's `Result`, into the state, into
    // the box): 6 of the 12 copies, and 1.2% of the instructions, of a
    // request through a library router (`benches/http_path.rs`, callgrind).
    // A panic while making it leaks nothing.
    match call(move || Box::new(Guarded { state: State::Running(ManuallyDrop::new(make())) })) {
        Ok(running) => Box::into_pin(running),
        Err(panic) => Box::pin(Guarded::<F> { state: State::Failed(Some(panic)) }),
    }
}

/// The future behind [`guard_future`].
///
/// Pinning: `Guarded` is `!Unpin` when `F` is; the inner future is never
/// moved out of `state::Running`, only polled in place and dropped in place.
struct Guarded<F> {
    state: State<F>,
}

enum State<F> {
    Running(ManuallyDrop<F>),
    /// Creating or polling the future panicked; the inner future is gone.
    Failed(Option<Panic>),
    /// The inner future is gone (finished, or failed and reported).
    Done,
}

impl<F: Future> Future for Guarded<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `state` is structurally pinned (see the type's docs): the
        // inner future is only ever polled through this pinned reference and
        // dropped in place by `finish`.
        let this = unsafe { self.get_unchecked_mut() };
        let polled = match &mut this.state {
            State::Running(future) => {
                // SAFETY: as above; `future` does not move while pinned.
                let future = unsafe { Pin::new_unchecked(&mut **future) };
                call(move || future.poll(cx))
            }
            State::Failed(panic) => {
                let panic = panic.take().unwrap_or_else(|| Panic::new("polled again after it panicked"));
                this.state = State::Done;
                return Poll::Ready(Err(panic));
            }
            State::Done => return Poll::Ready(Err(Panic::new("polled again after it completed"))),
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => {
                let dropped = this.finish();
                Poll::Ready(dropped.map(|()| value))
            }
            Err(panic) => {
                // The poll's panic goes to the host as the result; a second
                // panic while dropping the future has nowhere to go but the
                // report.
                if let Err(dropped) = this.finish() {
                    report(&dropped, &"dropping a library future after it panicked");
                }
                Poll::Ready(Err(panic))
            }
        }
    }
}

impl<F> Guarded<F> {
    /// Drops the inner future in place (it is pinned: it must not move),
    /// under the guard.
    fn finish(&mut self) -> Result<(), Panic> {
        let State::Running(future) = &mut self.state else { return Ok(()) };
        // SAFETY: dropped in place exactly once: `state` becomes `Done`
        // right after, and dropping a `ManuallyDrop` does nothing.
        let dropped = cleanup(|| unsafe { ManuallyDrop::drop(future) });
        self.state = State::Done;
        dropped
    }
}

impl<F> Drop for Guarded<F> {
    fn drop(&mut self) {
        if let Err(panic) = self.finish() {
            report(&panic, &"dropping a library future");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Counts its drops, and panics in `Drop` when asked.
    struct Tracked {
        drops: Arc<AtomicUsize>,
        panic_on_drop: bool,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
            if self.panic_on_drop {
                panic!("drop exploded");
            }
        }
    }

    #[test]
    fn a_panic_while_making_the_future_is_its_first_result() {
        let mut future = guard_future(|| -> std::future::Ready<u32> { panic!("cannot start") });
        match poll_once(future.as_mut()) {
            Poll::Ready(Err(panic)) => assert_eq!(panic.message(), "cannot start"),
            other => panic!("expected the panic, got {:?}", other.map(|r| r.map(|_| ()))),
        }
        assert!(matches!(poll_once(future.as_mut()), Poll::Ready(Err(_))), "a second poll is an error, not a hang");
    }

    #[test]
    fn a_panic_in_a_poll_drops_the_inner_future_once_and_is_reported() {
        let drops = Arc::new(AtomicUsize::new(0));
        let tracked = Tracked { drops: drops.clone(), panic_on_drop: false };
        let mut polls = 0;
        let mut future = guard_future(move || {
            std::future::poll_fn(move |_| {
                let _keep = &tracked;
                polls += 1;
                if polls == 1 {
                    Poll::<()>::Pending
                } else {
                    panic!("poll {polls} exploded")
                }
            })
        });
        assert!(poll_once(future.as_mut()).is_pending());
        match poll_once(future.as_mut()) {
            Poll::Ready(Err(panic)) => assert_eq!(panic.message(), "poll 2 exploded"),
            other => panic!("expected the panic, got {:?}", other.map(|r| r.map(|_| ()))),
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the inner future is dropped right after it panicked");
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "and never dropped twice");
    }

    #[test]
    fn a_panic_while_dropping_the_inner_future_is_contained() {
        let drops = Arc::new(AtomicUsize::new(0));
        let tracked = Tracked { drops: drops.clone(), panic_on_drop: true };
        let future = guard_future(move || async move {
            let _keep = tracked;
            std::future::pending::<()>().await;
        });
        let mut future = pin!(future);
        assert!(poll_once(future.as_mut()).is_pending());
        // Dropping the pending future runs `Tracked::drop`, which panics;
        // the guard must contain it (the test would fail by unwinding).
    }

    #[test]
    fn a_panic_caught_during_thread_teardown_does_not_abort() {
        /// Runs a guarded call that panics from a thread-local destructor
        /// that runs after the panic-location slot was destroyed.
        struct CatchOnExit(Arc<AtomicUsize>);

        impl Drop for CatchOnExit {
            fn drop(&mut self) {
                if catch(|| panic!("late")).is_err() {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
        }

        thread_local! {
            static ON_EXIT: std::cell::RefCell<Option<CatchOnExit>> = const { std::cell::RefCell::new(None) };
        }

        let caught = Arc::new(AtomicUsize::new(0));
        let counter = caught.clone();
        std::thread::spawn(move || {
            // Registered first, so destroyed last (destructors run in
            // reverse order): when it runs, `LAST_LOCATION` is gone, and a
            // `with` on it would panic outside any `catch_unwind`, aborting.
            ON_EXIT.with(|slot| *slot.borrow_mut() = Some(CatchOnExit(counter)));
            let _ = catch(|| panic!("registers the location slot"));
        })
        .join()
        .expect("the thread ends normally");
        assert_eq!(caught.load(Ordering::SeqCst), 1, "the late panic was caught and reported");
    }

    #[test]
    fn the_guard_count_follows_nested_and_panicking_calls() {
        // The panic hook tells a guarded panic from an unguarded one by this
        // count: it must be exact inside, and back to zero after, every
        // guarded call, whether it returned or panicked.
        let count = || THREAD.with(|thread| thread.guards.get());
        assert_eq!(count(), 0);
        let nested = catch(|| {
            assert_eq!(count(), 1);
            let inner = call(|| -> u32 {
                assert_eq!(count(), 2);
                panic!("inner")
            });
            assert_eq!(count(), 1);
            inner
        });
        match nested {
            Ok(Err(panic)) => assert_eq!(panic.message(), "inner"),
            other => panic!("expected the inner panic as a value, got {other:?}"),
        }
        assert_eq!(count(), 0);
        assert!(cleanup(|| panic!("outer")).is_err());
        assert_eq!(count(), 0);
        // In the host's own copy (no link) nothing is entered.
        assert_eq!(call(|| tokio::runtime::Handle::try_current().is_ok()), Ok(false));
        assert!(!THREAD.with(|thread| thread.entered_runtime.get()));
    }

    #[test]
    fn a_finished_future_yields_its_value() {
        let mut future = guard_future(|| async { 7 });
        assert_eq!(poll_once(future.as_mut()), Poll::Ready(Ok(7)));
    }

    #[test]
    fn a_finished_future_is_dropped_by_its_last_poll_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let tracked = Tracked { drops: drops.clone(), panic_on_drop: false };
        let mut future = guard_future(move || async move {
            let _keep = tracked;
            7
        });
        assert_eq!(poll_once(future.as_mut()), Poll::Ready(Ok(7)));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped by the poll that finished it");
        assert!(matches!(poll_once(future.as_mut()), Poll::Ready(Err(_))), "a poll after the end is an error");
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "and never dropped twice");
    }

    #[test]
    fn a_panic_while_dropping_a_finished_future_is_its_result() {
        let drops = Arc::new(AtomicUsize::new(0));
        let tracked = Tracked { drops: drops.clone(), panic_on_drop: true };
        let mut future = guard_future(move || async move {
            let _keep = tracked;
            7
        });
        match poll_once(future.as_mut()) {
            Poll::Ready(Err(panic)) => assert_eq!(panic.message(), "drop exploded"),
            other => panic!("expected the drop's panic, got {other:?}"),
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(matches!(poll_once(future.as_mut()), Poll::Ready(Err(_))), "a poll after the end is an error");
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the half-dropped future is never dropped again");
    }

    #[test]
    fn panics_carry_no_location_outside_a_loaded_library_and_display_it_inside() {
        let plain = catch(|| panic!("plain")).unwrap_err();
        assert_eq!(plain.to_string(), "panicked: plain");
        let located = Panic::located("boom".to_owned(), Some("src/lib.rs:3:5".to_owned()), None);
        assert_eq!(located.to_string(), "panicked at src/lib.rs:3:5: boom");
    }
}
