//! Tracing events recorded for the tests that check what Verdant and the
//! libraries log: one `tracing_subscriber` layer instead of a hand-written
//! `Subscriber` in every test file.
//!
//! Reloads run on the registry's worker thread, so a test that wants to see
//! them installs the recorder as the global default ([`EventLog::install`]);
//! nextest runs every test in a process of its own, which makes that safe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One recorded event.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// Its level.
    pub level: Level,
    /// Its target (`verdant::trigger`, `fixture`, ...).
    pub target: String,
    /// Its fields as text; the message is the field `message`.
    pub fields: BTreeMap<String, String>,
    /// `LEVEL target: message field=value ...`, in the order recorded.
    pub text: String,
}

impl LoggedEvent {
    /// Whether the one-line text contains `word`.
    pub fn contains(&self, word: &str) -> bool {
        self.text.contains(word)
    }
}

/// The events recorded so far; clones share them.
#[derive(Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<LoggedEvent>>>);

impl EventLog {
    /// A new log, installed as the process's global subscriber.
    ///
    /// Panics if the process already has one: call it once per test.
    pub fn install() -> EventLog {
        let log = EventLog::default();
        let subscriber = tracing_subscriber::registry().with(log.clone());
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this test process");
        log
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Vec<LoggedEvent>> {
        // A test that panicked while holding it has failed anyway.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<LoggedEvent> {
        self.events().clone()
    }

    /// Every event so far, and forget them.
    pub fn take(&self) -> Vec<LoggedEvent> {
        std::mem::take(&mut *self.events())
    }

    /// The events of `level` whose text contains `word`.
    pub fn matching(&self, level: Level, word: &str) -> Vec<LoggedEvent> {
        self.events().iter().filter(|e| e.level == level && e.contains(word)).cloned().collect()
    }

    /// How many events have target `target`.
    pub fn count_target(&self, target: &str) -> usize {
        self.events().iter().filter(|e| e.target == target).count()
    }
}

impl<S: Subscriber> Layer<S> for EventLog {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let metadata = event.metadata();
        let mut fields = Fields { map: BTreeMap::new(), text: format!("{} {}:", metadata.level(), metadata.target()) };
        event.record(&mut fields);
        self.events().push(LoggedEvent {
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            fields: fields.map,
            text: fields.text,
        });
    }
}

struct Fields {
    map: BTreeMap<String, String>,
    text: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.text, " {}={value:?}", field.name());
        self.map.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.text, " {}={value}", field.name());
        self.map.insert(field.name().to_owned(), value.to_owned());
    }
}
