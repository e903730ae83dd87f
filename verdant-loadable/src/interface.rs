//! The contract between a Rust trait and the dlopen boundary.
//!
//! A host never calls a library's trait object directly: a panic in the
//! method would abort the process (`boundary` module docs). Instead
//! [`#[verdant_loadable::interface]`](crate::interface) derives, for a trait `Shop`:
//!
//! - a *boundary trait* whose methods return `Result<_, Panic>`, implemented
//!   for every `T: Shop` by catching panics; this impl is instantiated in the
//!   library, so it catches with the library's `std`;
//! - a *host proxy* that implements `Shop` by calling the boundary trait and
//!   re-raising a caught panic as a host panic ([`Panic::resume`](crate::boundary::Panic::resume));
//! - `unsafe impl Interface for dyn Shop` tying the three together.
//!
//! A handle's guard dereferences to the proxy, so callers just write
//! `shop.get()?.hello("you")`.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Weak};

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
/// (for errors) and a way to pin the version for values that outlive a call.
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
}

impl ProxyContext {
    /// Made by the host's registry for each loaded version; not an API.
    #[doc(hidden)]
    pub fn new(name: Arc<str>, version: Weak<dyn Any + Send + Sync>, keep_alive: Arc<dyn Any + Send + Sync>) -> Self {
        ProxyContext { name, version, keep_alive }
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
