//! axum integration, host side: serve a loadable's router in your service.
//!
//! An interface method that returns `axum::Router` gives a loadable an HTTP
//! face of its own; `#[verdant_loadable::interface]` wraps the router the
//! library builds so that every line of library code in it (handlers,
//! middleware, response futures and bodies) runs under the library's panic
//! guard and inside the host's runtime (see
//! [`verdant_loadable::router`]). The host gets an ordinary `axum::Router`.
//!
//! [`mount`] serves a loadable's router under `/<name>/` and looks the
//! serving version up *per request*, so a keep-alive connection sees a new
//! version on its next request. Every response pins the version that made it
//! until its body is finished or dropped: a streaming response started by
//! version 1 completes on version 1 while version 2 is already serving.
//! The response carries a [`Served`] extension naming that version, for host
//! layers (a header, a metric).
//!
//! ```
//! #[verdant_loadable::interface]
//! pub trait Shop: Send + Sync {
//!     /// The shop's routes, relative to where the host mounts them.
//!     fn router(&self) -> axum::Router;
//! }
//! ```
//!
//! [`admin`] is the operator's side: status, reloads and Prometheus
//! metrics as JSON and text over HTTP, behind a bearer token, for a
//! listener of its own.

mod admin;
mod mount;
mod pipeline;

pub use ::axum::Router;
pub use admin::{admin, AdminToken, AdminTokenError};
pub use mount::{mount, Served};
pub use pipeline::{pipeline, Pipeline, PipelineFuture, PipelineLayout};
pub use verdant_loadable::router::LibraryRouter;
