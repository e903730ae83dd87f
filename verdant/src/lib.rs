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
//! # What the boundary costs (read `BOUNDARY.md`)
//!
//! - A panic in library code would abort the process if it unwound into the
//!   host. Every entry point — attach, detach, drop, and every interface
//!   method — catches panics *inside the library* ([`boundary`]). A method
//!   that panicked re-raises a host panic carrying a
//!   [`LibraryPanic`](boundary::LibraryPanic).
//! - Host and library must be built by the same rustc and the same cargo
//!   feature resolution: build them in one `cargo build -p host -p lib`.
//!   Verdant refuses anything else with a message that names the type.
//! - Libraries stay mapped after they are retired (glibc keeps them while
//!   thread-local destructors are pending); `status()` reports it and the
//!   bytes they keep.
//! - Values cross by ownership, so a library allocates with the host's
//!   global allocator ([`allocator`]): a host may use jemalloc or mimalloc.
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
/// must be `Send + Sync`, and its methods must take `&self`, have no type
/// parameters and not be `async`. The attribute keeps the trait as written
/// and adds, hidden, a panic-guarded boundary trait, a host-side proxy and
/// `unsafe impl verdant::Interface for dyn Trait`.
///
/// Methods should take and return plain data (strings, numbers, structs of
/// the shared crate). A trait object or closure *made by the library*
/// (`Box<dyn Fn()>`, `Box<dyn Iterator>`) carries a vtable into library
/// code that this guard does not cover: a panic in it, or in its `Drop`,
/// would abort the process (BOUNDARY.md §1).
///
/// ```
/// #[verdant::interface]
/// pub trait Shop: Send + Sync {
///     fn hello(&self, who: &str) -> String;
/// }
/// ```
pub use verdant_macros::interface;
