//! The Verdant demo: an axum e-shop service whose logic is hot-swapped.
//!
//! What it shows:
//!
//! - **Loading.** The shop logic is not compiled into this binary. It lives in
//!   the `shop-lib` `cdylib`, behind the `shop_api::Shop` interface; a
//!   [`verdant::Verdant`] registry loads it at start-up and the service
//!   reaches it through a [`verdant::Handle`].
//! - **A library's own HTTP face.** `Shop::router` returns the shop's axum
//!   routes (`/hello`, `/quote/{sku}`, `/catalog`), written in the library
//!   with ordinary async handlers, tokio timers and a streaming body. The
//!   host serves them under `/shop/` with [`verdant::axum::mount`], which
//!   looks the serving version up per request.
//! - **Reloading without a restart.** After a rebuild, `kill -PIPE <pid>`
//!   (what `scripts/reload` does) makes Verdant load the new library next to
//!   the old one, attach it, and swap it in; requests already running
//!   (a `/shop/catalog` still streaming, say) finish on the version they
//!   started with. `GET /shop/hello` names the library version that
//!   answered, as does the `x-shop-lib-version` header of every answer the
//!   library makes, so the swap is visible with `curl`; `GET /verdant/status`
//!   shows the generation and the retired versions. A SIGPIPE this process
//!   raises itself (a broken pipe) is ignored.
//! - **systemd.** Under `Type=notify-reload` with `ReloadSignal=SIGPIPE`
//!   (`demo-app/systemd/`), it says `READY=1` once it listens, and
//!   `systemctl reload` waits for the reload's outcome (see
//!   [`verdant::systemd`] and `docs/operating.md`).
//! - **Containment.** A panic in library code (`GET /shop/quote/boom`) is
//!   caught inside the library and answered 500; the process keeps serving.
//!   A host calling `Shop::quote` directly would get
//!   `Err(ShopError::Panicked(..))` instead. Either way Verdant reports the
//!   panic once: one ERROR line on stderr (`verdant::panic_report: library
//!   panic: ...` with the loadable, version, request, and the library's
//!   `file:line:col`; the library's backtrace too under `RUST_BACKTRACE=1`),
//!   which is also where `Builder::on_panic` would hand it to error
//!   tracking.
//!   While no version is attached `/shop/...` answers 503; paths the shop
//!   does not know answer 404 from the library, other paths from the host.
//!   Panics of host code are answered 500 by
//!   `tower_http::catch_panic::CatchPanicLayer`, after std's panic hook
//!   printed them.
//!
//! Run it with `scripts/demo` (which builds host and library first; add
//! `--release` for the release profile) and see `demo-app --help`.
//!
//! - **Operating it.** With `--admin-addr 127.0.0.1:PORT --admin-token-file
//!   PATH` it serves [`verdant::axum::admin`] on a listener of its own:
//!   `GET /status` (JSON), `POST /reload[?filter=..]` and `GET /metrics`
//!   (Prometheus), each behind the bearer token read from `PATH`. Without
//!   them it serves no admin API, and says so once on start-up.
//!
//! On start it prints exactly one line to stdout,
//! `verdant demo listening on http://<addr> (pid <pid>)`; logs go to stderr
//! (`RUST_LOG` filters them, default `info`). SIGINT or SIGTERM shut it down
//! gracefully and remove the pid file.

mod cli;
mod http;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shop_api::{Shop, ShopContext};
use tracing_subscriber::EnvFilter;
use verdant::Verdant;

use crate::cli::{AdminArgs, Args, Command, USAGE};

#[tokio::main]
async fn main() -> ExitCode {
    let exe_dir = match std::env::current_exe() {
        Ok(exe) => exe.parent().map(Path::to_owned).unwrap_or_default(),
        Err(error) => {
            eprintln!("demo-app: cannot find this executable's directory for the default paths: {error}");
            return ExitCode::FAILURE;
        }
    };
    let args = match cli::parse(std::env::args().skip(1), &exe_dir) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            // Not println!: it panics when stdout is a closed pipe (`| head`).
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("demo-app: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo-app: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). The library's
/// `tracing` calls end up here too: Verdant hands it this subscriber.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

async fn run(args: Args) -> Result<(), String> {
    if args.default_manifest {
        write_default_manifest(&args.manifest)?;
    }
    let context = ShopContext { shop_name: "the Verdant demo shop".to_owned(), currency: "EUR".to_owned() };
    // The shop's path and mount come from the manifest's `shop` entry; the
    // path given here is used only if the manifest does not list it.
    let shop_default = args.manifest.parent().unwrap_or(Path::new(".")).join("libshop_lib.so");
    let verdant = Verdant::builder(context)
        .add::<dyn Shop>("shop", shop_default)
        .manifest(&args.manifest)
        .build()
        .map_err(|error| error.to_string())?;
    let app = http::router(&verdant);

    // The token is read before anything is loaded: a missing or empty
    // token file stops the demo at once, with the reason.
    let admin = match &args.admin {
        Some(admin) => Some(admin_router(&verdant, admin)?),
        None => None,
    };

    // Attach runs the libraries' attach hooks (under a time limit, on their
    // own threads); keep it off the async worker threads. Each loadable
    // that can attach serves; one that cannot is reported and answers 503
    // until a reload brings it up. Verdant logs the report (once).
    let attaching = verdant.clone();
    let attached = tokio::task::spawn_blocking(move || attaching.attach())
        .await
        .map_err(|error| format!("the attach task failed: {error}"))?;
    // The registry logged the report (and each failure once); systemd hears
    // of it below.
    let attached = match attached {
        Ok(report) => report,
        Err(verdant::Error::Reload(failure)) => failure.report.clone(),
        Err(error) => return Err(error.to_string()),
    };

    verdant.reload_on_sigpipe().map_err(|error| error.to_string())?;
    let pid = std::process::id();
    let _pid_file = PidFile::write(&args.pid_file, pid)?;

    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.addr))?;
    let local = listener.local_addr().map_err(|error| format!("cannot read the bound address: {error}"))?;
    let (stop_admin, admin_stop) = tokio::sync::watch::channel(false);
    let admin_server = match admin {
        Some((router, admin)) => Some(serve_admin(router, &admin, admin_stop).await?),
        None => {
            tracing::info!(
                "no admin API: start with --admin-addr 127.0.0.1:PORT --admin-token-file PATH to serve \
                 GET /status, POST /reload and GET /metrics"
            );
            None
        }
    };
    announce(&format!("verdant demo listening on http://{local} (pid {pid})"));
    // Under systemd (`Type=notify-reload`, demo-app/systemd/): ready now that
    // it listens. From here on, a reload that `systemctl reload` (SIGPIPE)
    // triggers is announced with RELOADING=1 and ends with READY=1 and its
    // outcome in STATUS=. Without NOTIFY_SOCKET this does nothing.
    if let Err(error) = verdant::systemd::notify_ready(&attached) {
        tracing::warn!(%error, "cannot tell systemd that the service is ready (READY=1)");
    }
    tracing::info!(
        pid,
        pid_file = %args.pid_file.display(),
        manifest = %args.manifest.display(),
        "serving; after a rebuild or a manifest edit, reload with `kill -PIPE {pid}` (scripts/reload rebuilds the shop first)"
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|error| format!("the server failed: {error}"))?;
    // The admin API stops with the service (the receiver may be gone if the
    // admin server already failed: nothing to stop then).
    let _ = stop_admin.send(true);
    if let Some(admin_server) = admin_server {
        match admin_server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the admin server failed"),
            Err(error) => tracing::error!(%error, "the admin server task failed"),
        }
    }

    // Detaches the serving version (its detach hook logs) once the requests
    // still pinned to it are done.
    tokio::task::spawn_blocking(move || verdant.revoke()).await.map_err(|error| format!("revoke failed: {error}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the admin token and builds the admin router; an unreadable or
/// empty token file is an error that stops the demo.
fn admin_router(verdant: &Verdant, admin: &AdminArgs) -> Result<(axum::Router, AdminArgs), String> {
    let token = verdant::axum::AdminToken::from_file(&admin.token_file).map_err(|error| error.to_string())?;
    Ok((verdant::axum::admin(verdant, token), admin.clone()))
}

/// Binds the admin API's listener and serves `router` on it until `stop`
/// turns true.
async fn serve_admin(
    router: axum::Router,
    admin: &AdminArgs,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, String> {
    let listener = tokio::net::TcpListener::bind(&admin.addr)
        .await
        .map_err(|error| format!("cannot listen on {} for the admin API: {error}", admin.addr))?;
    let local = listener.local_addr().map_err(|error| format!("cannot read the admin API's address: {error}"))?;
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "the admin API listens beyond loopback: anyone who can reach it and has the token can reload this service");
    }
    tracing::info!(
        addr = %local,
        token_file = %admin.token_file.display(),
        "admin API on http://{local}: GET /status, POST /reload[?filter=NAME|GLOB|re:REGEX], GET /metrics \
         (header `Authorization: Bearer <token from the file>`)"
    );
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    Ok(tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stopped).await }))
}

/// The manifest the demo starts with when none exists yet: the shop alone,
/// with the demo's extensions listed but commented out.
const DEFAULT_MANIFEST: &str = include_str!("../verdant.toml");

/// Writes [`DEFAULT_MANIFEST`] to `path` unless a manifest is there already
/// (an edited one is never overwritten).
fn write_default_manifest(path: &Path) -> Result<(), String> {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut file) => {
            file.write_all(DEFAULT_MANIFEST.as_bytes())
                .map_err(|error| format!("cannot write the default manifest {}: {error}", path.display()))?;
            tracing::info!(manifest = %path.display(), "wrote the default manifest: edit it and send SIGPIPE to apply it");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(format!("cannot create the default manifest {}: {error}", path.display())),
    }
}

/// Prints the one stdout line tests and scripts wait for, and flushes it.
fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        // Nobody reads stdout any more; the service works without it.
        tracing::warn!(%error, "cannot write to stdout: {line}");
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let which = tokio::select! {
        () = interrupt => "SIGINT",
        () = terminate => "SIGTERM",
    };
    tracing::info!(signal = which, "shutting down: finishing the requests in flight");
    if let Err(error) = verdant::systemd::notify_stopping() {
        tracing::warn!(%error, "cannot tell systemd that the service is stopping (STOPPING=1)");
    }
}

/// The pid file, removed when this guard is dropped (if it still holds our
/// pid: a second instance may have taken it over).
struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    fn write(path: &Path, pid: u32) -> Result<PidFile, String> {
        std::fs::write(path, format!("{pid}\n"))
            .map_err(|error| format!("cannot write the pid file {}: {error}", path.display()))?;
        Ok(PidFile { path: path.to_owned(), pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|text| text.trim() == self.pid.to_string());
        if ours {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(%error, path = %self.path.display(), "cannot remove the pid file");
            }
        }
    }
}
