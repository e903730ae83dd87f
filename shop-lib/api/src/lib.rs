//! The contract between the demo host (`demo-app`) and the shop loadable
//! (`shop-lib`).
//!
//! Both sides depend on this crate, and it is the only code they share: the
//! [`Shop`] interface the library serves, the [`ShopContext`] the host hands
//! to its attach hook, and the plain data types that cross the boundary
//! ([`Quote`], [`ShopError`]). Everything here must be built in the same
//! `cargo build -p demo-app -p shop-lib` as host and library; Verdant compares
//! the `TypeId`s of the interface and the context at load time and refuses a
//! library built any other way.

#![warn(missing_docs)]

use std::fmt;

/// What the shop library offers the host.
///
/// `#[verdant::interface]` keeps the trait as written and adds a hidden,
/// panic-guarded boundary form of it: a panic in `hello` or `quote` is caught
/// inside the library and re-raised in the host as a panic carrying a
/// [`verdant::boundary::LibraryPanic`], which the demo turns into HTTP 500.
#[verdant::interface]
pub trait Shop: Send + Sync {
    /// A greeting for `who`, naming the shop and the library version serving
    /// it (`"... served by shop-lib 0.1.0"`).
    fn hello(&self, who: &str) -> String;

    /// The price of `qty` units of article `sku`.
    fn quote(&self, sku: &str, qty: u32) -> Result<Quote, ShopError>;
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
}
