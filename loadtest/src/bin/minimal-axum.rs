//! A minimal axum server answering `GET /shop/hello` with the demo's text
//! and `x-shop-lib-version` header: the floor `scripts/loadtest` compares
//! against.

use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new().route(
        "/shop/hello",
        get(|| async {
            (
                [("x-shop-lib-version", "0.1.0")],
                "Hello, you! Greetings from the Verdant demo shop, served by shop-lib 0.1.0",
            )
        }),
    );
    verdant_loadtest::serve(app, &verdant_loadtest::addr_arg()).await
}
