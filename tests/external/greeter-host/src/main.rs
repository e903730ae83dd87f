//! An axum service that embeds Verdant, as docs/embedding.md shows.
//!
//! `greeter-host ADDR LIBRARY`: serves `/greeter/hello` from the library at
//! LIBRARY and reloads it on `kill -PIPE <pid>`.

use greeter_api::{Greeter, GreeterContext};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let library = args.next().unwrap_or_else(|| "target/debug/libgreeter_lib.so".to_owned());

    // The lines docs/embedding.md adds to an axum service.
    let context = GreeterContext { greeting: "Hello".to_owned() };
    let verdant = verdant::Verdant::builder(context).add::<dyn Greeter>("greeter", library).build()?;
    verdant.attach()?;
    verdant.reload_on_sigpipe()?;
    let greeter = verdant.handle::<dyn Greeter>("greeter")?;
    let app = axum::Router::new()
        .merge(verdant::axum::mount(greeter, |g| g.router())?)
        .layer(tower_http::catch_panic::CatchPanicLayer::new());

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("greeter-host listening on http://{} (pid {})", listener.local_addr()?, std::process::id());
    axum::serve(listener, app).await?;
    Ok(())
}
