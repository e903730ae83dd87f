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
//! # Two crates, split along the boundary
//!
//! This crate is the **host**: the registry (`registry.rs`), the loader
//! (`loader.rs`, `elf.rs`), reload transactions (`transaction.rs`,
//! `trigger.rs`, `attach.rs`), handles (`handle.rs`), versions and their
//! retirement (`version.rs`), the SIGPIPE trigger (`sigpipe.rs`), the
//! manifest and how it is applied (`manifest.rs`, `manifest_diff.rs`) and
//! the axum side ([`axum`]: `mount.rs`, and `pipeline.rs`, which composes
//! HTTP extensions), panic reports (`panic_report.rs`) and systemd's
//! notifications ([`systemd`]). No library ever links it.
//!
//! Libraries link only [`verdant-loadable`](verdant_loadable): [`Loadable`],
//! [`export!`], the support code of `#[verdant_loadable::interface]`, the
//! boundary guards, the runtime link, log forwarding, the allocator shim
//! and tasks. Every type that crosses is defined there (or in your interface
//! crate), so nothing this crate depends on can change a crossing type
//! ([`docs::boundary`] §3). This crate re-exports the shared types host code
//! names ([`Interface`], [`ProxyContext`], [`Panicked`], [`boundary`]).
//! [`docs::embedding`] walks from an axum service to its first reload.
//!
//! [`Loadable`]: verdant_loadable::Loadable
//! [`export!`]: verdant_loadable::export!
//!
//! # The life of a loadable
//!
//! 1. **Interface.** A trait shared by host and library, in a crate both
//!    depend on (which depends on `verdant-loadable`), marked
//!    [`#[verdant_loadable::interface]`](verdant_loadable::interface).
//! 2. **Library.** A `cdylib` with a type implementing
//!    [`Loadable`](verdant_loadable::Loadable) (its attach hook gets the
//!    registry's shared context; its detach hook runs when it is replaced)
//!    and one [`export!`](verdant_loadable::export!) line.
//! 3. **Host.** `Verdant::builder(context).add::<dyn Shop>("shop", path)`,
//!    then [`Verdant::attach`], then [`Verdant::handle`]. Each
//!    [`Handle::get`] pins the serving version for one call or request.
//!
//! # Plugins from a manifest
//!
//! A service can also list its loadables in a TOML [`manifest`]
//! ([`Builder::manifest`]); every reload reads it again and applies the
//! difference: new entries are loaded, removed ones revoked, changed ones
//! reloaded. An entry the host did not add in code is an *HTTP extension*
//! ([`verdant_loadable::http::HttpExtension`]): a library that offers
//! routes under its mount and a middleware, which the host serves without
//! knowing it at compile time through [`axum::pipeline`]: host layers, then
//! every extension's middleware in manifest order, then the routes whose
//! mount matches, then a 404.
//!
//! ```toml
//! [[loadable]]
//! name = "shop"                        # added in code as dyn Shop: sets its path and mount
//! path = "target/debug/libshop_lib.so" # relative to the manifest's directory
//! mount = "/shop"
//!
//! [[loadable]]
//! name = "request-id"                  # not added in code: an HTTP extension
//! path = "target/debug/libdemo_request_id.so"
//! [loadable.settings]                  # handed to its attach hook
//! header = "x-request-id"
//! ```
//!
//! # A reload is a transaction per loadable
//!
//! For every selected loadable: **read** the artifact (a file whose inode,
//! size and times are those of the serving version's is not read at all;
//! unchanged content is reported `Unchanged` and skipped), **validate** it as an ELF shared object
//! for this machine with every segment inside the file and exactly one
//! Verdant descriptor, **copy** it to a private 0700 directory under a
//! unique name, **open** the copy (`dlopen`) and check the descriptor's
//! compiler and verdant versions, **check** the `TypeId` of every type that
//! crosses, **attach** it on its own thread under a time limit, and only
//! then **swap** it in.
//!
//! Each loadable is its own unit: one that fails at any step keeps serving
//! its previous version (or stays unattached, to be tried again by the next
//! attach or reload, and its handle's error says why), its new instance, if
//! it got one, is detached, and every other loadable is applied all the
//! same: one bad build never takes the others down. Loadables that must
//! change together form a [group](Builder::group), which is applied
//! all-or-nothing. Every transaction is logged once: each failed loadable
//! at ERROR with the loadable, the [`Step`] and the cause (and what keeps
//! serving), then its [`ReloadReport`] at INFO; in [strict
//! mode](Builder::strict) a failure also makes the call return an
//! [`Error::Reload`]. Reloads are serialised, and triggers that arrive
//! during a reload coalesce into one follow-up, so the newest build is
//! never missed.
//!
//! # Operating it
//!
//! [`Verdant::status`] says what serves, what is retired and how many
//! calls and requests still run on it, why a loadable is not serving, and
//! how the last reload went; every part of it serializes to JSON.
//! [`Verdant::metrics_text`] is the registry's Prometheus metrics (one
//! explicit registry per [`Verdant`], nothing process-global), and
//! [`axum::admin`] serves both, and reloads, over HTTP behind a bearer
//! token, for a listener of its own.
//!
//! # The boundary, host side
//!
//! Every entry into library code is guarded *in the library*
//! (`verdant-loadable`'s crate docs have the table of entry points and their
//! guards): a panic there can only be caught by the library's own `std`.
//! What this crate does at each of them:
//!
//! | Entry point | Host side (this crate) | A panic becomes |
//! |---|---|---|
//! | attach hook | runs it on its own thread under [`Builder::attach_timeout`], with the runtime handed over (`attach.rs`) | [`LoadError::AttachPanicked`]; that loadable (or its group) fails and keeps its old version |
//! | detach hook, drop of the instance | runs them on the retirement thread after the last pin is gone (`version.rs`) | [`DetachState::Panicked`] in [`Verdant::status`] |
//! | interface methods, sync and `async` | [`Handle::get`] pins the version; the generated proxy calls the library's guarded boundary | `Err(`[`Panicked`]`)` or a host panic carrying [`boundary::LibraryPanic`] |
//! | a library's router | [`axum::mount`] looks the version up per request and keeps it pinned until the body ends | HTTP 500; mid-body, an aborted response |
//! | allocations and logs of the library | the loader hands over the host's allocator table before any library code runs (`loader.rs`), and the logging table at attach | — |
//!
//! Every one of those panics is also reported, once: one `tracing` ERROR
//! event and a [`PanicReport`] to the callback of [`Builder::on_panic`]
//! (the loadable, its version, the method or request, the message, the
//! library's `file:line:column`, its backtrace under `RUST_BACKTRACE`).
//! `panic_report.rs` has the table of who reports what; neither the
//! library's default panic hook nor the host's prints a panic that was
//! reported.
//!
//! # Other costs of the boundary
//!
//! - Host and library must be built by the same rustc and the same cargo
//!   feature resolution. Verdant refuses anything else with a message that
//!   names the first crate whose build differs ([`docs::embedding`] shows the
//!   workspace-hack that makes separate builds agree).
//! - Libraries stay mapped after they are retired (glibc keeps them while
//!   thread-local destructors are pending). Once a version is retired for
//!   good, its read-only pages and its copy's unloaded bytes are given back;
//!   `status().retained` reports what stays (about 54 KiB of RSS per reload
//!   of the demo, and its loaded segments on the private directory's
//!   filesystem).
//! - SIGPIPE is also raised by broken pipes; only signals sent by another
//!   process reload, and the signal handler counts them, so that no flood of
//!   broken pipes can crowd one out.

#![warn(missing_docs)]

mod attach;
pub mod axum;
mod elf;
mod entry;
mod error;
mod filter;
mod handle;
mod handoff;
mod loader;
pub mod manifest;
mod manifest_diff;
mod metrics;
mod panic_report;
mod pin_cache;
mod private_dir;
mod registry;
mod report;
mod retained;
mod runtime_watch;
mod serialize;
mod sigpipe;
mod status;
mod sync;
pub mod systemd;
mod transaction;
mod trigger;
mod version;

#[cfg(test)]
mod pipeline_tests;

pub use attach::{LateAttach, LateResult, StuckAttach};
pub use error::{Error, HandleError, LoadError, ReloadFailure, Step, StepError};
pub use filter::{Filter, Select};
pub use handle::{Handle, Pinned};
pub use manifest::{Manifest, ManifestEntry, ManifestError};
pub use metrics::METRICS_CONTENT_TYPE;
pub use panic_report::PanicReport;
pub use registry::{Builder, Verdant, DEFAULT_ATTACH_TIMEOUT};
pub use report::{ContentHash, LoadableReport, Outcome, ReloadReport, StepTime, Trigger, VersionInfo};
pub use sigpipe::SigpipeStats;
pub use status::{LastReload, LoadableFailure, LoadableStatus, RetainedSummary, RetireReason, RetiredStatus, Status};
pub use version::DetachState;

/// What verdant's own tests look into. Not an API: public only so that the
/// integration tests (a crate of their own) can reach it.
#[doc(hidden)]
pub mod __private {
    /// How many per-thread pin cache cells the process ever allocated. Cells
    /// are recycled, never freed, so this stays bounded by the threads times
    /// the loadables alive at once however many registries come and go.
    #[cfg(not(verdant_loom))]
    pub fn pin_cells_allocated() -> usize {
        crate::pin_cache::free_cells().allocated()
    }
}

// What crosses the boundary is defined once, in the crate every library
// links; the host re-exports what host code names.
pub use verdant_loadable::boundary;
pub use verdant_loadable::descriptor;
pub use verdant_loadable::docs;
pub use verdant_loadable::{Interface, LibraryPin, Panicked, ProxyContext, VersionPin};
