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
//! spans in its own per-thread state), and library spans become host spans,
//! each kept with the dispatcher that created it ([`Forward`]).
//!
//! Costs and limits: every library callsite is `Interest::sometimes`, so
//! each event asks the host's subscriber `enabled` first (a function-pointer
//! call more than in the host). Host subscriber code and the library's
//! `Debug`/`Display` impls of recorded values call each other across the
//! boundary; neither should panic (a panic of one side unwinding into the
//! other side's panic guard aborts, [`docs::boundary`](crate::docs::boundary) §1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, PoisonError, RwLock};

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
        let _ = tracing::dispatcher::set_global_default(Dispatch::new(Forward::new(host)));
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
/// current dispatcher, and every call about a span to the dispatcher that
/// created it.
///
/// A span lives longer than one call: a library future instrumented with a
/// span is created under one host subscriber and may be polled or dropped
/// on a thread where another one is current (scoped subscribers, tests,
/// per-request dispatchers). A subscriber asked about a span it never
/// created panics (tracing-subscriber's registry does), and that panic of
/// host code inside the library's guard would abort the process
/// ([`docs::boundary`](crate::docs::boundary) §1). So each span the library
/// creates is remembered with its dispatcher, and `enter`, `exit`,
/// `record`, `clone_span` and `try_close` go there.
///
/// Span ids: the library's id for a span is the host subscriber's id when
/// no other live span of the library has that id (always, with one host
/// subscriber), so events and spans with an explicit parent carry the id
/// the host knows; when two subscribers hand out the same id, the second
/// span gets an id of its own from a range host subscribers do not use.
/// Ids the library does not know are host spans (`Span::current()` of host
/// code) and go to the current dispatcher.
struct Forward {
    host: &'static HostLogging,
    spans: RwLock<HashMap<u64, OwnedSpan>>,
    next_private_id: AtomicU64,
}

/// A span the library created: its dispatcher, the id that dispatcher gave
/// it, and how many handles of the library refer to it.
struct OwnedSpan {
    dispatch: Dispatch,
    id: Id,
    refs: usize,
}

/// Where the library's own span ids start when a host id is taken.
const PRIVATE_IDS: u64 = 1 << 62;

impl Forward {
    fn new(host: &'static HostLogging) -> Self {
        Forward { host, spans: RwLock::new(HashMap::new()), next_private_id: AtomicU64::new(PRIVATE_IDS) }
    }

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

    /// The dispatcher and host id of a span the library created.
    fn owner(&self, span: &Id) -> Option<(Dispatch, Id)> {
        let spans = self.spans.read().unwrap_or_else(PoisonError::into_inner);
        spans.get(&span.into_u64()).map(|owned| (owned.dispatch.clone(), owned.id.clone()))
    }

    /// Runs `f` with the dispatcher that owns `span` and its id there, or
    /// with the current dispatcher and `span` as is for a host span.
    fn with_span<R>(&self, span: &Id, f: impl FnOnce(&Dispatch, &Id) -> R) -> R {
        match self.owner(span) {
            Some((dispatch, id)) => f(&dispatch, &id),
            None => self.with(|dispatch| f(dispatch, span)),
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
        // A child with an explicit parent of the library's belongs to the
        // parent's dispatcher, under the parent's id there.
        let (dispatch, id) = match span.parent().and_then(|parent| self.owner(parent)) {
            Some((dispatch, parent)) => {
                let attributes = Attributes::child_of(parent, span.metadata(), span.values());
                let id = dispatch.new_span(&attributes);
                (dispatch, id)
            }
            None => self.with(|dispatch| (dispatch.clone(), dispatch.new_span(span))),
        };
        let mut spans = self.spans.write().unwrap_or_else(PoisonError::into_inner);
        let mut key = id.into_u64();
        if spans.contains_key(&key) {
            key = self.next_private_id.fetch_add(1, Ordering::Relaxed);
        }
        spans.insert(key, OwnedSpan { dispatch, id, refs: 1 });
        Id::from_u64(key)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.with_span(span, |dispatch, id| dispatch.record(id, values))
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        let follows = self.owner(follows).map_or_else(|| follows.clone(), |(_, id)| id);
        self.with_span(span, |dispatch, id| dispatch.record_follows_from(id, &follows))
    }

    fn event(&self, event: &Event<'_>) {
        // An explicit parent of the library's: its dispatcher knows it.
        match event.parent().and_then(|parent| self.owner(parent)) {
            Some((dispatch, _)) => dispatch.event(event),
            None => self.with(|dispatch| dispatch.event(event)),
        }
    }

    fn enter(&self, span: &Id) {
        self.with_span(span, |dispatch, id| dispatch.enter(id))
    }

    fn exit(&self, span: &Id) {
        self.with_span(span, |dispatch, id| dispatch.exit(id))
    }

    fn clone_span(&self, span: &Id) -> Id {
        let mut spans = self.spans.write().unwrap_or_else(PoisonError::into_inner);
        match spans.get_mut(&span.into_u64()) {
            Some(owned) => {
                owned.refs = owned.refs.saturating_add(1);
                let (dispatch, id) = (owned.dispatch.clone(), owned.id.clone());
                drop(spans);
                dispatch.clone_span(&id);
                span.clone()
            }
            None => {
                drop(spans);
                self.with(|dispatch| dispatch.clone_span(span))
            }
        }
    }

    fn try_close(&self, span: Id) -> bool {
        let mut spans = self.spans.write().unwrap_or_else(PoisonError::into_inner);
        let key = span.into_u64();
        match spans.get_mut(&key) {
            Some(owned) => {
                // Saturating: an unbalanced close must not panic here, inside
                // the subscriber the library calls.
                owned.refs = owned.refs.saturating_sub(1);
                let (dispatch, id) = (owned.dispatch.clone(), owned.id.clone());
                if owned.refs == 0 {
                    spans.remove(&key);
                }
                drop(spans);
                dispatch.try_close(id)
            }
            None => {
                drop(spans);
                self.with(|dispatch| dispatch.try_close(span))
            }
        }
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
