//! The HTTP face of the demo: the registry's status, then Verdant's HTTP
//! pipeline (the extensions' middleware, the shop's routes under its mount,
//! a 404 fallback), and the panic layer around everything.

use std::any::Any;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shop_api::Shop;
use tower_http::catch_panic::CatchPanicLayer;
use verdant::boundary::LibraryPanic;
use verdant::Verdant;

/// The demo's routes: `/verdant/status` of the host, then everything else
/// through [`verdant::axum::pipeline`]: the middleware of every HTTP
/// extension the manifest lists, in its order, then the routes of the
/// loadable whose mount matches (the shop's own router under `/shop`), then
/// the demo's 404. A manifest change takes effect on the next request.
///
/// The pipeline answers for a mount itself: 503 while its loadable is not
/// attached, 500 when library code panics (contained in the library); the
/// library router answers 404 for paths it does not know.
pub fn router(verdant: &Verdant) -> Router {
    let pipeline = verdant::axum::pipeline(verdant)
        // The shop's router as it comes from the library: the pipeline calls
        // it without routing the request a second time.
        .library_routes::<dyn Shop>(|shop| shop.router())
        .fallback(Router::new().fallback(not_found));
    app(verdant.clone(), Router::new().fallback_service(pipeline))
}

/// Adds `x-verdant-generation` (the reload generation of the version that
/// answered) to every answer a loadable's routes gave. The host stamps it
/// from the response's [`verdant::axum::Served`] extension, which the
/// pipeline sets.
async fn stamp_generation(mut response: Response) -> Response {
    if let Some(served) = response.extensions().get::<verdant::axum::Served>() {
        let generation = HeaderValue::from(served.generation);
        response.headers_mut().insert("x-verdant-generation", generation);
    }
    response
}

/// Puts the host's own route, the generation stamp and the panic layer
/// around `rest`, which serves every other path.
fn app(verdant: Verdant, rest: Router) -> Router {
    Router::new()
        .route("/verdant/status", get(status))
        .with_state(verdant)
        .merge(rest)
        .layer(axum::middleware::map_response(stamp_generation))
        // Library panics never get here (the library's guard contains them
        // and the pipeline answers 500); this catches panics of host code.
        .layer(CatchPanicLayer::custom(panic_response))
}

/// `GET /verdant/status`: the registry's status report as text (serving and
/// retired versions, reload generation, SIGPIPE counters).
async fn status(State(verdant): State<Verdant>) -> String {
    verdant.status().to_string()
}

/// Every path outside `/shop/` and `/verdant/status`.
async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}; try GET /shop/hello?who=NAME, /shop/quote/{{sku}}?qty=N, /shop/catalog \
             or /verdant/status\n",
            uri.path()
        ),
    )
        .into_response()
}

/// The message of a panic payload: a library panic re-raised by Verdant, or
/// an ordinary host panic.
fn panic_message(payload: &(dyn Any + Send)) -> String {
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

/// `CatchPanicLayer`'s answer to a panic in a host handler. It was logged
/// already: a host panic by std's panic hook, a library panic that a host
/// handler's call re-raised by Verdant's report (the re-raise skips the
/// panic hook, see `verdant::boundary::Panic::resume`).
fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic_message(&*payload);
    (StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {message}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A registry whose shop is registered and mounted but never attached.
    fn unattached() -> Verdant {
        let context = shop_api::ShopContext { shop_name: "test".to_owned(), currency: "EUR".to_owned() };
        Verdant::builder(context)
            .add::<dyn Shop>("shop", "/nonexistent/libshop_lib.so")
            .mount("shop", "/shop")
            .build()
            .expect("registry")
    }

    /// Serves `app` on a free local port.
    async fn serve(app: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
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
        let addr = serve(router(&unattached())).await;
        for path in ["/shop/hello", "/shop/quote/coffee?qty=2", "/shop/quote/coffee?qty=-1", "/shop", "/shop/nowhere"] {
            let answer = raw_get(addr, path).await;
            assert!(answer.starts_with("HTTP/1.1 503"), "GET {path}: {answer}");
            assert!(answer.contains("loadable `shop` is not serving"), "GET {path}: {answer}");
            assert!(answer.contains("not attached"), "GET {path}: {answer}");
        }
        let nowhere = raw_get(addr, "/nowhere").await;
        assert!(nowhere.starts_with("HTTP/1.1 404") && nowhere.contains("no route for GET /nowhere"), "{nowhere}");
        assert!(nowhere.contains("/shop/hello?who=NAME"), "the 404 names the routes: {nowhere}");
        let shopping = raw_get(addr, "/shopping").await;
        assert!(shopping.starts_with("HTTP/1.1 404"), "only /shop/ is the shop's: {shopping}");
        let status = raw_get(addr, "/verdant/status").await;
        assert!(status.starts_with("HTTP/1.1 200") && status.contains("not attached"), "{status}");
    }

    #[tokio::test]
    async fn the_shop_namespace_goes_to_the_shop_router_and_host_panics_answer_500() {
        // Stands in for the pipeline: a router that serves everything under
        // `/shop`.
        let shop = Router::new()
            .route("/shop/hello", get(|| async { "hello from the shop\n" }))
            .route("/shop/host-panic", get(|| async { host_panic() }));
        let addr = serve(app(unattached(), shop)).await;
        let hello = raw_get(addr, "/shop/hello").await;
        assert!(hello.starts_with("HTTP/1.1 200") && hello.ends_with("hello from the shop\n"), "{hello}");
        let panicked = raw_get(addr, "/shop/host-panic").await;
        assert!(panicked.starts_with("HTTP/1.1 500"), "{panicked}");
        assert!(panicked.contains("internal server error: the host panicked: a host handler failed"), "{panicked}");
        let after = raw_get(addr, "/shop/hello").await;
        assert!(after.starts_with("HTTP/1.1 200"), "the service keeps serving after a panic: {after}");
        let status = raw_get(addr, "/verdant/status").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }

    fn host_panic() -> &'static str {
        panic!("a host handler failed")
    }

    #[test]
    fn panic_messages_name_their_origin() {
        let library = verdant::boundary::LibraryPanic(verdant::boundary::Panic::new("out of stock"));
        assert_eq!(panic_message(&library), "the shop library panicked: out of stock");
        assert_eq!(panic_message(&"oops"), "the host panicked: oops");
        assert_eq!(panic_message(&42_u8), "the host panicked");
    }
}
