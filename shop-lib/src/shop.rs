//! The shop itself: [`ShopV1`], its interface methods and its routes.
//! `lib.rs` exports it; `loadtest/src/bin/static-shop.rs` compiles this
//! same file into a host binary, to measure what serving it through
//! Verdant costs against serving it statically.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use shop_api::{Quote, Shop, ShopContext, ShopError};
use verdant_loadable::{AttachError, Loadable};

/// This library's package version, as the greeting and the
/// `x-shop-lib-version` header report it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Set at build time with `SHOP_LIB_EDITION=+b cargo build -p shop-lib`:
/// a second real build of the same version, which differs only in its
/// greeting (`scripts/loadtest` alternates two builds this way without
/// editing any file). Empty normally.
const EDITION: &str = match option_env!("SHOP_LIB_EDITION") {
    Some(edition) => edition,
    None => "",
};

/// The header every answer of the library carries.
const VERSION_HEADER: &str = "x-shop-lib-version";

/// The price list: article and unit price in cents.
const PRICES: &[(&str, u64)] = &[("coffee", 420), ("tea", 350), ("croissant", 180), ("baguette", 130)];

/// The article that makes `quote` panic, to show a library panic becoming an
/// error (`ShopError::Panicked`) or an HTTP 500 instead of taking the process
/// down.
const BOOM: &str = "boom";

/// The pause between two lines of `/catalog` unless `delay_ms` says otherwise.
const CATALOG_DELAY: Duration = Duration::from_millis(100);

/// The longest pause `/catalog?delay_ms=` may ask for.
const CATALOG_MAX_DELAY: Duration = Duration::from_secs(5);

/// What the routes list in the index and in 404 answers.
const ROUTES: &str = "GET /hello?who=NAME, GET /quote/{sku}?qty=N, GET /catalog?delay_ms=D";

/// The shop, version 1: greets, quotes from a fixed price list, and serves
/// both over HTTP.
#[derive(Debug, Clone)]
pub struct ShopV1 {
    shop_name: String,
    currency: String,
}

#[verdant_loadable::interface]
impl Shop for ShopV1 {
    fn hello(&self, who: &str) -> String {
        format!("Hello, {who}! Greetings from {}, served by shop-lib {VERSION}{EDITION}", self.shop_name)
    }

    async fn quote(&self, sku: &str, qty: u32) -> Result<Quote, ShopError> {
        // Library code awaiting a tokio timer: Verdant polls this future
        // inside the host's runtime, so the library's copy of tokio finds it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        if sku == BOOM {
            // A panic inside a poll: contained in the library, delivered to a
            // host caller as `Err(ShopError::Panicked(..))`
            // and to an HTTP client of `/quote/boom` as a 500.
            panic!("shop-lib {VERSION} was asked to quote `{BOOM}` and exploded, as designed");
        }
        let unit_price_cents = price_of(sku).ok_or_else(|| ShopError::UnknownSku { sku: sku.to_owned() })?;
        if qty == 0 {
            return Err(ShopError::InvalidQuantity { qty, reason: "order at least one".to_owned() });
        }
        let total_cents = unit_price_cents
            .checked_mul(u64::from(qty))
            .ok_or_else(|| ShopError::InvalidQuantity { qty, reason: "the total is too large".to_owned() })?;
        Ok(Quote { sku: sku.to_owned(), qty, unit_price_cents, total_cents, currency: self.currency.clone() })
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/hello", get(hello))
            .route("/quote/{sku}", get(quote))
            .route("/catalog", get(catalog))
            .fallback(not_found)
            .with_state(Arc::new(self.clone()))
            .layer(axum::middleware::map_response(stamp_version))
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

/// The unit price of `sku` in cents, if it is in the price list.
fn price_of(sku: &str) -> Option<u64> {
    PRICES.iter().find(|(name, _)| *name == sku).map(|(_, cents)| *cents)
}

/// `cents` as `units.cc`.
fn amount(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A one-line text answer.
fn text(status: StatusCode, line: impl std::fmt::Display) -> Response {
    (status, format!("{line}\n")).into_response()
}

/// Adds `x-shop-lib-version` to every answer the router makes.
async fn stamp_version(mut response: Response) -> Response {
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from_static(VERSION));
    response
}

/// `GET /`: what the shop serves.
async fn index(State(shop): State<Arc<ShopV1>>) -> Response {
    text(StatusCode::OK, format!("{}, served by shop-lib {VERSION}: {ROUTES}", shop.shop_name))
}

/// `GET /hello?who=NAME`: the greeting (default `who=you`).
async fn hello(State(shop): State<Arc<ShopV1>>, Query(params): Query<HashMap<String, String>>) -> Response {
    let who = params.get("who").map_or("you", String::as_str);
    text(StatusCode::OK, shop.hello(who))
}

/// `GET /quote/{sku}?qty=N`: a price quote as text (default `qty=1`).
async fn quote(
    State(shop): State<Arc<ShopV1>>,
    Path(sku): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let qty = match params.get("qty").map(|raw| (raw, raw.parse::<u32>())) {
        None => 1,
        Some((_, Ok(qty))) => qty,
        Some((raw, Err(error))) => {
            return text(StatusCode::BAD_REQUEST, format!("qty must be a whole number of units, not `{raw}`: {error}"))
        }
    };
    match shop.quote(&sku, qty).await {
        Ok(quote) => text(StatusCode::OK, quote),
        Err(error @ ShopError::UnknownSku { .. }) => text(StatusCode::NOT_FOUND, error),
        Err(error @ ShopError::InvalidQuantity { .. }) => text(StatusCode::BAD_REQUEST, error),
        // Only a host calling through the boundary sees this variant; inside
        // the library a panic simply unwinds, and Verdant answers 500.
        Err(error @ ShopError::Panicked(_)) => text(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

/// `GET /catalog?delay_ms=D`: the price list, one line per article, streamed
/// `D` ms apart (default 100, at most 5000).
async fn catalog(State(shop): State<Arc<ShopV1>>, Query(params): Query<HashMap<String, String>>) -> Response {
    let delay = match params.get("delay_ms").map(|raw| (raw, raw.parse::<u64>())) {
        None => CATALOG_DELAY,
        Some((_, Ok(ms))) if Duration::from_millis(ms) <= CATALOG_MAX_DELAY => Duration::from_millis(ms),
        Some((raw, _)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "delay_ms must be a whole number of milliseconds up to {}, not `{raw}`",
                    CATALOG_MAX_DELAY.as_millis()
                ),
            )
        }
    };
    let lines = PRICES.iter().map(|(sku, cents)| format!("{sku} {} {}\n", amount(*cents), shop.currency)).collect();
    let mut response = Body::new(Catalog { lines, next: 0, delay, sleep: None }).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Every other path under the shop's mount point.
async fn not_found(method: Method, uri: Uri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "shop-lib {VERSION} has no route for {method} {} (paths relative to where the shop is mounted); it serves {ROUTES}",
            uri.path()
        ),
    )
}

/// The streaming body of `/catalog`: one frame per line, `delay` apart.
///
/// Verdant polls it under the library's guard and keeps the version that
/// made it loaded until it is finished or dropped, so a catalog that started
/// streaming before a reload completes on the old version.
struct Catalog {
    lines: Vec<String>,
    next: usize,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Catalog {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(line) = this.lines.get(this.next) else {
            return Poll::Ready(None);
        };
        if this.next > 0 {
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(this.delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let frame = Frame::data(Bytes::from(line.clone()));
        this.next += 1;
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.lines.len()
    }
}
