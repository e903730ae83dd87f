//! One report per library panic: [`PanicReport`], and the host function
//! every caught panic of a registry's loadables goes through.
//!
//! # Where reports come from
//!
//! A panic in library code is caught by a guard compiled into the library
//! (`verdant-loadable`'s crate docs have the table) and becomes a
//! `verdant_loadable::boundary::Panic` value carrying the message, the
//! library's `file:line:column` and, when `RUST_BACKTRACE` asks for one,
//! the library's backtrace. It is reported once, where that value is
//! consumed:
//!
//! | Where it was caught | Who reports | Site |
//! |---|---|---|
//! | an interface method, sync or `async` | the generated proxy (`verdant-loadable`'s `host/deliver.rs`), before it returns `Err(Panicked)` or re-raises | the method's name |
//! | a request handler of a library router | the host half of the router (`host/router.rs`), before it answers 500 | `GET /shop/quote/boom` |
//! | an extension's middleware | the HTTP pipeline (`axum/pipeline.rs`), before it answers 500 | `GET /x (middleware)` |
//! | a response body mid-stream, `is_end_stream`, `size_hint`, a drop | the library-side guard, through the hook it got at attach | `response body of GET /shop/catalog (…)` |
//! | the attach hook | `attach.rs` (the reload of that loadable fails too, logged as such) | `attach` |
//! | the detach hook or the instance's drop | `version.rs` | `detach` |
//! | a thread or task the library started (no guard) | the library's panic hook | `outside any guard …` |
//!
//! All of them call [`emit`], through a `PanicHook` made per version by
//! [`hook_for`]: one `tracing` ERROR event, the registry's
//! [`on_panic`](crate::Builder::on_panic) callback, and the registry's
//! count. The library's own default panic hook prints nothing for a panic a
//! guard catches, and a method without a `Result` re-raises the panic in the
//! host with `resume_unwind`, which skips the host's panic hook: the report
//! is the one trace of the panic.
//!
//! `verdant-loadable` cannot call this crate (a library never links it), so
//! the registry hands it the reporter as a value: in the attach arguments
//! for the library side and in the proxy's context for the host side.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, Weak};

use verdant_loadable::__private::PanicHook;

use crate::boundary::Panic;
use crate::registry::Inner;
use crate::report::VersionInfo;

/// One panic of library code that Verdant caught (or, for a thread the
/// library started, saw), as the registry reports it: once per panic, to
/// `tracing` (one ERROR event, target `verdant::panic_report`, with these
/// fields) and to the callback given to
/// [`Builder::on_panic`](crate::Builder::on_panic).
///
/// ```
/// fn to_alerting(report: &verdant::PanicReport) {
///     eprintln!("{report}");
///     if let Some(backtrace) = &report.backtrace {
///         eprintln!("{backtrace}");
///     }
/// }
/// let builder = verdant::Verdant::builder(()).on_panic(to_alerting);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PanicReport {
    /// The loadable's registered name.
    pub loadable: String,
    /// The version that panicked: package, package version, generation,
    /// content hash.
    pub version: VersionInfo,
    /// Where: the interface method (`quote`), the request (`GET
    /// /shop/quote/boom`), `response body of GET /shop/catalog (…)`,
    /// `attach`, `detach`, or `outside any guard …` for a thread or task the
    /// library started.
    pub site: String,
    /// The panic message (`<non-string panic payload>` when the payload was
    /// neither a `&str` nor a `String`).
    pub message: String,
    /// `file:line:column` of the panic in the library's source, when known.
    pub location: Option<String>,
    /// The library's backtrace, when `RUST_BACKTRACE` (or
    /// `RUST_LIB_BACKTRACE`) asked for one; trimmed to the frames between
    /// the panic and Verdant's guard unless it says `full`.
    pub backtrace: Option<String>,
}

impl fmt::Display for PanicReport {
    /// One line: `loadable `shop` (shop-lib 0.1.0, generation 1) panicked in
    /// GET /shop/quote/boom at shop-lib/src/lib.rs:94:13: <message>`. The
    /// backtrace is left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loadable `{}` ({} {}, generation {}) panicked in {}",
            self.loadable, self.version.package, self.version.package_version, self.version.generation, self.site
        )?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The callback of [`Builder::on_panic`](crate::Builder::on_panic).
pub(crate) type OnPanic = Arc<dyn Fn(&PanicReport) + Send + Sync>;

/// Where a registry's reports go: its callback, and the registry itself
/// (for its count), known once it is built.
pub(crate) struct PanicSink {
    on_panic: Option<OnPanic>,
    registry: OnceLock<Weak<Inner>>,
}

impl PanicSink {
    pub(crate) fn new(on_panic: Option<OnPanic>) -> Self {
        PanicSink { on_panic, registry: OnceLock::new() }
    }

    /// Ties the sink to its registry (once, when the registry is built).
    pub(crate) fn set_registry(&self, registry: Weak<Inner>) {
        let _ = self.registry.set(registry);
    }
}

/// The reporter of one version: what the library copy and the proxy of
/// `version` of loadable `loadable` report through.
///
/// It holds the sink, not the registry: a library copy keeps its hook for
/// the life of the process (it is a library static), which must not keep a
/// dropped registry alive.
pub(crate) fn hook_for(sink: Arc<PanicSink>, loadable: Arc<str>, version: VersionInfo) -> PanicHook {
    PanicHook::new(move |panic: &Panic, site: &str| emit(&sink, &loadable, &version, site, panic))
}

/// Reports `panic` of `version` of `loadable`, caught at `site`: one ERROR
/// event, the `on_panic` callback, the registry's count.
///
/// Never unwinds: library code calls it (through a `PanicHook`), and a host
/// panic unwinding into library frames would abort the process. A panic of
/// the callback is caught and logged.
pub(crate) fn emit(sink: &PanicSink, loadable: &str, version: &VersionInfo, site: &str, panic: &Panic) {
    let reported = catch_unwind(AssertUnwindSafe(|| {
        let report = PanicReport {
            loadable: loadable.to_owned(),
            version: version.clone(),
            site: site.to_owned(),
            message: panic.message().to_owned(),
            location: panic.location().map(str::to_owned),
            backtrace: panic.backtrace().map(str::to_owned),
        };
        tracing::error!(
            loadable = %report.loadable,
            package = %report.version.package,
            version = %report.version.package_version,
            generation = report.version.generation,
            site = %report.site,
            location = report.location.as_deref(),
            // Displayed from a line of its own: a backtrace reads as lines,
            // not as one escaped string.
            backtrace = report.backtrace.as_deref().map(|backtrace| tracing::field::display(format!("\n{backtrace}"))),
            "library panic: {}",
            report.message,
        );
        if let Some(inner) = sink.registry.get().and_then(Weak::upgrade) {
            inner.count_library_panic(loadable);
        }
        if let Some(on_panic) = &sink.on_panic {
            if catch_unwind(AssertUnwindSafe(|| on_panic(&report))).is_err() {
                tracing::error!(loadable, "the on_panic callback panicked while it handled a library panic report");
            }
        }
    }));
    if reported.is_err() {
        // A subscriber that panicked: nothing left to report through.
        let _ = catch_unwind(|| eprintln!("verdant: reporting a panic of loadable `{loadable}` panicked"));
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::report::ContentHash;

    fn version() -> VersionInfo {
        VersionInfo {
            generation: 3,
            package: "shop-lib".to_owned(),
            package_version: "0.1.1".to_owned(),
            hash: ContentHash::of(b"x"),
            loaded_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn each_report_reaches_the_callback_once_and_a_panicking_callback_is_contained() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            Arc::new(PanicSink::new(Some(Arc::new(move |report: &PanicReport| {
                seen.lock().unwrap().push(report.clone());
                if report.message == "twice" {
                    panic!("the callback itself failed");
                }
            }))))
        };
        let hook = hook_for(sink, Arc::from("shop"), version());
        hook.report(&Panic::new("once"), "quote");
        hook.report(&Panic::new("twice"), "GET /shop/quote/boom");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].site.as_str(), seen[0].message.as_str()), ("quote", "once"));
        assert_eq!(
            seen[1].to_string(),
            "loadable `shop` (shop-lib 0.1.1, generation 3) panicked in GET /shop/quote/boom: twice"
        );
    }
}
