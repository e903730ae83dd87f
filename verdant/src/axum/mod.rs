//! axum integration: loadables that serve HTTP.
//!
//! An interface method that returns `axum::Router` makes a loadable an HTTP
//! face of its own:
//!
//! ```
//! #[verdant::interface]
//! pub trait Shop: Send + Sync {
//!     /// The shop's routes, relative to where the host mounts them.
//!     fn router(&self) -> axum::Router;
//! }
//! ```
//!
//! The router a library builds is full of library code: handlers,
//! middleware, response futures and bodies. Served as is, a panic in any of
//! them would abort the host, and tokio calls in them would find no runtime
//! (BOUNDARY.md §1, §2). So `#[verdant::interface]` wraps it library-side
//! ([`LibraryRouter`]): every `poll_ready`/`call` of the router, every poll of
//! a response future and every `poll_frame` of a response body runs inside
//! the host's tokio runtime and under the library's own `catch_unwind`. A
//! panic becomes a plain 500 (or, in the middle of a body, an aborted
//! response) and the service keeps running. The host gets back an ordinary
//! `axum::Router`, built once per version.
//!
//! [`mount`] serves a loadable's router under `/<name>/` and looks the
//! serving version up *per request*, so a keep-alive connection sees a new
//! version on its next request. Every response pins the version that made it
//! until its body is finished or dropped: a streaming response started by
//! version 1 completes on version 1 while version 2 is already serving.
//! The response carries a [`Served`] extension naming that version, for host
//! layers (a header, a metric).
//!
//! What a library router must not do: put values into *response*
//! extensions for the host (they are dropped library-side, because their
//! code is the library's), or return a router nested inside another type
//! (`Option<Router>`: the macro refuses it, since it would cross unguarded).

mod host;
mod library;

pub use ::axum::Router;
pub use host::{mount, Served};
pub use library::LibraryRouter;
