//! The contract between the demo host (`demo-app`) and the shop loadable
//! (`shop-lib`).
//!
//! Both sides depend on this crate, and it is the only code they share: the
//! [`Shop`] interface the library serves, the [`ShopContext`] the host hands
//! to its attach hook, and the plain data types that cross the boundary
//! ([`Quote`], [`ShopError`]). It depends on `verdant-loadable` only, never on
//! the host crate. Host and library must build it with one feature set:
//! Verdant compares the `TypeId`s of the interface and the context at load
//! time; the workspace-hack makes `cargo build -p shop-lib` alone agree with
//! the demo's build.

#![warn(missing_docs)]

use std::fmt;

/// What the shop library offers the host.
///
/// The three methods show the three ways a call crosses the library
/// boundary. `#[verdant_loadable::interface]` keeps the trait as written (with
/// `async fn`s made object-safe by `async-trait`: they return a boxed
/// `Send` future) and adds a hidden, panic-guarded boundary form of it that
/// the host calls through:
///
/// - [`hello`](Shop::hello) is a plain call. A panic in it is caught inside
///   the library and re-raised in the host as a panic carrying a
///   [`verdant_loadable::boundary::LibraryPanic`], because a `String` has no room
///   for an error.
/// - [`quote`](Shop::quote) is `async`: the library's future is created,
///   polled and dropped under the guard, inside the host's tokio runtime
///   (so library code can use tokio timers and I/O). It returns
///   `Result<_, ShopError>` and [`ShopError`] can hold a
///   [`verdant_loadable::Panicked`], so a panic in it reaches the host as
///   `Err(ShopError::Panicked(..))` instead.
/// - [`router`](Shop::router) is the shop's own HTTP face. Verdant wraps
///   the router library-side: every handler, response future and body
///   runs under the guard, and a panic in any of them becomes an HTTP 500
///   (or an aborted response, mid-body). The host serves it with
///   `verdant::axum::mount`, which looks the serving version up per
///   request.
///
/// An implementation with `async fn`s carries `#[verdant_loadable::interface]` too,
/// so that its methods get the same boxed-future signatures:
///
/// ```text
/// #[verdant_loadable::interface]
/// impl Shop for ShopV1 {
///     fn hello(&self, who: &str) -> String { .. }
///     async fn quote(&self, sku: &str, qty: u32) -> Result<Quote, ShopError> { .. }
///     fn router(&self) -> axum::Router { .. }
/// }
/// ```
#[verdant_loadable::interface]
pub trait Shop: Send + Sync {
    /// A greeting for `who`, naming the shop and the library version serving
    /// it (`"... served by shop-lib 0.1.0"`).
    fn hello(&self, who: &str) -> String;

    /// The price of `qty` units of article `sku`.
    ///
    /// # Errors
    ///
    /// [`ShopError::UnknownSku`] for an article that is not in the price
    /// list, [`ShopError::InvalidQuantity`] for a quantity of zero or a total
    /// too large to represent, and [`ShopError::Panicked`] when the library
    /// panicked while quoting
    /// (the demo library does, on purpose, for the article `boom`).
    async fn quote(&self, sku: &str, qty: u32) -> Result<Quote, ShopError>;

    /// The shop's HTTP routes, relative to where the host mounts them (the
    /// demo mounts them under `/shop/`). Every answer the library makes
    /// carries the header `x-shop-lib-version` with the library's package
    /// version.
    ///
    /// Verdant builds this router once per loaded version and serves every
    /// request of that version with it.
    fn router(&self) -> axum::Router;
}

/// The shared context every version of the shop library attaches with.
///
/// The library clones what it needs in its attach hook; it never keeps a
/// reference to the context itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopContext {
    /// The shop's display name, used in greetings.
    pub shop_name: String,
    /// The ISO 4217 code prices are quoted in, e.g. `"EUR"`.
    pub currency: String,
}

/// A price quote for one line of an order.
///
/// Amounts are integer cents of [`Quote::currency`], so no rounding happens
/// anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The article quoted.
    pub sku: String,
    /// How many units.
    pub qty: u32,
    /// The price of one unit, in cents.
    pub unit_price_cents: u64,
    /// `qty * unit_price_cents`, in cents.
    pub total_cents: u64,
    /// The currency of both amounts.
    pub currency: String,
}

impl fmt::Display for Quote {
    /// `3 x coffee at 4.20 EUR = 12.60 EUR`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} x {} at {} {} = {} {}",
            self.qty,
            self.sku,
            Cents(self.unit_price_cents),
            self.currency,
            Cents(self.total_cents),
            self.currency
        )
    }
}

/// Formats an amount of cents as `units.cc`.
struct Cents(u64);

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Why the shop could not quote.
///
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShopError {
    /// The article is not in the price list.
    #[error("unknown article `{sku}`")]
    UnknownSku {
        /// The article asked for.
        sku: String,
    },
    /// The quantity is zero or the total does not fit the price type.
    #[error("cannot quote {qty} units: {reason}")]
    InvalidQuantity {
        /// The quantity asked for.
        qty: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The call failed at the library boundary rather than in the shop's
    /// logic: library code panicked while quoting. Verdant contained the
    /// panic inside the library and delivers it here (through
    /// `From<verdant_loadable::Panicked>`) instead of re-raising it in the
    /// host; the library version keeps serving other calls.
    #[error(transparent)]
    Panicked(#[from] verdant_loadable::Panicked),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_displays_amounts_in_units_and_cents() {
        let quote = Quote {
            sku: "coffee".to_owned(),
            qty: 3,
            unit_price_cents: 420,
            total_cents: 1260,
            currency: "EUR".to_owned(),
        };
        assert_eq!(quote.to_string(), "3 x coffee at 4.20 EUR = 12.60 EUR");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(ShopError::UnknownSku { sku: "tofu".to_owned() }.to_string(), "unknown article `tofu`");
    }

    #[test]
    fn a_contained_panic_converts_into_a_shop_error() {
        let panic = verdant_loadable::boundary::Panic::new("exploded");
        let error = ShopError::from(verdant_loadable::Panicked::new(panic, "shop", "quote"));
        assert!(matches!(&error, ShopError::Panicked(p) if p.method == "quote"), "{error:?}");
        assert!(error.to_string().contains("panicked in `quote`: exploded"), "{error}");
    }
}
