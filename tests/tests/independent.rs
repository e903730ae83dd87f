//! One bad loadable does not take the others down: every loadable is its
//! own unit in `attach()` and in every reload, unless it is in a group,
//! which is all-or-nothing. Strict mode decides only what the caller sees.

use std::sync::Arc;

use fixture_api::{FixtureContext, Probe, Shared};
use verdant::{Error, HandleError, LoadError, Outcome, ReloadFailure, ReloadReport, RetireReason, Step, Verdant};
use verdant_tests::events::{EventLog, LoggedEvent};
use verdant_tests::{eventually, Artifact};

/// Two loadables: `healthy` (good-v1) and `missing`, whose file is not
/// there (it appears when the test installs a build into `missing`).
/// Nothing attached yet.
struct HealthyAndMissing {
    healthy: Artifact,
    missing: Artifact,
    verdant: Verdant,
    shared: Arc<Shared>,
}

fn healthy_and_missing(strict: bool) -> HealthyAndMissing {
    let healthy = Artifact::new("good-v1");
    let missing = Artifact::new("good-v3");
    std::fs::remove_file(missing.path()).expect("remove the second artifact");
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context)
        .strict(strict)
        .add::<dyn Probe>("healthy", healthy.path())
        .add::<dyn Probe>("missing", missing.path())
        .build()
        .expect("build");
    HealthyAndMissing { healthy, missing, verdant, shared }
}

/// The version `name` serves, or why it serves none.
fn version(verdant: &Verdant, name: &str) -> Result<u32, HandleError> {
    Ok(verdant.handle::<dyn Probe>(name).expect("handle").get()?.version())
}

fn instance(verdant: &Verdant, name: &str) -> u64 {
    verdant.handle::<dyn Probe>(name).expect("handle").get().expect("serving").instance()
}

/// Asserts that `name` is not serving because the last transaction that
/// tried it failed reading its file, and that its handle says so.
fn assert_read_failed(verdant: &Verdant, name: &str) {
    match verdant.handle::<dyn Probe>(name).expect("handle").get() {
        Err(HandleError::AttachFailed { name: failed, reason }) => {
            assert_eq!(failed, name);
            assert!(reason.contains("failed at step `read`"), "{reason}");
        }
        Err(other) => panic!("expected AttachFailed for {name}, got {other}"),
        Ok(pinned) => panic!("expected AttachFailed for {name}, but it serves version {}", pinned.version()),
    }
}

fn steps(report: &ReloadReport, name: &str) -> Vec<Step> {
    let loadable = report.loadables.iter().find(|l| l.name == name).expect("in the report");
    loadable.steps.iter().map(|s| s.step).collect()
}

fn failed_names(report: &ReloadReport) -> Vec<(&str, Step)> {
    report.failures().map(|(name, error)| (name, error.step)).collect()
}

fn names(report: &ReloadReport) -> Vec<&str> {
    report.loadables.iter().map(|l| l.name.as_str()).collect()
}

/// Checks that `missing` failed at `Read` with "not found" and serves
/// nothing.
fn assert_missing_failed(report: &ReloadReport) {
    match report.outcome("missing") {
        Some(Outcome::Failed(error)) => {
            assert_eq!(error.step, Step::Read, "{report}");
            assert_eq!(error.loadable, "missing");
            match &error.kind {
                LoadError::Read { source } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
                other => panic!("expected LoadError::Read, got {other:?}"),
            }
        }
        other => panic!("expected missing Failed, got {other:?}\n{report}"),
    }
    assert_eq!(steps(report, "missing"), [Step::Read]);
    let missing = report.loadables.iter().find(|l| l.name == "missing").unwrap();
    assert!(missing.serving.is_none(), "{report}");
    let shown = report.to_string();
    assert!(shown.lines().any(|l| l.starts_with("  missing: FAILED at read, not serving: cannot read")), "{shown}");
}

fn expect_failure(result: Result<ReloadReport, Error>) -> ReloadFailure {
    match result {
        Err(Error::Reload(failure)) => *failure,
        other => panic!("expected Error::Reload (strict mode), got {other:?}"),
    }
}

#[test]
fn a_missing_loadable_does_not_keep_a_healthy_one_from_serving() {
    let t = healthy_and_missing(false);

    // Start-up: the healthy one attaches and serves; the missing one is
    // reported, not returned as an error.
    let report = t.verdant.attach().expect("not strict: the report, not an error");
    println!("{report}");
    assert_eq!(report.generation, 1);
    assert!(!report.is_success());
    assert_eq!(failed_names(&report), [("missing", Step::Read)]);
    match report.outcome("healthy") {
        Some(Outcome::Swapped { old: None, new }) => {
            assert_eq!(new.package_version, "0.1.0");
            assert_eq!(new.generation, 1);
        }
        other => panic!("expected healthy Swapped, got {other:?}\n{report}"),
    }
    assert_missing_failed(&report);
    assert_eq!(version(&t.verdant, "healthy"), Ok(1));
    assert_read_failed(&t.verdant, "missing");

    // The healthy one is rebuilt: a reload swaps it although the missing
    // one fails again.
    t.healthy.install("good-v2");
    let report = t.verdant.reload_blocking(None).expect("not strict");
    println!("{report}");
    assert_eq!(report.generation, 2);
    match report.outcome("healthy") {
        Some(Outcome::Swapped { old: Some(old), new }) => {
            assert_eq!((old.package_version.as_str(), old.generation), ("0.1.0", 1));
            assert_eq!((new.package_version.as_str(), new.generation), ("0.2.0", 2));
        }
        other => panic!("expected healthy Swapped, got {other:?}\n{report}"),
    }
    assert_missing_failed(&report);
    assert_eq!(failed_names(&report), [("missing", Step::Read)]);
    assert_eq!(version(&t.verdant, "healthy"), Ok(2));
    assert_read_failed(&t.verdant, "missing");
    assert_eq!(t.shared.attach_count(), 2);

    // The missing file appears: the next reload attaches it.
    t.missing.install("good-v3");
    let report = t.verdant.reload_blocking(None).expect("everything loads");
    println!("{report}");
    assert!(report.is_success(), "{report}");
    assert_eq!(report.failures().count(), 0);
    match report.outcome("healthy") {
        Some(Outcome::Unchanged { current }) => assert_eq!(current.generation, 2),
        other => panic!("expected healthy Unchanged, got {other:?}\n{report}"),
    }
    match report.outcome("missing") {
        Some(Outcome::Swapped { old: None, new }) => {
            assert_eq!((new.package_version.as_str(), new.generation), ("0.3.0", 3));
        }
        other => panic!("expected missing attached, got {other:?}\n{report}"),
    }
    assert_eq!(version(&t.verdant, "missing"), Ok(3));
    assert_eq!(version(&t.verdant, "healthy"), Ok(2));
    let status = t.verdant.status();
    assert_eq!(status.generation, 3);
    assert_eq!(status.loadables[1].current.as_ref().map(|c| c.generation), Some(3), "{status}");
}

#[test]
fn attach_tries_a_loadable_that_failed_to_attach_again() {
    let t = healthy_and_missing(false);
    let report = t.verdant.attach().expect("not strict");
    assert_missing_failed(&report);
    let healthy = instance(&t.verdant, "healthy");

    t.missing.install("good-v3");
    let report = t.verdant.attach().expect("the missing one attaches now");
    assert_eq!(names(&report), ["missing"], "only what is not attached yet: {report}");
    assert!(matches!(report.outcome("missing"), Some(Outcome::Swapped { old: None, .. })), "{report}");
    assert_eq!(report.generation, 2);
    assert_eq!(version(&t.verdant, "missing"), Ok(3));
    assert_eq!(instance(&t.verdant, "healthy"), healthy, "the attached one was left alone");
    assert_eq!(t.shared.attach_count(), 2);
}

#[test]
fn strict_mode_returns_the_first_failure_and_still_applies_the_others() {
    let t = healthy_and_missing(true);

    // The same start-up as above: an error now, but the healthy one was
    // attached all the same, and the report says so.
    let failure = expect_failure(t.verdant.attach());
    let message = failure.to_string();
    println!("{message}\n{}", failure.report);
    assert_eq!((failure.error.loadable.as_str(), failure.error.step), ("missing", Step::Read));
    assert!(
        message.starts_with(
            "attach #1 failed, `missing` is not serving, the others were attached: loadable `missing` failed at step `read`"
        ),
        "{message}"
    );
    assert_missing_failed(&failure.report);
    assert!(matches!(failure.report.outcome("healthy"), Some(Outcome::Swapped { old: None, .. })));
    assert_eq!(version(&t.verdant, "healthy"), Ok(1));
    assert_read_failed(&t.verdant, "missing");

    t.healthy.install("good-v2");
    let failure = expect_failure(t.verdant.reload_blocking(None));
    let message = failure.to_string();
    println!("{message}");
    assert_eq!(failure.report.generation, 2);
    assert!(
        message.starts_with("reload #2 failed, `missing` is not serving, the others were applied: loadable `missing`"),
        "{message}"
    );
    assert!(matches!(failure.report.outcome("healthy"), Some(Outcome::Swapped { old: Some(_), .. })));
    assert_eq!(version(&t.verdant, "healthy"), Ok(2));

    // Now the one with a previous version fails, and the missing one
    // appears: it attaches, and the failing one keeps serving good-v2.
    t.healthy.install("attach-error");
    t.missing.install("good-v3");
    let failure = expect_failure(t.verdant.reload_blocking(None));
    let message = failure.to_string();
    println!("{message}\n{}", failure.report);
    assert_eq!((failure.error.loadable.as_str(), failure.error.step), ("healthy", Step::Attach));
    assert!(
        message.starts_with("reload #3 failed, `healthy` keeps its previous version, the others were applied:"),
        "{message}"
    );
    assert!(matches!(failure.report.outcome("missing"), Some(Outcome::Swapped { old: None, .. })));
    let shown = failure.report.to_string();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("  healthy: FAILED at attach, still serving fixture-good-v2 0.2.0 (generation 2")),
        "{shown}"
    );
    assert_eq!(version(&t.verdant, "healthy"), Ok(2));
    assert_eq!(version(&t.verdant, "missing"), Ok(3));
}

#[test]
fn a_failing_group_keeps_its_previous_versions_and_blocks_no_one_else() {
    let (a, b, c) = (Artifact::new("good-v1"), Artifact::new("good-v1"), Artifact::new("good-v1"));
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context)
        .strict(false)
        .add::<dyn Probe>("a", a.path())
        .add::<dyn Probe>("b", b.path())
        .add::<dyn Probe>("c", c.path())
        .group("pair", ["a", "b"])
        .build()
        .unwrap();
    let report = verdant.attach().unwrap();
    assert!(report.is_success(), "{report}");
    assert_eq!([instance(&verdant, "a"), instance(&verdant, "b"), instance(&verdant, "c")], [1, 2, 3]);

    a.install("good-v2");
    b.install("attach-error");
    c.install("good-v2");
    let report = verdant.reload_blocking(None).expect("not strict");
    println!("{report}");
    assert_eq!(report.generation, 2);
    assert_eq!(names(&report), ["a", "b", "c"]);
    assert_eq!(failed_names(&report), [("b", Step::Attach)]);

    // a got as far as attaching (instance 4), then was rolled back with its
    // group; b failed; both keep generation 1.
    match report.outcome("a") {
        Some(Outcome::RolledBack { discarded }) => {
            assert_eq!((discarded.package_version.as_str(), discarded.generation), ("0.2.0", 2));
        }
        other => panic!("expected a RolledBack, got {other:?}\n{report}"),
    }
    match report.outcome("b") {
        Some(Outcome::Failed(error)) => {
            assert!(matches!(error.kind, LoadError::AttachFailed { .. }), "{:?}", error.kind);
        }
        other => panic!("expected b Failed, got {other:?}\n{report}"),
    }
    // c, outside the group, was swapped in the same transaction.
    match report.outcome("c") {
        Some(Outcome::Swapped { old: Some(old), new }) => {
            assert_eq!(old.generation, 1);
            assert_eq!((new.package_version.as_str(), new.generation), ("0.2.0", 2));
        }
        other => panic!("expected c Swapped, got {other:?}\n{report}"),
    }
    let groups: Vec<Option<&str>> = report.loadables.iter().map(|l| l.group.as_deref()).collect();
    assert_eq!(groups, [Some("pair"), Some("pair"), None]);
    let serving: Vec<Option<u64>> = report.loadables.iter().map(|l| l.serving.as_ref().map(|v| v.generation)).collect();
    assert_eq!(serving, [Some(1), Some(1), Some(2)]);
    assert!(report.to_string().contains("  a (group pair): rolled back"), "{report}");

    assert_eq!([version(&verdant, "a"), version(&verdant, "b"), version(&verdant, "c")], [Ok(1), Ok(1), Ok(2)]);
    assert_eq!([instance(&verdant, "a"), instance(&verdant, "b"), instance(&verdant, "c")], [1, 2, 5]);
    assert_eq!(shared.attach_count(), 5);
    // The rolled-back instance of a and c's retired v1 are detached; the
    // serving ones are not.
    let detached_sorted = || {
        let mut detached = shared.detached();
        detached.sort();
        detached
    };
    assert!(eventually(|| detached_sorted() == [(3, 1), (4, 2)]), "detached: {:?}", shared.detached());
    // status() lists a's rolled-back version (it never served) beside c's
    // replaced v1.
    let status = verdant.status();
    for (loadable, generation, retired) in
        [("a", 1, &[RetireReason::RolledBack][..]), ("b", 1, &[][..]), ("c", 2, &[RetireReason::Replaced][..])]
    {
        let l = status.loadables.iter().find(|l| l.name == loadable).unwrap();
        assert_eq!(l.current.as_ref().map(|c| c.generation), Some(generation), "{status}");
        let reasons: Vec<RetireReason> = l.retired.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, retired, "{status}");
    }

    // Fixed, the group is swapped in as a whole.
    b.install("good-v2");
    let report = verdant.reload_blocking(None).expect("everything loads");
    println!("{report}");
    assert!(report.is_success(), "{report}");
    for name in ["a", "b"] {
        assert!(matches!(report.outcome(name), Some(Outcome::Swapped { new, .. }) if new.generation == 3), "{report}");
    }
    assert!(matches!(report.outcome("c"), Some(Outcome::Unchanged { .. })), "{report}");
    assert_eq!([version(&verdant, "a"), version(&verdant, "b"), version(&verdant, "c")], [Ok(2), Ok(2), Ok(2)]);
}

#[test]
fn a_group_loads_in_registration_order_and_is_reloaded_as_a_whole() {
    // Registered a, c, b; the group lists b first. Members still load in
    // registration order (a, then b), and the report keeps that order.
    let (a, b, c) = (Artifact::new("good-v1"), Artifact::new("good-v1"), Artifact::new("good-v1"));
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context)
        .strict(false)
        .add::<dyn Probe>("a", a.path())
        .add::<dyn Probe>("c", c.path())
        .add::<dyn Probe>("b", b.path())
        .group("pair", ["b", "a"])
        .build()
        .unwrap();
    assert!(verdant.attach().unwrap().is_success());

    // Selecting one member reloads its whole group, and nothing else.
    a.install("good-v2");
    b.install("good-v2");
    c.install("good-v2");
    let report = verdant.reload_blocking(Some("b")).unwrap();
    println!("{report}");
    assert_eq!(names(&report), ["a", "b"]);
    assert!(report.is_success(), "{report}");
    assert_eq!([version(&verdant, "a"), version(&verdant, "b"), version(&verdant, "c")], [Ok(2), Ok(2), Ok(1)]);

    // a fails first: b, after it in registration order, is not reached;
    // c is swapped.
    a.install("attach-error");
    b.install("good-v3");
    let attaches = shared.attach_count();
    let report = verdant.reload_blocking(None).unwrap();
    println!("{report}");
    assert_eq!(names(&report), ["a", "c", "b"]);
    assert_eq!(failed_names(&report), [("a", Step::Attach)]);
    assert!(matches!(report.outcome("b"), Some(Outcome::NotReached)), "{report}");
    assert!(steps(&report, "b").is_empty(), "{report}");
    assert!(matches!(report.outcome("c"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(shared.attach_count(), attaches + 1, "only c's new build was attached");
    assert_eq!([version(&verdant, "a"), version(&verdant, "b"), version(&verdant, "c")], [Ok(2), Ok(2), Ok(2)]);
}

#[test]
fn build_refuses_bad_groups() {
    let builder = || {
        Verdant::builder(FixtureContext::new())
            .add::<dyn Probe>("a", "/nonexistent/liba.so")
            .add::<dyn Probe>("b", "/nonexistent/libb.so")
    };

    match builder().group("g", ["a", "nope"]).build() {
        Err(error @ Error::UnknownGroupMember { .. }) => {
            let message = error.to_string();
            let Error::UnknownGroupMember { group, name, registered } = error else { unreachable!() };
            assert_eq!((group.as_str(), name.as_str()), ("g", "nope"));
            assert_eq!(registered, ["a", "b"]);
            assert!(message.contains("group `g` names `nope`") && message.contains("registered: a, b"), "{message}");
        }
        other => panic!("expected UnknownGroupMember, got {other:?}"),
    }

    match builder().group("first", ["a"]).group("second", ["b", "a"]).build() {
        Err(error @ Error::GroupConflict { .. }) => {
            let message = error.to_string();
            let Error::GroupConflict { name, first, second } = error else { unreachable!() };
            assert_eq!((name.as_str(), first.as_str(), second.as_str()), ("a", "first", "second"));
            assert!(message.contains("`a` is in two groups, `first` and `second`"), "{message}");
        }
        other => panic!("expected GroupConflict, got {other:?}"),
    }

    match builder().group("g", ["a"]).group("g", ["b"]).build() {
        Err(Error::DuplicateGroup { group }) => assert_eq!(group, "g"),
        other => panic!("expected DuplicateGroup, got {other:?}"),
    }

    // A name listed twice in one group is still one group; a group of one
    // is allowed.
    let verdant = builder().group("g", ["a", "a"]).group("h", [String::from("b")]).build().expect("valid groups");
    assert_eq!(verdant.names(), ["a", "b"]);
}

#[test]
fn every_failure_is_logged_once_at_error_with_loadable_step_and_cause() {
    let events = EventLog::install();
    // Verdant's ERROR events since the last call.
    let errors = || -> Vec<LoggedEvent> {
        let verdant = |e: &LoggedEvent| e.level == tracing::Level::ERROR && e.target.starts_with("verdant");
        events.take().into_iter().filter(verdant).collect()
    };

    for strict in [false, true] {
        let t = healthy_and_missing(strict);
        let _ = t.verdant.attach();
        // A reload goes through the reload worker, which logs the result
        // too: the failure must still be logged at ERROR once.
        t.healthy.install("good-v2");
        let result = t.verdant.reload_blocking(None);
        assert_eq!(result.is_ok(), !strict, "{result:?}");
        assert_eq!(version(&t.verdant, "healthy"), Ok(2));
        let logged = errors();
        assert_eq!(logged.len(), 2, "strict {strict}: one ERROR for attach, one for the reload: {logged:#?}");
        for error in &logged {
            assert_eq!(error.fields.get("loadable").map(String::as_str), Some("missing"), "{error:?}");
            assert_eq!(error.fields.get("step").map(String::as_str), Some("read"), "{error:?}");
            let cause = error.fields.get("cause").map(String::as_str).unwrap_or_default();
            assert!(cause.starts_with("cannot read the library"), "{error:?}");
            let message = error.fields.get("message").map(String::as_str).unwrap_or_default();
            assert!(message.contains("this loadable is not serving"), "{error:?}");
        }
    }
}
