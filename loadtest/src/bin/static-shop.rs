//! The demo's shop compiled into the host: the same router (the same source
//! file as `shop-lib`), the same host layers as `demo-app` and the same
//! graceful shutdown, without Verdant. `scripts/loadtest` compares `/shop/hello` through Verdant with
//! this.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use verdant_loadable::Loadable;

// The library's code, not a copy of it. Its `#[verdant_loadable::interface]
// impl` is an ordinary trait impl here; nothing is exported.
#[path = "../../../shop-lib/src/shop.rs"]
#[allow(dead_code)]
mod shop;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let context = shop_api::ShopContext { shop_name: "the Verdant demo shop".to_owned(), currency: "EUR".to_owned() };
    let shop = shop::ShopV1::attach(&context).map_err(|e| std::io::Error::other(e.to_string()))?;
    let router = <shop::ShopV1 as shop_api::Shop>::router(&shop);
    let app = Router::new()
        .nest_service("/shop", router)
        // demo-app's host layers: the generation stamp and the panic layer.
        .layer(axum::middleware::map_response(stamp_generation))
        .layer(CatchPanicLayer::custom(|_| {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n").into_response()
        }));
    verdant_loadtest::serve_as_the_demo(app, &verdant_loadtest::addr_arg()).await
}

/// What demo-app's generation stamp does, with a fixed generation.
async fn stamp_generation(mut response: Response) -> Response {
    response.headers_mut().insert("x-verdant-generation", HeaderValue::from(1u64));
    response
}
