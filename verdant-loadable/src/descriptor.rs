//! The descriptor every loadable exports, and the types its entry points use.
//!
//! The loader finds the descriptor by its symbol name before trusting
//! anything else in the file. Its layout is in two parts:
//!
//! 1. a `#[repr(C)]` header — magic, descriptor ABI version and the version
//!    strings as pointer + length — whose layout never changes, so it can be
//!    read from a library built by any compiler;
//! 2. Rust-ABI entry points, used only after the header showed the same
//!    descriptor ABI, the same `verdant` and the same rustc, and after the
//!    [`Fingerprint`]s showed that every crossing type is the host's type.
//!
//! This module is public only so that [`export!`](crate::export!) can expand
//! in a library crate; it is not a stable API.

use std::any::TypeId;

use crate::boundary::Panic;
use crate::interface::Interface;

/// The symbol name of the descriptor. It carries the descriptor ABI version,
/// so a library built for another ABI shows up by name in the dynamic symbol
/// table without being opened.
pub const SYMBOL: &str = "__verdant_descriptor_v3";

/// What every descriptor symbol name starts with.
pub const SYMBOL_PREFIX: &str = "__verdant_descriptor_";

/// The descriptor ABI this build of verdant reads and writes. Bumped (with
/// [`SYMBOL`]) whenever a type the descriptor reaches changes layout:
/// version 2 added the panic hook to `AttachArgs`, the backtrace to
/// `Panic`, `release_host_link` and `panic_unwind`; version 3 gave the
/// library router's `call` the mount prefix (for panic reports) as an
/// argument. A library built for another version is refused by name
/// before it is opened.
pub const ABI_VERSION: u32 = 3;

/// The first bytes of every descriptor.
pub const MAGIC: [u8; 16] = *b"verdant-loadable";

/// The rustc that compiled this copy of verdant (`rustc -V`).
pub const RUSTC_VERSION: &str = env!("VERDANT_RUSTC_VERSION");

/// This copy of verdant's own version.
pub const VERDANT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A `&'static str` with a C layout, readable across compilers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawStr {
    ptr: *const u8,
    len: usize,
}

impl RawStr {
    /// Wraps a static string.
    pub const fn new(s: &'static str) -> Self {
        RawStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// Reads the string back, lossily.
    ///
    /// # Safety
    /// `self` must come from [`RawStr::new`] in a library that is still mapped.
    pub unsafe fn read(&self) -> String {
        if self.ptr.is_null() {
            return String::new();
        }
        // SAFETY: the caller guarantees ptr/len describe a live static string.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// One type that crosses the boundary, as the side that built it sees it.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint {
    /// What the type is for (`"interface"`, `"context"`, ...).
    pub role: &'static str,
    /// `std::any::type_name` of the type.
    pub type_name: &'static str,
    /// Its `TypeId`: equal only between artifacts of one compiler and one
    /// feature resolution ([`docs::boundary`](crate::docs::boundary) §3).
    pub id: TypeId,
}

impl Fingerprint {
    /// The fingerprint of `T` in `role`.
    pub fn of<T: ?Sized + 'static>(role: &'static str) -> Self {
        Fingerprint { role, type_name: std::any::type_name::<T>(), id: TypeId::of::<T>() }
    }
}

/// Every type that crosses the boundary for interface `I` and context
/// `context`. Host and library both call this, so the lists line up by
/// construction and differ only where the builds differ.
///
/// The list is in dependency order, leaves first: one marker type per crate
/// that crosses (`bytes`, `http`, `http-body`, `log`, `tracing-core`,
/// `tokio`, `tower`, `axum-core`, `axum`, this crate), then the interface
/// crate's types. A crate whose build differs changes its own `TypeId`s and
/// those of every crate built on it, so the first entry that differs names
/// the crate (or a dependency of it) whose build differs, which is what the
/// loader's `TypeMismatch` error reports.
pub fn fingerprints<I: Interface + ?Sized>(context: Fingerprint) -> [Fingerprint; 13] {
    [
        Fingerprint::of::<::bytes::Bytes>("bytes"),
        Fingerprint::of::<::axum::http::Request<()>>("http request"),
        Fingerprint::of::<::http_body::Frame<::bytes::Bytes>>("http-body frame"),
        Fingerprint::of::<::log::Record<'static>>("log record"),
        Fingerprint::of::<::tracing_core::Dispatch>("tracing dispatcher"),
        Fingerprint::of::<::tokio::runtime::Handle>("tokio runtime handle"),
        Fingerprint::of::<::tower::layer::util::Identity>("tower layer"),
        Fingerprint::of::<::axum::body::Body>("http body"),
        Fingerprint::of::<::axum::Router>("axum router"),
        Fingerprint::of::<AttachArgs>("verdant-loadable attach arguments"),
        Fingerprint::of::<I>("interface"),
        Fingerprint::of::<I::Boundary>("interface boundary"),
        context,
    ]
}

/// The crate a type belongs to, from its `type_name`: the first path
/// segment (`tokio` for `tokio::runtime::handle::Handle`, `fixture_api` for
/// `dyn fixture_api::Probe`).
///
/// ```
/// use verdant_loadable::descriptor::crate_of;
/// assert_eq!(crate_of("tokio::runtime::handle::Handle"), "tokio");
/// assert_eq!(crate_of("dyn shop_api::Shop"), "shop_api");
/// assert_eq!(crate_of("&core::option::Option<u8>"), "core");
/// ```
pub fn crate_of(type_name: &str) -> &str {
    let name = type_name.trim_start_matches(['&', '*', '(', '[']).trim_start_matches("dyn ");
    name.split([':', '<', ' ']).next().unwrap_or(name)
}

/// An attached instance, owned by the library that made it.
///
/// The host reaches the interface through [`Instance::boundary`] and gives
/// the instance back through [`Instance::retire`], which runs the detach hook
/// and frees the value inside the library, under a panic guard.
pub trait Instance<I: Interface + ?Sized>: Send + Sync {
    /// The panic-guarded interface object.
    fn boundary(&self) -> &I::Boundary;
    /// Runs the detach hook and drops the instance, inside the library.
    fn retire(self: Box<Self>) -> Result<(), Panic>;
}

/// What the host hands to a library's attach entry point.
pub struct AttachArgs {
    /// `&C` of the registry's context type, erased; its type was checked by
    /// fingerprint before the call.
    pub context: *const (),
    /// The host's tokio runtime, entered around the attach hook and around
    /// every later call, poll and task of the library ([`docs::boundary`](crate::docs::boundary) §2).
    pub runtime: Option<tokio::runtime::Handle>,
    /// The host functions the library's logging shim forwards to
    /// (`library/logging.rs`; the library's `static`s are its own, [`docs::boundary`](crate::docs::boundary) §7).
    pub logging: &'static crate::library::logging::HostLogging,
    /// Set by the host when `runtime` was shut down; every guarded call
    /// then fails with a message saying so instead of running library code.
    pub runtime_gone: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether the calling thread belongs to a tokio runtime, answered by
    /// the host's tokio (only such threads enter the runtime for good).
    pub on_runtime_thread: fn() -> bool,
    /// Keeps the library mapped while the library holds a clone (its tasks,
    /// the routers it hands out). Its last drop hands the unmapping to the
    /// registry's retirement thread, never to the thread that dropped it,
    /// which may be running library code.
    pub keep_alive: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    /// Where the library reports the panics it catches and cannot return
    /// (a response body failing mid-stream, a drop) and those no guard
    /// catches (its own threads and tasks): the host's reporter for the
    /// version being attached (see `PanicHook` in `panic.rs`).
    #[doc(hidden)]
    pub panic_hook: crate::panic::PanicHook,
}

/// Why an attach entry point produced no instance.
#[derive(Debug, Clone)]
pub enum AttachFailure {
    /// The hook returned an error.
    Failed(String),
    /// The hook panicked.
    Panicked(Panic),
}

/// What the attach entry point writes into its out-parameter.
pub type AttachOutcome<I> = Result<Box<dyn Instance<I>>, AttachFailure>;

/// The descriptor a loadable exports under [`SYMBOL`].
#[repr(C)]
pub struct Descriptor {
    /// Always [`MAGIC`].
    pub magic: [u8; 16],
    /// Always [`ABI_VERSION`] of the verdant that built the library.
    pub abi_version: u32,
    /// [`RUSTC_VERSION`] of the library's build.
    pub rustc_version: RawStr,
    /// [`VERDANT_VERSION`] of the library's build.
    pub verdant_version: RawStr,
    /// The library package's name.
    pub package_name: RawStr,
    /// The library package's version.
    pub package_version: RawStr,
    /// `cfg!(panic = "unwind")` of the library's build. A library built with
    /// `panic = "abort"` cannot contain a panic: its guards catch nothing and
    /// its first panic aborts the host. The loader refuses it. (After the
    /// `#[repr(C)]` header: read only once the versions matched.)
    pub panic_unwind: bool,
    /// Makes the library allocate with the host's global allocator (see
    /// [`crate::allocator`]); called right after the header check. Returns
    /// how many blocks the library's constructors allocated from the system
    /// allocator and still hold ([`HostAllocator::install`](crate::allocator::HostAllocator::install)).
    pub use_host_allocator: fn(&'static crate::library::allocator::AllocatorTable) -> usize,
    /// Writes the library's fingerprints (see [`fingerprints`]).
    pub fingerprints: fn(&mut dyn FnMut(Fingerprint)),
    /// How many tasks the library started with `verdant_loadable::spawn` are still
    /// running (`crate::task::running` of the library's copy).
    pub tasks_running: fn() -> usize,
    /// Drops the library's runtime handle; the host calls it once the last
    /// keep-alive of the library is gone (no library code runs any more).
    pub release_host_link: fn(),
    /// Runs the attach hook; writes an `AttachOutcome<I>` to `out`.
    ///
    /// # Safety
    /// Only after every fingerprint matched: `args.context` must point to the
    /// context type and `out` to an uninitialised `AttachOutcome<I>` of the
    /// library's interface.
    pub attach: unsafe fn(args: &AttachArgs, out: *mut ()),
}

// SAFETY: the descriptor is immutable static data: pointers to static strings
// and function pointers.
unsafe impl Sync for Descriptor {}
