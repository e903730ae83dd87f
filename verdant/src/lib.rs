//! Verdant: hot-swap the logic of a running Rust service.
//!
//! A [`Verdant`] registry loads *stateless loadables* — `cdylib` crates —
//! and hands out [`Handle`]s to their interfaces. When an operator sends
//! `kill -PIPE <pid>` after a rebuild, or code calls
//! `verdant.reload(Some("shop"))`, the registry loads the new build next to
//! the old one, attaches it, swaps it in, and retires the old version once the
//! last call that started on it has returned. It is the Rust heir of the
//! Node.js package greenium.
//!
//! # The life of a loadable
//!
//! 1. **Interface.** A trait shared by host and library, in a crate both
//!    depend on, marked [`#[verdant::interface]`](interface).
//! 2. **Library.** A `cdylib` with a type implementing [`Loadable`] (its
//!    attach hook gets the registry's shared context; its detach hook runs
//!    when it is replaced) and one [`export!`] line.
//! 3. **Host.** `Verdant::builder(context).add::<dyn Shop>("shop", path)`,
//!    then [`Verdant::attach`], then [`Verdant::handle`]. Each
//!    [`Handle::get`] pins the serving version for one call or request.
//!
//! # A reload is a transaction
//!
//! For every selected loadable: **read** the artifact (unchanged content is
//! reported `Unchanged` and skipped), **validate** it as an ELF shared object
//! for this machine with every segment inside the file and exactly one
//! Verdant descriptor, **copy** it to a private 0700 directory under a
//! unique name, **open** the copy (`dlopen`) and check the descriptor's
//! compiler and verdant versions, **check** the `TypeId` of every type that
//! crosses, **attach** it on its own thread under a time limit. Only when all
//! of them got that far are they **swap**ped in. Any failure leaves every
//! serving version untouched and returns an [`Error::Reload`] that names the
//! loadable, the [`Step`] and the cause; the new instances already attached
//! are detached. Reloads are serialised, and triggers that arrive during a
//! reload coalesce into one follow-up, so the newest build is never missed.
//!
//! # The boundary: every way into library code, and its guard
//!
//! A loadable links its own `std`, tokio, tracing and `log`, with their own
//! statics (`BOUNDARY.md` beside the design docs has the measurements). A
//! panic that unwinds out of library code aborts the whole process; tokio
//! calls in library code find no runtime; library logs go nowhere. So every
//! path from the host into library code runs a guard that is compiled into
//! the *library* (the host reaches it only through a vtable or function
//! pointer the library made), enters the host's tokio runtime, and catches
//! panics there:
//!
//! | Entry point | Guard | A panic becomes |
//! |---|---|---|
//! | attach hook | [`export!`], own thread, time limit | [`LoadError::AttachPanicked`]; the reload fails, the old version serves |
//! | detach hook, drop of the instance | [`export!`] | [`DetachState::Panicked`] in [`Verdant::status`] |
//! | sync interface method | [`interface`] → [`boundary::call`] | `Err(`[`Error::Panicked`]`)` if it returns `Result<T, E>` with `E: From<verdant::Error>`, else a host panic carrying [`boundary::LibraryPanic`] |
//! | `async` interface method: creating, each poll, drop of its future | [`interface`] → [`boundary::guard_future`] | as for a sync method |
//! | a method returning `axum::Router`: `poll_ready`/`call`, each poll of a response future, each `poll_frame` of a body, their drops | [`axum`] | HTTP 500; mid-body, an aborted response |
//! | tasks of [`spawn`] | each poll enters the runtime; tokio's harness (compiled into the library) catches | the task's `JoinError` |
//! | the library's `tracing`/`log` calls | forwarded to the host's current dispatcher and logger ([`export!`]) | — (host code, see below) |
//! | allocation | [`allocator`]: the host's global allocator | — |
//!
//! A future or response keeps its version pinned until it completes or is
//! dropped; a task of [`spawn`] keeps its library loaded while it runs.
//!
//! # What library code must not do
//!
//! - **Hand out trait objects or closures of its own** (`Box<dyn Fn()>`,
//!   `Box<dyn Iterator>`, a `Router` inside an `Option`) from an interface
//!   method: their vtables lead into library code that no guard covers, and
//!   they may outlive the library. Return data; return routers as the whole
//!   return type, where Verdant wraps them.
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
//! - **Keep background tasks running past detach** unless that is the
//!   intent: [`task::abort_all`] in the detach hook stops them.
//!
//! # Other costs of the boundary
//!
//! - Host and library must be built by the same rustc and the same cargo
//!   feature resolution: build them in one `cargo build -p host -p lib`.
//!   Verdant refuses anything else with a message that names the type.
//! - Libraries stay mapped after they are retired (glibc keeps them while
//!   thread-local destructors are pending); `status()` reports it and the
//!   bytes they keep.
//! - SIGPIPE is also raised by broken pipes; only signals sent by another
//!   process reload.

#![warn(missing_docs)]

// Lets `#[verdant::interface]`, whose expansion names `::verdant`, be used in
// this crate's own unit tests.
extern crate self as verdant;

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;
pub mod allocator;
mod attach;
pub mod axum;
pub mod boundary;
pub mod descriptor;
mod elf;
mod entry;
mod error;
pub mod export;
mod filter;
mod handle;
mod interface;
mod loader;
mod logging;
mod private_dir;
mod registry;
mod report;
mod runtime;
mod sigpipe;
mod status;
pub mod task;
mod transaction;
mod trigger;
mod version;

#[cfg(test)]
mod pipeline_tests;

pub use attach::StuckAttach;
pub use error::{Error, HandleError, LoadError, ReloadFailure, Step, StepError};
pub use export::{AttachError, Loadable};
pub use filter::{Filter, Select};
pub use handle::{Handle, Pinned};
pub use interface::{Interface, LibraryPin, ProxyContext, VersionPin};
pub use registry::{Builder, Verdant, DEFAULT_ATTACH_TIMEOUT};
pub use report::{ContentHash, LoadableReport, Outcome, ReloadReport, StepTime, Trigger, VersionInfo};
pub use sigpipe::SigpipeStats;
pub use status::{LoadableStatus, RetiredStatus, Status};
pub use task::spawn;
pub use version::DetachState;

/// Makes a trait callable across the library boundary.
///
/// Put it on a trait in the crate that host and library share. The trait
/// must be `Send + Sync`, and its methods must take `&self` and have no type
/// parameters. Arguments may be references or owned values; the return type
/// may be anything the host can own (a `Result` included). The attribute
/// keeps the trait as written and adds, hidden, a panic-guarded boundary
/// trait, a host-side proxy and `unsafe impl verdant::Interface for dyn
/// Trait`.
///
/// - **`async fn` methods** are supported: the trait goes through
///   [`async_trait`](https://docs.rs/async-trait) (the method returns a boxed
///   `Send` future), so an impl that defines `async fn`s needs the attribute
///   too: `#[verdant::interface] impl Shop for ShopV1 { .. }`. The future the
///   library returns is polled under the library's guard, inside the host's
///   runtime, and keeps the version pinned (it borrows the pinned handle).
/// - **Panics**: a method returning `Result<T, E>` where
///   `E: From<verdant::Error>` receives a library panic as
///   `Err(verdant::Error::Panicked { .. }.into())` (`std::io::Error`,
///   `Box<dyn Error + Send + Sync>`, `anyhow::Error` and any error enum with a
///   `#[from] verdant::Error` variant qualify). Any other method re-raises
///   it as a host panic carrying a [`boundary::LibraryPanic`]. Prefer an
///   error enum of the shared crate: a `Box<dyn Error>` or `anyhow::Error`
///   that the *library* creates is a trait object of the library (below).
/// - **`fn router(&self) -> axum::Router`** (a return type spelled
///   `Router`, `axum::Router` or `Router<()>`): the library's router is
///   wrapped library-side and the host gets an ordinary router; see
///   [`axum`]. Without arguments it is built once per version.
///
/// A trait object or closure *made by the library* (`Box<dyn Fn()>`,
/// `Box<dyn Iterator>`) carries a vtable into library code that no guard
/// covers: a panic in it, or in its `Drop`, would abort the process
/// (BOUNDARY.md §1). Return data instead.
///
/// ```
/// #[verdant::interface]
/// pub trait Shop: Send + Sync {
///     fn hello(&self, who: &str) -> String;
///     async fn quote(&self, sku: &str, qty: u32) -> Result<u64, std::io::Error>;
///     fn router(&self) -> axum::Router;
/// }
///
/// struct ShopV1;
///
/// #[verdant::interface]
/// impl Shop for ShopV1 {
///     fn hello(&self, who: &str) -> String {
///         format!("hello {who}")
///     }
///     async fn quote(&self, _sku: &str, qty: u32) -> Result<u64, std::io::Error> {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         Ok(420 * u64::from(qty))
///     }
///     fn router(&self) -> axum::Router {
///         axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }))
///     }
/// }
/// ```
pub use verdant_macros::interface;
