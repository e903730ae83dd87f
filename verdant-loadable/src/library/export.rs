//! The library side: what a loadable implements and exports.
//!
//! A loadable is a `cdylib` crate with one type implementing [`Loadable`] and
//! one [`export!`](crate::export!) line. The macro generates the
//! [descriptor](crate::descriptor) and the attach entry point; every call into
//! the loadable's code — attach, detach, the final drop, and each interface
//! method — runs under the library-side panic guard of [`crate::boundary`].
//! The attach entry point also links the library copy to its host: the
//! runtime its guards enter, the logging forwarders, the panic hook and the
//! host's panic reporter (`runtime_link.rs`, `logging.rs`, `guard.rs`).

use std::fmt;

use crate::boundary::{catch, Panic};
use crate::descriptor::{AttachArgs, AttachFailure, AttachOutcome, Fingerprint, Instance};
use crate::interface::Interface;

/// A stateless unit of logic that a `verdant::Verdant` registry can
/// load, attach, replace and detach.
///
/// ```
/// # mod shop_api {
/// #     #[verdant_loadable::interface]
/// #     pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
/// #     pub struct ShopContext { pub greeting: String }
/// # }
/// use verdant_loadable::{AttachError, Loadable};
///
/// pub struct ShopV1 { greeting: String }
///
/// impl shop_api::Shop for ShopV1 {
///     fn hello(&self, who: &str) -> String { format!("{}, {who}", self.greeting) }
/// }
///
/// impl Loadable for ShopV1 {
///     type Context = shop_api::ShopContext;
///     type Interface = dyn shop_api::Shop;
///     // Clone what the instance needs; never keep a reference to the context.
///     fn attach(ctx: &shop_api::ShopContext) -> Result<Self, AttachError> {
///         Ok(ShopV1 { greeting: ctx.greeting.clone() })
///     }
/// }
///
/// verdant_loadable::export!(ShopV1);
/// ```
pub trait Loadable: Sized + Send + Sync + 'static {
    /// The shared context the host passes to every attach hook.
    type Context: Send + Sync + 'static;
    /// The interface this loadable serves, as `dyn Trait` of a trait marked
    /// [`#[verdant_loadable::interface]`](crate::interface).
    type Interface: Interface + ?Sized;

    /// Creates an instance. Runs on a dedicated thread, inside the host's
    /// tokio runtime context, under the registry's attach time limit: a hook
    /// that takes longer fails the reload and is abandoned.
    fn attach(context: &Self::Context) -> Result<Self, AttachError>;

    /// Releases what attach set up. Runs exactly once, after the last call,
    /// future and response pinned to this instance finished, on a
    /// background thread inside the host's runtime context.
    ///
    /// Tasks this version started with [`crate::spawn`] may still be
    /// running: they keep the library loaded and run to completion unless
    /// this hook stops them with [`crate::task::abort_all`] (do that for
    /// background loops). It must not destroy anything a task it lets run
    /// still needs.
    fn detach(&mut self) {}
}

/// The error an attach hook returns; the reload that ran it fails with this
/// message and the previous version keeps serving.
///
/// Any `std::error::Error` converts into it, so `?` works inside attach:
///
/// ```
/// fn attach_port(raw: &str) -> Result<u16, verdant_loadable::AttachError> {
///     Ok(raw.parse::<u16>()?)
/// }
/// assert!(attach_port("80").is_ok());
/// assert!(attach_port("eighty").unwrap_err().to_string().contains("invalid digit"));
/// ```
pub struct AttachError {
    message: String,
}

impl AttachError {
    /// An attach error with a message of your own.
    ///
    /// ```
    /// let e = verdant_loadable::AttachError::new("database `shop` unreachable");
    /// assert_eq!(e.to_string(), "database `shop` unreachable");
    /// ```
    pub fn new(message: impl fmt::Display) -> Self {
        AttachError { message: message.to_string() }
    }
}

impl<E: std::error::Error> From<E> for AttachError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        AttachError { message }
    }
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttachError({:?})", self.message)
    }
}

/// An attached loadable as the library holds it.
#[doc(hidden)]
pub struct Attached<L: Loadable> {
    value: L,
    boundary: fn(&L) -> &<L::Interface as Interface>::Boundary,
}

impl<L: Loadable> Instance<L::Interface> for Attached<L> {
    fn boundary(&self) -> &<L::Interface as Interface>::Boundary {
        (self.boundary)(&self.value)
    }

    fn retire(self: Box<Self>) -> Result<(), Panic> {
        let mut this = self;
        // Detach and drop are guarded separately: a value dropped while a
        // detach panic unwinds would abort if its Drop panicked too.
        let detached = crate::library::guard::cleanup(|| this.value.detach());
        let dropped = crate::library::guard::cleanup(move || drop(this));
        detached.and(dropped)
    }
}

/// Writes the fingerprints of `L`'s crossing types. Called by the descriptor.
#[doc(hidden)]
pub fn write_fingerprints<L: Loadable>(sink: &mut dyn FnMut(Fingerprint)) {
    let context = Fingerprint::of::<L::Context>("context");
    for fingerprint in crate::descriptor::fingerprints::<L::Interface>(context) {
        sink(fingerprint);
    }
}

/// The attach entry point behind [`export!`](crate::export!).
///
/// # Safety
/// See [`crate::descriptor::Descriptor::attach`].
#[doc(hidden)]
pub unsafe fn attach_entry<L: Loadable>(
    args: &AttachArgs,
    out: *mut (),
    boundary: fn(&L) -> &<L::Interface as Interface>::Boundary,
) {
    let outcome: AttachOutcome<L::Interface> = match catch(|| {
        crate::library::guard::install_panic_hook(args.panic_hook.clone());
        crate::library::logging::install(args.logging);
        crate::library::runtime_link::install(crate::library::runtime_link::HostLink {
            runtime: std::sync::Mutex::new(args.runtime.clone()),
            enter: args.runtime.is_some(),
            runtime_gone: args.runtime_gone.clone(),
            on_runtime_thread: args.on_runtime_thread,
            keep_alive: std::sync::Arc::downgrade(&args.keep_alive),
        });
        crate::library::runtime_link::with_runtime(|| {
            // SAFETY: the loader checked that the context fingerprint equals
            // `L::Context`'s, and the host keeps the context alive for the call.
            let context = unsafe { &*args.context.cast::<L::Context>() };
            L::attach(context)
        })
    }) {
        Ok(Ok(value)) => Ok(Box::new(Attached { value, boundary })),
        Ok(Err(error)) => Err(AttachFailure::Failed(error.message)),
        Err(panic) => Err(AttachFailure::Panicked(panic)),
    };
    // SAFETY: the caller passes a pointer to an uninitialised
    // `AttachOutcome<L::Interface>` (same type by fingerprint).
    unsafe { out.cast::<AttachOutcome<L::Interface>>().write(outcome) };
}

/// Exports a [`Loadable`] type from a `cdylib` crate.
///
/// Generates the descriptor symbol the loader looks for, the attach entry
/// point, and the library's global allocator, which forwards to the host's
/// (see [`crate::allocator`]; a loadable cannot set its own). Use it exactly
/// once per library, in its root module.
///
/// ```
/// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
/// pub struct ShopV1;
/// impl Shop for ShopV1 { fn hello(&self, who: &str) -> String { format!("hi {who}") } }
/// impl verdant_loadable::Loadable for ShopV1 {
///     type Context = ();
///     type Interface = dyn Shop;
///     fn attach(_: &()) -> Result<Self, verdant_loadable::AttachError> { Ok(ShopV1) }
/// }
/// verdant_loadable::export!(ShopV1);
/// ```
#[macro_export]
macro_rules! export {
    ($loadable:ty) => {
        #[global_allocator]
        static __VERDANT_HOST_ALLOCATOR: $crate::allocator::HostAllocator = $crate::allocator::HostAllocator::new();

        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static __verdant_descriptor_v3: $crate::descriptor::Descriptor = $crate::descriptor::Descriptor {
            magic: $crate::descriptor::MAGIC,
            abi_version: $crate::descriptor::ABI_VERSION,
            rustc_version: $crate::descriptor::RawStr::new($crate::descriptor::RUSTC_VERSION),
            verdant_version: $crate::descriptor::RawStr::new($crate::descriptor::VERDANT_VERSION),
            package_name: $crate::descriptor::RawStr::new(env!("CARGO_PKG_NAME")),
            package_version: $crate::descriptor::RawStr::new(env!("CARGO_PKG_VERSION")),
            // Expanded in the library crate, so this is the library's build.
            panic_unwind: cfg!(panic = "unwind"),
            use_host_allocator: {
                fn use_host_allocator(table: &'static $crate::allocator::AllocatorTable) -> usize {
                    __VERDANT_HOST_ALLOCATOR.install(table)
                }
                use_host_allocator
            },
            fingerprints: $crate::__private::write_fingerprints::<$loadable>,
            tasks_running: $crate::task::running,
            release_host_link: $crate::__private::release_host_link,
            attach: {
                fn upcast(
                    value: &$loadable,
                ) -> &<<$loadable as $crate::Loadable>::Interface as $crate::Interface>::Boundary {
                    value
                }
                unsafe fn attach(args: &$crate::descriptor::AttachArgs, out: *mut ()) {
                    // SAFETY: forwarded contract of `Descriptor::attach`.
                    unsafe { $crate::__private::attach_entry::<$loadable>(args, out, upcast) }
                }
                attach
            },
        };
    };
}
