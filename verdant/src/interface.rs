//! The contract between a Rust trait and the dlopen boundary.
//!
//! A host never calls a library's trait object directly: a panic in the
//! method would abort the process (`boundary` module docs). Instead
//! [`#[verdant::interface]`](crate::interface) derives, for a trait `Shop`:
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
/// registry guarantees the latter by dropping the proxy first).
///
/// ```
/// #[verdant::interface]
/// pub trait Greeter: Send + Sync {
///     fn greet(&self, who: &str) -> String;
/// }
/// fn assert_interface<I: verdant::Interface + ?Sized>() {}
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
    unsafe fn proxy(boundary: *const Self::Boundary) -> Box<Self>;
}
