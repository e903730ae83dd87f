//! The part of Verdant that is compiled into every loadable library.
//!
//! Verdant hot-swaps `cdylib` libraries inside a running service. It comes
//! as two crates, split along the `dlopen` boundary:
//!
//! - **`verdant-loadable`** (this crate): what a library links and nothing
//!   more. [`Loadable`] and [`export!`], the support code of
//!   [`#[interface]`](interface), the boundary guards, the runtime link, log
//!   forwarding, the allocator shim, [`spawn`]ed tasks, and the
//!   [`descriptor`] the host reads. Every type that crosses the boundary is
//!   defined here or in your interface crate.
//! - **`verdant`**: the host. The registry, the loader, reload transactions,
//!   handles, triggers and the axum mount. A library never links it, so
//!   nothing host-only (its dependencies and their features) can change a
//!   type that crosses (see [`docs::boundary`] §3 on why that matters).
//!
//! A library crate depends on `verdant-loadable` and on the interface crate;
//! the interface crate depends on `verdant-loadable`; the host depends on
//! `verdant` and on the interface crate. [`docs::embedding`] walks through
//! all three.
//!
//! # Where each file runs
//!
//! A library links its own `std`, tokio, tracing and `log`, with their own
//! statics ([`docs::boundary`]). Whether a line runs with the host's copies
//! or the library's decides whether a guard works, so the source tree says
//! it:
//!
//! | Folder | Runs in | What |
//! |---|---|---|
//! | `src/library/` | the library | `export.rs` ([`Loadable`], [`export!`], the attach entry), `guard.rs` (the panic guards of [`boundary`], the library's panic hook), `runtime_link.rs`, `logging.rs`, `allocator.rs`, `task.rs` (+ `task_set.rs`, its bookkeeping, model-checked), `router.rs` (the guarded router and body) |
//! | `src/host/` | the host | `deliver.rs` (how a proxy hands a caught panic to its caller), `router.rs` (serving a library router: pins per request), `tables.rs` (the host functions a library forwards to) |
//! | `src/` | both | `descriptor.rs` (the ABI the loader reads), `interface.rs` ([`Interface`], [`ProxyContext`], pins), `panic.rs` ([`boundary::Panic`], [`Panicked`], the host's panic reporter), `site.rs` (the request a report names); `sync.rs` is std, or loom under `--cfg verdant_loom` |
//!
//! # The boundary: every way into library code, and its guard
//!
//! A panic that unwinds out of library code aborts the whole process; tokio
//! calls in library code find no runtime; library logs go nowhere. So every
//! path from the host into library code runs a guard that is compiled into
//! the *library* (the host reaches it only through a vtable or function
//! pointer the library made), enters the host's tokio runtime, and catches
//! panics there:
//!
//! | Entry point | Guard (library side) | A panic becomes |
//! |---|---|---|
//! | attach hook | [`export!`] → `library/export.rs`; own thread and time limit in the host | `LoadError::AttachPanicked` in the host; the reload fails, the old version serves |
//! | detach hook, drop of the instance | [`export!`] → [`boundary::call`] | `DetachState::Panicked` in the host's status |
//! | sync interface method | [`interface`] → [`boundary::call`] | `Err(`[`Panicked`]`)` if it returns `Result<T, E>` with `E: From<Panicked>`, else a host panic carrying [`boundary::LibraryPanic`] |
//! | `async` interface method: creating, each poll, drop of its future | [`interface`] → [`boundary::guard_future`] | as for a sync method |
//! | a method returning `axum::Router`: `call`, each poll of a response future, each `poll_frame`/`is_end_stream`/`size_hint` of a body, their drops | [`router::LibraryRouter::new`] | HTTP 500; mid-body, an aborted response |
//! | an HTTP extension's middleware: the call, each poll and drop of its future, its response body | [`http::Middleware::new`] (`library/middleware.rs`) | HTTP 500; mid-body, an aborted response |
//! | the other way: library code calling [`http::Next::run`], which is host code | the host made `Next`'s vtable (`host/middleware.rs`): the rest of the pipeline, its future and body run under the **host's** `catch_unwind` | a host panic becomes a 500 answer before it could unwind into library frames |
//! | tasks of [`spawn`] | each poll enters the runtime; tokio's harness (compiled into the library) catches | the task's `JoinError` |
//! | the library's `tracing`/`log` calls | forwarded to the host's current dispatcher and logger (`library/logging.rs`) | — (host code runs, see below) |
//! | allocation | [`allocator`]: the host's global allocator | — |
//!
//! A future or response keeps its version pinned until it completes or is
//! dropped; a task of [`spawn`] keeps its library loaded while it runs.
//!
//! # Each panic is reported once
//!
//! Besides becoming an error, a 500 or a host panic, every library panic is
//! *reported* exactly once, to the host's registry (`verdant`'s
//! `Builder::on_panic` and one `tracing` ERROR event), with the loadable,
//! its version, where it happened (the method, the request), the message,
//! the library's `file:line:column` and, under `RUST_BACKTRACE`, the
//! library's backtrace. Whoever consumes the [`boundary::Panic`] value
//! reports it: the host for a value it gets back, the library-side guard
//! for a panic it cannot return (a response body mid-stream, a drop). The
//! library's panic hook, installed at attach, prints nothing for a panic a
//! guard will catch; it reports a panic that no guard catches (a thread or
//! task the library started: Verdant does not contain those, they end that
//! thread or task). A re-raised panic ([`boundary::Panic::resume`]) skips
//! the host's panic hook, since it was reported already.
//!
//! The host half of the same paths (`src/host/`, and the proxies
//! [`interface`] generates) turns what the guards return into the caller's
//! error, a 500, or a host panic, and never calls library code except
//! through the guards.
//!
//! # What library code must not do
//!
//! - **Hand out trait objects, closures, futures or borrows of its own**
//!   (`Box<dyn Fn()>`, `Box<dyn Error>`, a boxed future, a `&'static str`,
//!   a `Router` inside an `Option`) from an interface method: their vtables
//!   lead into library code that no guard covers, and they may outlive the
//!   library (a borrow may point into its memory). [`interface`] refuses
//!   such return types where it can see them; a type that hides one (an
//!   alias, a struct field, an `io::Error` the library built around its own
//!   error) is still wrong. Return data; make future-returning methods
//!   `async fn`; return routers as the whole return type, where Verdant
//!   wraps them.
//! - **Keep state in statics or expect them to be shared**: every loaded
//!   version has fresh copies of every static (that is what makes a reload
//!   start clean). Shared state belongs in the context the host passes to
//!   attach.
//! - **Panic inside `Debug`/`Display` of a value it logs, or call host code
//!   that panics** (a callback it was given): a panic of one side unwinding
//!   into the other side's `catch_unwind` aborts the process, and logging
//!   and callbacks run one side's code inside the other's frames.
//! - **Spawn with plain `tokio::spawn` a task that uses timers or I/O**: the
//!   task is polled by a host worker thread outside the library's runtime
//!   context and panics with "no reactor running". Use [`spawn`].
//! - **Block a runtime worker** in an interface method or handler for long
//!   (same as in any tokio code), or **set a `#[global_allocator]`** (the
//!   library already has one that forwards to the host's).
//! - **Allocate in a constructor** (an `.init_array` function, the `ctor`
//!   crate) and keep the memory: constructors run inside `dlopen`, before
//!   the library has the host's allocator, and the loader refuses such a
//!   library. Do that work in the attach hook.
//! - **Keep background tasks running past detach** unless that is the
//!   intent: [`task::abort_all`] in the detach hook stops them.

#![warn(missing_docs)]

// Lets `#[verdant_loadable::interface]`, whose expansion names
// `::verdant_loadable`, be used in this crate's own unit tests.
extern crate self as verdant_loadable;

pub mod descriptor;
pub mod docs;
mod extension;
mod host;
mod interface;
mod library;
mod panic;
mod site;
mod sync;

pub use interface::{Interface, LibraryPin, ProxyContext, VersionPin};
pub use library::allocator;
pub use library::export::{AttachError, Loadable};
pub use library::task;
pub use library::task::spawn;
pub use panic::Panicked;

/// The panic guards every entry into library code runs under, and the
/// values a caught panic becomes.
///
/// A loadable links its own copy of `std`, so a panic raised in library
/// code cannot be caught by the host: the host's `catch_unwind` sees a
/// *foreign* exception and aborts the process ([`docs::boundary`] §1).
/// Every entry point into library code therefore runs through [`catch`] (or,
/// for a future, [`guard_future`]), which is generic so that it is compiled
/// into, and runs with the `std` of, the library that instantiates it. The
/// host reaches that code only through a vtable or function pointer the
/// library made, never by calling the function itself (which would run the
/// host's own copy). The panic becomes a [`Panic`] value that crosses the
/// boundary as data; the host may turn it into an error, an HTTP 500, or —
/// through [`Panic::resume`] — a panic of its own that host code can catch.
///
/// The guards also enter the host's tokio runtime before they run library
/// code ([`docs::boundary`] §2), so timers, I/O and `tokio::spawn` work in
/// methods, futures and response bodies.
///
/// [`catch`]: crate::boundary::catch
/// [`guard_future`]: crate::boundary::guard_future
/// [`Panic`]: crate::boundary::Panic
/// [`Panic::resume`]: crate::boundary::Panic::resume
pub mod boundary {
    pub use crate::library::guard::{call, catch, guard_future, BoundaryFuture};
    pub use crate::panic::{LibraryPanic, Panic};
}

/// A library's router, wrapped so that the host can serve it without ever
/// running an unguarded line of library code.
///
/// An interface method that returns `axum::Router` makes a loadable an HTTP
/// face of its own:
///
/// ```
/// #[verdant_loadable::interface]
/// pub trait Shop: Send + Sync {
///     /// The shop's routes, relative to where the host mounts them.
///     fn router(&self) -> axum::Router;
/// }
/// ```
///
/// The router a library builds is full of library code: handlers,
/// middleware, response futures and bodies. Served as is, a panic in any of
/// them would abort the host, and tokio calls in them would find no runtime
/// ([`docs::boundary`] §1, §2). So `#[interface]` wraps it library-side
/// ([`LibraryRouter::new`](router::LibraryRouter::new), in
/// `library/router.rs`): every call of the router, every poll of a response
/// future and every `poll_frame` of a response body runs inside the host's
/// tokio runtime and under the library's own `catch_unwind`. A panic becomes
/// a plain 500 (or, in the middle of a body, an aborted response) and the
/// service keeps running. The host gets back an ordinary `axum::Router`
/// ([`LibraryRouter::into_router`](router::LibraryRouter::into_router), in
/// `host/router.rs`), built once per version. Along with it the proxy
/// [offers](router::LibraryRoutes::offer) the service inside that router
/// ([`LibraryRoutes`](router::LibraryRoutes)) to a host that
/// [captures](router::capture_library_routes) it, so that
/// `verdant::axum::Pipeline::library_routes` calls the library without
/// routing each request a second time.
///
/// What a library router must not do: put values into *response*
/// extensions for the host (they are dropped library-side, because their
/// code is the library's), or return a router nested inside another type
/// (`Option<Router>`: the macro refuses it, since it would cross unguarded).
pub mod router {
    pub use crate::host::router::{capture_library_routes, LibraryRoutes, RoutesFuture};
    pub use crate::library::router::LibraryRouter;
}

/// HTTP extensions: loadables that add routes and middleware to the host's
/// HTTP service without the host knowing them at compile time.
///
/// An extension implements [`HttpExtension`] (routes under its mount point,
/// and optionally a [`Middleware`]) with [`ExtensionContext`] as its
/// loadable's context. The host lists it in its manifest and serves every
/// extension through `verdant::axum::pipeline`:
///
/// ```text
/// request -> host layers -> middleware 1 -> middleware 2 -> ... -> routes by mount -> host fallback (404)
/// ```
///
/// A middleware crosses the boundary twice: the host calls the library's
/// function, and that function calls [`Next::run`], which is host code. Both
/// directions are guarded: the middleware's future, its polls, its drop and
/// its response body run under the library's guard
/// ([`Middleware::new`], in `library/middleware.rs`), and the host's part
/// behind [`Next`] runs under the host's own `catch_unwind`
/// (`host/middleware.rs`), so a host panic there becomes a 500 instead of
/// unwinding into library frames, which would abort the process
/// ([`docs::boundary`] §1).
///
/// Extensions (the `http::Extensions` of a request) do not cross: the
/// request a middleware receives has none (the host keeps its own aside and
/// restores them for the rest of the pipeline), and whatever a middleware
/// puts in a request or response is dropped library-side.
pub mod http {
    pub use crate::extension::{ExtensionContext, HttpExtension};
    pub use crate::library::middleware::{Middleware, Next};
}

/// What the code generated by `#[interface]` and [`export!`] refers to. Not
/// an API: public only so that the expansions can name it.
#[doc(hidden)]
pub mod __private {
    pub use ::axum::Router;
    pub use async_trait::async_trait;

    pub use crate::host::deliver::{Deliver, DeliverAsError, DeliverAsPanic};
    pub use crate::host::hold::HoldUntilEnd;
    pub use crate::host::middleware::panic_text as host_panic_text;
    pub use crate::host::router::{internal_error, plain_response};
    pub use crate::host::tables::{on_runtime_thread, HOST_ALLOCATOR, HOST_LOGGING};
    pub use crate::library::export::{attach_entry, write_fingerprints};
    pub use crate::library::logging::HostLogging;
    pub use crate::library::runtime_link::release as release_host_link;
    pub use crate::panic::PanicHook;
    pub use crate::site::{MountPrefix, RequestLine};
}

/// Makes a trait callable across the library boundary.
///
/// Put it on a trait in the crate that host and library share (the
/// *interface crate*, which depends on `verdant-loadable`). The trait must
/// be `Send + Sync`, and its methods must take `&self` and have no type
/// parameters. Arguments may be references or owned values; the return type
/// must be data the host can own (below). The attribute keeps the trait as
/// written and adds, hidden, a panic-guarded boundary trait, a host-side
/// proxy and `unsafe impl verdant_loadable::Interface for dyn Trait`.
///
/// - **`async fn` methods** are supported: the trait goes through
///   [`async_trait`](https://docs.rs/async-trait) (the method returns a boxed
///   `Send` future), so an impl that defines `async fn`s needs the attribute
///   too: `#[verdant_loadable::interface] impl Shop for ShopV1 { .. }`. The
///   host only ever holds the future [`boundary::guard_future`] made around
///   the library's: creating the library's future, each poll and its drop
///   (with the arguments it owns, even if it is never polled) run under the
///   library's guard, inside the host's runtime, and the call keeps the
///   version pinned (it borrows the pinned handle).
/// - **Panics**: a method returning `Result<T, E>` where `E: From<Panicked>`
///   receives a library panic as `Err(Panicked { .. }.into())`: give the
///   interface crate an error enum with a `#[from] verdant_loadable::Panicked`
///   variant (`std::io::Error` qualifies too, see below). Any other method
///   re-raises it as a host panic carrying a [`boundary::LibraryPanic`].
/// - **`fn router(&self) -> axum::Router`** (a return type spelled
///   `Router`, `axum::Router` or `Router<()>`): the library's router is
///   wrapped library-side and the host gets an ordinary router; see
///   [`router`]. Without arguments it is built once per version.
///
/// # Return types
///
/// Whatever a method returns, the host keeps and drops with host code, and
/// may keep after the library is unloaded. So it must be owned data: a
/// value whose code is compiled into the host too (`String`, `Vec<T>`, your
/// structs and enums, `Arc<str>`). A return type that carries code or
/// memory of the library is refused at compile time, with what to return
/// instead:
///
/// | Refused, anywhere in the return type | Why | Return instead |
/// |---|---|---|
/// | `Box<dyn Error>`, `anyhow::Error`, `eyre::Report` | `Display`, `source` and `Drop` run library code | an error enum of the interface crate, with `#[from] verdant_loadable::Panicked` |
/// | `Pin<Box<dyn Future>>`, `BoxFuture`, `LocalBoxFuture`, `impl Future` | every poll and the drop run library code | an `async fn` (its future is guarded) |
/// | `BoxStream`, `LocalBoxStream`, `dyn Stream` | as for a future | the items (a `Vec`), or a router whose response body streams them |
/// | any other `dyn Trait` (`Box<dyn Fn()>`, `Box<dyn Iterator>`) or `impl Trait` | its vtable leads into library code | owned data; for behaviour, another interface method |
/// | `fn` pointers | calling one runs library code, unguarded; it dangles after unload | data that says what to do, or another method |
/// | references and any lifetime (`&str`, `&'static [u8]`, `Cow<'static, str>`), raw pointers | may point into the library's memory; `'static` there means as long as the library | `String`, `Vec<T>`, owned values |
/// | a `Router` inside another type, or from an `async fn` | it would reach the host unwrapped | `-> axum::Router` as the whole return type of a plain `fn` |
///
/// The macro refuses what it can see in the return type as written; it
/// cannot see through a type alias or into a struct. Such types are just
/// as wrong. In particular, `std::io::Error` is accepted (it is a plain
/// `std` struct, and one built from an `ErrorKind` or an OS error code
/// carries no library code), but an `io::Error` the *library* builds with
/// `io::Error::new` or `io::Error::other` boxes a payload as a `dyn Error`
/// of the library: the same hazard as `Box<dyn Error>`. Prefer an error enum.
///
/// ```
/// /// Errors of the shop: owned data, defined in the interface crate.
/// #[derive(Debug)]
/// pub enum ShopError {
///     UnknownSku(String),
///     /// A library panic, delivered by Verdant (with thiserror:
///     /// `Panicked(#[from] verdant_loadable::Panicked)`).
///     Panicked(verdant_loadable::Panicked),
/// }
///
/// impl From<verdant_loadable::Panicked> for ShopError {
///     fn from(panicked: verdant_loadable::Panicked) -> Self {
///         ShopError::Panicked(panicked)
///     }
/// }
///
/// #[verdant_loadable::interface]
/// pub trait Shop: Send + Sync {
///     fn hello(&self, who: &str) -> String;
///     async fn quote(&self, sku: &str, qty: u32) -> Result<u64, ShopError>;
///     fn router(&self) -> axum::Router;
/// }
///
/// struct ShopV1;
///
/// #[verdant_loadable::interface]
/// impl Shop for ShopV1 {
///     fn hello(&self, who: &str) -> String {
///         format!("hello {who}")
///     }
///     async fn quote(&self, sku: &str, qty: u32) -> Result<u64, ShopError> {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         match sku {
///             "apple" => Ok(420 * u64::from(qty)),
///             other => Err(ShopError::UnknownSku(other.to_owned())),
///         }
///     }
///     fn router(&self) -> axum::Router {
///         axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }))
///     }
/// }
/// ```
///
/// A refused return type, and the error it gets:
///
/// ```compile_fail
/// #[verdant_loadable::interface]
/// pub trait Shop: Send + Sync {
///     // error: `dyn std::error::Error + Send + Sync`: an error trait object made
///     // by the library runs library code [..]. Return an error enum of the
///     // interface crate instead (owned data), with a `#[from]
///     // verdant_loadable::Panicked` variant to receive library panics
///     fn quote(&self, sku: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>>;
/// }
/// ```
pub use verdant_macros::interface;
