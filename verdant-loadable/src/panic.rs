//! What a library panic becomes once it was caught: data that crosses the
//! boundary (shared by host and library).
//!
//! A panic cannot unwind across the boundary (see [`crate::boundary`]); the
//! library-side guard catches it and hands the host a [`Panic`] value. The
//! host then turns it into the caller's error ([`Panicked`], for interface
//! methods that return a `Result`), an HTTP 500, or a host panic carrying
//! [`LibraryPanic`].
//!
//! Every caught panic is also *reported*, once, through the [`PanicHook`]
//! the host's registry made for the version: see [`PanicHook`] for who
//! reports what.

use std::fmt;
use std::sync::Arc;

/// A panic that happened inside a loadable library and was caught there.
///
/// Only the message, the source location and (when `RUST_BACKTRACE` asks
/// for one) the backtrace cross the boundary, as text; the payload itself is
/// dropped by the library that raised it.
///
/// Its layout is part of the boundary (it crosses inside every guarded
/// call's `Result`): host and library must be built from the same
/// verdant-loadable source.
///
/// ```
/// let caught = verdant_loadable::boundary::catch(|| -> u32 { panic!("out of stock") });
/// assert_eq!(caught.unwrap_err().message(), "out of stock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    message: String,
    location: Option<String>,
    backtrace: Option<String>,
}

impl Panic {
    /// Builds a panic record from a message.
    ///
    /// ```
    /// assert_eq!(verdant_loadable::boundary::Panic::new("boom").message(), "boom");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Panic { message: message.into(), location: None, backtrace: None }
    }

    /// The panic message (`"<non-string panic payload>"` when the payload was
    /// neither a `&str` nor a `String`).
    ///
    /// ```
    /// # let p = verdant_loadable::boundary::Panic::new("boom");
    /// println!("library panicked: {}", p.message());
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where the library panicked (`file:line:column`), when known: the
    /// location is recorded by a panic hook Verdant installs in each loaded
    /// library, so it is `None` for panics caught outside one.
    ///
    /// ```
    /// # let p = verdant_loadable::boundary::Panic::new("boom");
    /// if let Some(at) = p.location() {
    ///     println!("library panicked at {at}");
    /// }
    /// ```
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The library's backtrace of the panic, when the environment asked for
    /// one (`RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` set and not `0`, read by
    /// the library's copy of `std`): captured in the library by the same
    /// hook that records the location. Without `RUST_BACKTRACE=full` it is
    /// trimmed to the frames between the panic machinery and the guard that
    /// caught it, like the short backtrace of std's default hook.
    ///
    /// ```
    /// # let p = verdant_loadable::boundary::Panic::new("boom");
    /// if let Some(backtrace) = p.backtrace() {
    ///     eprintln!("library backtrace:\n{backtrace}");
    /// }
    /// ```
    pub fn backtrace(&self) -> Option<&str> {
        self.backtrace.as_deref()
    }

    /// Raises this library panic again as a panic of the *host*, which host
    /// code (for instance a `CatchPanic` layer that turns it into a 500, or
    /// a `tokio::task::JoinHandle`) can catch. The payload is a
    /// [`LibraryPanic`], whose `Display` says what the library said and
    /// where.
    ///
    /// It is raised with [`std::panic::resume_unwind`], so the host's panic
    /// hook does **not** run for it: the panic was reported already, once,
    /// when it was caught (verdant's proxies report it just before they
    /// re-raise it, to the registry's `tracing` event and `on_panic`
    /// callback). This is what `std::thread::scope` and rayon do with a
    /// panic they carry from one thread to another. Host code that catches
    /// the payload can show it with `Display`:
    ///
    /// ```
    /// let p = verdant_loadable::boundary::Panic::new("boom");
    /// let caught = std::panic::catch_unwind(|| p.resume()).unwrap_err();
    /// let library = caught.downcast_ref::<verdant_loadable::boundary::LibraryPanic>().unwrap();
    /// assert_eq!(library.to_string(), "a loadable library panicked: boom");
    /// ```
    pub fn resume(self) -> ! {
        std::panic::resume_unwind(Box::new(LibraryPanic(self)))
    }
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "panicked at {location}: {}", self.message),
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

impl std::error::Error for Panic {}

/// The payload of a host panic re-raised by [`Panic::resume`].
///
/// Its `Display` is the library's message and location (`a loadable library
/// panicked at src/lib.rs:3:5: sold out`). The host's panic hook never sees
/// it (see [`Panic::resume`]); whoever catches it (`catch_unwind`, a
/// `JoinError`, a `CatchPanic` layer) gets it as the payload.
///
/// ```
/// # let caught = std::panic::catch_unwind(|| verdant_loadable::boundary::Panic::new("x").resume()).unwrap_err();
/// if let Some(p) = caught.downcast_ref::<verdant_loadable::boundary::LibraryPanic>() {
///     eprintln!("a loadable panicked: {}", p.0.message());
/// }
/// ```
#[derive(Debug, Clone)]
pub struct LibraryPanic(pub Panic);

impl fmt::Display for LibraryPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a loadable library {}", self.0)
    }
}

impl Panic {
    /// A panic record with the location (and backtrace) the library's panic
    /// hook recorded.
    pub(crate) fn located(message: String, location: Option<String>, backtrace: Option<String>) -> Self {
        Panic { message, location, backtrace }
    }
}

/// Where a caught library panic is reported: a host function that the
/// host's registry made for one loaded version (it knows the loadable, the
/// version and the registry), handed to the library at attach
/// ([`AttachArgs`](crate::descriptor::AttachArgs)) and to the host-side
/// proxy ([`ProxyContext`](crate::ProxyContext)).
///
/// # Why a function of the host, per version
///
/// This crate cannot call into `verdant` (the host crate): a library never
/// links it, and this crate does not depend on it. A process-wide `static`
/// hook would not do either: its library-side copy is the library's own
/// (every static is per copy, [`docs::boundary`](crate::docs::boundary) §7),
/// and one hook could not tell which registry, loadable and version a panic
/// belongs to. So the host makes one `PanicHook` per version, and
/// everything that catches a panic of that version reports through it.
///
/// # Who reports what, exactly once
///
/// A panic is reported where the `Panic` value is finally consumed:
///
/// - returned to the host (a method's `Result`, a future's poll, a request
///   handler, an attach or detach hook): by the host code that turns it
///   into an error, a host panic, a 500 or a failed reload;
/// - caught library-side with nowhere to return it (a response body in the
///   middle of a stream, a drop): by the library-side guard, through the
///   hook the library copy got at attach;
/// - raised outside any guard (a thread or task the library spawned): by the
///   library copy's panic hook.
///
/// The library's own default panic hook never prints a panic that a guard
/// catches.
///
/// Its function is host code: it must not unwind (the host's registry runs
/// it under its own `catch_unwind`), because library code calls it.
#[doc(hidden)]
#[derive(Clone)]
pub struct PanicHook {
    report: Arc<ReportFn>,
}

/// What a [`PanicHook`] calls: `report(panic, site)`.
type ReportFn = dyn Fn(&Panic, &str) + Send + Sync;

impl PanicHook {
    /// A hook that calls `report(panic, site)`, where `site` says where the
    /// panic happened (a method name, `GET /shop/quote/boom`, `detach`).
    pub fn new(report: impl Fn(&Panic, &str) + Send + Sync + 'static) -> Self {
        PanicHook { report: Arc::new(report) }
    }

    /// Reports `panic`, caught at `site`.
    pub fn report(&self, panic: &Panic, site: &str) {
        (self.report)(panic, site)
    }
}

impl fmt::Debug for PanicHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PanicHook")
    }
}

/// Library code panicked during a call to an interface method (in the
/// method, or in a poll of the future an `async` method returned). The panic
/// was contained in the library; the version keeps serving other calls.
///
/// Interface methods that return `Result<T, E>` deliver it as their `Err`
/// whenever `E: From<Panicked>`: an error enum of the interface crate with a
/// `#[from] verdant_loadable::Panicked` variant (the way to go), or
/// `std::io::Error`. (`Box<dyn Error>` and `anyhow::Error` convert from it
/// too, but `#[verdant_loadable::interface]` refuses them as return types:
/// made by the library, they run library code outside every guard.) Other
/// methods re-raise the panic in the host, carrying a [`LibraryPanic`]. The
/// host crate's `verdant::Error` converts from it too.
///
/// ```
/// #[derive(Debug)]
/// enum ShopError {
///     Panicked(verdant_loadable::Panicked),
/// }
/// impl From<verdant_loadable::Panicked> for ShopError {
///     fn from(panicked: verdant_loadable::Panicked) -> Self {
///         ShopError::Panicked(panicked)
///     }
/// }
/// fn report(error: &ShopError) -> String {
///     match error {
///         ShopError::Panicked(p) => format!("{} failed in {}", p.loadable, p.method),
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Panicked {
    /// The registered name of the loadable.
    pub loadable: String,
    /// The interface method that was called.
    pub method: &'static str,
    /// The panic message.
    pub message: String,
    /// `file:line:column` of the panic in the library's source, when known.
    pub location: Option<String>,
}

impl Panicked {
    /// The error for `panic`, caught in `method` of `loadable`.
    ///
    /// ```
    /// let p = verdant_loadable::Panicked::new(verdant_loadable::boundary::Panic::new("sold out"), "shop", "quote");
    /// assert_eq!(p.to_string(), "loadable `shop` panicked in `quote`: sold out; the panic was contained and the version keeps serving");
    /// ```
    pub fn new(panic: Panic, loadable: &str, method: &'static str) -> Self {
        Panicked { loadable: loadable.to_owned(), method, message: panic.message, location: panic.location }
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loadable `{}` panicked in `{}`", self.loadable, self.method)?;
        if let Some(at) = &self.location {
            write!(f, " at {at}")?;
        }
        write!(f, ": {}; the panic was contained and the version keeps serving", self.message)
    }
}

impl std::error::Error for Panicked {}

impl From<Panicked> for std::io::Error {
    /// Lets interface methods that return `io::Result` receive [`Panicked`]
    /// as an error of kind `Other`.
    fn from(error: Panicked) -> std::io::Error {
        std::io::Error::other(error)
    }
}
