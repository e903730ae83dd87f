//! Boundary shim: library `tracing` events and `log` records reach the
//! host's subscriber and logger.
//!
//! A library has its own copy of tracing-core and of `log`, with their own
//! global dispatcher and logger, both empty ([`docs::boundary`](crate::docs::boundary) §7): without this
//! shim every event of library code would be dropped. Installing a *copy* of
//! the host's dispatcher at attach is not enough either: a host that sets its
//! subscriber per thread or per scope (`tracing::subscriber::with_default`,
//! as tests do) or changes it later would not see library events.
//!
//! So the attach entry point installs, as the library copy's global default,
//! a forwarding subscriber ([`Forward`]) and a forwarding logger
//! ([`ForwardLog`]). Each call goes through a table of host functions
//! ([`HostLogging`]) that runs in the host, against the host's *current*
//! dispatcher and logger. Events therefore carry their fields to the host's
//! subscriber and nest inside the host's current span (the subscriber tracks
//! spans in its own per-thread state), and library spans become host spans.
//!
//! Costs and limits: every library callsite is `Interest::sometimes`, so
//! each event asks the host's subscriber `enabled` first (a function-pointer
//! call more than in the host). Host subscriber code and the library's
//! `Debug`/`Display` impls of recorded values call each other across the
//! boundary; neither should panic (a panic of one side unwinding into the
//! other side's panic guard aborts, [`docs::boundary`](crate::docs::boundary) §1).

use std::sync::Once;

use tracing::dispatcher::Dispatch;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Event, Metadata};
use tracing_core::span::Current;

/// Runs a closure with the host's current dispatcher.
pub(crate) type WithDispatch = fn(&mut dyn FnMut(&Dispatch));

/// Host functions the library's forwarders call.
#[doc(hidden)]
pub struct HostLogging {
    pub(crate) with_dispatch: WithDispatch,
    pub(crate) log_enabled: fn(&log::Metadata<'_>) -> bool,
    pub(crate) log: fn(&log::Record<'_>),
    pub(crate) log_flush: fn(),
}

/// Library side: makes this library copy forward to `host`. Called by the
/// attach entry point; once per copy.
pub(crate) fn install(host: &'static HostLogging) {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // Fails only if the library set a default of its own; keep it.
        let _ = tracing::dispatcher::set_global_default(Dispatch::new(Forward { host }));
        // Callsites that registered before (none, normally) must learn the
        // new interest.
        tracing::callsite::rebuild_interest_cache();
        if log::set_boxed_logger(Box::new(ForwardLog { host })).is_ok() {
            // The host's logger filters; this copy's own filter must not.
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
}

/// The library copy's global subscriber: forwards each call to the host's
/// current dispatcher.
struct Forward {
    host: &'static HostLogging,
}

impl Forward {
    fn with<R>(&self, f: impl FnOnce(&Dispatch) -> R) -> R {
        let mut f = Some(f);
        let mut result = None;
        (self.host.with_dispatch)(&mut |dispatch| {
            if let Some(f) = f.take() {
                result = Some(f(dispatch));
            }
        });
        match result {
            Some(result) => result,
            // `get_default` always calls its closure (with the no-op
            // dispatcher at worst); this is unreachable in practice.
            None => unreachable!("tracing::dispatcher::get_default did not call back"),
        }
    }
}

impl Subscriber for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The host's current dispatcher can change from call to call (scoped
        // subscribers), so never cache a verdict in this copy's callsites.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.with(|dispatch| dispatch.enabled(metadata))
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.with(|dispatch| dispatch.new_span(span))
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.with(|dispatch| dispatch.record(span, values))
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.with(|dispatch| dispatch.record_follows_from(span, follows))
    }

    fn event(&self, event: &Event<'_>) {
        self.with(|dispatch| dispatch.event(event))
    }

    fn enter(&self, span: &Id) {
        self.with(|dispatch| dispatch.enter(span))
    }

    fn exit(&self, span: &Id) {
        self.with(|dispatch| dispatch.exit(span))
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.with(|dispatch| dispatch.clone_span(id))
    }

    fn try_close(&self, id: Id) -> bool {
        self.with(|dispatch| dispatch.try_close(id))
    }

    fn current_span(&self) -> Current {
        self.with(|dispatch| dispatch.current_span())
    }
}

/// The library copy's `log` logger: forwards to the host's logger.
struct ForwardLog {
    host: &'static HostLogging,
}

impl log::Log for ForwardLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        (self.host.log_enabled)(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        (self.host.log)(record)
    }

    fn flush(&self) {
        (self.host.log_flush)()
    }
}
