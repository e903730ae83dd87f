//! What a library panic becomes once it was caught: data that crosses the
//! boundary (shared by host and library).
//!
//! A panic cannot unwind across the boundary (see [`crate::boundary`]); the
//! library-side guard catches it and hands the host a [`Panic`] value. The
//! host then turns it into the caller's error ([`Panicked`], for interface
//! methods that return a `Result`), an HTTP 500, or a host panic carrying
//! [`LibraryPanic`].

use std::fmt;

/// A panic that happened inside a loadable library and was caught there.
///
/// Only the message and the source location cross the boundary; the payload
/// itself is dropped by the library that raised it.
///
/// ```
/// let caught = verdant_loadable::boundary::catch(|| -> u32 { panic!("out of stock") });
/// assert_eq!(caught.unwrap_err().message(), "out of stock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    message: String,
    location: Option<String>,
}

impl Panic {
    /// Builds a panic record from a message.
    ///
    /// ```
    /// assert_eq!(verdant_loadable::boundary::Panic::new("boom").message(), "boom");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Panic { message: message.into(), location: None }
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

    /// Raises this library panic again as a panic of the *host*, which host
    /// code (for instance a `CatchPanic` layer that turns it into a 500) can
    /// catch. The payload is a [`LibraryPanic`].
    ///
    /// ```
    /// let p = verdant_loadable::boundary::Panic::new("boom");
    /// let caught = std::panic::catch_unwind(|| p.resume()).unwrap_err();
    /// assert!(caught.downcast_ref::<verdant_loadable::boundary::LibraryPanic>().is_some());
    /// ```
    pub fn resume(self) -> ! {
        std::panic::panic_any(LibraryPanic(self))
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
    /// A panic record with the location the library's panic hook recorded.
    pub(crate) fn located(message: String, location: Option<String>) -> Self {
        Panic { message, location }
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
