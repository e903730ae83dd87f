//! The demo's e-shop logic, as a Verdant loadable.
//!
//! This crate is a `cdylib`: `demo-app` loads `libshop_lib.so` at start-up and
//! swaps in a rebuilt one on `kill -PIPE <pid>` (see `scripts/reload`). It is
//! stateless by contract: everything [`ShopV1`] holds is copied out of the
//! [`ShopContext`] in its attach hook, so a new version starts from the same
//! context as the old one.
//!
//! To see a reload, change something here (or just the `version` in this
//! crate's `Cargo.toml`), run `scripts/reload`, and ask `/shop/hello` again:
//! the greeting names the library version that served it.

use shop_api::{Quote, Shop, ShopContext, ShopError};
use verdant::{AttachError, Loadable};

/// This library's package version, as the greeting reports it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The price list: article and unit price in cents.
const PRICES: &[(&str, u64)] = &[("coffee", 420), ("tea", 350), ("croissant", 180), ("baguette", 130)];

/// The article that makes `quote` panic, to show a library panic becoming an
/// HTTP 500 instead of taking the process down.
const BOOM: &str = "boom";

/// The shop, version 1: greets and quotes from a fixed price list.
#[derive(Debug)]
pub struct ShopV1 {
    shop_name: String,
    currency: String,
}

impl Shop for ShopV1 {
    fn hello(&self, who: &str) -> String {
        format!("Hello, {who}! Greetings from {}, served by shop-lib {VERSION}", self.shop_name)
    }

    fn quote(&self, sku: &str, qty: u32) -> Result<Quote, ShopError> {
        if sku == BOOM {
            panic!("shop-lib {VERSION} was asked to quote `{BOOM}` and exploded, as designed");
        }
        let unit_price_cents = PRICES
            .iter()
            .find(|(name, _)| *name == sku)
            .map(|(_, cents)| *cents)
            .ok_or_else(|| ShopError::UnknownSku { sku: sku.to_owned() })?;
        if qty == 0 {
            return Err(ShopError::InvalidQuantity { qty, reason: "order at least one".to_owned() });
        }
        let total_cents = unit_price_cents
            .checked_mul(u64::from(qty))
            .ok_or_else(|| ShopError::InvalidQuantity { qty, reason: "the total is too large".to_owned() })?;
        Ok(Quote { sku: sku.to_owned(), qty, unit_price_cents, total_cents, currency: self.currency.clone() })
    }
}

impl Loadable for ShopV1 {
    type Context = ShopContext;
    type Interface = dyn Shop;

    fn attach(context: &ShopContext) -> Result<Self, AttachError> {
        if context.currency.is_empty() {
            return Err(AttachError::new("ShopContext::currency is empty; the shop cannot quote prices"));
        }
        // Verdant installs the host's tracing subscriber as this library
        // copy's global default, so these events show up in the host's log.
        tracing::info!(shop = %context.shop_name, version = VERSION, "shop-lib attached");
        Ok(ShopV1 { shop_name: context.shop_name.clone(), currency: context.currency.clone() })
    }

    fn detach(&mut self) {
        tracing::info!(shop = %self.shop_name, version = VERSION, "shop-lib detached");
    }
}

verdant::export!(ShopV1);
