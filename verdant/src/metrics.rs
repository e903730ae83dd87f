//! Prometheus metrics of a registry, in the text exposition format.
//!
//! Every metric object lives here, in the host, in one explicit
//! [`Registry`] per Verdant registry: no process-global recorder (a global
//! inside a library would be a separate copy per loaded version, and would
//! silently drop everything).
//!
//! What happens is counted where it happens: a transaction's result where
//! the registry records it (`Inner::finish`, the one place every attach,
//! reload and signal ends, a manifest error included), a contained library
//! panic where the host sees it (`Inner::count_library_panic`). What *is*
//! (the generation, retired versions, requests in flight) is read from the
//! registry at scrape time by a [`Collector`], so it can never be stale.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `verdant_reloads_total{result="success\|failure"}` | counter | transactions: attaches, reload calls, signals; a manifest that does not validate is a failure |
//! | `verdant_last_reload_successful` | gauge | 1 if the last one applied every loadable it selected, else 0 (1 before the first) |
//! | `verdant_last_reload_success_timestamp_seconds` | gauge | when the last successful one ended (0: never) |
//! | `verdant_reload_duration_seconds` | histogram | how long each took, manifest included |
//! | `verdant_generation` | gauge | the generation of the last transaction started |
//! | `verdant_requests_in_flight{loadable,version,generation}` | gauge | calls and requests still running on a retired version (see [`RetiredStatus::in_flight`](crate::RetiredStatus::in_flight)) |
//! | `verdant_retired_versions` | gauge | loaded versions that do not serve (replaced, removed, rolled back, or whose attach failed) and are still mapped |
//! | `verdant_retired_mapped_bytes` | gauge | the address space those libraries still take |
//! | `verdant_retained_versions` | gauge | versions retired for good (detached, nothing of theirs running) that stay mapped for the life of the process |
//! | `verdant_retained_resident_bytes` | gauge | the resident memory (RSS) of their mappings |
//! | `verdant_retained_file_bytes` | gauge | the space their private copies take on the private directory's filesystem (RAM on a tmpfs) |
//! | `verdant_library_panics_total{loadable}` | counter | library panics the host contained |
//! | `verdant_sigpipe_ignored_total` | counter | SIGPIPEs this process raised itself (broken pipes), ignored |

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::registry::Inner;

/// The `Content-Type` of [`Verdant::metrics_text`](crate::Verdant::metrics_text):
/// the Prometheus text exposition format, version 0.0.4.
///
/// ```
/// use axum::http::header::CONTENT_TYPE;
/// async fn metrics(verdant: verdant::Verdant) -> impl axum::response::IntoResponse {
///     ([(CONTENT_TYPE, verdant::METRICS_CONTENT_TYPE)], verdant.metrics_text())
/// }
/// ```
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Upper bounds of the reload duration buckets, in seconds: a reload of an
/// unchanged build takes milliseconds, a real one tens to hundreds, an
/// attach hook may take up to its time limit (30 s by default).
const DURATION_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A registry's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    reloads: Family<Labels, Counter>,
    last_successful: Gauge<i64>,
    last_success_timestamp: Gauge<f64, AtomicU64>,
    reload_duration: Histogram,
    library_panics: Family<Labels, Counter>,
}

impl Metrics {
    /// The metrics of the registry `inner` refers to (a weak reference:
    /// the registry owns its metrics).
    pub(crate) fn new(inner: Weak<Inner>) -> Metrics {
        let mut registry = Registry::default();
        let reloads = Family::<Labels, Counter>::default();
        // Both series exist from the start, so a rate() or an alert on
        // failures works before the first failure.
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&vec![("result", result.to_owned())]);
        }
        registry.register(
            "verdant_reloads",
            "Reload transactions (attaches, reload calls, signals) by result; a manifest that does not validate is a failure",
            reloads.clone(),
        );
        let last_successful = Gauge::<i64>::default();
        last_successful.set(1);
        registry.register(
            "verdant_last_reload_successful",
            "Whether the last reload applied every loadable it selected (1) or not (0)",
            last_successful.clone(),
        );
        let last_success_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "verdant_last_reload_success_timestamp_seconds",
            "When the last successful reload ended, in seconds since the Unix epoch (0: none yet)",
            last_success_timestamp.clone(),
        );
        let reload_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "verdant_reload_duration_seconds",
            "How long reload transactions took, reading the manifest included",
            reload_duration.clone(),
        );
        let library_panics = Family::<Labels, Counter>::default();
        registry.register(
            "verdant_library_panics",
            "Panics in library code that the host contained, by loadable",
            library_panics.clone(),
        );
        registry.register_collector(Box::new(Current { inner }));
        Metrics { registry, reloads, last_successful, last_success_timestamp, reload_duration, library_panics }
    }

    /// Counts one finished transaction.
    pub(crate) fn reloaded(&self, success: bool, duration: Duration, finished_at: SystemTime) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
        self.last_successful.set(i64::from(success));
        if success {
            self.last_success_timestamp.set(crate::serialize::epoch_seconds(finished_at));
        }
        self.reload_duration.observe(duration.as_secs_f64());
    }

    /// Counts one contained panic of `loadable`'s library code.
    pub(crate) fn library_panic(&self, loadable: &str) {
        self.library_panics.get_or_create(&vec![("loadable", loadable.to_owned())]).inc();
    }

    /// Every metric, in the Prometheus text format ([`METRICS_CONTENT_TYPE`]).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            // Writing to a String fails only if an encoder reports an error,
            // which none of ours does; say so in the text rather than panic.
            tracing::error!(%error, "encoding the metrics failed");
            let _ = writeln!(text, "# verdant: encoding the metrics failed: {error}");
        }
        text
    }
}

/// What the registry's state is at scrape time ([`Inner::gauges`]).
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub generation: u64,
    /// `(loadable, package version, generation, in flight)` of every
    /// retired version that is still pinned or awaiting detach.
    pub in_flight: Vec<(String, String, u64, usize)>,
    pub retired_versions: u64,
    pub retired_mapped_bytes: u64,
    /// What versions retired for good keep (`Status::retained`).
    pub retained: crate::status::RetainedSummary,
    pub sigpipe_ignored: u64,
}

/// The collector of what is read at scrape time.
#[derive(Debug)]
struct Current {
    inner: Weak<Inner>,
}

impl Collector for Current {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = self.inner.upgrade().map(|inner| inner.gauges()).unwrap_or_default();
        let generation = ConstGauge::new(gauges.generation);
        generation.encode(encoder.encode_descriptor(
            "verdant_generation",
            "The generation of the last reload transaction started (0 before the first attach).",
            None,
            MetricType::Gauge,
        )?)?;
        let mut in_flight = encoder.encode_descriptor(
            "verdant_requests_in_flight",
            "Calls and HTTP requests still running on a retired version, which detaches once they are done.",
            None,
            MetricType::Gauge,
        )?;
        for (loadable, version, generation, count) in &gauges.in_flight {
            let labels: Labels = vec![
                ("loadable", loadable.clone()),
                ("version", version.clone()),
                ("generation", generation.to_string()),
            ];
            ConstGauge::new(*count as u64).encode(in_flight.encode_family(&labels)?)?;
        }
        ConstGauge::new(gauges.retired_versions).encode(encoder.encode_descriptor(
            "verdant_retired_versions",
            "Loaded library versions that do not serve (replaced, removed, rolled back, or whose attach failed) and are still mapped.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(gauges.retired_mapped_bytes).encode(encoder.encode_descriptor(
            "verdant_retired_mapped_bytes",
            "Address space still mapped by library versions that do not serve.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(gauges.retained.versions).encode(encoder.encode_descriptor(
            "verdant_retained_versions",
            "Library versions retired for good (detached, nothing of theirs running) that stay mapped for the life of the process.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(gauges.retained.rss_bytes).encode(encoder.encode_descriptor(
            "verdant_retained_resident_bytes",
            "Resident memory (RSS) of the mappings of versions retired for good.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(gauges.retained.file_bytes).encode(encoder.encode_descriptor(
            "verdant_retained_file_bytes",
            "Space the private copies of versions retired for good take on the private directory's filesystem (RAM on a tmpfs).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(gauges.sigpipe_ignored).encode(encoder.encode_descriptor(
            "verdant_sigpipe_ignored",
            "SIGPIPEs this process raised itself (broken pipes) or that name no sender, ignored.",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}
