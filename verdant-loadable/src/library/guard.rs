//! The panic guards (library side): [`catch`], [`call`] and
//! [`guard_future`], public as `verdant_loadable::boundary`, whose docs
//! explain why they must be compiled into the library. Used by the attach
//! entry and the instance's retirement (`export.rs`), the boundary trait the
//! interface macro generates, and the router and body wrappers
//! (`router.rs`).

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use crate::library::runtime_link;
use crate::panic::Panic;

thread_local! {
    /// The location of the last panic on this thread, written by the hook
    /// [`install_location_hook`] sets and taken by [`catch`].
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes this copy of `std` record where each panic happened, so that
/// [`Panic::location`] can report it. Called by the attach entry point, once
/// per library copy; the previous hook (by default: the message on stderr)
/// still runs.
pub(crate) fn install_location_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(location) = info.location() {
                let text = format!("{}:{}:{}", location.file(), location.line(), location.column());
                // `try_with`: a panic during thread teardown has no slot left.
                let _ = LAST_LOCATION.try_with(|last| *last.borrow_mut() = Some(text));
            }
            previous(info);
        }));
    });
}

/// The [`Panic`] record of a caught payload, with the location the hook
/// recorded on this thread.
fn panic_from_payload(payload: &(dyn Any + Send)) -> Panic {
    let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    };
    // `try_with`: during thread teardown the slot may be gone, and a panic
    // here (outside `catch_unwind`) would abort the process.
    let location = LAST_LOCATION.try_with(|last| last.borrow_mut().take()).ok().flatten();
    Panic::located(message, location)
}

/// Runs `f`, turning a panic into a [`Panic`] value.
///
/// Call this only from code compiled into the library (generic code
/// instantiated there, as the macros do): it must run with the library's own
/// `std` to recognise the library's panics. Unwind safety is asserted because
/// loadables are stateless by contract: a panicked call leaves nothing behind
/// that a later call relies on.
///
/// ```
/// assert_eq!(verdant_loadable::boundary::catch(|| 2 + 2), Ok(4));
/// ```
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let panic = panic_from_payload(&*payload);
        // The payload was allocated by this copy of std; drop it here, still
        // inside the library, and guard against a payload whose Drop panics.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        panic
    })
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
    if runtime_link::runtime_gone() {
        return Err(Panic::new(runtime_link::RUNTIME_GONE));
    }
    cleanup(f)
}

/// Like [`call`], but runs `f` even after the runtime was shut down: for
/// detach hooks and drops, which must run exactly once whatever happened.
#[inline]
pub(crate) fn cleanup<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    catch(|| runtime_link::with_runtime(f))
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
    let state = match call(make) {
        Ok(future) => State::Running(ManuallyDrop::new(future)),
        Err(panic) => State::Failed(Some(panic)),
    };
    Box::pin(Guarded { state })
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
                // A drop panic after a poll panic adds nothing to report.
                let _ = this.finish();
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
            tracing::error!(panic = %panic, "a library future panicked while it was dropped; contained");
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
    fn a_finished_future_yields_its_value() {
        let mut future = guard_future(|| async { 7 });
        assert_eq!(poll_once(future.as_mut()), Poll::Ready(Ok(7)));
    }

    #[test]
    fn panics_carry_no_location_outside_a_loaded_library_and_display_it_inside() {
        let plain = catch(|| panic!("plain")).unwrap_err();
        assert_eq!(plain.to_string(), "panicked: plain");
        let located = Panic::located("boom".to_owned(), Some("src/lib.rs:3:5".to_owned()));
        assert_eq!(located.to_string(), "panicked at src/lib.rs:3:5: boom");
    }
}
