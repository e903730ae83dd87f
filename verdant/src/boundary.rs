//! Boundary shims: what keeps library code from taking the host down.
//!
//! A loadable links its own copy of `std`, so a panic raised in library code
//! cannot be caught by the host: the host's `catch_unwind` sees a *foreign*
//! exception and aborts the process (`../shared/design/BOUNDARY.md` §1). Every
//! entry point into library code therefore runs through [`catch`], which is
//! generic so that it is compiled into, and runs with the `std` of, the
//! library that instantiates it. The panic becomes a [`Panic`] value that
//! crosses the boundary as data; the host may turn it into an error, an HTTP
//! 500, or — through [`Panic::resume`] — a panic of its own that host code can
//! catch.
//!
//! Entry points guarded here: the attach and detach hooks and the drop of the
//! instance (through [`crate::export!`]), and every method of an interface
//! (through [`crate::interface`]).

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A panic that happened inside a loadable library and was caught there.
///
/// Only the message crosses the boundary; the payload itself is dropped by the
/// library that raised it.
///
/// ```
/// let caught = verdant::boundary::catch(|| -> u32 { panic!("out of stock") });
/// assert_eq!(caught.unwrap_err().message(), "out of stock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    message: String,
}

impl Panic {
    /// Builds a panic record from a message.
    ///
    /// ```
    /// assert_eq!(verdant::boundary::Panic::new("boom").message(), "boom");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Panic { message: message.into() }
    }

    /// The panic message (`"<non-string panic payload>"` when the payload was
    /// neither a `&str` nor a `String`).
    ///
    /// ```
    /// # let p = verdant::boundary::Panic::new("boom");
    /// println!("library panicked: {}", p.message());
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Raises this library panic again as a panic of the *host*, which host
    /// code (for instance a `CatchPanic` layer that turns it into a 500) can
    /// catch. The payload is a [`LibraryPanic`].
    ///
    /// ```
    /// let p = verdant::boundary::Panic::new("boom");
    /// let caught = std::panic::catch_unwind(|| p.resume()).unwrap_err();
    /// assert!(caught.downcast_ref::<verdant::boundary::LibraryPanic>().is_some());
    /// ```
    pub fn resume(self) -> ! {
        std::panic::panic_any(LibraryPanic(self))
    }

    fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string panic payload>".to_owned()
        };
        Panic { message }
    }
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked: {}", self.message)
    }
}

impl std::error::Error for Panic {}

/// The payload of a host panic re-raised by [`Panic::resume`].
///
/// ```
/// # let caught = std::panic::catch_unwind(|| verdant::boundary::Panic::new("x").resume()).unwrap_err();
/// if let Some(p) = caught.downcast_ref::<verdant::boundary::LibraryPanic>() {
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

/// Runs `f`, turning a panic into a [`Panic`] value.
///
/// Call this only from code compiled into the library (generic code
/// instantiated there, as the macros do): it must run with the library's own
/// `std` to recognise the library's panics. Unwind safety is asserted because
/// loadables are stateless by contract: a panicked call leaves nothing behind
/// that a later call relies on.
///
/// ```
/// assert_eq!(verdant::boundary::catch(|| 2 + 2), Ok(4));
/// ```
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let panic = Panic::from_payload(&*payload);
        // The payload was allocated by this copy of std; drop it here, still
        // inside the library, and guard against a payload whose Drop panics.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        panic
    })
}
