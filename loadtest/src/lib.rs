//! The comparison hosts of `scripts/loadtest`. Each binary listens on the
//! address given as its only argument (default `127.0.0.1:0`) and prints one
//! line, `listening on http://<addr>`, once it accepts connections.
//!
//! - `static-shop`: the demo's shop router (`shop-lib/src/shop.rs`, the same
//!   file the shop library is built from) compiled into the host, behind the
//!   same host layers as `demo-app` (the generation stamp and the panic
//!   layer), served with the same graceful shutdown: what `/shop/hello`
//!   costs without Verdant.
//! - `minimal-axum`: one route answering `/shop/hello` with the same text
//!   and header: what any axum service costs.

use std::io::Write;

/// Binds `addr`, prints the `listening on` line, and serves `app` until the
/// process is killed.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// verdant_loadtest::serve(axum::Router::new(), "127.0.0.1:0").await
/// # }
/// ```
pub async fn serve(app: axum::Router, addr: &str) -> std::io::Result<()> {
    axum::serve(listen(addr).await?, app).await
}

/// Like [`serve`], but served as `demo-app` serves: with graceful shutdown
/// on SIGINT or SIGTERM, whose watch every connection polls. A host
/// compared with the demo must pay for that too.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// verdant_loadtest::serve_as_the_demo(axum::Router::new(), "127.0.0.1:0").await
/// # }
/// ```
pub async fn serve_as_the_demo(app: axum::Router, addr: &str) -> std::io::Result<()> {
    let stop = async {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
    };
    axum::serve(listen(addr).await?, app).with_graceful_shutdown(stop).await
}

/// Binds `addr` and prints the `listening on` line.
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{local}")?;
    stdout.flush()?;
    Ok(listener)
}

/// The address from the command line, or `127.0.0.1:0`.
///
/// ```
/// assert_eq!(verdant_loadtest::addr_arg(), "127.0.0.1:0");
/// ```
pub fn addr_arg() -> String {
    std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_owned())
}
