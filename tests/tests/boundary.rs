//! The dlopen boundary, against the real `edge-v1`/`edge-v2` libraries
//! (`fixture_api::edge`): every way library code can touch it
//! (docs/boundary.md §1, §2, §7).
//!
//! - a panic in a method, sync or async, is contained in the library and
//!   delivered as `Err(Panicked)` when the method returns a `Result`
//!   that can hold one, or as a host panic carrying a `LibraryPanic`
//!   otherwise; the version keeps serving;
//! - library code may use tokio timers, I/O, `verdant_loadable::spawn` and plain
//!   `tokio::spawn`, on a multi-thread and on a current-thread runtime;
//! - library `tracing` events and `log` records reach the host's *current*
//!   subscriber and logger, and nest in the host's spans;
//! - an async call keeps its version until it completes or is dropped;
//! - `verdant_loadable::spawn` tasks outlive the detach of their version, unless the
//!   detach hook aborts them.
//!
//! Allocation across the boundary is covered by `allocator.rs`, which needs
//! a `#[global_allocator]` of its own.
//!
//! No test asserts on a duration. Waits for effects on background threads
//! use `verdant_tests::eventually`; the only sleeps are the fixture's own.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Waker};

use fixture_api::edge::{Edge, EdgeContext, EdgeError, EdgeShared};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use verdant::boundary::LibraryPanic;
use verdant::{DetachState, Handle, Panicked, RetiredStatus, Verdant};
use verdant_tests::{eventually, poll_until, Artifact};

/// A registry serving `edge` from `artifact` (which holds edge-v1),
/// attached: the registry, the fixture's shared counters and a handle.
/// Built and attached on the calling thread, so inside the caller's tokio
/// runtime when there is one (library code then runs in that runtime).
fn attach_edge(artifact: &Artifact) -> (Verdant, Arc<EdgeShared>, Handle<dyn Edge>) {
    let context = EdgeContext::default();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context).add::<dyn Edge>("edge", artifact.path()).build().expect("build");
    let report = verdant.attach().expect("attach edge-v1");
    assert_eq!(report.generation, 1, "{report}");
    let edge = verdant.handle::<dyn Edge>("edge").expect("handle");
    assert_eq!(edge.get().expect("get").version(), 1);
    (verdant, shared, edge)
}

/// The retired edge-v1 (package version 0.1.0) in the registry's status.
fn retired_v1(verdant: &Verdant) -> RetiredStatus {
    let status = verdant.status();
    status.loadables[0]
        .retired
        .iter()
        .find(|retired| retired.version.package_version == "0.1.0")
        .cloned()
        .unwrap_or_else(|| panic!("edge-v1 is not retired:\n{status}"))
}

/// Checks that `error` is the `Panicked` error of a `panic!("{message}")` in
/// `method` of the edge fixture.
fn assert_panicked(error: EdgeError, method: &str, message: &str) {
    match error {
        EdgeError::Panicked(Panicked { loadable, method: m, message: text, location, .. }) => {
            assert_eq!(loadable, "edge");
            assert_eq!(m, method);
            assert_eq!(text, message);
            let location = location.expect("the library's panic hook recorded where it panicked");
            assert!(location.contains("edge.rs:"), "the location names the fixture's source file: {location}");
        }
        other => panic!("expected EdgeError::Panicked, got {other:?}"),
    }
}

/// The message of a host panic re-raised from a library panic.
fn library_panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<LibraryPanic>() {
        Ok(panic) => panic.0.message().to_owned(),
        Err(other) => panic!(
            "the payload is not a verdant::boundary::LibraryPanic (a &str? {:?}, a String? {:?})",
            other.downcast_ref::<&str>(),
            other.downcast_ref::<String>()
        ),
    }
}

#[test]
fn a_panic_in_a_sync_result_method_is_returned_as_an_error() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);
    for message in ["out of stock", "out of stock again"] {
        let error = edge.get().unwrap().fail(message).expect_err("fail always panics");
        assert_panicked(error, "fail", message);
        // The same version keeps serving: nothing was retired or detached.
        assert_eq!(edge.get().unwrap().version(), 1);
    }
    assert!(verdant.status().loadables[0].retired.is_empty(), "{}", verdant.status());
    assert!(shared.detached().is_empty());
}

#[test]
fn a_panic_in_a_sync_plain_method_becomes_a_host_panic() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);
    for message in ["kaboom", "kaboom again"] {
        let payload = std::panic::catch_unwind(|| edge.get().unwrap().explode(message))
            .expect_err("explode always panics, and the panic reaches the host as a host panic");
        assert_eq!(library_panic_message(payload), message);
        // The process is still here, and so is the version.
        assert_eq!(edge.get().unwrap().version(), 1);
    }
    assert!(verdant.status().loadables[0].retired.is_empty(), "{}", verdant.status());
    assert!(shared.detached().is_empty());
}

#[tokio::test]
async fn a_panic_in_an_async_result_method_is_returned_as_an_error() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);
    for message in ["sold out later", "sold out later again"] {
        // The panic happens in a poll after a timer, not when the future is made.
        let error = edge.get().unwrap().fail_later(message.to_owned()).await.expect_err("fail_later always panics");
        assert_panicked(error, "fail_later", message);
        assert_eq!(edge.get().unwrap().nap(1).await, 1, "the version keeps serving async calls");
    }
    assert!(verdant.status().loadables[0].retired.is_empty(), "{}", verdant.status());
    assert!(shared.detached().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_async_plain_method_panics_the_host_task() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);
    for message in ["exploded later", "exploded later again"] {
        let task = {
            let edge = edge.clone();
            let message = message.to_owned();
            tokio::spawn(async move {
                let pinned = edge.get().unwrap();
                let version = pinned.explode_later(message).await;
                version
            })
        };
        let error = task.await.expect_err("explode_later always panics");
        assert!(error.is_panic(), "the task ended by a panic, not by a cancel: {error}");
        assert_eq!(library_panic_message(error.into_panic()), message);
        assert_eq!(edge.get().unwrap().nap(1).await, 1, "the version keeps serving async calls");
    }
    assert!(verdant.status().loadables[0].retired.is_empty(), "{}", verdant.status());
    assert!(shared.detached().is_empty());
}

/// A loopback TCP server that accepts one connection, writes one line and
/// closes it; returns its address.
fn one_line_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = listener.local_addr().expect("local address").to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept the library's connection");
        stream.write_all(b"hello from the host\n").expect("write the line");
    });
    (address, server)
}

/// Every tokio-using method of the edge fixture, awaited from wherever this
/// future is polled.
async fn use_tokio_in_the_library(edge: Handle<dyn Edge>) {
    assert_eq!(edge.get().unwrap().nap(5).await, 1, "nap: a tokio timer in an async method");

    let (address, server) = one_line_server();
    let line = edge.get().unwrap().fetch_line(address).await;
    assert_eq!(line.expect("fetch_line: tokio TCP in an async method"), "hello from the host");
    server.join().expect("the server thread");

    let answer = edge.get().unwrap().spawn_timer(5).await;
    assert_eq!(answer.expect("spawn_timer: a timer in a verdant_loadable::spawn task"), "slept 5 ms in a task");

    let doubled = edge.get().unwrap().spawn_plain(21).await;
    assert_eq!(doubled.expect("spawn_plain: a plain tokio::spawn task"), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_code_uses_tokio_on_a_multi_thread_runtime() {
    let artifact = Artifact::new("edge-v1");
    let (_verdant, _shared, edge) = attach_edge(&artifact);
    // Polled by the test's own thread (`block_on`)...
    use_tokio_in_the_library(edge.clone()).await;
    // ...and by a runtime worker thread, which never ran library code before.
    tokio::spawn(use_tokio_in_the_library(edge.clone())).await.expect("the same calls on a worker thread");
    // Nothing panicked in the library along the way.
    assert_eq!(edge.get().unwrap().version(), 1);
}

#[tokio::test]
async fn library_code_uses_tokio_on_a_current_thread_runtime() {
    let artifact = Artifact::new("edge-v1");
    let (_verdant, _shared, edge) = attach_edge(&artifact);
    use_tokio_in_the_library(edge.clone()).await;
    tokio::spawn(use_tokio_in_the_library(edge.clone())).await.expect("the same calls in a spawned task");
    assert_eq!(edge.get().unwrap().version(), 1);
}

/// An event as the host's subscriber saw it.
#[derive(Debug, Clone)]
struct SeenEvent {
    target: String,
    fields: BTreeMap<String, String>,
    /// The name of the span the event belongs to.
    span: Option<String>,
}

/// A span as the host's subscriber saw it when it was created.
#[derive(Debug, Clone, PartialEq)]
struct SeenSpan {
    name: String,
    parent: Option<String>,
}

/// What [`Recorder`] saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    events: Arc<Mutex<Vec<SeenEvent>>>,
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    closed: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn events(&self) -> Vec<SeenEvent> {
        self.events.lock().unwrap().clone()
    }

    fn spans(&self) -> Vec<SeenSpan> {
        self.spans.lock().unwrap().clone()
    }

    fn closed(&self) -> Vec<String> {
        self.closed.lock().unwrap().clone()
    }

    /// The events with target `edge` whose `word` field is `word`.
    fn edge_events_with(&self, word: &str) -> Vec<SeenEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.target == "edge" && e.fields.get("word").map(String::as_str) == Some(word))
            .collect()
    }
}

/// A layer that records every event (target, fields, span), every new
/// span (name, parent) and every closed span (name).
struct Recorder(Seen);

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("the registry knows a span it just created");
        let parent = span.parent().map(|parent| parent.name().to_owned());
        self.0.spans.lock().unwrap().push(SeenSpan { name: span.name().to_owned(), parent });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("the registry knows a span it closes");
        self.0.closed.lock().unwrap().push(span.name().to_owned());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event).map(|span| span.name().to_owned());
        let target = event.metadata().target().to_owned();
        self.0.events.lock().unwrap().push(SeenEvent { target, fields: fields.0, span });
    }
}

/// The fields of an event, as text.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

#[test]
fn library_tracing_events_reach_the_hosts_current_subscriber() {
    let artifact = Artifact::new("edge-v1");
    // Attached before any subscriber exists: the library cannot have copied
    // the host's dispatcher at attach; it must find it at each event.
    let (_verdant, _shared, edge) = attach_edge(&artifact);
    let seen = Seen::default();
    let subscriber = tracing_subscriber::registry().with(Recorder(seen.clone()));

    tracing::subscriber::with_default(subscriber, || {
        edge.get().unwrap().emit("alone");

        let host_span = tracing::info_span!("host_span");
        let _entered = host_span.enter();
        edge.get().unwrap().emit("nested");
        edge.get().unwrap().emit_in_span("deeper");
    });
    // Outside the scope the host has no subscriber: nothing more is seen.
    edge.get().unwrap().emit("unseen");

    let alone = seen.edge_events_with("alone");
    assert_eq!(alone.len(), 1, "one event with word=alone: {:?}", seen.events());
    assert_eq!(alone[0].fields.get("version").map(String::as_str), Some("1"), "{alone:?}");
    assert_eq!(alone[0].fields.get("message").map(String::as_str), Some("edge event"), "{alone:?}");
    assert_eq!(alone[0].span, None, "no span was entered: {alone:?}");

    let nested = seen.edge_events_with("nested");
    assert_eq!(nested.len(), 1, "one event with word=nested: {:?}", seen.events());
    assert_eq!(nested[0].fields.get("version").map(String::as_str), Some("1"), "{nested:?}");
    assert_eq!(nested[0].span.as_deref(), Some("host_span"), "the library event nests in the host's span");

    let deeper = seen.edge_events_with("deeper");
    assert_eq!(deeper.len(), 1, "one event with word=deeper: {:?}", seen.events());
    assert_eq!(deeper[0].fields.get("message").map(String::as_str), Some("edge event in span"), "{deeper:?}");
    assert_eq!(deeper[0].span.as_deref(), Some("edge_span"), "the event is inside the library's span");
    let edge_spans: Vec<SeenSpan> = seen.spans().into_iter().filter(|s| s.name == "edge_span").collect();
    assert_eq!(
        edge_spans,
        [SeenSpan { name: "edge_span".to_owned(), parent: Some("host_span".to_owned()) }],
        "the library's span became a host span, child of the host's span"
    );

    assert!(seen.edge_events_with("unseen").is_empty(), "{:?}", seen.events());
}

/// `(target, level, text)` of every record the host's logger got.
static LOG_RECORDS: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());

struct CaptureLog;

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let entry = (record.target().to_owned(), record.level(), record.args().to_string());
        LOG_RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }

    fn flush(&self) {}
}

#[test]
fn a_library_span_is_closed_by_the_subscriber_that_created_it() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _context = runtime.enter();
    let artifact = Artifact::new("edge-v1");
    let (_verdant, _shared, edge) = attach_edge(&artifact);
    let (first, second) = (Seen::default(), Seen::default());
    let first_dispatch = Dispatch::new(tracing_subscriber::registry().with(Recorder(first.clone())));
    let second_dispatch = Dispatch::new(tracing_subscriber::registry().with(Recorder(second.clone())));

    let pinned = edge.get().expect("get");
    let mut nap = pinned.nap_in_span(60_000);
    let mut poll = || nap.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())).is_pending();
    // The library creates and enters its span under the first subscriber...
    assert!(tracing::dispatcher::with_default(&first_dispatch, &mut poll), "the nap is pending");
    // ...and the future is dropped where the second one is current. The
    // second subscriber never saw the span: asked to enter or close it, it
    // would panic, inside the library's guard, and abort the process.
    tracing::dispatcher::with_default(&second_dispatch, || drop(nap));

    let names = |spans: Vec<SeenSpan>| spans.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(names(first.spans()), ["edge_nap"]);
    assert_eq!(first.closed(), ["edge_nap"], "the span is closed by the subscriber that created it");
    assert!(second.spans().is_empty() && second.closed().is_empty(), "the other subscriber heard of no span");
    assert_eq!(pinned.version(), 1, "the version keeps serving");
}

#[test]
fn library_log_records_reach_the_hosts_logger() {
    let artifact = Artifact::new("edge-v1");
    let (_verdant, _shared, edge) = attach_edge(&artifact);
    // Installed after the library attached: the library's logger forwards to
    // whatever the host's logger is at each record.
    log::set_boxed_logger(Box::new(CaptureLog)).expect("the first logger of this process");
    log::set_max_level(log::LevelFilter::Trace);

    edge.get().unwrap().emit("logged");

    let records = LOG_RECORDS.lock().unwrap().clone();
    let edge_records: Vec<_> = records.iter().filter(|(target, _, _)| target == "edge").collect();
    assert_eq!(
        edge_records,
        [&("edge".to_owned(), log::Level::Info, "log record: logged".to_owned())],
        "all records: {records:?}"
    );
}

#[tokio::test]
async fn a_pending_async_call_keeps_its_version_until_it_completes() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);

    // An async call on v1, started (its timer is registered) and pending.
    let pinned = edge.get().unwrap();
    let mut nap = pinned.nap(300);
    let mut cx = TaskContext::from_waker(Waker::noop());
    assert!(nap.as_mut().poll(&mut cx).is_pending(), "nap(300) does not finish in its first poll");

    artifact.install("edge-v2");
    verdant.reload(None).await.expect("reload to edge-v2");
    assert_eq!(edge.get().unwrap().version(), 2, "new calls go to v2");

    // Not polled since the reload, so certainly still pending: v1 is pinned.
    let v1 = retired_v1(&verdant);
    assert_eq!(v1.in_flight, 1, "the pending call pins v1:\n{}", verdant.status());
    assert_eq!(v1.detach, DetachState::Pending, "{}", verdant.status());
    assert!(shared.detached().is_empty(), "v1 was detached under a pending call: {:?}", shared.detached());

    assert_eq!(nap.await, 1, "the call finishes on the version it started on");
    drop(pinned);
    poll_until(&verdant, "v1 detached after its last call", || retired_v1(&verdant).detach == DetachState::Detached);
    assert_eq!(shared.detached(), [1]);
    assert_eq!(retired_v1(&verdant).in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_pending_async_call_releases_its_version() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);

    // A call on v1 that would not end for an hour, polled in a task.
    let pinned = edge.get().unwrap();
    let (started, has_started) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = started.send(());
        let version = pinned.nap(3_600_000).await;
        version
    });
    has_started.await.expect("the task started");

    artifact.install("edge-v2");
    verdant.reload(None).await.expect("reload to edge-v2");
    let v1 = retired_v1(&verdant);
    assert_eq!(v1.in_flight, 1, "the pending call pins v1:\n{}", verdant.status());
    assert_eq!(v1.detach, DetachState::Pending, "{}", verdant.status());

    // Dropping the call (with the task) lets v1 go long before the hour is up.
    task.abort();
    let ended = task.await.expect_err("the task was aborted");
    assert!(ended.is_cancelled(), "{ended}");
    poll_until(&verdant, "v1 detached after its call was dropped", || {
        retired_v1(&verdant).detach == DetachState::Detached
    });
    assert_eq!(shared.detached(), [1]);
    assert_eq!(retired_v1(&verdant).in_flight, 0);
    assert_eq!(edge.get().unwrap().version(), 2);
}

// A current-thread runtime: the errand task runs only when this test's
// thread yields, so "v1 detached before its errand ran" is certain, not a
// race.
#[tokio::test]
async fn a_task_outlives_the_detach_of_its_version() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);

    edge.get().unwrap().start_errand(100);
    assert_eq!(edge.get().unwrap().tasks_running(), 1, "v1 knows its errand");

    // Blocking reload: this thread does not yield, the errand does not run.
    artifact.install("edge-v2");
    verdant.reload_blocking(None).expect("reload to edge-v2");
    poll_until(&verdant, "v1 detached (no call pins it)", || shared.detached() == [1]);
    assert!(shared.finished().is_empty(), "the errand has not run yet");
    // The pending errand keeps v1's library loaded after its detach: the
    // status can still ask that library copy for its tasks.
    assert_eq!(retired_v1(&verdant).tasks_running, 1, "{}", verdant.status());
    assert_eq!(edge.get().unwrap().tasks_running(), 0, "v2 has tasks of its own, none");

    // Let the runtime run the errand while another thread waits for it.
    let finished = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || eventually(|| shared.finished() == [1])).await.unwrap()
    };
    assert!(finished, "v1's errand finished after v1 was detached: {:?}", shared.finished());
    assert_eq!(retired_v1(&verdant).detach, DetachState::Detached);
    poll_until(&verdant, "v1's finished errand leaves its task set", || retired_v1(&verdant).tasks_running == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_hook_can_abort_the_tasks_of_its_version() {
    let artifact = Artifact::new("edge-v1");
    let (verdant, shared, edge) = attach_edge(&artifact);
    shared.abort_tasks_on_detach.store(true, Ordering::SeqCst);

    edge.get().unwrap().start_ticker(5);
    assert_eq!(edge.get().unwrap().tasks_running(), 1, "v1 knows its ticker");
    // The ticker really runs (on a worker thread): its stop is meaningful.
    poll_until(&verdant, "the ticker ticks twice", || shared.ticks.load(Ordering::SeqCst) >= 2);

    artifact.install("edge-v2");
    verdant.reload(None).await.expect("reload to edge-v2");
    poll_until(&verdant, "v1 detached", || shared.detached() == [1]);
    assert_eq!(shared.aborted.load(Ordering::SeqCst), 1, "v1's detach hook aborted its one task");
    poll_until(&verdant, "v1's aborted ticker ended", || retired_v1(&verdant).tasks_running == 0);

    // Stopped: two reads 50 ms apart (ten ticker periods) agree.
    let stopped = eventually(|| {
        let before = shared.ticks.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(50));
        before == shared.ticks.load(Ordering::SeqCst)
    });
    assert!(stopped, "the ticker kept ticking after its version aborted it: {}", shared.ticks.load(Ordering::SeqCst));
    assert_eq!(edge.get().unwrap().tasks_running(), 0, "v2 started no task");
}
