//! The contract between a Rust trait and the dlopen boundary.
//!
//! A host never calls a library's trait object directly: a panic in the
//! method would abort the process (`boundary` module docs). Instead
//! [`#[verdant_loadable::interface]`](crate::interface) derives, for a trait `Shop`:
//!
//! - a *boundary trait* whose methods return `Result<_, Panic>`, implemented
//!   for every `T: Shop` by catching panics; this impl is instantiated in the
//!   library, so it catches with the library's `std`. For an `async fn` the
//!   boundary method is a plain `fn` that returns the future
//!   [`guard_future`](crate::boundary::guard_future) made (a
//!   [`BoundaryFuture`](crate::boundary::BoundaryFuture)), the only future the
//!   host ever holds: creating the library's future, each poll and its drop
//!   (with the arguments it owns, even if it is never polled) run under the
//!   guard;
//! - a *host proxy* that implements `Shop` by calling the boundary trait and
//!   re-raising a caught panic as a host panic ([`Panic::resume`](crate::boundary::Panic::resume));
//! - `unsafe impl Interface for dyn Shop` tying the three together.
//!
//! A handle's guard dereferences to the proxy, so callers just write
//! `shop.get()?.hello("you")`.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Weak};

use crate::panic::{Panic, PanicHook};

/// A trait-object type that can cross the library boundary.
///
/// Implemented for `dyn YourTrait` by the [`interface`](crate::interface)
/// attribute; implementing it by hand is possible but the macro states the
/// invariants for you.
///
/// # Safety
///
/// `proxy` must return a value that only calls into `boundary` through the
/// `Self::Boundary` methods and never outlives the pointed-to object (the
/// registry guarantees the latter by dropping the proxy first). Anything the
/// proxy hands out that may outlive it must hold a [`VersionPin`] or check
/// one per use ([`ProxyContext::pin`]).
///
/// ```
/// #[verdant_loadable::interface]
/// pub trait Greeter: Send + Sync {
///     fn greet(&self, who: &str) -> String;
/// }
/// fn assert_interface<I: verdant_loadable::Interface + ?Sized>() {}
/// assert_interface::<dyn Greeter>();
/// ```
pub unsafe trait Interface: Send + Sync + 'static {
    /// The panic-guarded, object-safe form of the trait that the library
    /// hands to the host.
    type Boundary: ?Sized + Send + Sync + 'static;

    /// Builds the host-side proxy that implements the interface by calling
    /// through `boundary`.
    ///
    /// # Safety
    ///
    /// `boundary` must point to a live object that outlives the returned box.
    unsafe fn proxy(boundary: *const Self::Boundary, context: ProxyContext) -> Box<Self>;
}

/// What a proxy knows about the version it belongs to: the loadable's name
/// (for errors), a way to pin the version for values that outlive a call,
/// and where to report the library panics it catches.
///
/// Built by the registry, used by the code `#[verdant_loadable::interface]`
/// generates.
///
/// ```
/// fn describe(context: &verdant_loadable::ProxyContext) -> String {
///     format!("loadable `{}`", context.loadable())
/// }
/// ```
#[derive(Clone)]
pub struct ProxyContext {
    name: Arc<str>,
    version: Weak<dyn Any + Send + Sync>,
    keep_alive: Arc<dyn Any + Send + Sync>,
    panic_hook: PanicHook,
}

impl ProxyContext {
    /// Made by the host's registry for each loaded version; not an API.
    #[doc(hidden)]
    pub fn new(
        name: Arc<str>,
        version: Weak<dyn Any + Send + Sync>,
        keep_alive: Arc<dyn Any + Send + Sync>,
        panic_hook: PanicHook,
    ) -> Self {
        ProxyContext { name, version, keep_alive, panic_hook }
    }

    /// Reports a library panic of this version that host code caught as a
    /// [`Panic`] value and consumes (it becomes an error, a host panic or a
    /// 500): once, through the registry's reporter.
    pub(crate) fn report_panic(&self, panic: &Panic, site: &str) {
        self.panic_hook.report(panic, site)
    }

    /// The registered name of the loadable.
    ///
    /// ```
    /// # fn f(context: &verdant_loadable::ProxyContext) {
    /// tracing::debug!(loadable = context.loadable(), "calling");
    /// # }
    /// ```
    pub fn loadable(&self) -> &str {
        &self.name
    }

    /// Pins the version, like a `verdant::Pinned` does: its detach
    /// hook does not run while the pin lives. `None` once the version is
    /// gone (it was replaced and every earlier pin was dropped).
    ///
    /// ```
    /// # fn f(context: &verdant_loadable::ProxyContext) {
    /// match context.pin() {
    ///     Some(_pin) => { /* the version stays while `_pin` lives */ }
    ///     None => { /* retired and detached: answer 503 */ }
    /// }
    /// # }
    /// ```
    pub fn pin(&self) -> Option<VersionPin> {
        self.version.upgrade().map(VersionPin)
    }

    /// Keeps the version's library loaded (but not its instance attached)
    /// for as long as the returned value lives: for values made by the
    /// library that may be dropped after the version is gone.
    ///
    /// ```
    /// # fn f(context: &verdant_loadable::ProxyContext) {
    /// let _library = context.keep_library_loaded();
    /// # }
    /// ```
    pub fn keep_library_loaded(&self) -> LibraryPin {
        LibraryPin(self.keep_alive.clone())
    }
}

impl fmt::Debug for ProxyContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyContext").field("loadable", &self.name).finish_non_exhaustive()
    }
}

/// Keeps one version of a loadable from being detached while it lives; see
/// [`ProxyContext::pin`].
///
/// ```
/// fn hold(pin: verdant_loadable::VersionPin) -> impl Send + Sync + 'static { pin }
/// ```
#[derive(Clone)]
pub struct VersionPin(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl fmt::Debug for VersionPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VersionPin")
    }
}

/// Keeps one version's library loaded while it lives; see
/// [`ProxyContext::keep_library_loaded`].
///
/// ```
/// fn hold(pin: verdant_loadable::LibraryPin) -> impl Send + Sync + 'static { pin }
/// ```
#[derive(Clone)]
pub struct LibraryPin(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl fmt::Debug for LibraryPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LibraryPin")
    }
}

#[cfg(test)]
mod tests {
    //! The boundary trait `#[interface]` generates for `async fn`s, called
    //! directly, as a host holding the boundary object may call it.

    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    /// An argument whose `Drop` counts, then panics.
    struct Bomb(Arc<AtomicUsize>);

    impl Drop for Bomb {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("the argument's drop exploded");
        }
    }

    #[verdant_loadable::interface]
    trait Depot: Send + Sync {
        /// Takes an owned argument.
        async fn store(&self, bomb: Bomb) -> u32;
        /// Borrows two arguments with unrelated (elided) lifetimes and one
        /// with a named lifetime.
        async fn label<'a>(&self, name: &str, tag: &'a str, sep: &'_ str) -> String;
    }

    struct DepotV1;

    #[verdant_loadable::interface]
    impl Depot for DepotV1 {
        async fn store(&self, bomb: Bomb) -> u32 {
            std::mem::forget(bomb);
            1
        }

        async fn label<'a>(&self, name: &str, tag: &'a str, sep: &'_ str) -> String {
            format!("{name}{sep}{tag}")
        }
    }

    /// The return types the macro accepts still compile: owned data, `std`
    /// errors, routers as the whole return type. (Refused ones are
    /// compile-fail cases of `tests/compile-fail/`.) Argument types are not
    /// checked; `fn(&str)` and `Fn(&str)` arguments get their lifetimes
    /// named as `async_trait` names them, so the proxy can pass them on.
    #[verdant_loadable::interface]
    trait Accepted: Send + Sync {
        fn owned(&self) -> (String, Box<[u8]>, Option<Arc<str>>);
        fn io(&self) -> Result<u32, std::io::Error>;
        fn router(&self) -> axum::Router<()>;
        async fn apply(&self, f: fn(&str) -> usize, g: &(dyn Fn(&str) -> usize + Sync)) -> usize;
    }

    struct AcceptedV1;

    #[verdant_loadable::interface]
    impl Accepted for AcceptedV1 {
        fn owned(&self) -> (String, Box<[u8]>, Option<Arc<str>>) {
            ("owned".to_owned(), Box::new([2]), Some(Arc::from("shared")))
        }

        fn io(&self) -> Result<u32, std::io::Error> {
            Err(std::io::ErrorKind::NotFound.into())
        }

        fn router(&self) -> axum::Router<()> {
            axum::Router::new()
        }

        async fn apply(&self, f: fn(&str) -> usize, g: &(dyn Fn(&str) -> usize + Sync)) -> usize {
            f("four") + g("three")
        }
    }

    fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_boundary_future_dropped_before_its_first_poll_drops_its_arguments_under_the_guard() {
        let depot = DepotV1;
        let boundary: &dyn __VerdantBoundaryDepot = &depot;
        let drops = Arc::new(AtomicUsize::new(0));
        let future = boundary.store(Bomb(drops.clone()));
        // The host may drop the future it got without polling it (a caller
        // that gave up). The argument's panicking `Drop` then runs inside
        // the library; the guard must contain it (unguarded, the panic
        // would unwind into the host: an abort across a real boundary).
        drop(future);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the argument was dropped, once");
    }

    #[test]
    fn a_boundary_future_borrows_arguments_of_unrelated_lifetimes() {
        let depot = DepotV1;
        let boundary: &dyn __VerdantBoundaryDepot = &depot;
        let tag = String::from("v1");
        let future = {
            let sep = String::from("-");
            let future = boundary.label("depot", &tag, &sep);
            let mut future = pin!(future);
            poll_once(future.as_mut())
        };
        assert_eq!(future, Poll::Ready(Ok("depot-v1".to_owned())));
    }

    #[test]
    fn accepted_shapes_cross_the_boundary() {
        let accepted = AcceptedV1;
        let boundary: &dyn __VerdantBoundaryAccepted = &accepted;
        assert_eq!(boundary.owned().map(|owned| owned.0), Ok("owned".to_owned()));
        let io = boundary.io().expect("no panic");
        assert_eq!(io.map_err(|error| error.kind()), Err(std::io::ErrorKind::NotFound));
        assert!(boundary.router().is_ok(), "the router is wrapped library-side");
        let length = |text: &str| text.len();
        let future = boundary.apply(str::len, &length);
        assert_eq!(poll_once(pin!(future)), Poll::Ready(Ok(9)));
    }
}
