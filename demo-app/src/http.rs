//! The HTTP face of the demo: routes, error mapping and the panic layer.

use std::any::Any;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shop_api::{Shop, ShopError};
use tower_http::catch_panic::CatchPanicLayer;
use verdant::boundary::LibraryPanic;
use verdant::{Handle, HandleError, Verdant};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The shop loadable; each request pins the version serving when it starts.
    pub shop: Handle<dyn Shop>,
    /// The registry, for `/verdant/status`.
    pub verdant: Verdant,
}

/// The demo's routes, with a 404 fallback and library panics turned into 500.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/shop/hello", get(hello))
        .route("/shop/quote/{sku}", get(quote))
        .route("/verdant/status", get(status))
        .fallback(not_found)
        .with_state(state)
        .layer(CatchPanicLayer::custom(panic_response))
}

/// An error answer: a status and a one-line text body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl From<HandleError> for ApiError {
    /// No serving version (not attached yet, or the registry was revoked):
    /// the service is up but cannot answer for this namespace.
    fn from(error: HandleError) -> Self {
        tracing::warn!(%error, "no serving shop version");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}

impl From<ShopError> for ApiError {
    fn from(error: ShopError) -> Self {
        let status = match error {
            ShopError::UnknownSku { .. } => StatusCode::NOT_FOUND,
            ShopError::InvalidQuantity { .. } => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, format!("{}\n", self.message)).into_response()
    }
}

/// A text answer that says which library version produced it.
fn served(text: String, package_version: &str, generation: u64) -> Response {
    let mut response = format!("{text}\n").into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(package_version) {
        headers.insert("x-shop-lib-version", value);
    }
    headers.insert("x-verdant-generation", HeaderValue::from(generation));
    response
}

/// `GET /shop/hello?who=NAME`: the library's greeting (default `who=you`).
async fn hello(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let who = params.get("who").map_or("you", String::as_str);
    let shop = state.shop.get()?;
    let greeting = shop.hello(who);
    Ok(served(greeting, shop.package_version(), shop.generation()))
}

/// `GET /shop/quote/{sku}?qty=N`: a price quote as text (default `qty=1`).
/// `sku=boom` makes the library panic, which answers 500.
async fn quote(
    State(state): State<AppState>,
    Path(sku): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let qty = match params.get("qty") {
        None => 1,
        Some(raw) => raw.parse::<u32>().map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("qty must be a whole number of units, not `{raw}`: {error}"))
        })?,
    };
    let shop = state.shop.get()?;
    let quote = shop.quote(&sku, qty)?;
    Ok(served(quote.to_string(), shop.package_version(), shop.generation()))
}

/// `GET /verdant/status`: the registry's status report as text (serving and
/// retired versions, reload generation, SIGPIPE counters).
async fn status(State(state): State<AppState>) -> String {
    state.verdant.status().to_string()
}

/// Every other path.
async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}; try GET /shop/hello?who=NAME, /shop/quote/{{sku}}?qty=N or /verdant/status",
            uri.path()
        ),
    )
}

/// The message of a panic payload: a library panic re-raised by Verdant, or
/// an ordinary host panic.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(library) = payload.downcast_ref::<LibraryPanic>() {
        format!("the shop library panicked: {}", library.0.message())
    } else if let Some(text) = payload.downcast_ref::<&'static str>() {
        format!("the host panicked: {text}")
    } else if let Some(text) = payload.downcast_ref::<String>() {
        format!("the host panicked: {text}")
    } else {
        "the host panicked".to_owned()
    }
}

/// `CatchPanicLayer`'s answer to a panic in a handler. The panic hook
/// installed in `main` has already logged it.
fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic_message(&*payload);
    (StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {message}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves the router on a free local port with a registry whose shop is
    /// registered but never attached.
    async fn serve_unattached() -> std::net::SocketAddr {
        let context = shop_api::ShopContext { shop_name: "test".to_owned(), currency: "EUR".to_owned() };
        let verdant =
            Verdant::builder(context).add::<dyn Shop>("shop", "/nonexistent/libshop_lib.so").build().expect("registry");
        let shop = verdant.handle::<dyn Shop>("shop").expect("handle");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, router(AppState { shop, verdant })).await });
        addr
    }

    async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn no_serving_version_is_503_and_unknown_paths_404() {
        let addr = serve_unattached().await;
        let hello = raw_get(addr, "/shop/hello").await;
        assert!(hello.starts_with("HTTP/1.1 503"), "{hello}");
        assert!(hello.contains("not attached"), "{hello}");
        let quote = raw_get(addr, "/shop/quote/coffee?qty=2").await;
        assert!(quote.starts_with("HTTP/1.1 503"), "{quote}");
        let bad_qty = raw_get(addr, "/shop/quote/coffee?qty=-1").await;
        assert!(bad_qty.starts_with("HTTP/1.1 400"), "{bad_qty}");
        let nowhere = raw_get(addr, "/nowhere").await;
        assert!(nowhere.starts_with("HTTP/1.1 404") && nowhere.contains("no route for GET /nowhere"), "{nowhere}");
        let status = raw_get(addr, "/verdant/status").await;
        assert!(status.starts_with("HTTP/1.1 200") && status.contains("not attached"), "{status}");
    }

    #[test]
    fn panic_messages_name_their_origin() {
        let library = verdant::boundary::LibraryPanic(verdant::boundary::Panic::new("out of stock"));
        assert_eq!(panic_message(&library), "the shop library panicked: out of stock");
        assert_eq!(panic_message(&"oops"), "the host panicked: oops");
        assert_eq!(panic_message(&42_u8), "the host panicked");
    }
}
