//! The registry API against real libraries: names, handles, attach, filters,
//! strict mode, revoke, the host's runtime, and panics in methods.

use std::sync::Arc;

use fixture_api::{FixtureContext, Probe, Shared};
use verdant::{DetachState, Error, Filter, HandleError, Outcome, Verdant};
use verdant_tests::{eventually, reload_held_in_attach, Artifact};

/// A second interface, which no fixture serves.
#[verdant_loadable::interface]
pub trait Other: Send + Sync {
    /// Anything.
    fn other(&self) -> u32;
}

fn attached_v1() -> (Artifact, Verdant, Arc<Shared>) {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, _probe) = verdant_tests::attached(&artifact);
    (artifact, verdant, shared)
}

#[test]
fn duplicate_names_are_refused() {
    let artifact = Artifact::new("good-v1");
    let result = Verdant::builder(FixtureContext::new())
        .add::<dyn Probe>("probe", artifact.path())
        .add::<dyn Probe>("probe", artifact.path())
        .build();
    match result {
        Err(Error::DuplicateName { name }) => assert_eq!(name, "probe"),
        other => panic!("expected DuplicateName from build(), got {other:?}"),
    }

    let (artifact, verdant, _) = attached_v1();
    match verdant.add::<dyn Probe>("probe", artifact.path()) {
        Err(Error::DuplicateName { name }) => assert_eq!(name, "probe"),
        other => panic!("expected DuplicateName from add(), got {other:?}"),
    }
    // Also with another interface: the name alone decides.
    assert!(matches!(verdant.add::<dyn Other>("probe", artifact.path()), Err(Error::DuplicateName { .. })));
    assert_eq!(verdant.names(), ["probe"]);
    assert_eq!(verdant.handle::<dyn Probe>("probe").unwrap().get().unwrap().version(), 1);
}

#[test]
fn a_handle_with_the_wrong_interface_is_refused() {
    let (_artifact, verdant, _) = attached_v1();
    match verdant.handle::<dyn Other>("probe") {
        Err(Error::WrongInterface { name, requested, actual }) => {
            assert_eq!(name, "probe");
            assert!(requested.ends_with("Other"), "{requested}");
            assert!(actual.ends_with("fixture_api::Probe"), "{actual}");
        }
        other => panic!("expected WrongInterface, got {other:?}"),
    }
    match verdant.handle::<dyn Probe>("nope") {
        Err(Error::UnknownLoadable { name, registered }) => {
            assert_eq!(name, "nope");
            assert_eq!(registered, ["probe"]);
        }
        other => panic!("expected UnknownLoadable, got {other:?}"),
    }
}

#[test]
fn a_handle_before_attach_is_not_attached() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert_eq!(probe.get().unwrap_err(), HandleError::NotAttached { name: "probe".to_owned() });
    verdant.attach().unwrap();
    // The same handle serves once attached.
    assert_eq!(probe.get().unwrap().version(), 1);
}

#[test]
fn attach_is_idempotent() {
    let artifact = Artifact::new("good-v1");
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let first = verdant.attach().unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(first.loadables.len(), 1);

    let second = verdant.attach().unwrap();
    assert!(second.loadables.is_empty(), "{second}");
    assert_eq!(second.generation, 1);
    assert_eq!(verdant.status().generation, 1);
    assert_eq!(shared.attach_count(), 1);

    // A loadable added later is attached by the next attach, alone.
    let later = Artifact::new("good-v2");
    verdant.add::<dyn Probe>("later", later.path()).unwrap();
    let third = verdant.attach().unwrap();
    let names: Vec<&str> = third.loadables.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["later"]);
    assert_eq!(third.generation, 2);
    assert_eq!(shared.attach_count(), 2);
    assert_eq!(verdant.handle::<dyn Probe>("later").unwrap().get().unwrap().version(), 2);
    assert_eq!(verdant.handle::<dyn Probe>("probe").unwrap().get().unwrap().generation(), 1);
}

#[test]
fn strict_mode_refuses_a_filter_that_matches_nothing() {
    let artifact = Artifact::new("good-v1");
    let (verdant, _shared, _probe) = verdant_tests::attached_with(&artifact, |b| b.strict(true));
    match verdant.reload_blocking(Some("nothing")) {
        Err(Error::NoMatch { filter, registered }) => {
            assert_eq!(filter, "nothing");
            assert_eq!(registered, ["probe"]);
        }
        other => panic!("expected NoMatch, got {other:?}"),
    }
    assert!(matches!(verdant.reload_blocking(Filter::regex("^x").unwrap()), Err(Error::NoMatch { .. })));
    assert_eq!(verdant.status().generation, 1, "no transaction ran");
    assert!(verdant.status().strict);
}

#[test]
fn lenient_mode_accepts_a_filter_that_matches_nothing() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new())
        .strict(false)
        .add::<dyn Probe>("probe", artifact.path())
        .build()
        .unwrap();
    verdant.attach().unwrap();
    artifact.install("good-v2");
    let report = verdant.reload_blocking(Some("nothing")).expect("lenient mode");
    assert!(report.loadables.is_empty(), "{report}");
    assert_eq!(verdant.status().generation, 1, "no transaction ran");
    assert_eq!(verdant.handle::<dyn Probe>("probe").unwrap().get().unwrap().version(), 1);
}

#[test]
fn glob_and_regex_filters_select() {
    let probe_file = Artifact::new("good-v1");
    let cart_file = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new())
        .strict(true)
        .add::<dyn Probe>("probe", probe_file.path())
        .add::<dyn Probe>("cart", cart_file.path())
        .build()
        .unwrap();
    verdant.attach().unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    let cart = verdant.handle::<dyn Probe>("cart").unwrap();
    probe_file.install("good-v2");
    cart_file.install("good-v2");

    let report = verdant.reload_blocking("pro*").unwrap();
    let names: Vec<&str> = report.loadables.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["probe"]);
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })));
    assert_eq!((probe.get().unwrap().version(), cart.get().unwrap().version()), (2, 1));

    probe_file.install("good-v3");
    let report = verdant.reload_blocking(Filter::regex("^pr").unwrap()).unwrap();
    let names: Vec<&str> = report.loadables.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["probe"]);
    assert_eq!((probe.get().unwrap().version(), cart.get().unwrap().version()), (3, 1));

    // An exact name is not a prefix.
    assert!(matches!(verdant.reload_blocking(Some("pro")), Err(Error::NoMatch { .. })));
    // A filter that does not parse.
    assert!(matches!(verdant.reload_blocking(Some("[")), Err(Error::InvalidFilter { .. })));
    assert!(matches!(Filter::regex("("), Err(Error::InvalidFilter { .. })));
    assert_eq!(cart.get().unwrap().version(), 1);
}

#[test]
fn revoke_detaches_everything_once_and_stops_the_registry() {
    let (artifact, verdant, shared) = attached_v1();
    artifact.install("good-v2");
    verdant.reload_blocking(None).unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    // A call in flight across the revoke.
    let pinned = probe.get().unwrap();
    assert_eq!(pinned.version(), 2);
    assert!(eventually(|| shared.detached() == [(1, 1)]), "{:?}", shared.detached());

    verdant.revoke();
    assert_eq!(probe.get().unwrap_err(), HandleError::Revoked { name: "probe".to_owned() });
    assert!(matches!(verdant.reload_blocking(None), Err(Error::Revoked)));
    assert!(matches!(verdant.attach(), Err(Error::Revoked)));
    assert!(matches!(verdant.add::<dyn Probe>("more", artifact.path()), Err(Error::Revoked)));
    let status = verdant.status();
    assert!(status.revoked);
    assert!(status.loadables[0].current.is_none(), "{status}");

    // The pinned version finishes its call; it is detached only after.
    assert_eq!(pinned.version(), 2);
    let last = status.loadables[0].retired.last().cloned().expect("v2 retired by revoke");
    assert_eq!(last.version.package_version, "0.2.0");
    assert_eq!(last.in_flight, 1);
    assert_eq!(last.detach, DetachState::Pending);
    assert_eq!(shared.detached(), [(1, 1)]);
    drop(pinned);

    let all_detached = || verdant.status().loadables[0].retired.iter().all(|r| r.detach == DetachState::Detached);
    assert!(eventually(all_detached), "{}", verdant.status());
    let mut detached = shared.detached();
    detached.sort();
    assert_eq!(detached, [(1, 1), (2, 2)], "every instance detached exactly once");
    assert_eq!(shared.attach_count(), 2);
}

#[test]
fn attach_runs_in_the_callers_tokio_runtime() {
    // Outside any runtime, the hook has none.
    let (_artifact, verdant, _) = attached_v1();
    assert!(!verdant.handle::<dyn Probe>("probe").unwrap().get().unwrap().attached_in_runtime());

    // Built outside, attached from inside a runtime.
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async { verdant.attach() }).unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert!(probe.get().unwrap().attached_in_runtime());

    // A reload from inside the runtime attaches there too.
    artifact.install("good-v2");
    runtime.block_on(verdant.reload(Some("probe"))).unwrap();
    let pinned = probe.get().unwrap();
    assert_eq!(pinned.version(), 2);
    assert!(pinned.attached_in_runtime());
}

#[test]
fn a_panic_in_a_method_becomes_a_host_panic_and_the_handle_keeps_working() {
    let (_artifact, verdant, shared) = attached_v1();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    for _ in 0..2 {
        let caught = std::panic::catch_unwind(|| probe.get().unwrap().explode("kaboom")).unwrap_err();
        let panic = caught
            .downcast_ref::<verdant::boundary::LibraryPanic>()
            .expect("the payload is a verdant::boundary::LibraryPanic");
        assert_eq!(panic.0.message(), "kaboom");
        assert_eq!(probe.get().unwrap().version(), 1);
    }
    // Same instance, nothing retired or detached.
    assert_eq!(probe.get().unwrap().instance(), 1);
    assert_eq!(shared.attach_count(), 1);
    assert!(shared.detached().is_empty());
    assert!(verdant.status().loadables[0].retired.is_empty());
}

#[test]
fn names_that_differ_only_in_punctuation_load_side_by_side() {
    // Both loadables serve the same build. Their private copies must still
    // get distinct names (copy names are "<sanitised name>-g<generation>-<hash>.so").
    let file = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new())
        .add::<dyn Probe>("shop.eu", file.path())
        .add::<dyn Probe>("shop_eu", file.path())
        .build()
        .unwrap();
    let report = verdant.attach().unwrap_or_else(|e| panic!("both loadables attach: {e}"));
    assert_eq!(report.loadables.len(), 2);
    for name in ["shop.eu", "shop_eu"] {
        assert_eq!(verdant.handle::<dyn Probe>(name).unwrap().get().unwrap().version(), 1);
    }
}

#[test]
fn a_revoke_during_a_reload_waits_for_it_and_swaps_nothing() {
    let (artifact, verdant, shared) = attached_v1();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    let reloading = reload_held_in_attach(&verdant, &shared, &artifact, "good-v2");
    let revoking = {
        let verdant = verdant.clone();
        std::thread::spawn(move || verdant.revoke())
    };
    assert!(eventually(|| verdant.status().revoked));
    shared.attach_gate.open();

    let result = reloading.join().unwrap();
    assert!(matches!(result, Err(Error::Revoked)), "{result:?}");
    revoking.join().unwrap();
    assert_eq!(probe.get().unwrap_err(), HandleError::Revoked { name: "probe".to_owned() });
    // good-v2 was attached (instance 2) but never served; both instances
    // are detached exactly once.
    assert_eq!(shared.attach_count(), 2);
    assert!(eventually(|| shared.detached().len() == 2), "{:?}", shared.detached());
    let mut detached = shared.detached();
    detached.sort();
    assert_eq!(detached, [(1, 1), (2, 2)]);
    let status = verdant.status();
    assert!(status.loadables[0].current.is_none(), "{status}");
    assert!(status.loadables[0].retired.iter().all(|r| r.version.package_version == "0.1.0"), "{status}");
}

#[test]
fn library_events_reach_the_hosts_subscriber() {
    // The fixture libraries log one event with target "fixture" per attach.
    let events = verdant_tests::events::EventLog::install();
    let (artifact, verdant, _shared) = attached_v1();
    assert_eq!(events.count_target("fixture"), 1, "the v1 attach event reached the host");
    artifact.install("good-v2");
    verdant.reload_blocking(None).unwrap();
    assert_eq!(events.count_target("fixture"), 2, "and the v2 library's, a fresh copy of tracing");
}

#[test]
fn building_a_registry_raises_the_soft_open_file_limit_to_the_hard_limit() {
    // Every retained version keeps one descriptor open; with a soft limit of
    // 1024 a service would stop loading (and accepting) after ~1000 reloads.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on structs this test owns; this test runs
    // in a process of its own (nextest), so lowering its limit affects
    // nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let hard = limit.rlim_max;
        assert!(hard > 256, "the hard limit leaves room for the test: {hard}");
        let lowered = libc::rlimit { rlim_cur: 256, rlim_max: hard };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
        let _verdant = Verdant::builder(()).build().expect("build");
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert_eq!(limit.rlim_cur, hard, "the soft limit was raised to the hard one");
    }
}
