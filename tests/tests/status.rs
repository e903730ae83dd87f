//! `status()` says what is true (issue 10 §5), with real fixture libraries:
//! requests and calls in flight (not pins), why a loadable is not serving,
//! no "previous version" that never existed, one log event per failed
//! reload, and versions that were rolled back or attached too late.

use std::error::Error as StdError;
use std::time::Duration;

use axum::http::StatusCode;
use fixture_api::edge::{Edge, EdgeContext};
use fixture_api::{FixtureContext, Probe};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use verdant::{DetachState, Error, HandleError, LateResult, Outcome, RetireReason, Step, Verdant};
use verdant_tests::client::{self, guard, next_chunk, Connection};
use verdant_tests::events::EventLog;
use verdant_tests::{eventually, poll_until, Artifact};

type TestResult = Result<(), Box<dyn StdError>>;

/// `(in flight, detach)` of every retired version of `name`.
fn retired(verdant: &Verdant, name: &str) -> Vec<(usize, DetachState)> {
    let status = verdant.status();
    let loadable = status.loadables.iter().find(|l| l.name == name).expect("registered");
    loadable.retired.iter().map(|r| (r.in_flight, r.detach.clone())).collect()
}

/// How a test serves the edge fixture's routes.
#[derive(Debug, Clone, Copy)]
enum Serving {
    Mount,
    Pipeline,
    /// The pipeline calling the library router's service directly.
    PipelineLibraryRoutes,
}

/// One streaming request through `verdant::axum::mount` or the pipeline is
/// one request in flight on the version it started on, from the reload
/// that retires that version until its body ends; then the version
/// detaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_streaming_request_is_one_in_flight() -> TestResult {
    for serving in [Serving::Mount, Serving::Pipeline, Serving::PipelineLibraryRoutes] {
        let artifact = Artifact::new("edge-v1");
        let verdant = Verdant::builder(EdgeContext::default())
            .add::<dyn Edge>("edge", artifact.path())
            .mount("edge", "/edge")
            .build()?;
        verdant.attach()?;
        let app = match serving {
            Serving::Mount => verdant::axum::mount(verdant.handle::<dyn Edge>("edge")?, |edge| edge.router())?,
            Serving::Pipeline => axum::Router::new()
                .fallback_service(verdant::axum::pipeline(&verdant).routes::<dyn Edge>(|edge| edge.router())),
            Serving::PipelineLibraryRoutes => axum::Router::new()
                .fallback_service(verdant::axum::pipeline(&verdant).library_routes::<dyn Edge>(|edge| edge.router())),
        };
        let addr = client::serve(app).await;

        let gate = TcpListener::bind("127.0.0.1:0").await?;
        let port = gate.local_addr()?.port();
        let mut streaming = Connection::open(addr).await;
        let response = streaming.start(&format!("/edge/stream?chunks=3&gate={port}"), &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{serving:?}");
        let (mut gate_line, _) = guard("the library connecting to the gate", gate.accept()).await?;
        let mut body = response.into_body();
        assert_eq!(next_chunk(&mut body).await.transpose()?.as_deref(), Some("chunk 0 of edge 1\n"));

        artifact.install("edge-v2");
        let report = verdant.reload(None).await?;
        assert!(matches!(report.outcome("edge"), Some(Outcome::Swapped { .. })), "{report}");
        assert_eq!(client::get(addr, "/edge/version", &[]).await.body, "edge 2", "{serving:?}");
        assert_eq!(
            retired(&verdant, "edge"),
            [(1, DetachState::Pending)],
            "{serving:?}: one request, one in flight\n{}",
            verdant.status()
        );
        assert!(verdant.status().to_string().contains(": 1 in flight,"), "{}", verdant.status());

        for i in 1..3 {
            gate_line.write_all(b"go\n").await?;
            assert_eq!(next_chunk(&mut body).await.transpose()?, Some(format!("chunk {i} of edge 1\n")));
        }
        drop(gate_line);
        assert!(next_chunk(&mut body).await.is_none());
        drop(body);
        let check = verdant.clone();
        let detached =
            tokio::task::spawn_blocking(move || eventually(|| retired(&check, "edge") == [(0, DetachState::Detached)]))
                .await?;
        assert!(detached, "{serving:?}: detached once the stream ended\n{}", verdant.status());
    }
    Ok(())
}

/// A call is one `Pinned`: two held pins of a retired version are two
/// calls in flight, and each one dropped is one less.
#[test]
fn each_pinned_call_is_one_in_flight() {
    let artifact = Artifact::new("good-v1");
    let (verdant, _shared, probe) = verdant_tests::attached(&artifact);
    let first = probe.get().expect("serving");
    let second = probe.get().expect("serving");
    artifact.install("good-v2");
    verdant.reload_blocking(None).expect("reload");
    assert_eq!(probe.get().expect("serving").version(), 2);
    assert_eq!(retired(&verdant, "probe"), [(2, DetachState::Pending)]);
    drop(first);
    assert_eq!(retired(&verdant, "probe"), [(1, DetachState::Pending)]);
    drop(second);
    poll_until(&verdant, "the retired version detaches", || retired(&verdant, "probe") == [(0, DetachState::Detached)]);
}

/// After a failed attach, `get()` says that the attach failed and why, and
/// so does `status()`; once a build attaches, both forget it.
#[test]
fn after_a_failed_attach_get_says_why() {
    let artifact = Artifact::new("attach-error");
    let verdant = Verdant::builder(FixtureContext::new())
        .strict(false)
        .add::<dyn Probe>("probe", artifact.path())
        .build()
        .unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert!(matches!(probe.get(), Err(HandleError::NotAttached { .. })), "nothing tried yet");

    let report = verdant.attach().expect("not strict");
    assert!(!report.is_success());
    let error = probe.get().expect_err("not serving");
    let message = error.to_string();
    println!("{message}");
    let HandleError::AttachFailed { name, reason } = &error else { panic!("expected AttachFailed, got {error:?}") };
    assert_eq!(name, "probe");
    assert!(reason.starts_with("transaction #1 failed at step `attach` ("), "{reason}");
    assert!(reason.contains("the attach hook returned an error: fixture refuses to attach: no database"), "{reason}");
    assert!(!message.contains("call Verdant::attach() first"), "{message}");

    let status = verdant.status();
    let failure = status.loadables[0].failure.as_ref().expect("a failure in status()");
    assert_eq!((failure.generation, failure.error.step, failure.own), (1, Step::Attach, true));
    assert!(
        status.to_string().contains("newest build not serving: transaction #1 failed at step `attach`"),
        "{status}"
    );

    artifact.install("good-v1");
    assert!(verdant.attach().expect("attaches now").is_success());
    assert_eq!(probe.get().expect("serving").version(), 1);
    assert!(verdant.status().loadables[0].failure.is_none(), "{}", verdant.status());
}

/// A failed first attach or reload says the loadable is not serving: there
/// is no previous version to keep.
#[test]
fn a_failed_first_reload_claims_no_previous_version() {
    let artifact = Artifact::new("attach-error");
    let verdant = Verdant::builder(FixtureContext::new())
        .strict(true)
        .add::<dyn Probe>("probe", artifact.path())
        .build()
        .unwrap();
    for attempt in 0..2 {
        let result = if attempt == 0 { verdant.attach() } else { verdant.reload_blocking(None) };
        let Err(Error::Reload(failure)) = result else { panic!("strict: expected a reload failure") };
        let message = failure.to_string();
        println!("{message}\n{}", failure.report);
        assert!(message.contains("`probe` is not serving"), "{message}");
        assert!(!message.contains("previous") && !message.contains("keep"), "{message}");
        let report = failure.report.to_string();
        assert!(report.contains("probe: FAILED at attach, not serving: "), "{report}");
        assert!(!report.contains("still serving"), "{report}");
        let last = verdant.status().last_reload.expect("recorded");
        assert!(!last.success);
        assert!(last.summary().contains("`probe` at step `attach`"), "{}", last.summary());
    }
}

/// A group member that attached while another failed is rolled back: the
/// report says so and `status()` lists the discarded version, which never
/// served, until and after its detach. So does an attach hook that returns
/// after the time limit.
#[test]
fn rolled_back_and_late_versions_appear_in_status() {
    let (good, bad) = (Artifact::new("good-v1"), Artifact::new("good-v1"));
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context)
        .strict(false)
        .attach_timeout(Duration::from_millis(200))
        .add::<dyn Probe>("good", good.path())
        .add::<dyn Probe>("bad", bad.path())
        .group("pair", ["good", "bad"])
        .build()
        .unwrap();
    assert!(verdant.attach().unwrap().is_success());

    good.install("good-v2");
    bad.install("attach-error");
    let report = verdant.reload_blocking(None).expect("not strict");
    let Some(Outcome::RolledBack { discarded }) = report.outcome("good") else { panic!("{report}") };
    assert_eq!(discarded.package_version, "0.2.0");
    poll_until(&verdant, "the rolled-back version detaches", || {
        let status = verdant.status();
        let good = &status.loadables[0];
        good.retired.len() == 1 && good.retired[0].detach == DetachState::Detached
    });
    let status = verdant.status();
    let good_status = &status.loadables[0];
    assert_eq!(good_status.current.as_ref().map(|v| v.package_version.as_str()), Some("0.1.0"), "{status}");
    let rolled_back = &good_status.retired[0];
    assert_eq!((rolled_back.reason, rolled_back.version.package_version.as_str()), (RetireReason::RolledBack, "0.2.0"));
    let failure = good_status.failure.as_ref().expect("not applied: its group failed");
    assert!(!failure.own);
    assert_eq!((failure.error.loadable.as_str(), failure.error.step), ("bad", Step::Attach));
    assert!(status.to_string().contains("rolled back fixture-good-v2 0.2.0"), "{status}");

    // An attach hook held at the gate past the time limit, released later.
    bad.install("good-v3");
    shared.attach_gate.close();
    let report = verdant.reload_blocking(None).expect("not strict");
    assert!(report.to_string().contains("did not return within"), "{report}");
    assert_eq!(verdant.status().stuck_attaches.len(), 1);
    shared.attach_gate.open();
    poll_until(&verdant, "the late attach is reported", || verdant.status().late_attaches.len() == 1);
    let status = verdant.status();
    assert!(status.stuck_attaches.is_empty(), "{status}");
    let late = &status.late_attaches[0];
    assert_eq!(late.library, "fixture-good-v2 0.2.0", "good is first in the group and the one held: {late:?}");
    assert_eq!((late.loadable.as_str(), &late.result), ("good", &LateResult::Detached));
    assert!(status.to_string().contains("late attach of good (fixture-good-v2 0.2.0)"), "{status}");
}

/// A failed reload is logged once: one ERROR event per failed loadable
/// with its step and cause, then the report at INFO without the cause
/// again, and no WARN; a successful one is one INFO event.
#[test]
fn a_failed_reload_is_logged_once() {
    // Reloads run on the registry's worker thread: only a global subscriber
    // sees them.
    let events = EventLog::install();

    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new())
        .strict(false)
        .add::<dyn Probe>("logged-once", artifact.path())
        .build()
        .unwrap();
    verdant.attach().unwrap();
    let about = |level: tracing::Level| events.matching(level, "logged-once");
    assert_eq!(
        about(tracing::Level::INFO).iter().filter(|e| e.contains("attach #1")).count(),
        1,
        "{:#?}",
        events.all()
    );

    artifact.install("attach-error");
    let report = verdant.reload_blocking(None).expect("not strict");
    assert!(!report.is_success());
    let errors = about(tracing::Level::ERROR);
    assert_eq!(errors.len(), 1, "one ERROR for the failed reload: {errors:#?}");
    assert!(errors[0].contains("step=attach") && errors[0].contains("no database"), "{errors:#?}");
    assert!(errors[0].contains("fixture-good-v1 0.1.0 (generation 1"), "says what keeps serving: {errors:#?}");
    let overview = about(tracing::Level::INFO).into_iter().filter(|e| e.contains("reload #2")).collect::<Vec<_>>();
    assert_eq!(overview.len(), 1, "the report, once: {overview:#?}");
    assert!(overview[0].contains("FAILED at attach, still serving"), "{overview:#?}");
    let warnings = about(tracing::Level::WARN);
    assert!(warnings.is_empty(), "nothing else about it: {warnings:#?}");
    let causes = events.all().into_iter().filter(|e| e.contains("no database")).count();
    assert_eq!(causes, 1, "the cause appears once in the whole log: {:#?}", events.all());
}
