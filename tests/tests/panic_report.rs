//! One report per library panic (issue 10 §4): every panic of library code
//! reaches the registry's `on_panic` callback exactly once, with the
//! loadable, its version, where it happened, the message and the library's
//! location, whichever way it was caught: a method with or without a
//! `Result`, sync or `async`, a request handler, a response body in the
//! middle of a stream, the attach and detach hooks, and a thread the library
//! started outside every guard. The demo process (`demo-app`) shows the
//! same on its stderr: one line per panic, nothing printed by the library's
//! own panic hook.
//!
//! No test asserts on a duration; waits for background effects use
//! `verdant_tests::eventually`, and network steps are bounded by hang guards.

use std::sync::{Arc, Mutex};

use fixture_api::edge::{Edge, EdgeContext, EdgeError};
use fixture_api::{FixtureContext, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use verdant::boundary::LibraryPanic;
use verdant::{Handle, PanicReport, Verdant};
use verdant_tests::client::{get, guard, serve};
use verdant_tests::demo_app::DemoApp;
use verdant_tests::{eventually, Artifact};

/// The reports a registry's `on_panic` callback received, in order.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<PanicReport>>>);

impl Reports {
    fn callback(&self) -> impl Fn(&PanicReport) + Send + Sync + 'static {
        let reports = self.0.clone();
        move |report: &PanicReport| reports.lock().unwrap_or_else(|e| e.into_inner()).push(report.clone())
    }

    fn all(&self) -> Vec<PanicReport> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The only report since the last call, checked to be the only one.
    fn take_one(&self, what: &str) -> PanicReport {
        let mut reports = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let taken: Vec<PanicReport> = reports.drain(..).collect();
        assert_eq!(taken.len(), 1, "{what}: exactly one report per panic, got {taken:#?}");
        taken.into_iter().next().unwrap_or_else(|| unreachable!())
    }
}

/// A registry serving edge-v1 as `edge`, attached, whose panic reports land
/// in the returned [`Reports`].
fn edge(artifact: &Artifact) -> (Verdant, Handle<dyn Edge>, Reports) {
    let reports = Reports::default();
    let verdant = Verdant::builder(EdgeContext::default())
        .on_panic(reports.callback())
        .add::<dyn Edge>("edge", artifact.path())
        .build()
        .expect("build");
    verdant.attach().expect("attach edge-v1");
    let edge = verdant.handle::<dyn Edge>("edge").expect("handle");
    (verdant, edge, reports)
}

/// Checks the fields every report of edge-v1 carries.
fn assert_edge_report(report: &PanicReport, site: &str, message: &str) {
    assert_eq!(report.loadable, "edge", "{report:#?}");
    assert_eq!(report.version.package, "fixture-edge-v1", "{report:#?}");
    assert_eq!(report.version.package_version, "0.1.0", "{report:#?}");
    assert_eq!(report.version.generation, 1, "{report:#?}");
    assert_eq!(report.site, site, "{report:#?}");
    assert_eq!(report.message, message, "{report:#?}");
    let location = report.location.as_deref().unwrap_or_else(|| panic!("the library's location is known: {report:#?}"));
    assert!(location.contains("edge.rs:"), "the location is the fixture's source line: {location}");
}

/// Counts the host panic hook's calls for re-raised library panics while
/// it is installed (other panics go to the previous hook).
fn count_host_hook_calls_for_library_panics() -> Arc<Mutex<usize>> {
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<LibraryPanic>().is_some() {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        } else {
            previous(info);
        }
    }));
    count
}

#[test]
fn a_method_panic_is_reported_once_whether_it_is_returned_or_re_raised() {
    let artifact = Artifact::new("edge-v1");
    let (_verdant, edge, reports) = edge(&artifact);
    let host_hook = count_host_hook_calls_for_library_panics();

    // A `Result` method: the caller gets the error, the operator one report.
    let error = edge.get().unwrap().fail("out of stock").expect_err("fail always panics");
    assert!(matches!(error, EdgeError::Panicked(_)), "{error:?}");
    assert_edge_report(&reports.take_one("fail"), "fail", "out of stock");

    // No `Result`: re-raised in the host, which can catch it; still one
    // report, and the host's panic hook does not print it a second time.
    let payload = std::panic::catch_unwind(|| edge.get().unwrap().explode("kaboom")).expect_err("explode panics");
    let library = payload.downcast_ref::<LibraryPanic>().expect("the payload is a LibraryPanic");
    assert!(library.to_string().starts_with("a loadable library panicked at "), "{library}");
    assert!(library.to_string().ends_with(": kaboom"), "its Display has the message: {library}");
    assert_edge_report(&reports.take_one("explode"), "explode", "kaboom");
    assert_eq!(*host_hook.lock().unwrap_or_else(|e| e.into_inner()), 0, "a reported panic skips the host's hook");

    // The version keeps serving, and nothing else was reported.
    assert_eq!(edge.get().unwrap().version(), 1);
    assert!(reports.all().is_empty(), "{:#?}", reports.all());
}

#[tokio::test]
async fn an_async_method_panic_is_reported_once() {
    let artifact = Artifact::new("edge-v1");
    let (_verdant, edge, reports) = edge(&artifact);
    let error = edge.get().unwrap().fail_later("sold out later".to_owned()).await.expect_err("fail_later panics");
    assert!(matches!(error, EdgeError::Panicked(_)), "{error:?}");
    assert_edge_report(&reports.take_one("fail_later"), "fail_later", "sold out later");
}

/// The ways a host serves a library router over HTTP, each of which must
/// report a library panic once, naming the request as the client sent it
/// (mount included).
#[derive(Debug, Clone, Copy)]
enum Serving {
    /// `verdant::axum::mount`: the mount travels in the request's extensions.
    Mount,
    /// `Pipeline::routes`: the library router routed again by axum.
    PipelineRoutes,
    /// `Pipeline::library_routes`: the library router's service called
    /// directly, the mount stored in it.
    PipelineLibraryRoutes,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_panics_are_reported_once_with_the_request() {
    for serving in [Serving::Mount, Serving::PipelineRoutes, Serving::PipelineLibraryRoutes] {
        http_panics_are_reported_once_through(serving).await;
    }
}

async fn http_panics_are_reported_once_through(serving: Serving) {
    let artifact = Artifact::new("edge-v1");
    let reports = Reports::default();
    let verdant = Verdant::builder(EdgeContext::default())
        .on_panic(reports.callback())
        .add::<dyn Edge>("edge", artifact.path())
        .mount("edge", "/edge")
        .build()
        .expect("build");
    verdant.attach().expect("attach edge-v1");
    let edge = verdant.handle::<dyn Edge>("edge").expect("handle");
    let app = match serving {
        Serving::Mount => verdant::axum::mount(edge.clone(), |edge| edge.router()).expect("mount"),
        Serving::PipelineRoutes => axum::Router::new()
            .fallback_service(verdant::axum::pipeline(&verdant).routes::<dyn Edge>(|edge| edge.router())),
        Serving::PipelineLibraryRoutes => axum::Router::new()
            .fallback_service(verdant::axum::pipeline(&verdant).library_routes::<dyn Edge>(|edge| edge.router())),
    };
    let addr = serve(app).await;

    // A handler: 500, one report naming the request the client sent.
    let answer = get(addr, "/edge/panic", &[]).await;
    assert_eq!(answer.status, 500, "{serving:?}: {answer:?}");
    assert_edge_report(
        &reports.take_one("GET /edge/panic"),
        "GET /edge/panic",
        "the edge handler panicked, as designed",
    );
    // A handler that panics after a timer: in a later poll of the future.
    let answer = get(addr, "/edge/panic-later", &[]).await;
    assert_eq!(answer.status, 500, "{serving:?}: {answer:?}");
    let report = reports.take_one("GET /edge/panic-later");
    assert_eq!(report.site, "GET /edge/panic-later", "{serving:?}: {report:#?}");

    // A streaming body that panics after two chunks: the response is
    // aborted (hyper may not even have sent the head), the panic reported
    // once by the library-side guard.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request =
        "GET /edge/stream?chunks=5&delay_ms=20&panic_after=2 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut answer = Vec::new();
    let _ = guard("reading the aborted answer", stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.ends_with("0\r\n\r\n"), "the body must not end cleanly after a panic: {answer}");
    assert!(eventually(|| !reports.all().is_empty()), "the body's panic was reported");
    let report = reports.take_one("the body");
    assert!(report.site.starts_with("response body of GET /edge/stream"), "{serving:?}: {report:#?}");
    assert_eq!(report.message, "the edge body panicked after 2 chunks, as designed", "{report:#?}");
    assert!(report.location.as_deref().is_some_and(|at| at.contains("edge.rs:")), "{report:#?}");

    // Still serving, and nothing reported twice.
    assert_eq!(get(addr, "/edge/version", &[]).await.body, "edge 1");
    assert!(reports.all().is_empty(), "{:#?}", reports.all());
}

#[test]
fn a_panic_in_a_thread_the_library_started_is_reported_once() {
    let artifact = Artifact::new("edge-v1");
    let (_verdant, edge, reports) = edge(&artifact);
    assert!(edge.get().unwrap().panic_in_thread("a thread of its own".to_owned()), "the thread ended by a panic");
    let report = reports.take_one("the library's thread");
    assert!(report.site.starts_with("outside any guard"), "{report:#?}");
    assert_eq!(report.message, "a thread of its own", "{report:#?}");
    assert!(report.location.as_deref().is_some_and(|at| at.contains("edge.rs:")), "{report:#?}");
}

#[test]
fn attach_and_detach_panics_are_reported_once() {
    let reports = Reports::default();
    let attach_panic = Artifact::new("attach-panic");
    let detach_panic = Artifact::new("detach-panic");
    let verdant = Verdant::builder(FixtureContext::new())
        .strict(false)
        .on_panic(reports.callback())
        .add::<dyn Probe>("attaching", attach_panic.path())
        .add::<dyn Probe>("detaching", detach_panic.path())
        .build()
        .expect("build");
    let report = verdant.attach().expect("outside strict mode a failed attach is reported, not returned");
    assert_eq!(report.failures().count(), 1, "{report}");

    let attach = reports.take_one("the attach hook");
    assert_eq!((attach.loadable.as_str(), attach.site.as_str()), ("attaching", "attach"), "{attach:#?}");
    assert_eq!(attach.version.package, "fixture-attach-panic", "{attach:#?}");
    assert_eq!(attach.message, "fixture attach panics on purpose", "{attach:#?}");
    assert!(attach.location.is_some(), "{attach:#?}");

    // Revoking detaches `detaching` on the retirement thread, whose hook panics.
    verdant.revoke();
    assert!(eventually(|| !reports.all().is_empty()), "the detach panic was reported");
    let detach = reports.take_one("the detach hook");
    assert_eq!((detach.loadable.as_str(), detach.site.as_str()), ("detaching", "detach"), "{detach:#?}");
    assert_eq!(detach.version.package, "fixture-detach-panic", "{detach:#?}");
    assert_eq!(detach.message, "fixture detach panics on purpose", "{detach:#?}");
}

/// The lines of `stderr` that report the `boom` panic, and the other
/// evidence a panic printed more than once would leave.
fn boom_reports(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|line| line.contains("library panic:") && line.contains("loadable=shop")).collect()
}

#[test]
fn the_demo_reports_a_library_panic_once_on_stderr() {
    let demo = DemoApp::start(&[("RUST_BACKTRACE", "0")]);
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let mut boom = agent.get(&format!("{}/shop/quote/boom", demo.base)).call().expect("GET /shop/quote/boom");
    assert_eq!(boom.status().as_u16(), 500);
    let body = boom.body_mut().read_to_string().expect("the 500's body");
    assert!(body.contains("loadable `shop`"), "{body}");
    assert!(eventually(|| !boom_reports(&demo.stderr()).is_empty()), "the panic was reported:\n{}", demo.stderr());
    let (status, stderr) = demo.terminate();
    assert!(status.success(), "the demo exits cleanly on SIGTERM: {status}\n{stderr}");

    let reports = boom_reports(&stderr);
    assert_eq!(reports.len(), 1, "one report line for one panic:\n{stderr}");
    let report = reports[0];
    for expected in [
        "ERROR",
        "shop-lib 0.1.0 was asked to quote `boom` and exploded, as designed",
        "package=shop-lib",
        "version=0.1.0",
        "generation=1",
        "site=GET /shop/quote/boom",
        "shop-lib/src/shop.rs:",
    ] {
        assert!(report.contains(expected), "the report has `{expected}`: {report}");
    }
    assert_eq!(
        stderr.matches("shop-lib/src/shop.rs:").count(),
        1,
        "the library's location appears in that line only:\n{stderr}"
    );
    assert!(!stderr.contains("panicked at"), "no panic hook printed the panic:\n{stderr}");
    assert!(!stderr.contains("thread '<unnamed>'"), "the library's default hook stays quiet:\n{stderr}");
    assert!(!stderr.contains("Box<dyn Any>"), "{stderr}");
}

#[test]
fn with_rust_backtrace_the_one_report_carries_the_library_backtrace() {
    let demo = DemoApp::start(&[("RUST_BACKTRACE", "1")]);
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let boom = agent.get(&format!("{}/shop/quote/boom", demo.base)).call().expect("GET /shop/quote/boom");
    assert_eq!(boom.status().as_u16(), 500);
    assert!(eventually(|| !boom_reports(&demo.stderr()).is_empty()), "the panic was reported:\n{}", demo.stderr());
    let (_, stderr) = demo.terminate();
    assert_eq!(boom_reports(&stderr).len(), 1, "{stderr}");
    let report = &stderr[stderr.find("library panic:").unwrap_or(0)..];
    assert!(report.contains("backtrace="), "the report carries a backtrace:\n{report}");
    assert!(report.contains("shop_lib"), "of the library's frames:\n{report}");
    assert!(!stderr.contains("thread '<unnamed>'"), "the library's default hook stays quiet:\n{stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
}
