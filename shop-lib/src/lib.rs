//! The demo's e-shop logic, as a Verdant loadable.
//!
//! This crate is a `cdylib`: `demo-app` loads `libshop_lib.so` at start-up and
//! swaps in a rebuilt one on `kill -PIPE <pid>` (see `scripts/reload`). It is
//! stateless by contract: everything [`ShopV1`] holds is copied out of the
//! [`ShopContext`](shop_api::ShopContext) in its attach hook, so a new version starts from the same
//! context as the old one.
//!
//! It serves the [`Shop`](shop_api::Shop) interface three ways: a plain method (`hello`), an
//! `async` one that awaits a tokio timer (`quote`), and the shop's own HTTP
//! routes (`router`), which the host mounts under `/shop/`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the list of these routes |
//! | `GET /hello?who=NAME` | the greeting (`who` defaults to `you`) |
//! | `GET /quote/{sku}?qty=N` | the quote as text (`qty` defaults to 1); 404 for an unknown article, 400 for a bad quantity; the article `boom` panics inside the library, which Verdant answers with a 500 |
//! | `GET /catalog?delay_ms=D` | the price list, streamed one line per article, `D` ms apart (default 100) on a tokio timer |
//!
//! Every answer the library makes carries the header `x-shop-lib-version`
//! with this crate's package version (a 500 for a panic is made by Verdant,
//! not the library, and has none). Unknown paths get a 404 that lists the
//! routes.
//!
//! To see a reload, change something here (or just the `version` in this
//! crate's `Cargo.toml`), run `scripts/reload`, and ask `/shop/hello` again:
//! the greeting and the header name the library version that served it.

mod shop;

pub use shop::ShopV1;

verdant_loadable::export!(ShopV1);
